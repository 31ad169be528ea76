"""Database discovery service: find the database servers of a collection, probe them, store them.

* :func:`probe_discovered` (no database access; the collector runs it in its worker thread):
  discovers the instances from the collection's ``sockets``/``processes`` sections and probes
  each one without credentials. On the server itself (``local=True``) it connects directly;
  for a remote server it opens an SSH ``direct-tcpip`` channel through the server's connection
  to the instance's address and port *as seen from that server*, so a database bound to
  127.0.0.1 over there is reachable without exposing it. A remote instance known only by its
  unix socket cannot be reached that way and is skipped (``SKIPPED_DETAIL``).
* :func:`apply_databases` (inside the collector's write session): upserts one
  :class:`DatabaseInstance` per (server, key), removes the ones no longer found, and raises or
  clears the ``database_unreachable`` alert of each instance.
* :func:`list_databases` and :func:`test_database` serve ``infra databases`` and
  ``infra databases test NAME``.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from sqlmodel import Session, select

from unityctl.core import alerts
from unityctl.core.db import utcnow
from unityctl.core.errors import NotFoundError, SSHError, UsageError
from unityctl.infra.models import DatabaseInstance, MonitoredServer
from unityctl.infra.probes.databases import DiscoveredDatabase, ProbeResult, discover, parse_binary_versions, probe
from unityctl.infra.probes.sockets import parse_processes, parse_sockets

if TYPE_CHECKING:  # pragma: no cover
    from unityctl.core.config import Settings
    from unityctl.core.crypto import Keyring
    from unityctl.core.ssh import SSHExecutor, Target
    from unityctl.infra.probes.system import CollectionReport

__all__ = [
    "ALERT_TYPE",
    "SKIPPED_DETAIL",
    "apply_databases",
    "discovered",
    "list_databases",
    "probe_discovered",
    "test_database",
]

ALERT_TYPE = "database_unreachable"
SKIPPED_DETAIL = "unix socket only: not probed remotely"
MAX_PARALLEL_PROBES = 8


def discovered(report: CollectionReport) -> list[DiscoveredDatabase]:
    """The database instances a collection shows (pure; [] when neither section ran)."""
    if report.sockets_raw is None and report.processes_raw is None:
        return []
    listeners = parse_sockets(report.sockets_raw or "").listeners
    processes = parse_processes(report.processes_raw or "")
    return discover(listeners, processes)


def is_skipped(result: ProbeResult | None) -> bool:
    """True for a result that says the instance was not probed at all (no verdict)."""
    return result is not None and result.detail == SKIPPED_DETAIL


def _probe_remote(db: DiscoveredDatabase, executor: SSHExecutor, target: Target,
                  timeout: float) -> ProbeResult:
    if db.port is None or db.address is None:
        return ProbeResult(False, db.kind, None, SKIPPED_DETAIL, 0.0)
    started = time.monotonic()
    try:
        channel = executor.open_channel(target, db.address, db.port, timeout)
    except SSHError as exc:
        return ProbeResult(False, db.kind, None, f"no SSH tunnel to {db.address}:{db.port}: {exc}",
                           round((time.monotonic() - started) * 1000, 2))
    try:
        return probe(db, timeout, sock=channel)
    finally:
        channel.close()


def probe_discovered(report: CollectionReport, *, local: bool, executor: SSHExecutor | None = None,
                     target: Target | None = None, timeout: float = 3.0) -> dict[str, ProbeResult]:
    """Discover the instances of ``report`` and probe each one; returns {instance key: result}.

    In: the parsed collection; ``local`` True for this machine (probes connect directly, TCP
    preferred, the unix socket otherwise); for a remote server the ``executor`` and ``target``
    whose connection carries the probes. ``timeout`` seconds per probe.
    Out: one :class:`ProbeResult` per discovered key; an instance that could not be tried (a
    remote unix-socket-only one) gets detail ``SKIPPED_DETAIL``.
    Raises: UsageError when a remote probe is asked without executor and target.
    """
    dbs = discovered(report)
    if not dbs:
        return {}
    if not local and (executor is None or target is None):
        raise UsageError("probing databases of a remote server needs an SSH executor and target")

    def one(db: DiscoveredDatabase) -> ProbeResult:
        if local:
            return probe(db, timeout)
        assert executor is not None and target is not None
        return _probe_remote(db, executor, target, timeout)

    if len(dbs) == 1:
        return {dbs[0].key: one(dbs[0])}
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL_PROBES, len(dbs))) as pool:
        results = list(pool.map(one, dbs))
    return {db.key: result for db, result in zip(dbs, results)}


def _dedup(server_id: int | None, key: str) -> str:
    return f"{ALERT_TYPE}:{server_id}:{key}"


def _store_result(row: DatabaseInstance, result: ProbeResult, now: dt.datetime) -> None:
    if is_skipped(result):
        row.reachable = None
        row.detail = result.detail
        return
    row.reachable = result.reachable
    row.detail = result.detail[:2000]
    row.latency_ms = round(result.latency_ms, 2)
    row.last_checked_at = now
    if result.reachable:
        if result.kind and result.kind != row.kind:
            row.kind = result.kind[:20]  # the greeting knows MariaDB from MySQL better than ps
        if result.version:
            row.version = result.version[:200]


def _alert(session: Session, row: DatabaseInstance, server: MonitoredServer, settings: Settings | None,
           now: dt.datetime) -> None:
    dedup = _dedup(server.id, row.key)
    if row.reachable is False:
        where = (f"{row.address}:{row.port}" if row.port is not None and row.address
                 else row.socket_path or row.key)
        alerts.raise_alert(
            session, type=ALERT_TYPE, severity="warning", source_type="database_instance",
            source_id=row.id or 0, dedup_key=dedup,
            message=f"{row.kind} {row.key} on {server.name} ({where}) is unreachable: {row.detail}",
            details={"server": server.name, "key": row.key, "kind": row.kind, "detail": row.detail},
            config=settings.alerts if settings is not None else None, now=now)
    elif row.reachable is True:
        alerts.clear_alert(session, dedup_key=dedup, now=now)


def apply_databases(session: Session, *, server: MonitoredServer, report: CollectionReport,
                    probes: dict[str, ProbeResult], settings: Settings, now: dt.datetime) -> None:
    """Store the database instances of one collection with their probe results, and alerts.

    In: the write session, the server (flushed, with an id), its parsed report, the results of
    :func:`probe_discovered` by key, settings, the collection time.
    Effects: DatabaseInstance rows upserted by (server, key); rows whose instance is no longer
    found are deleted (and their alert resolved) when the sockets section ran; an instance
    whose probe failed raises ``database_unreachable`` (warning), a reachable one clears it.
    Raises: nothing of its own.
    """
    found = discovered(report)
    binary_versions = parse_binary_versions(report.db_versions_raw)
    rows = {r.key: r for r in session.exec(
        select(DatabaseInstance).where(DatabaseInstance.server_id == server.id)).all()}
    for db in found:
        row = rows.get(db.key)
        if row is None:
            row = DatabaseInstance(server_id=server.id, kind=db.kind, key=db.key[:300])  # type: ignore[arg-type]
            rows[db.key] = row
        elif db.kind == "mariadb" or row.kind not in ("mysql", "mariadb"):
            row.kind = db.kind
        row.address = db.address
        row.port = db.port
        row.socket_path = db.socket_path
        row.process = db.process
        row.last_seen_at = now
        result = probes.get(db.key)
        if result is not None:
            _store_result(row, result, now)
        versions = binary_versions.get(row.kind, set())
        if row.version is None and len(versions) == 1:
            # PostgreSQL says nothing of its version before a login; its binary, asked on the
            # server by collect.sh, does. Only when one binary of that kind runs (no guessing).
            row.version = next(iter(versions))
        session.add(row)
        session.flush()
        if result is not None:
            _alert(session, row, server, settings, now)
    if report.sockets_raw is not None:
        keys = {db.key for db in found}
        for key, row in rows.items():
            if key not in keys:
                alerts.clear_alert(session, dedup_key=_dedup(server.id, key), now=now)
                session.delete(row)
    session.flush()


# ---------------------------------------------------------------------------------------------
# CLI services
# ---------------------------------------------------------------------------------------------

def instance_to_dict(row: DatabaseInstance, server_name: str | None) -> dict[str, Any]:
    return {
        "id": row.id, "name": f"{server_name}/{row.key}", "server": server_name, "kind": row.kind,
        "key": row.key, "address": row.address, "port": row.port, "socket_path": row.socket_path,
        "process": row.process, "version": row.version, "reachable": row.reachable,
        "detail": row.detail, "latency_ms": row.latency_ms, "last_checked_at": row.last_checked_at,
        "last_seen_at": row.last_seen_at,
    }


def list_databases(session: Session) -> list[dict[str, Any]]:
    """Every database instance found on every server, sorted by server and key."""
    servers = {s.id: s.name for s in session.exec(select(MonitoredServer)).all()}
    rows = session.exec(select(DatabaseInstance)).all()
    out = [instance_to_dict(r, servers.get(r.server_id)) for r in rows]
    return sorted(out, key=lambda d: (d["server"] or "", d["key"]))


def find_instance(session: Session, name: str) -> tuple[DatabaseInstance, MonitoredServer]:
    """The instance called ``<server>/<key>`` (``db1/postgresql:5432``) or with id ``name``.

    Raises: NotFoundError.
    """
    row: DatabaseInstance | None = None
    if name.isdecimal():
        row = session.get(DatabaseInstance, int(name))
    elif "/" in name:
        server_name, _, key = name.partition("/")
        server = session.exec(select(MonitoredServer).where(MonitoredServer.name == server_name)).first()
        if server is not None:
            row = session.exec(select(DatabaseInstance).where(
                DatabaseInstance.server_id == server.id, DatabaseInstance.key == key)).first()
    if row is None:
        raise NotFoundError(f"no database instance {name!r} (use SERVER/KEY as `infra databases` "
                            "shows it, or its id)")
    server = session.get(MonitoredServer, row.server_id)
    if server is None:  # pragma: no cover - the foreign key forbids it
        raise NotFoundError(f"database instance {name!r} has no server")
    return row, server


def _as_discovered(row: DatabaseInstance) -> DiscoveredDatabase:
    return DiscoveredDatabase(row.kind, row.address, row.port, row.socket_path,  # type: ignore[arg-type]
                              row.process, None, row.key)


def test_database(session: Session, *, name: str, executor: SSHExecutor | None = None,
                  target: Target | None = None, keyring: Keyring | None = None,
                  settings: Settings | None = None, timeout: float = 3.0,
                  target_resolver: Callable[[MonitoredServer], Target] | None = None) -> ProbeResult:
    """Probe one stored instance now (``infra databases test NAME``) and update its row and alert.

    In: ``name`` as ``<server>/<key>`` or an instance id. A local server's instance is probed
    directly; a remote one through ``executor`` with ``target`` (or the target that
    ``target_resolver(server)`` or the servers service builds, given ``keyring``).
    Out: the :class:`ProbeResult`. Raises: NotFoundError; UsageError when a remote instance is
    asked without an SSH executor.
    """
    row, server = find_instance(session, name)
    db = _as_discovered(row)
    if server.local:
        result = probe(db, timeout)
    else:
        if executor is None:
            raise UsageError(f"server {server.name} is remote: testing its databases needs an SSH executor")
        if target is None:
            if target_resolver is not None:
                target = target_resolver(server)
            elif keyring is not None:
                from unityctl.infra.storage import _resolve_target

                target = _resolve_target(session, keyring, server, settings)
            else:
                raise UsageError(f"server {server.name} is remote: no SSH login given to reach it")
        result = _probe_remote(db, executor, target, timeout)
    now = utcnow()
    _store_result(row, result, now)
    session.add(row)
    session.flush()
    if not is_skipped(result):
        _alert(session, row, server, settings, now)
    return result
