"""Database engine and sessions: SQLite (WAL, foreign keys, busy timeout) or PostgreSQL (psycopg 3).

One engine per process; one session per command or per daemon job. Write sessions on SQLite start
with ``BEGIN IMMEDIATE`` so two writers queue on the busy timeout instead of failing half-way with
"database is locked" when one of them upgrades a read lock.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from sqlalchemy import DateTime, create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.types import TypeDecorator

if TYPE_CHECKING:
    # The ORM (SQLModel, pydantic) is imported only by code that opens a session: hot read paths
    # such as `infra status` use a plain connection and start faster without it.
    from sqlmodel import Session

from unityctl.core import dburl
from unityctl.core.errors import DatabaseError

_CHANGES_AT_BEGIN = "unityctl_changes_at_begin"
# Set in ``session.info`` when a unit of work queued notifications, to deliver them after commit.
NOTIFICATIONS_PENDING = "unityctl_notifications_pending"


def utcnow() -> dt.datetime:
    """The current time, timezone-aware UTC (every stored time is UTC)."""
    return dt.datetime.now(dt.timezone.utc)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timestamp stored as UTC and always read back timezone-aware.

    SQLite has no time zones; PostgreSQL has. Normalising here keeps comparisons correct on both.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        value = value.astimezone(dt.timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.timezone.utc)
        return value.astimezone(dt.timezone.utc)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event emit BEGIN itself (pysqlite's own handling is lazy).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(dburl.SQLITE_BUSY_TIMEOUT_S * 1000)}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        immediate = connection.get_execution_options().get("unityctl_write", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
        # What release_if_unwritten() compares with: rows changed on this connection so far.
        connection.info[_CHANGES_AT_BEGIN] = connection.connection.driver_connection.total_changes


def make_engine(url: str, *, echo: bool = False) -> Engine:
    """Create the process's engine for ``url``; creates the SQLite file's directory (0700)."""
    parsed = dburl.parse(url)
    if parsed.backend == "sqlite":
        if not parsed.in_memory:
            file = parsed.sqlite_path
            if not file.parent.exists():
                file.parent.mkdir(parents=True, mode=0o700)
            if not file.exists():
                # Created private from the start: it holds (encrypted) secrets and the audit log.
                os.close(os.open(file, os.O_WRONLY | os.O_CREAT, 0o600))
        engine = create_engine(url, echo=echo, connect_args={"timeout": dburl.SQLITE_BUSY_TIMEOUT_S,
                                                             "check_same_thread": False})
        _configure_sqlite(engine)
        return engine
    return create_engine(url, echo=echo, pool_pre_ping=True, pool_size=5, max_overflow=10)


@contextmanager
def session_scope(engine: Engine, *, write: bool = False) -> Iterator[Session]:
    """One unit of work: commits on success, rolls back on any exception.

    ``write=True`` takes SQLite's write lock at the start (see module docstring).
    """
    from sqlmodel import Session

    bind = engine.execution_options(unityctl_write=True) if write else engine
    session = Session(bind=bind, expire_on_commit=False)
    try:
        yield session
        session.commit()
    except OperationalError as exc:
        session.rollback()
        raise DatabaseError(f"database error: {dburl.describe_db_error(exc)}") from None
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def release_locks(session: Session) -> None:
    """End the session's transaction before a long call to the outside world (an ACME order can
    take a minute), so it does not hold SQLite's write lock meanwhile; the next statement starts
    a new one. Only for a unit of work that has written nothing yet: pending writes are a bug."""
    if session.new or session.dirty or session.deleted:
        raise RuntimeError("release_locks() with unsaved changes: commit them deliberately first")
    session.commit()


def release_if_unwritten(session: Session) -> bool:
    """End the session's transaction if it has written nothing yet, so that a long call to the
    outside world (SSH to a fleet, with connect timeouts) does not hold SQLite's write lock and
    stall the daemon's writers; the next statement takes the lock again. A transaction that has
    written keeps it: committing half a unit of work is never right here. On PostgreSQL reads block
    no writer, so nothing is done. Returns whether the transaction was ended."""
    if session.new or session.dirty or session.deleted or not session.in_transaction():
        return False
    conn = session.connection()
    if conn.dialect.name != "sqlite":
        return False
    if conn.connection.driver_connection.total_changes != conn.info.get(_CHANGES_AT_BEGIN):
        return False
    session.commit()
    return True


def is_postgres(session_or_engine: Session | Engine) -> bool:
    bind = session_or_engine.get_bind() if hasattr(session_or_engine, "get_bind") else session_or_engine
    return bind.dialect.name == "postgresql"
