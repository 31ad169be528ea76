"""Tests for the zpool list / zpool status parsers and the pool verdict."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.corpus import FIXTURES, corpus_files, require_corpus
from unityctl.infra.probes.zfs import judge_pool, parse_zpool_list, parse_zpool_status, pool_devices

pytestmark = pytest.mark.backend_independent

OWN = FIXTURES / "probes" / "zfs"


def _status():
    return parse_zpool_status((OWN / "zpool_status_faulted_log_and_resilver.txt").read_text())


def test_zpool_list_hp_rows_are_read_by_column_count() -> None:
    listing = parse_zpool_list((OWN / "zpool_list_hp.txt").read_text())
    assert listing.notes == []
    tank = listing.pool("tank")
    assert tank is not None
    assert (tank.size, tank.alloc, tank.free, tank.frag_percent, tank.cap_percent, tank.dedup, tank.health) == (
        3985729650688, 3427727499264, 558002151424, 31, 86, 1.0, "ONLINE")


def test_capacity_thresholds_warn_at_80_and_are_critical_at_90() -> None:
    listing = parse_zpool_list((OWN / "zpool_list_hp.txt").read_text())
    tank, backup = listing.pool("tank"), listing.pool("backup")
    assert judge_pool(None, tank).status == "warn"
    assert "pool tank is 86% full" in judge_pool(None, tank).reasons
    assert judge_pool(None, backup).status == "critical"


def test_online_pool_with_a_faulted_log_device_warns_and_names_it() -> None:
    fast = _status().pool("fast")
    assert fast is not None and fast.state == "ONLINE"
    log = fast.device("sdx1")
    assert log is not None and (log.group, log.state, log.read, log.write, log.note) == (
        "logs", "FAULTED", 3, 12, "too many errors")
    spare = fast.device("sdz")
    assert spare is not None and spare.group == "spares" and spare.state == "AVAIL" and spare.read is None
    verdict = judge_pool(fast)
    assert verdict.status == "warn"
    assert "device sdx1 in logs is FAULTED (too many errors)" in verdict.reasons
    assert "device sdx1 in logs errors: READ 3 WRITE 12 CKSUM 0" in verdict.reasons
    assert fast.status_text.startswith("One or more devices are faulted") and "degraded state." in fast.status_text


def test_resilver_in_progress_reports_percent_and_the_removed_device() -> None:
    backup = _status().pool("backup")
    assert backup is not None and backup.state == "DEGRADED"
    assert backup.scan.kind == "resilver" and backup.scan.in_progress and backup.scan.percent == 48.82
    replacing = backup.device("replacing-1")
    assert replacing is not None and replacing.kind == "vdev" and replacing.parent == "raidz2-0"
    verdict = judge_pool(backup)
    assert verdict.status == "warn"
    assert "device sdb is REMOVED" in verdict.reasons
    assert "device sda errors: READ 0 WRITE 0 CKSUM 2" in verdict.reasons
    assert "resilver in progress 48.82%" in verdict.reasons


def test_pool_devices_lists_leaves_with_counters_for_smart_correlation() -> None:
    fast = _status().pool("fast")
    assert fast is not None
    assert pool_devices(fast) == [("nvme0n1", "ONLINE", (0, 0, 0)), ("nvme1n1", "ONLINE", (0, 0, 0)),
                                  ("sdx1", "FAULTED", (3, 12, 0)), ("sdy1", "ONLINE", (0, 0, 0)),
                                  ("sdz", "AVAIL", (0, 0, 0))]


def test_no_pools_and_garbage_are_states_not_errors() -> None:
    assert parse_zpool_status("no pools available\n").pools == []
    assert parse_zpool_status("no pools available\n").notes == []
    assert parse_zpool_list("no pools available\n").pools == []
    assert parse_zpool_status("random junk\nmore").notes
    assert parse_zpool_list("a b c\n").notes


# --- shared corpus ----------------------------------------------------------------------------

STATUS_FILES = [p for p in corpus_files("zfs") if "status" in p.name]
LIST_FILES = [p for p in corpus_files("zfs") if "zpool-list" in p.name]


@pytest.mark.parametrize("path", STATUS_FILES, ids=[p.name for p in STATUS_FILES])
def test_every_corpus_zpool_status_file_parses(path: Path) -> None:
    report = parse_zpool_status(path.read_text())
    assert report.pools and report.notes == []
    for pool in report.pools:
        assert pool.state and pool.devices and pool.notes == []
        assert pool.devices[0].kind == "pool" and pool.devices[0].name == pool.name
        assert judge_pool(pool).status in ("ok", "warn", "critical")


@pytest.mark.parametrize("path", LIST_FILES, ids=[p.name for p in LIST_FILES])
def test_every_corpus_zpool_list_file_parses(path: Path) -> None:
    listing = parse_zpool_list(path.read_text())
    assert listing.pools and listing.notes == []


def test_iostat_and_kstat_files_in_a_zpool_section_give_notes_and_no_phantom_pools() -> None:
    """zpool iostat and /proc/spl/kstat are not formats unityctl reads; landing in the zpool
    sections by mistake they must yield no pool and an "unparseable"/"ignored" note."""
    require_corpus("zfs")
    others = [p for p in corpus_files("zfs") if "iostat" in p.name or "kstat" in p.parts]
    assert others, "the corpus has no iostat/kstat files"
    for path in others:
        text = path.read_text(errors="replace")
        status, listing = parse_zpool_status(text), parse_zpool_list(text)
        assert status.pools == [] and listing.pools == [], path.name
        assert status.notes and listing.notes, path.name


def _corpus_status(name: str):
    return parse_zpool_status((require_corpus("zfs") / name).read_text())


def test_corpus_degraded_pool_names_the_unavailable_device() -> None:
    tank = _corpus_status("textfile-scripts_zpool_status_-p_degraded.txt").pool("tank")
    assert tank is not None and tank.state == "DEGRADED"
    verdict = judge_pool(tank)
    assert verdict.status == "warn"
    assert "device c1t1d0 is UNAVAIL (cannot open)" in verdict.reasons


def test_corpus_unavailable_pool_is_critical_with_permanent_errors() -> None:
    tank = _corpus_status("textfile-scripts_zpool_status_-p_unavail.txt").pool("tank")
    assert tank is not None
    assert tank.error_files == ["/tank/data/aaa", "/tank/data/bbb", "/tank/data/ccc"]
    verdict = judge_pool(tank)
    assert verdict.status == "critical"
    assert "pool tank is UNAVAIL" in verdict.reasons and "permanent data errors in 3 files" in verdict.reasons


def test_corpus_completed_scrub_has_date_and_error_count() -> None:
    pool0 = _corpus_status("textfile-scripts_zpool_status_-p.txt").pool("pool0")
    assert pool0 is not None
    assert (pool0.scan.kind, pool0.scan.in_progress, pool0.scan.errors, pool0.scan.finished_at) == (
        "scrub", False, 0, "Sun Nov 12 07:22:03 2023")
    assert [d.name for d in pool0.devices if d.kind == "vdev"] == ["raidz1-0"]


def test_corpus_faulted_device_inside_a_spare_vdev_is_named() -> None:
    test = _corpus_status("textfile-scripts_zpool_status_-p_degraded_sparse.txt").pool("test")
    assert test is not None
    faulted = test.device("16876260487220383698")
    assert faulted is not None and faulted.parent == "spare-0" and faulted.note.startswith("was /dev/")
    assert len([d for d in test.devices if d.group == "spares"]) == 4


def test_corpus_zpool_list_with_faulted_pool_is_critical() -> None:
    listing = parse_zpool_list((require_corpus("zfs") / "netdata_zpool-list.txt").read_text())
    zion = listing.pool("zion")
    assert zion is not None and zion.size is None and zion.health == "FAULTED"
    assert judge_pool(None, zion).status == "critical"
