"""Tests for the /proc/mdstat and mdadm --detail parsers and the array verdict."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.corpus import FIXTURES, corpus_files, require_corpus
from unityctl.infra.probes.mdstat import judge_array, parse_mdadm_detail, parse_mdstat

pytestmark = pytest.mark.backend_independent

OWN = FIXTURES / "probes" / "mdstat"


def _mixed():
    return parse_mdstat((OWN / "mixed.txt").read_text())


def test_degraded_raid5_in_recovery_reports_progress_and_is_rebuilding() -> None:
    report = _mixed()
    assert report.personalities == ["raid1", "raid6", "raid5", "raid4", "raid10", "raid0"]
    md1 = report.array("md1")
    assert md1 is not None
    assert (md1.state, md1.level, md1.raid_disks, md1.active_disks, md1.status_map) == (
        "active", "raid5", 4, 3, "_UUU")
    assert md1.degraded and md1.superblock == "1.2" and md1.chunk == "512k"
    assert (md1.sync_action, md1.sync_progress, md1.sync_finish, md1.sync_speed) == (
        "recovery", 23.4, "152.3min", "163721K/sec")
    assert md1.bitmap == "2/15 pages [8KB], 65536KB chunk"
    assert [m.name for m in md1.failed_members] == ["sda1"]
    verdict = judge_array(md1)
    assert verdict.status == "rebuilding"
    assert "recovery 23.4%, finish in 152.3min at 163721K/sec" in verdict.reasons
    assert "failed members: sda1" in verdict.reasons


def test_member_flags_are_read_for_write_mostly_and_replacement() -> None:
    report = _mixed()
    md0, md4 = report.array("md0"), report.array("md4")
    assert md0 is not None and md4 is not None
    assert [(m.name, m.index, m.write_mostly) for m in md0.members] == [("sdf1", 1, True), ("sde1", 0, False)]
    assert md4.members[0].replacement
    assert judge_array(md0).status == "ok"


def test_raid0_has_no_counts_and_is_ok() -> None:
    md2 = _mixed().array("md2")
    assert md2 is not None and md2.level == "raid0"
    assert md2.raid_disks is None and md2.status_map == "" and not md2.degraded
    assert judge_array(md2).status == "ok"


def test_raid10_that_lost_both_copies_of_a_stripe_is_failed() -> None:
    md3 = _mixed().array("md3")
    assert md3 is not None
    verdict = judge_array(md3)
    assert verdict.status == "failed"
    assert verdict.reasons == ["md3 raid10 lost 2 of 4 members (tolerates 1)"]


def test_a_delayed_resync_is_reported_as_waiting() -> None:
    md4 = _mixed().array("md4")
    assert md4 is not None and md4.sync_waiting == "DELAYED" and md4.sync_action == "resync"
    assert "resync DELAYED" in judge_array(md4).reasons


def test_mdadm_detail_gives_state_and_failed_and_spare_counts() -> None:
    detail = parse_mdadm_detail((OWN / "mdadm_detail_degraded.txt").read_text())
    assert detail.device == "/dev/md1" and detail.level == "raid5"
    assert detail.state_flags == ["clean", "degraded", "recovering"]
    assert (detail.raid_devices, detail.active_devices, detail.failed_devices, detail.spare_devices) == (4, 3, 1, 1)
    assert detail.rebuild_percent == 23
    states = {d.path: d.state for d in detail.devices}
    assert states["/dev/sda1"] == "faulty" and states["/dev/sdd1"] == "spare rebuilding"
    assert any(d.state == "removed" and d.path is None for d in detail.devices)


def test_garbage_is_noted_not_raised() -> None:
    report = parse_mdstat("hello\x00world\n")
    assert report.arrays == [] and report.notes
    assert parse_mdadm_detail("nonsense").notes


# --- shared corpus ----------------------------------------------------------------------------

# Only the /proc/mdstat-format files at the top of mdstat/; the sysfs folder is skipped below.
MDSTAT_FILES = [p for p in corpus_files("mdstat") if p.parent.name == "mdstat"]


@pytest.mark.parametrize("path", MDSTAT_FILES, ids=[p.name for p in MDSTAT_FILES])
def test_every_corpus_mdstat_file_parses_without_notes(path: Path) -> None:
    report = parse_mdstat(path.read_text())
    assert report.notes == []
    for array in report.arrays:
        assert judge_array(array).status in ("ok", "degraded", "failed", "rebuilding", "inactive")


def test_sysfs_attribute_files_fed_to_the_mdstat_parser_yield_no_phantom_arrays() -> None:
    """mdstat/sysfs holds /sys/block/mdN/md/* attribute files, not /proc/mdstat: unityctl does not
    read them, but a wrong file in the mdstat section must give no array, never an exception."""
    root = require_corpus("mdstat")
    files = [p for p in (root / "sysfs").rglob("*") if p.is_file()]
    assert files, "the corpus's mdstat/sysfs folder is empty"
    for path in files:
        assert parse_mdstat(path.read_text(errors="replace")).arrays == [], path


def _corpus(name: str):
    return parse_mdstat((require_corpus("mdstat") / name).read_text())


def test_corpus_recovering_raid5_reports_progress() -> None:
    md127 = _corpus("pymdstat_mdstat.05").array("md127")
    assert md127 is not None and md127.sync_action == "recovery" and md127.sync_progress == 12.6
    assert judge_array(md127).status == "rebuilding"


def test_corpus_degraded_raid5_without_rebuild_is_degraded() -> None:
    md0 = _corpus("pymdstat_mdstat.03").array("md0")
    assert md0 is not None
    verdict = judge_array(md0)
    assert verdict.status == "degraded"
    assert verdict.reasons == ["md0 degraded: 3 of 4 members working [UUU_]"]


def test_corpus_inactive_array_with_only_spares_is_inactive() -> None:
    md2 = _corpus("pymdstat_mdstat.09").array("md2")
    assert md2 is not None and md2.level is None and all(m.spare for m in md2.members)
    assert judge_array(md2).status == "inactive"


def test_corpus_kitchen_sink_reads_all_arrays_and_states() -> None:
    report = _corpus("node_exporter_collector_fixtures_proc_mdstat")
    assert len(report.arrays) == 17
    md11 = report.array("md11")
    assert md11 is not None and md11.read_only == "auto-read-only" and md11.sync_waiting == "PENDING"
    md201 = report.array("md201")
    assert md201 is not None and judge_array(md201).status == "ok"
    assert judge_array(md201).reasons == ["check 5.7%"]
    md7 = report.array("md7")
    assert md7 is not None and judge_array(md7).status == "degraded"


def test_corpus_reshape_while_adding_a_disk_is_rebuilding_not_failed() -> None:
    md127 = _corpus("pymdstat_mdstat.13").array("md127")
    assert md127 is not None and md127.sync_action == "reshape"
    assert judge_array(md127).status == "rebuilding"


def test_corpus_flush_left_nas_layout_is_read() -> None:
    report = _corpus("pymdstat_mdstat.15")
    assert [a.name for a in report.arrays] == ["md3", "md2", "md1", "md0"]
    assert all(a.raid_disks == 8 and not a.degraded for a in report.arrays)
