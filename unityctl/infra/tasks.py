"""Timed tasks of the infra domain, called by `unityctl daemon` (one session per job).

* :func:`collect_due` collects every server whose ``next_collect_at`` has come (each server has
  its own interval). Due servers are *leased* first (``lease_owner``/``lease_until``, taken with
  ``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL), so several daemon replicas sharing one
  database never collect the same server twice; a lease left by a crashed replica expires.
* :func:`prune` applies the history retention (see ``unityctl.infra.history``).
"""

from __future__ import annotations

import datetime as dt
import os
import socket

from sqlalchemy import or_
from sqlmodel import col, select

from unityctl.core.config import Settings
from unityctl.core.crypto import Keyring
from unityctl.core.db import is_postgres
from unityctl.infra.collector import ServerResult, SessionFactory, collect
from unityctl.infra.history import PruneReport
from unityctl.infra.history import prune as prune_history
from unityctl.infra.models import MonitoredServer

# How long past its timeouts a lease outlives a collection that never reported back.
_LEASE_MARGIN_S = 60


def default_owner() -> str:
    """This process's lease owner name: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def claim_due(*, sessions: SessionFactory, settings: Settings, now: dt.datetime, owner: str,
              limit: int | None = None) -> list[int]:
    """Lease the servers due at ``now`` (not leased by someone else) to ``owner``; their ids."""
    lease = dt.timedelta(seconds=settings.infra.connect_timeout + settings.infra.command_timeout + _LEASE_MARGIN_S)
    with sessions(write=True) as session:
        query = (select(MonitoredServer)
                 .where(or_(col(MonitoredServer.next_collect_at).is_(None), col(MonitoredServer.next_collect_at) <= now),
                        or_(col(MonitoredServer.lease_until).is_(None), col(MonitoredServer.lease_until) < now))
                 .order_by(col(MonitoredServer.next_collect_at)))
        if limit:
            query = query.limit(limit)
        if is_postgres(session):
            query = query.with_for_update(skip_locked=True)
        servers = list(session.exec(query).all())
        for server in servers:
            server.lease_owner, server.lease_until = owner[:200], now + lease
            session.add(server)
        return [s.id for s in servers if s.id is not None]


def collect_due(now: dt.datetime, *, sessions: SessionFactory, keyring: Keyring, settings: Settings,
                owner: str | None = None, limit: int | None = None) -> list[ServerResult]:
    """Collect every server due at ``now`` (per-server interval, ``next_collect_at``).

    In: the time, ``sessions(write=bool)`` (one unit of work each), the keyring and settings;
    ``owner`` names this replica in leases; ``limit`` caps servers per call.
    Out: one result per collected server (empty when nothing is due).
    """
    ids = claim_due(sessions=sessions, settings=settings, now=now, owner=owner or default_owner(), limit=limit)
    if not ids:
        return []
    return collect(sessions=sessions, keyring=keyring, settings=settings, server_ids=ids)


def prune(now: dt.datetime, *, sessions: SessionFactory, settings: Settings) -> PruneReport:
    """Apply history retention as of ``now`` in one write session."""
    with sessions(write=True) as session:
        return prune_history(session, settings=settings, now=now)
