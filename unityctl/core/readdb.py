"""A read-only connection for hot read paths, on the driver itself (sqlite3 or psycopg).

`unityctl infra status` and `unityctl status` are what people and scripts run most. Through
SQLAlchemy their start-up cost about 0.3 s more before the first query on PostgreSQL (SQLAlchemy Core, its PostgreSQL
dialects, asyncio for one of them); the status itself is a handful of grouped queries taking a
few milliseconds. So read paths like it take plain SQL (no bind parameters, portable between
SQLite and PostgreSQL) through :class:`ReadConnection`:

* :func:`open_read` opens one from the configured URL with the driver alone, checks the schema
  revision like every other command, and reads in one snapshot (SQLite: one read transaction;
  PostgreSQL: REPEATABLE READ, READ ONLY);
* :meth:`ReadConnection.of_session` runs the same code inside an ORM session's transaction, for
  commands that already have one open (``infra show``).

Rows are tuples. Timestamps come back as SQLite text or PostgreSQL datetimes: :func:`utc` turns
either into an aware UTC datetime, as ``core.db.UTCDateTime`` does for the ORM.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from unityctl.core import dburl
from unityctl.core.errors import DatabaseError
from unityctl.core.migrate import check_revision

if TYPE_CHECKING:
    from sqlmodel import Session


class ReadConnection:
    """Plain SQL on a DB-API connection; never writes."""

    def __init__(self, dbapi_connection: Any) -> None:
        self._conn = dbapi_connection

    @classmethod
    def of_session(cls, session: Session) -> ReadConnection:
        """The driver connection under an ORM session, inside the session's transaction. It does
        not flush the session: objects added but not yet flushed are not seen."""
        return cls(session.connection().connection.driver_connection)

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        cursor = self._conn.cursor()
        try:
            cursor.execute(sql)
            return [tuple(row) for row in cursor.fetchall()]
        finally:
            cursor.close()

    def scalar(self, sql: str) -> Any:
        rows = self.rows(sql)
        return rows[0][0] if rows else None


def utc(value: dt.datetime | str | None) -> dt.datetime | None:
    """A timestamp column's value as an aware UTC datetime (SQLite keeps naive UTC text)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc)


@contextmanager
def open_read(url: str) -> Iterator[ReadConnection]:
    """A read-only connection to the database at ``url``, checked to be at the shipped schema head."""
    parsed = dburl.parse(url)
    if parsed.backend == "sqlite" and (parsed.in_memory or not parsed.sqlite_path.exists()):
        check_revision(None)  # an empty database; never created here, a read leaves nothing behind
    connect = _connect_sqlite if parsed.backend == "sqlite" else _connect_postgres
    try:
        conn = connect(parsed)
    except Exception as exc:  # noqa: BLE001 - any driver failure here means "cannot reach the database"
        raise DatabaseError(f"cannot open the database: {dburl.describe_db_error(exc)}") from None
    try:
        reader = ReadConnection(conn)
        _check_schema(reader, parsed)
        yield reader
    except _driver_errors(parsed) as exc:
        raise DatabaseError(f"database error: {dburl.describe_db_error(exc)}") from None
    finally:
        conn.close()


def _connect_sqlite(url: dburl.DatabaseURL) -> Any:
    import sqlite3

    conn = sqlite3.connect(str(url.sqlite_path), timeout=dburl.SQLITE_BUSY_TIMEOUT_S, isolation_level=None)
    conn.execute("PRAGMA query_only = ON")
    conn.execute("BEGIN")  # one read snapshot for every query of the command (WAL: writers go on)
    return conn


def _connect_postgres(url: dburl.DatabaseURL) -> Any:
    import psycopg

    conn = psycopg.connect(**url.connect_kwargs())  # type: ignore[arg-type]
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ  # one snapshot for every query
    conn.read_only = True
    return conn


def _check_schema(reader: ReadConnection, url: dburl.DatabaseURL) -> None:
    try:
        current = reader.scalar("SELECT version_num FROM alembic_version")
    except _driver_errors(url) as exc:
        if not _is_missing_table(exc):
            raise
        current = None  # an empty database
    check_revision(current)


def _is_missing_table(exc: Exception) -> bool:
    if type(exc).__name__ == "UndefinedTable":  # psycopg.errors.UndefinedTable
        return True
    return "no such table" in str(exc)  # sqlite3.OperationalError


def _driver_errors(url: dburl.DatabaseURL) -> type[Exception] | tuple[type[Exception], ...]:
    if url.backend == "sqlite":
        import sqlite3

        return sqlite3.Error
    import psycopg

    return psycopg.Error
