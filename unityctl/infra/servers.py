"""Monitored servers: add, list, show, edit, remove.

A :class:`MonitoredServer` logs in through a creds :class:`ServerCredential` (by name, never a
copy of its secret), or is ``local`` (this machine, collected without SSH). Every change writes an
audit row in the caller's transaction.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

from sqlmodel import Session, col, select

from unityctl.core.config import Settings, SSHConfig
from unityctl.core.crypto import Keyring
from unityctl.core.ssh import Target
from unityctl.core.db import utcnow
from unityctl.core.durations import parse_seconds
from unityctl.core.errors import AlreadyExistsError, NotFoundError, StateError, UsageError
from unityctl.creds.models import ServerCredential
from unityctl.infra.models import MonitoredServer

SOURCE_TYPE = "monitored_server"
MIN_INTERVAL_S = 10
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/=-]{0,49}$")


def _check_name(name: str) -> str:
    if not _NAME_RE.match(name or ""):
        raise UsageError(f"invalid server name {name!r}: use letters, digits, '.', '_' and '-' "
                         "(at most 100, starting with a letter or digit)")
    return name


def _check_tags(tags: list[str]) -> list[str]:
    for tag in tags:
        if not _TAG_RE.match(tag):
            raise UsageError(f"invalid tag {tag!r}: letters, digits and ._:/=- (at most 50)")
    return sorted(set(tags))


def _interval(value: str | int | None, default: int) -> int:
    seconds = default if value is None else parse_seconds(value)
    if seconds < MIN_INTERVAL_S:
        raise UsageError(f"interval {value!r} is too short: at least {MIN_INTERVAL_S}s")
    return seconds


def tags_of(server: MonitoredServer) -> list[str]:
    """The server's tags as a list."""
    try:
        value = json.loads(server.tags or "[]")
    except ValueError:
        return []
    return [str(t) for t in value] if isinstance(value, list) else []


def _credential(session: Session, name: str) -> ServerCredential:
    cred = session.exec(select(ServerCredential).where(ServerCredential.name == name)).first()
    if cred is None:
        raise NotFoundError(f"no server login named {name!r}: add it with `unityctl creds servers add`")
    return cred


def get_server(session: Session, name: str) -> MonitoredServer:
    """The server called ``name``. Raises NotFoundError."""
    server = session.exec(select(MonitoredServer).where(MonitoredServer.name == name)).first()
    if server is None:
        raise NotFoundError(f"no monitored server named {name!r} (see `unityctl infra servers list`)")
    return server


def find_server(session: Session, name: str) -> MonitoredServer | None:
    """The server called ``name``, or None."""
    return session.exec(select(MonitoredServer).where(MonitoredServer.name == name)).first()


def add_server(session: Session, keyring: Keyring, *, name: str, credential: str | None = None,
               local: bool = False, interval: str | int | None = None, tags: list[str] | None = None,
               default_interval: int = 300, now: dt.datetime | None = None) -> MonitoredServer:
    """Register a server to monitor; it is due for collection at once.

    In: a unique ``name``; exactly one of ``credential`` (a creds server login's name) or
    ``local``; ``interval`` ("5m", seconds; default ``default_interval``); tags.
    Out: the new row (flushed, with its id). Raises UsageError, NotFoundError (no such login),
    AlreadyExistsError (name taken).
    """
    _check_name(name)
    if local == bool(credential):
        raise UsageError("give either --credential NAME (a creds server login) or --local, not both or neither")
    if find_server(session, name) is not None:
        raise AlreadyExistsError(f"a monitored server named {name!r} already exists")
    seconds = _interval(interval, default_interval)
    tag_list = _check_tags(tags or [])
    cred = _credential(session, credential) if credential else None
    if local:
        other = session.exec(select(MonitoredServer).where(col(MonitoredServer.local).is_(True))).first()
        if other is not None:
            raise AlreadyExistsError(f"this machine is already monitored as {other.name!r}")
    server = MonitoredServer(name=name, credential_id=cred.id if cred else None, local=local,
                             interval_seconds=seconds, tags=json.dumps(tag_list),
                             next_collect_at=now or utcnow())
    session.add(server)
    session.flush()
    from unityctl.core import audit

    audit.record(session, keyring, action="infra.servers.add", object_type=SOURCE_TYPE, object_id=name,
                 details={"id": server.id, "local": local, "credential": credential,
                          "interval_seconds": seconds, "tags": tag_list})
    return server


def list_servers(session: Session, *, tag: str | None = None) -> list[MonitoredServer]:
    """Every server (optionally only those with ``tag``), by name."""
    servers = list(session.exec(select(MonitoredServer).order_by(col(MonitoredServer.name))).all())
    if tag:
        servers = [s for s in servers if tag in tags_of(s)]
    return servers


def edit_server(session: Session, keyring: Keyring, *, name: str, new_name: str | None = None,
                credential: str | None = None, local: bool | None = None,
                interval: str | int | None = None, add_tags: list[str] | None = None,
                remove_tags: list[str] | None = None, now: dt.datetime | None = None) -> MonitoredServer:
    """Change a server's name, login, interval or tags. Out: the row. Raises like :func:`add_server`."""
    server = get_server(session, name)
    changes: dict[str, Any] = {}
    if new_name and new_name != server.name:
        _check_name(new_name)
        if find_server(session, new_name) is not None:
            raise AlreadyExistsError(f"a monitored server named {new_name!r} already exists")
        changes["name"] = [server.name, new_name]
        server.name = new_name
    if credential is not None and local:
        raise UsageError("give either --credential or --local, not both")
    if credential is not None:
        cred = _credential(session, credential)
        changes["credential"] = credential
        server.credential_id, server.local = cred.id, False
    elif local:
        other = session.exec(select(MonitoredServer).where(col(MonitoredServer.local).is_(True),
                                                           MonitoredServer.id != server.id)).first()
        if other is not None:
            raise AlreadyExistsError(f"this machine is already monitored as {other.name!r}")
        changes["local"] = True
        server.credential_id, server.local = None, True
    if interval is not None:
        seconds = _interval(interval, server.interval_seconds)
        changes["interval_seconds"] = [server.interval_seconds, seconds]
        server.interval_seconds = seconds
        # The next run follows the new interval from the last one (or now, if never collected).
        base = server.last_collect_at or now or utcnow()
        server.next_collect_at = base + dt.timedelta(seconds=seconds)
    if add_tags or remove_tags:
        tags = set(tags_of(server)) | set(_check_tags(add_tags or []))
        tags -= set(remove_tags or [])
        changes["tags"] = sorted(tags)
        server.tags = json.dumps(sorted(tags))
    if not changes:
        raise UsageError("nothing to change: give --name, --credential, --local, --interval, --tag or --untag")
    session.add(server)
    session.flush()
    from unityctl.core import audit

    audit.record(session, keyring, action="infra.servers.edit", object_type=SOURCE_TYPE, object_id=name,
                 details={"id": server.id, **changes})
    return server


def remove_server(session: Session, keyring: Keyring, *, name: str) -> int:
    """Stop monitoring ``name``: its samples, pools and databases go with it (disks keep their
    history, detached); its open alerts are resolved. Out: the removed id.

    Raises NotFoundError; StateError when container hosts still point at it.
    """
    from sqlalchemy import delete

    from unityctl.core import alerts, audit
    from unityctl.core.models import Alert
    from unityctl.infra.models import DatabaseInstance, MetricSample, StorageDevice, StoragePool

    server = get_server(session, name)
    server_id = server.id
    assert server_id is not None
    active = session.exec(select(Alert).where(Alert.source_type == SOURCE_TYPE, Alert.source_id == str(server_id),
                                              col(Alert.state).in_(alerts.ACTIVE))).all()
    for alert in active:
        alerts.clear_alert(session, dedup_key=alert.dedup_key)
    # Explicit deletes rather than relying on ON DELETE CASCADE alone: a SQLite connection opened
    # without foreign_keys=ON (a user's sqlite3 shell) would leave orphans behind.
    session.execute(delete(MetricSample).where(col(MetricSample.server_id) == server_id))
    session.execute(delete(StoragePool).where(col(StoragePool.server_id) == server_id))
    session.execute(delete(DatabaseInstance).where(col(DatabaseInstance.server_id) == server_id))
    for device in session.exec(select(StorageDevice).where(StorageDevice.server_id == server_id)).all():
        device.server_id = None
        session.add(device)
    session.flush()
    try:
        session.delete(server)
        session.flush()
    except Exception as exc:  # noqa: BLE001 - a foreign key from another domain (container hosts)
        from sqlalchemy.exc import IntegrityError

        if isinstance(exc, IntegrityError):
            raise StateError(f"server {name!r} is still referenced (e.g. by a container host); "
                             "remove that first") from None
        raise
    audit.record(session, keyring, action="infra.servers.remove", object_type=SOURCE_TYPE, object_id=name,
                 details={"id": server_id, "alerts_resolved": len(active)})
    return server_id


def target_for_server(session: Session, keyring: Keyring, server: MonitoredServer, *,
                      settings: Settings | None = None) -> Target:
    """The SSH target that reaches ``server`` through its creds login, with infra's timeouts
    (a collection runs longer than a key deployment) and the server's name in every message.

    Raises StateError (local server, or no login linked), DecryptionError, NotFoundError.
    """
    import dataclasses

    from unityctl.creds.servers import target_for

    if server.local:
        raise StateError(f"server {server.name} is this machine: it has no SSH login")
    cred = session.get(ServerCredential, server.credential_id) if server.credential_id else None
    if cred is None:
        raise StateError(f"server {server.name} has no server login: "
                         f"`unityctl infra servers edit {server.name} --credential LOGIN`")
    infra = (settings or Settings()).infra
    target = target_for(session, keyring, cred, ssh=SSHConfig(connect_timeout=infra.connect_timeout,
                                                               command_timeout=infra.command_timeout))
    return dataclasses.replace(target, name=server.name)


def credential_names(session: Session, ids: set[int]) -> dict[int, str]:
    """``{credential id: name}`` for the given ids (one query)."""
    if not ids:
        return {}
    rows = session.exec(select(ServerCredential.id, ServerCredential.name)
                        .where(col(ServerCredential.id).in_(ids))).all()
    return {int(i): n for i, n in rows}


def server_to_dict(server: MonitoredServer, *, credential: str | None = None) -> dict[str, Any]:
    """Plain data about a server (no secret is ever part of a server)."""
    def loads(text: str | None, default: Any) -> Any:
        try:
            return json.loads(text) if text else default
        except ValueError:
            return default

    return {
        "id": server.id, "name": server.name, "local": server.local, "credential": credential,
        "interval_seconds": server.interval_seconds, "tags": tags_of(server), "state": server.state,
        "consecutive_failures": server.consecutive_failures,
        "consecutive_successes": server.consecutive_successes,
        "last_seen_at": server.last_seen_at, "last_collect_at": server.last_collect_at,
        "next_collect_at": server.next_collect_at, "last_error": server.last_error,
        "os": server.os_name, "kernel": server.kernel, "cpu_count": server.cpu_count,
        "uptime_seconds": server.uptime_seconds,
        "load": [server.load1, server.load5, server.load15],
        "mem_total_kb": server.mem_total_kb, "mem_used_percent": server.mem_used_percent,
        "fs_max_percent": server.fs_max_percent, "fs_max_mount": server.fs_max_mount,
        "filesystems": loads(server.filesystems, []), "notes": loads(server.notes, []),
        "created_at": server.created_at,
    }
