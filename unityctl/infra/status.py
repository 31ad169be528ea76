"""Fleet status: the infra line of `unityctl status`, and the rows of `unityctl infra status`.

Everything here reads the servers' latest snapshot (kept on ``monitored_server`` by the
collector) plus grouped counts over disks, pools, databases and open alerts: a fixed handful of
queries whatever the number of servers, and none over ``metric_sample``, so the cost does not
grow with history.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from unityctl.core.db import utcnow
from unityctl.infra.models import DatabaseInstance, MonitoredServer, StorageDevice, StoragePool

# Verdicts of StorageDevice as the status columns count them.
_DISK_BUCKET = {"passed": "ok", "warn": "warn", "failed": "failed"}


def status_summary(session: Session) -> dict[str, Any]:
    """Counts for `unityctl status`: servers (up/down), disks failing or warned, pools not ok,
    databases unreachable."""
    count = lambda q: int(session.exec(q).one() or 0)  # noqa: E731
    by_state = dict(session.exec(select(MonitoredServer.state, func.count())
                                 .group_by(MonitoredServer.state)).all())
    by_verdict = dict(session.exec(select(StorageDevice.verdict, func.count())
                                   .where(col(StorageDevice.server_id).is_not(None))
                                   .group_by(StorageDevice.verdict)).all())
    return {
        "servers": int(sum(by_state.values())),
        "up": int(by_state.get("up", 0)),
        "down": int(by_state.get("down", 0)),
        "disks_failing": int(by_verdict.get("failed", 0)),
        "disks_warn": int(by_verdict.get("warn", 0)),
        "pools_not_ok": count(select(func.count()).select_from(StoragePool).where(StoragePool.health != "ok")),
        "databases_unreachable": count(select(func.count()).select_from(DatabaseInstance)
                                       .where(col(DatabaseInstance.reachable).is_(False))),
    }


def _alerts_per_server(session: Session) -> dict[int, int]:
    """Open alerts per server id: the server's own and those of its disks, pools and databases."""
    from unityctl.core.alerts import ACTIVE
    from unityctl.core.models import Alert

    rows = session.exec(select(Alert.source_type, Alert.source_id, func.count())
                        .where(col(Alert.state).in_(ACTIVE))
                        .group_by(Alert.source_type, Alert.source_id)).all()
    owners: dict[str, Any] = {"storage_device": StorageDevice, "storage_pool": StoragePool,
                              "database_instance": DatabaseInstance}
    wanted: dict[str, set[int]] = defaultdict(set)
    for stype, sid, _n in rows:
        if stype in owners and str(sid).isdigit():
            wanted[stype].add(int(sid))
    owner_of: dict[tuple[str, int], int] = {}
    for stype, ids in wanted.items():
        model = owners[stype]
        for oid, server_id in session.exec(select(model.id, model.server_id).where(col(model.id).in_(ids))).all():
            if server_id is not None:
                owner_of[(stype, int(oid))] = int(server_id)
    result: dict[int, int] = defaultdict(int)
    for stype, sid, n in rows:
        if not str(sid).isdigit():
            continue
        if stype == "monitored_server":
            result[int(sid)] += int(n)
        elif (stype, int(sid)) in owner_of:
            result[owner_of[(stype, int(sid))]] += int(n)
    return dict(result)


def fleet_status(session: Session, *, now: dt.datetime | None = None) -> list[dict[str, Any]]:
    """One row per server: state, load, memory %, fullest filesystem, disks ok/warn/failed,
    pools/arrays (total and not ok), databases (total and unreachable), last seen, open alerts."""
    now = now or utcnow()
    servers = session.exec(select(MonitoredServer.id, MonitoredServer.name, MonitoredServer.state,
                                  MonitoredServer.local, MonitoredServer.load1, MonitoredServer.cpu_count,
                                  MonitoredServer.mem_used_percent, MonitoredServer.fs_max_percent,
                                  MonitoredServer.fs_max_mount, MonitoredServer.last_seen_at,
                                  MonitoredServer.last_error)
                           .order_by(col(MonitoredServer.name))).all()
    disks: dict[int, dict[str, int]] = defaultdict(lambda: {"ok": 0, "warn": 0, "failed": 0, "other": 0})
    for server_id, verdict, n in session.exec(select(StorageDevice.server_id, StorageDevice.verdict, func.count())
                                              .where(col(StorageDevice.server_id).is_not(None))
                                              .group_by(StorageDevice.server_id, StorageDevice.verdict)).all():
        disks[int(server_id)][_DISK_BUCKET.get(verdict, "other")] += int(n)
    pools: dict[int, dict[str, int]] = defaultdict(lambda: {"total": 0, "not_ok": 0})
    for server_id, health, n in session.exec(select(StoragePool.server_id, StoragePool.health, func.count())
                                             .group_by(StoragePool.server_id, StoragePool.health)).all():
        pools[int(server_id)]["total"] += int(n)
        if health != "ok":
            pools[int(server_id)]["not_ok"] += int(n)
    dbs: dict[int, dict[str, int]] = defaultdict(lambda: {"total": 0, "unreachable": 0})
    for server_id, reachable, n in session.exec(select(DatabaseInstance.server_id, DatabaseInstance.reachable,
                                                       func.count())
                                                .group_by(DatabaseInstance.server_id,
                                                          DatabaseInstance.reachable)).all():
        dbs[int(server_id)]["total"] += int(n)
        if reachable is False:
            dbs[int(server_id)]["unreachable"] += int(n)
    open_alerts = _alerts_per_server(session)
    rows = []
    for (sid, name, state, local, load1, cpus, mem, fs, fs_mount, last_seen, last_error) in servers:
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
