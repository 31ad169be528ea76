"""The light read connection (`infra status`'s path) on the real backend under test."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from sqlalchemy import text

from unityctl.core.db import session_scope
from unityctl.core.errors import DatabaseError, MigrationError
from unityctl.core.readdb import ReadConnection, open_read, utc


def _add_server(engine, name: str) -> None:  # type: ignore[no-untyped-def]
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO monitored_server (name, local, interval_seconds, tags, state, consecutive_failures, "
            "consecutive_successes, filesystems, notes, created_at, last_seen_at) VALUES "
            "(:n, FALSE, 300, '[]', 'up', 0, 0, '[]', '[]', :t, :t)"),
            {"n": name, "t": dt.datetime(2026, 11, 1, 12, 30, tzinfo=dt.timezone.utc)})


def test_reads_what_the_orm_wrote(db_engine, db_url: str) -> None:  # type: ignore[no-untyped-def]
    _add_server(db_engine, "nas")
    with open_read(db_url) as conn:
        (name, seen), = conn.rows("SELECT name, last_seen_at FROM monitored_server")
        assert name == "nas"
        assert utc(seen) == dt.datetime(2026, 11, 1, 12, 30, tzinfo=dt.timezone.utc)
        assert conn.scalar("SELECT count(*) FROM monitored_server WHERE local = FALSE") == 1


def test_one_snapshot_for_the_whole_command(db_engine, db_url: str) -> None:  # type: ignore[no-untyped-def]
    _add_server(db_engine, "a")
    with open_read(db_url) as conn:
        assert conn.scalar("SELECT count(*) FROM monitored_server") == 1
        _add_server(db_engine, "b")  # a writer goes on meanwhile (SQLite WAL / PostgreSQL MVCC)
        assert conn.scalar("SELECT count(*) FROM monitored_server") == 1
    with open_read(db_url) as conn:
        assert conn.scalar("SELECT count(*) FROM monitored_server") == 2


def test_refuses_to_write(db_engine, db_url: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DatabaseError, match="read-only|readonly"), open_read(db_url) as conn:
        conn.rows("INSERT INTO alembic_version (version_num) VALUES ('x')")
    with open_read(db_url) as conn:
        assert conn.scalar("SELECT count(*) FROM alembic_version") == 1


def test_of_session_sees_the_session_s_own_transaction(db_engine) -> None:  # type: ignore[no-untyped-def]
    with session_scope(db_engine, write=True) as session:
        session.execute(text("UPDATE alembic_version SET version_num = 'pending'"))
        assert ReadConnection.of_session(session).scalar("SELECT version_num FROM alembic_version") == "pending"
        session.rollback()


def test_empty_database_is_named(db_url: str) -> None:
    with pytest.raises(MigrationError, match="the database is empty: run `unityctl init`"), open_read(db_url):
        pass


def test_missing_sqlite_file_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "unityctl.db"
    with pytest.raises(MigrationError, match="empty"), open_read(f"sqlite:///{path}"):
        pass
    assert not path.exists() and not path.parent.exists()


def test_database_at_another_revision_is_refused(db_engine, db_url: str) -> None:  # type: ignore[no-untyped-def]
    with db_engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0001_core'"))
    with pytest.raises(MigrationError, match="at revision 0001_core.*unityctl db upgrade"), open_read(db_url):
        pass


def test_unreachable_postgres_is_one_line_without_the_password() -> None:
    url = "postgresql+psycopg://someone:hunter2@127.0.0.1:1/db?connect_timeout=2"
    with pytest.raises(DatabaseError, match="cannot open the database") as info, open_read(url):
        pass
    assert "hunter2" not in str(info.value) and "\n" not in str(info.value)
