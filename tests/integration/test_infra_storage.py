"""Disks, pools, arrays and their alerts, replayed from real captures into a real database.

Every SMART, mdstat and zpool file of the shared corpus (and our own fixtures) goes through the
same path as a collection: sectioned ``collect.sh`` text -> ``parse_collection`` ->
``apply_storage`` on SQLite or PostgreSQL. No ZFS pool or real disk can run here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from tests.support.corpus import FIXTURES, corpus_files, require_corpus
from unityctl.core.db import utcnow
from unityctl.core.errors import NotFoundError, RemoteCommandError, UsageError
from unityctl.core.models import Alert, AlertChannel, AuditEntry, NotificationLog
from unityctl.infra import storage
from unityctl.infra.models import MonitoredServer, StorageDevice, StoragePool
from unityctl.infra.probes import mdstat as md
from unityctl.infra.probes import smart as sm
from unityctl.infra.probes import zfs as zf
from unityctl.infra.probes.system import CollectionReport, parse_collection

OWN = FIXTURES / "probes"


# --- helpers ------------------------------------------------------------------------------------

def collection(sections: dict[str, str]) -> CollectionReport:
    """Parse a collection made of these sections, framed as collect.sh frames a run as root."""
    parts = ["@@unityctl:collect version=1 uid=0 user=root sudo=root@@"]
    for name, body in sections.items():
        parts.append(f"@@unityctl:section {name} rc=0@@")
        parts.append(body.rstrip("\n"))
    parts.append("@@unityctl:end@@")
    return parse_collection("\n".join(parts) + "\n")


def ata(serial: str, device: str = "/dev/sdb", *, passed: bool = True, rpm: int = 7200,
        **raws: int) -> str:
    """smartctl -x -j text of an ATA disk with these critical raw counters (a197=8 ...)."""
    table = [{"id": int(k[1:]), "name": sm.ATA_CRITICAL[int(k[1:])].name, "value": 100, "worst": 100,
              "thresh": 0, "when_failed": "", "flags": {"prefailure": False},
              "raw": {"value": v, "string": str(v)}} for k, v in raws.items()]
    return json.dumps({
        "json_format_version": [1, 0], "smartctl": {"version": [7, 3], "exit_status": 0},
        "device": {"name": device, "info_name": device, "type": "sat", "protocol": "ATA"},
        "model_name": "WDC WD40EFRX-68N32N0", "serial_number": serial,
        "user_capacity": {"bytes": 4000787030016}, "rotation_rate": rpm,
        "smart_status": {"passed": passed}, "ata_smart_attributes": {"table": table},
        "power_on_time": {"hours": 20000}, "temperature": {"current": 35}})


def standby(device: str = "/dev/sdb") -> str:
    return (OWN / "smart" / "standby.json").read_text().replace("/dev/sdd", device)


def zpool_status(pool: str, state: str, members: list[tuple[str, str]], vdev_state: str | None = None) -> str:
    rows = "\n".join(f"\t    {name:<40} {st:<8} 0     0     0" for name, st in members)
    return (f"  pool: {pool}\n state: {state}\n  scan: none requested\nconfig:\n\n"
            f"\tNAME                                          STATE     READ WRITE CKSUM\n"
            f"\t{pool:<46}{state:<8}  0     0     0\n"
            f"\t  mirror-0                                    {vdev_state or state:<8}  0     0     0\n"
            f"{rows}\n\nerrors: No known data errors\n")


def add_server(env: Any, name: str) -> int:
    with env.session(write=True) as s:
        server = MonitoredServer(name=name, local=True)
        s.add(server)
        s.flush()
        return server.id  # type: ignore[return-value]


def apply(env: Any, server_id: int, report: CollectionReport) -> None:
    with env.session(write=True) as s:
        server = s.get(MonitoredServer, server_id)
        storage.apply_storage(s, server=server, report=report, settings=env.settings, now=utcnow())


def open_alerts(env: Any) -> list[Alert]:
    with env.session(write=False) as s:
        return list(s.exec(select(Alert).where(Alert.type == "storage_warning",
                                               Alert.state != "resolved")).all())


def alert(env: Any, dedup_key: str) -> Alert | None:
    with env.session(write=False) as s:
        return s.exec(select(Alert).where(Alert.dedup_key == dedup_key)).first()


def disk(env: Any, serial: str) -> StorageDevice:
    with env.session(write=False) as s:
        row = s.exec(select(StorageDevice).where(StorageDevice.serial == serial)).first()
        assert row is not None, f"no disk {serial}"
        return row


@pytest.fixture
def server(env: Any) -> Iterator[int]:
    yield add_server(env, "nas1")


# --- corpus replay ------------------------------------------------------------------------------

SMART_FILES = corpus_files("smart", "*.json") + sorted((OWN / "smart").glob("*.json"))


def test_every_smart_capture_is_stored_with_the_verdict_judge_gives(env: Any, server: int) -> None:
    require_corpus("smart")
    stored = 0
    for index, path in enumerate(SMART_FILES):
        text = path.read_text(errors="replace")
        parsed = sm.parse_smart(text)
        device = f"/dev/sd{chr(ord('a') + index % 26)}{index // 26 or ''}"
        apply(env, server, collection({f"smart:{device}": text}))
        if not parsed.serial and not parsed.standby and not parsed.has_health_data:
            continue  # scan output and the like: nothing to store, the notes say why
        stored += 1
        key = parsed.serial or f"nas1:{device}"
        row = disk(env, key)
        expected = sm.judge(parsed)
        if parsed.standby:
            assert row.verdict in ("standby", "passed", "warn", "failed", "unknown"), path.name
            assert json.loads(row.reasons)[0] == "standby, skipped", path.name
            continue
        assert row.verdict == expected.status, path.name
        assert json.loads(row.reasons) == expected.reasons, path.name
        assert json.loads(row.counters) == storage.critical_counters(parsed), path.name
        found = alert(env, f"storage_warning:disk:{key}")
        if expected.status in ("warn", "failed"):
            assert found is not None and found.state == "open", path.name
            assert found.severity == {"warn": "warning", "failed": "critical"}[expected.status]
            assert all(r in found.message for r in expected.reasons), path.name
        elif expected.status == "passed":
            assert found is None or found.state == "resolved", path.name
    assert stored >= 30


MDSTAT_FILES = [p for p in corpus_files("mdstat") if p.parent.name == "mdstat"] + \
    sorted((OWN / "mdstat").glob("mixed*.txt"))


def test_every_mdstat_capture_is_stored_with_one_row_and_alert_per_unhealthy_array(env: Any) -> None:
    require_corpus("mdstat")
    arrays = 0
    for index, path in enumerate(MDSTAT_FILES):
        text = path.read_text(errors="replace")
        parsed = md.parse_mdstat(text)
        server_id = add_server(env, f"md{index}")
        apply(env, server_id, collection({"mdstat": text}))
        with env.session(write=False) as s:
            rows = {p.name: p for p in s.exec(select(StoragePool).where(StoragePool.server_id == server_id))}
        assert set(rows) == {a.name for a in parsed.arrays}, path.name
        for array in parsed.arrays:
            arrays += 1
            verdict = md.judge_array(array)
            row = rows[array.name]
            assert json.loads(row.reasons) == verdict.reasons, path.name
            assert [m["name"] for m in json.loads(row.members)] == [m.name for m in array.members]
            found = alert(env, f"storage_warning:pool:{server_id}:md:{array.name}")
            if row.health == "ok":
                assert found is None, (path.name, array.name)
                assert verdict.status in ("ok", "rebuilding"), (path.name, array.name)
            else:
                assert verdict.status != "ok"
                assert found is not None and found.state == "open", (path.name, array.name)
                assert found.severity == {"warn": "warning", "critical": "critical"}[row.health]
                assert found.message.startswith(f"{array.name} {verdict.status.upper()}")
    assert arrays >= 20


ZFS_FILES = [p for p in corpus_files("zfs") if p.parent.name == "zfs" and ("status" in p.name
                                                                            or "zpool-list" in p.name)]
ZFS_FILES += sorted((OWN / "zfs").glob("*.txt"))


def test_every_zpool_capture_is_stored_with_the_health_judge_pool_gives(env: Any) -> None:
    require_corpus("zfs")
    pools = 0
    for index, path in enumerate(ZFS_FILES):
        text = path.read_text(errors="replace")
        section = "zpool_status" if "status" in path.name else "zpool_list"
        server_id = add_server(env, f"zfs{index}")
        apply(env, server_id, collection({section: text}))
        if section == "zpool_status":
            expected = {p.name: zf.judge_pool(p, None) for p in zf.parse_zpool_status(text).pools}
        else:
            expected = {p.name: zf.judge_pool(None, p) for p in zf.parse_zpool_list(text).pools}
        with env.session(write=False) as s:
            rows = {p.name: p for p in s.exec(select(StoragePool).where(StoragePool.server_id == server_id))}
        assert set(rows) == set(expected), path.name
        for name, verdict in expected.items():
            pools += 1
            assert rows[name].health == verdict.status, (path.name, name)
            assert json.loads(rows[name].reasons) == verdict.reasons, (path.name, name)
            found = alert(env, f"storage_warning:pool:{server_id}:zfs:{name}")
            if verdict.status == "ok":
                assert found is None, (path.name, name)
            else:
                assert found is not None and found.state == "open", (path.name, name)
                assert found.severity == {"warn": "warning", "critical": "critical"}[verdict.status]
    assert pools >= 15


def test_the_collection_fixture_without_root_stores_no_disk_and_raises_nothing(env: Any, server: int) -> None:
    text = (OWN / "system" / "collection_nonroot.txt").read_text()
    apply(env, server, parse_collection(text))
    with env.session(write=False) as s:
        assert s.exec(select(StorageDevice)).all() == []
        pools = s.exec(select(StoragePool)).all()
    assert [(p.name, p.state, p.health) for p in pools] == [("md0", "REBUILDING", "warn")]
    only = open_alerts(env)
    assert len(only) == 1 and only[0].message.startswith("md0 REBUILDING")


# --- correlation --------------------------------------------------------------------------------

BYID = "ata-WDC_WD40EFRX-68N32N0_WD-WCC7K0XXXX"


def test_a_degraded_pool_and_its_failing_disk_make_one_alert_naming_both(env: Any, server: int) -> None:
    report = collection({
        "smart:/dev/sda": ata("WD-WCC7K0AAAA", "/dev/sda"),
        "smart:/dev/sdb": ata("WD-WCC7K0XXXX", "/dev/sdb", a197=8),
        "zpool_status": zpool_status("tank", "DEGRADED", [("ata-WDC_WD40EFRX-68N32N0_WD-WCC7K0AAAA", "ONLINE"),
                                                         (BYID, "UNAVAIL")]),
    })
    apply(env, server, report)
    found = open_alerts(env)
    assert len(found) == 1
    assert found[0].message == f"tank DEGRADED: {BYID} WD-WCC7K0XXXX UNAVAIL, 197 Current_Pending_Sector raw 8"
    assert found[0].dedup_key == f"storage_warning:pool:{server}:zfs:tank"
    assert found[0].severity == "warning"
    with env.session(write=False) as s:
        pool = s.exec(select(StoragePool)).one()
    members = {m["name"]: m for m in json.loads(pool.members)}
    assert members[BYID]["serial"] == "WD-WCC7K0XXXX" and members[BYID]["verdict"] == "warn"
    assert members[BYID]["device"] == "/dev/sdb"


def test_a_pool_member_named_like_a_partition_maps_to_its_disk(env: Any, server: int) -> None:
    apply(env, server, collection({
        "smart:/dev/sdb": ata("ZA1B2C3D", "/dev/sdb", a5=150),
        "zpool_status": zpool_status("tank", "DEGRADED", [("sda1", "ONLINE"), ("sdb1", "FAULTED")]),
    }))
    (only,) = open_alerts(env)
    assert only.message == "tank DEGRADED: sdb1 ZA1B2C3D FAULTED, 5 Reallocated_Sector_Ct raw 150"
    assert only.severity == "critical"  # the disk failed: worse than the pool's own warning


def test_a_degraded_md_array_names_its_faulty_member_and_that_disks_smart_reason(env: Any, server: int) -> None:
    mdstat = ("Personalities : [raid1]\nmd0 : active raid1 sdc1[1](F) sdb1[0]\n"
              "      976630464 blocks super 1.2 [2/1] [U_]\n\nunused devices: <none>\n")
    apply(env, server, collection({
        "smart:/dev/sdc": ata("ZC9", "/dev/sdc", a198=3),
        "smart:/dev/sdb": ata("ZB8", "/dev/sdb"),
        "mdstat": mdstat,
    }))
    (only,) = open_alerts(env)
    assert only.message == "md0 DEGRADED: sdc1 ZC9 FAULTY, 198 Offline_Uncorrectable raw 3"


def test_a_failing_disk_in_a_healthy_pool_gets_its_own_alert(env: Any, server: int) -> None:
    apply(env, server, collection({
        "smart:/dev/sdb": ata("ZA1B2C3D", "/dev/sdb", a197=2),
        "zpool_status": zpool_status("tank", "ONLINE", [("sda", "ONLINE"), ("sdb", "ONLINE")]),
    }))
    (only,) = open_alerts(env)
    assert only.dedup_key == "storage_warning:disk:ZA1B2C3D"
    assert "197 Current_Pending_Sector raw 2" in only.message and "nas1:/dev/sdb" in only.message


# --- lifecycle ----------------------------------------------------------------------------------

def _pool_report(state: str, bad: str = "UNAVAIL") -> CollectionReport:
    member_state = "ONLINE" if state == "ONLINE" else bad
    return collection({"zpool_status": zpool_status("tank", state, [("sda", "ONLINE"), ("sdb", member_state)])})


def test_degraded_then_faulted_escalates_the_same_alert_and_healthy_resolves_it(env: Any, server: int) -> None:
    key = f"storage_warning:pool:{server}:zfs:tank"
    with env.session(write=True) as s:
        s.add(AlertChannel(name="watch", kind="log", min_severity="info"))
    apply(env, server, _pool_report("DEGRADED"))
    first = alert(env, key)
    assert first is not None and first.severity == "warning"
    apply(env, server, _pool_report("FAULTED", bad="FAULTED"))
    second = alert(env, key)
    assert second is not None and second.id == first.id
    assert (second.severity, second.state) == ("critical", "open")
    assert second.message.startswith("tank FAULTED: sdb FAULTED")
    with env.session(write=False) as s:
        events = [n.event for n in s.exec(select(NotificationLog).where(NotificationLog.alert_id == first.id)
                                          .order_by(NotificationLog.id))]
    assert events == ["raised", "escalated"]
    apply(env, server, _pool_report("ONLINE"))
    third = alert(env, key)
    assert third is not None and third.state == "resolved"
    with env.session(write=False) as s:
        events = [n.event for n in s.exec(select(NotificationLog).where(NotificationLog.alert_id == first.id)
                                          .order_by(NotificationLog.id))]
    assert events == ["raised", "escalated", "resolved"]
    with env.session(write=False) as s:
        assert s.exec(select(StoragePool)).one().health == "ok"


def test_a_disk_going_from_warn_to_failed_escalates_at_once(env: Any, server: int) -> None:
    key = "storage_warning:disk:Z1"
    apply(env, server, collection({"smart:/dev/sdb": ata("Z1", a5=3)}))
    assert alert(env, key).severity == "warning"  # type: ignore[union-attr]
    apply(env, server, collection({"smart:/dev/sdb": ata("Z1", a5=300)}))
    assert alert(env, key).severity == "critical"  # type: ignore[union-attr]
    apply(env, server, collection({"smart:/dev/sdb": ata("Z1", passed=True)}))
    assert alert(env, key).state == "resolved"  # type: ignore[union-attr]


def test_repeated_collections_make_no_duplicate_alerts_or_rows(env: Any, server: int) -> None:
    report = collection({
        "smart:/dev/sdb": ata("Z1", a197=8),
        "smart:/dev/sdc": ata("Z2", "/dev/sdc", a5=2),
        "zpool_status": zpool_status("tank", "DEGRADED", [("sda", "ONLINE"), ("sdb", "UNAVAIL")]),
    })
    for _ in range(4):
        apply(env, server, report)
    with env.session(write=False) as s:
        every = s.exec(select(Alert)).all()
        assert len(s.exec(select(StorageDevice)).all()) == 2
        assert len(s.exec(select(StoragePool)).all()) == 1
    assert sorted(a.dedup_key for a in every) == ["storage_warning:disk:Z2",
                                                   f"storage_warning:pool:{server}:zfs:tank"]
    assert all(a.count == 4 for a in every)


def test_accepting_the_baseline_silences_a_stable_counter_and_a_rise_alerts_again(env: Any, server: int) -> None:
    key = "storage_warning:disk:Z1"
    apply(env, server, collection({"smart:/dev/sdb": ata("Z1", a197=3, a5=0)}))
    assert alert(env, key).state == "open"  # type: ignore[union-attr]
    with env.session(write=True) as s:
        row = storage.accept_baseline(s, env.keyring, serial="Z1")
        assert row.verdict == "passed"
    assert alert(env, key).state == "resolved"  # type: ignore[union-attr]
    with env.session(write=False) as s:
        entry = s.exec(select(AuditEntry).where(AuditEntry.action == "infra.disks.accept")).one()
    assert entry.object_id == "Z1" and json.loads(entry.details)["baseline"] == {"197": 3, "5": 0}

    apply(env, server, collection({"smart:/dev/sdb": ata("Z1", a197=3, a5=0)}))
    assert disk(env, "Z1").verdict == "passed"
    assert alert(env, key).state == "resolved"  # type: ignore[union-attr]

    apply(env, server, collection({"smart:/dev/sdb": ata("Z1", a197=5, a5=0)}))
    row = disk(env, "Z1")
    assert row.verdict == "warn"
    assert json.loads(row.reasons) == ["197 Current_Pending_Sector raw 5 (was 3)"]
    again = alert(env, key)
    assert again is not None and again.state == "open" and "(was 3)" in again.message


def test_one_disk_seen_through_two_paths_is_one_row_and_one_alert(env: Any, server: int) -> None:
    apply(env, server, collection({"smart:/dev/sdb": ata("TWICE", "/dev/sdb", a5=2),
                                   "smart:/dev/bus/0:megaraid,1": ata("TWICE", "/dev/bus/0", a5=2)}))
    with env.session(write=False) as s:
        assert len(s.exec(select(StorageDevice)).all()) == 1
    (only,) = open_alerts(env)
    assert only.count == 1


def test_accepting_an_unknown_serial_fails_cleanly(env: Any) -> None:
    with pytest.raises(NotFoundError), env.session(write=True) as s:
        storage.accept_baseline(s, env.keyring, serial="NOPE")


def test_a_disk_that_moves_to_another_server_keeps_one_row_and_its_baseline(env: Any, server: int) -> None:
    other = add_server(env, "nas2")
    apply(env, server, collection({"smart:/dev/sda": ata("MOVER", "/dev/sda", a197=1)}))
    with env.session(write=True) as s:
        storage.accept_baseline(s, env.keyring, serial="MOVER")
    first = disk(env, "MOVER")
    apply(env, other, collection({"smart:/dev/sdc": ata("MOVER", "/dev/sdc", a197=1)}))
    with env.session(write=False) as s:
        rows = s.exec(select(StorageDevice)).all()
    assert len(rows) == 1
    moved = rows[0]
    assert (moved.id, moved.server_id, moved.device) == (first.id, other, "/dev/sdc")
    assert json.loads(moved.baseline) == {"197": 1} and moved.verdict == "passed"
    assert moved.first_seen_at == first.first_seen_at
    with env.session(write=False) as s:
        assert [d["server"] for d in storage.list_disks(s, server="nas2")] == ["nas2"]
        assert storage.list_disks(s, server="nas1") == []


def test_a_disk_in_standby_keeps_its_verdict_and_its_alert(env: Any, server: int) -> None:
    key = "storage_warning:disk:SLEEPY"
    apply(env, server, collection({"smart:/dev/sdb": ata("SLEEPY", a5=500)}))
    before = alert(env, key)
    assert before is not None and before.severity == "critical"
    for _ in range(2):
        apply(env, server, collection({"smart:/dev/sdb": standby("/dev/sdb")}))
    row = disk(env, "SLEEPY")
    assert row.verdict == "failed"
    assert json.loads(row.reasons) == ["standby, skipped", "5 Reallocated_Sector_Ct raw 500"]
    after = alert(env, key)
    assert after is not None and (after.state, after.count) == ("open", before.count)
    with env.session(write=False) as s:
        (listed,) = storage.list_disks(s, server=None)
    assert listed["standby"] is True and listed["verdict"] == "failed"
    assert listed["reasons"] == ["5 Reallocated_Sector_Ct raw 500"]


def test_a_disk_first_seen_asleep_is_standby_never_failed_and_gets_its_serial_later(env: Any, server: int) -> None:
    apply(env, server, collection({"smart:/dev/sdd": standby("/dev/sdd")}))
    row = disk(env, "nas1:/dev/sdd")
    assert row.verdict == "standby"
    assert open_alerts(env) == []
    apply(env, server, collection({"smart:/dev/sdd": ata("WOKEN", "/dev/sdd")}))
    with env.session(write=False) as s:
        rows = s.exec(select(StorageDevice)).all()
    assert [(r.id, r.serial, r.verdict) for r in rows] == [(row.id, "WOKEN", "passed")]


def test_a_pool_that_disappears_is_removed_and_its_alert_resolved(env: Any, server: int) -> None:
    apply(env, server, _pool_report("DEGRADED"))
    apply(env, server, collection({"zpool_status": "no pools available\n"}))
    with env.session(write=False) as s:
        assert s.exec(select(StoragePool)).all() == []
    assert open_alerts(env) == []


def test_pools_are_kept_when_zpool_could_not_run(env: Any, server: int) -> None:
    apply(env, server, _pool_report("DEGRADED"))
    text = ("@@unityctl:collect version=1 uid=1000 user=bob sudo=no@@\n"
            "@@unityctl:section zpool_status rc=1 status=needs-root via=user bin=/usr/sbin/zpool@@\n"
            "permission denied\n@@unityctl:end@@\n")
    apply(env, server, parse_collection(text))
    with env.session(write=False) as s:
        assert [p.name for p in s.exec(select(StoragePool)).all()] == ["tank"]
    assert len(open_alerts(env)) == 1


def test_list_pools_shows_members_mapped_to_disks(env: Any, server: int) -> None:
    apply(env, server, collection({
        "smart:/dev/sdb": ata("ZA1", "/dev/sdb"),
        "zpool_status": zpool_status("tank", "ONLINE", [("sda", "ONLINE"), ("sdb", "ONLINE")]),
        "zpool_list": "tank\t4000787030016\t1000\t3999\t-\t-\t12\t81\t1.00x\tONLINE\t-\n",
    }))
    with env.session(write=False) as s:
        (pool,) = storage.list_pools(s)
    assert (pool["server"], pool["kind"], pool["name"], pool["state"], pool["level"]) == \
        ("nas1", "zfs", "tank", "ONLINE", "mirror")
    assert (pool["health"], pool["capacity_percent"], pool["fragmentation_percent"]) == ("warn", 81.0, 12.0)
    assert [(m["name"], m["serial"]) for m in pool["members"]] == [("sda", None), ("sdb", "ZA1")]
    (only,) = open_alerts(env)
    assert only.message == "tank ONLINE: pool tank is 81% full"


# --- scrub --------------------------------------------------------------------------------------

def test_scrub_on_a_local_server_runs_zpool_and_is_audited(env: Any, server: int, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "zpool.args"
    (bin_dir / "zpool").write_text(f"#!/bin/sh\necho \"$@\" >> {log}\n")
    (bin_dir / "zpool").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    apply(env, server, _pool_report("ONLINE"))
    with env.session(write=True) as s:
        message = storage.start_scrub(s, env.keyring, None, server_name="nas1", pool="tank")
    assert message == "scrub of tank started on nas1"
    assert log.read_text() == "scrub tank\n"
    with env.session(write=False) as s:
        entry = s.exec(select(AuditEntry).where(AuditEntry.action == "infra.pools.scrub")).one()
        assert (entry.object_id, entry.outcome) == ("nas1/tank", "ok")
        assert json.loads(s.exec(select(StoragePool)).one().scan)["in_progress"] is True


def test_a_scrub_that_fails_raises_and_leaves_a_failed_audit_row(env: Any, server: int, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "zpool").write_text("#!/bin/sh\necho \"cannot open '$2': no such pool\" >&2\nexit 1\n")
    (bin_dir / "zpool").chmod(0o755)
    (bin_dir / "sudo").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "sudo").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(RemoteCommandError, match="zpool scrub nope failed"), env.session(write=True) as s:
        storage.start_scrub(s, env.keyring, None, server_name="nas1", pool="nope")
    with env.session(write=False) as s:
        entry = s.exec(select(AuditEntry).where(AuditEntry.action == "infra.pools.scrub")).one()
    assert entry.outcome == "failed"


def test_a_scrub_refuses_a_pool_name_that_is_not_a_name(env: Any, server: int) -> None:
    with pytest.raises(UsageError), env.session(write=True) as s:
        storage.start_scrub(s, env.keyring, None, server_name="nas1", pool="tank; rm -rf /")


def test_a_scrub_over_ssh_runs_on_the_real_server_and_reports_zpool_missing(
        env: Any, sshd_fleet: Any) -> None:
    from unityctl.core.ssh import MemoryHostKeyStore, SSHExecutor

    sshd = sshd_fleet.servers(1)[0]
    with env.session(write=True) as s:
        s.add(MonitoredServer(name="remote1", local=False))
    with SSHExecutor(host_keys=MemoryHostKeyStore()) as executor:
        with pytest.raises(RemoteCommandError, match="zpool scrub tank failed"), env.session(write=True) as s:
            storage.start_scrub(s, env.keyring, executor, server_name="remote1", pool="tank",
                                target=sshd.target())
    with env.session(write=False) as s:
        entry = s.exec(select(AuditEntry).where(AuditEntry.action == "infra.pools.scrub")).one()
    assert entry.outcome == "failed" and entry.object_id == "remote1/tank"
    assert "not found" in json.loads(entry.details)["error"]
