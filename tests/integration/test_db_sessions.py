"""Write sessions and SQLite's write lock around slow outside work (core.db.release_if_unwritten)."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy import text

from unityctl.core.db import release_if_unwritten, session_scope
from tests.support.writers import impatient_write


def test_a_write_session_that_has_only_read_lets_go_of_the_lock(db_engine, db_url) -> None:  # type: ignore[no-untyped-def]
    with session_scope(db_engine, write=True) as session:
        assert session.execute(text("SELECT count(*) FROM meta")).scalar() is not None
        released = release_if_unwritten(session)
        assert released == db_url.startswith("sqlite")  # PostgreSQL reads hold no lock to let go of
        impatient_write(db_url, "other-writer")  # would raise "database is locked" otherwise
        session.execute(text("INSERT INTO meta (key, value) VALUES ('mine', 'y')"))
    with session_scope(db_engine) as session:
        keys = {k for (k,) in session.execute(text("SELECT key FROM meta WHERE key IN ('mine', 'other-writer')"))}
    assert keys == {"mine", "other-writer"}


def test_a_session_that_has_written_keeps_its_transaction_whole(db_engine, db_url) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RuntimeError, match="boom"), session_scope(db_engine, write=True) as session:
        session.execute(text("INSERT INTO meta (key, value) VALUES ('half', 'y')"))
        assert release_if_unwritten(session) is False
        if db_url.startswith("sqlite"):  # still holding the lock: the other writer gives up
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                impatient_write(db_url, "other-writer")
        raise RuntimeError("boom")
    with session_scope(db_engine) as session:
        assert session.execute(text("SELECT count(*) FROM meta WHERE key = 'half'")).scalar() == 0
