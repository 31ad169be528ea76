"""Fleet status: the infra line of `unityctl status`, and the rows of `unityctl infra status`.

Everything here reads the servers' latest snapshot (kept on ``monitored_server`` by the
collector) plus grouped counts over disks, pools, databases and open alerts: a fixed handful of
queries whatever the number of servers, and none over ``metric_sample``, so the cost does not
grow with history.

The queries are plain SQL on a :class:`~unityctl.core.readdb.ReadConnection`, without SQLAlchemy:
`infra status` is what people and scripts run most, and most of its time was start-up (see
:mod:`unityctl.core.readdb`). The SQL is portable and takes no parameters.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from typing import Any

from unityctl.core.alert_states import ACTIVE_SQL
from unityctl.core.readdb import ReadConnection, utc

# Verdicts of StorageDevice as the status columns count them.
_DISK_BUCKET = {"passed": "ok", "warn": "warn", "failed": "failed"}

_SERVERS = ("SELECT id, name, state, local, load1, cpu_count, mem_used_percent, fs_max_percent, fs_max_mount, "
            "last_seen_at, last_error FROM monitored_server ORDER BY name")
_DISKS = ("SELECT server_id, verdict, count(*) FROM storage_device WHERE server_id IS NOT NULL "
          "GROUP BY server_id, verdict")
_POOLS = "SELECT server_id, health, count(*) FROM storage_pool GROUP BY server_id, health"
_DATABASES = "SELECT server_id, reachable, count(*) FROM database_instance GROUP BY server_id, reachable"
_ALERTS = (f"SELECT source_type, source_id, count(*) FROM alert WHERE {ACTIVE_SQL} "
           "GROUP BY source_type, source_id")
# Which server owns each disk, pool and database (alerts name those, not the server).
_OWNERS = ("SELECT 'storage_device', id, server_id FROM storage_device WHERE server_id IS NOT NULL "
           "UNION ALL SELECT 'storage_pool', id, server_id FROM storage_pool "
           "UNION ALL SELECT 'database_instance', id, server_id FROM database_instance")


def status_summary(db: ReadConnection) -> dict[str, Any]:
    """Counts for `unityctl status`: servers (up/down), disks failing or warned, pools not ok,
    databases unreachable."""
    by_state = {state: int(n) for state, n in db.rows("SELECT state, count(*) FROM monitored_server GROUP BY state")}
    by_verdict = {verdict: int(n) for verdict, n in db.rows(
        "SELECT verdict, count(*) FROM storage_device WHERE server_id IS NOT NULL GROUP BY verdict")}
    pools_not_ok = db.scalar("SELECT count(*) FROM storage_pool WHERE health <> 'ok'")
    unreachable = db.scalar("SELECT count(*) FROM database_instance WHERE reachable = FALSE")
    return {
        "servers": sum(by_state.values()),
        "up": by_state.get("up", 0),
        "down": by_state.get("down", 0),
        "disks_failing": by_verdict.get("failed", 0),
        "disks_warn": by_verdict.get("warn", 0),
        "pools_not_ok": int(pools_not_ok or 0),
        "databases_unreachable": int(unreachable or 0),
    }


def _alerts_per_server(db: ReadConnection) -> dict[int, int]:
    """Open alerts per server id: the server's own and those of its disks, pools and databases."""
    owner_of = {(stype, int(oid)): int(server_id) for stype, oid, server_id in db.rows(_OWNERS)}
    result: dict[int, int] = defaultdict(int)
    for stype, sid, n in db.rows(_ALERTS):
        if not str(sid).isdigit():
            continue
        if stype == "monitored_server":
            result[int(sid)] += int(n)
        elif (stype, int(sid)) in owner_of:
            result[owner_of[(stype, int(sid))]] += int(n)
    return dict(result)


def fleet_status(db: ReadConnection, *, now: dt.datetime | None = None) -> list[dict[str, Any]]:
    """One row per server: state, load, memory %, fullest filesystem, disks ok/warn/failed,
    pools/arrays (total and not ok), databases (total and unreachable), last seen, open alerts."""
    now = now or dt.datetime.now(dt.timezone.utc)
    disks: dict[int, dict[str, int]] = defaultdict(lambda: {"ok": 0, "warn": 0, "failed": 0, "other": 0})
    for server_id, verdict, n in db.rows(_DISKS):
        disks[int(server_id)][_DISK_BUCKET.get(verdict, "other")] += int(n)
    pools: dict[int, dict[str, int]] = defaultdict(lambda: {"total": 0, "not_ok": 0})
    for server_id, health, n in db.rows(_POOLS):
        pools[int(server_id)]["total"] += int(n)
        if health != "ok":
            pools[int(server_id)]["not_ok"] += int(n)
    dbs: dict[int, dict[str, int]] = defaultdict(lambda: {"total": 0, "unreachable": 0})
    for server_id, reachable, n in db.rows(_DATABASES):
        dbs[int(server_id)]["total"] += int(n)
        if reachable is not None and not reachable:
            dbs[int(server_id)]["unreachable"] += int(n)
    open_alerts = _alerts_per_server(db)
    rows = []
    for (sid, name, state, local, load1, cpus, mem, fs, fs_mount, seen, last_error) in db.rows(_SERVERS):
        last_seen = utc(seen)
        rows.append({
            "name": name, "id": sid, "state": state, "local": bool(local),
            "load1": load1, "cpu_count": cpus, "mem_percent": mem,
            "fs_max_percent": fs, "fs_max_mount": fs_mount,
            "disks": {k: v for k, v in disks[sid].items() if k != "other" or v} if sid in disks
            else {"ok": 0, "warn": 0, "failed": 0},
            "pools": dict(pools[sid]) if sid in pools else {"total": 0, "not_ok": 0},
            "databases": dict(dbs[sid]) if sid in dbs else {"total": 0, "unreachable": 0},
            "last_seen_at": last_seen,
            "last_seen_seconds": int((now - last_seen).total_seconds()) if last_seen else None,
            "last_error": last_error if state != "up" else None,
            "open_alerts": open_alerts.get(sid, 0),
        })
    return rows
