"""Alembic migrations on the backend under test: up from empty, down to base, up again, no drift."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect

from tests.conftest import CLI
from unityctl.core import migrate
from unityctl.core.db import make_engine
from unityctl.core.errors import MigrationError

CORE_TABLES = {"meta", "secret", "audit_log", "audit_archive", "alert", "alert_channel", "notification_log"}


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_from_empty_to_head_then_downgrade_to_base_and_up_again(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        assert migrate.current_revision(engine) is None
        migrate.upgrade(engine)
        assert migrate.current_revision(engine) == migrate.head_revision()
        assert CORE_TABLES <= _tables(db_url)
        migrate.check(engine)  # no drift between models and migrations

        migrate.downgrade(engine, "base")
        assert migrate.current_revision(engine) is None
        assert _tables(db_url) == set(), "downgrade to base left tables behind"

        migrate.upgrade(engine)
        assert migrate.current_revision(engine) == migrate.head_revision()
        migrate.check(engine)
    finally:
        engine.dispose()


def test_db_commands_upgrade_downgrade_and_check_through_the_cli(cli: CLI, db_url: str) -> None:
    head = migrate.head_revision()
    empty = cli("db", "current", "--json")
    assert empty.code == 0, empty
    assert empty.json() == {"current": None, "head": head}

    up = cli("db", "upgrade")
    assert up.code == 0, up
    assert cli("db", "current", "--json").json() == {"current": head, "head": head}
    check = cli("db", "check")
    assert check.code == 0, check
    assert "matches" in check.stderr

    down = cli("db", "downgrade", "base")
    assert down.code == 0, down
    assert _tables(db_url) == set()
    assert cli("db", "current", "--json").json()["current"] is None

    assert cli("db", "upgrade", "head").code == 0
    assert cli("db", "check").code == 0
    text = cli("db", "current")
    assert text.code == 0 and head in text.stdout


def test_db_check_fails_on_a_database_behind_head(cli: CLI) -> None:
    result = cli("db", "check")
    assert result.code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("unityctl: error: ")
    assert "db upgrade" in lines[0]


def test_db_check_reports_drift_between_models_and_schema(db_engine) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import text

    with db_engine.begin() as conn:
        conn.execute(text("CREATE INDEX ix_drift_alert_message ON alert (severity, source_type)"))
    with pytest.raises(MigrationError, match="models and migrations differ"):
        migrate.check(db_engine)


@pytest.mark.parametrize("command", [("status",), ("alerts", "list"), ("audit", "list", "--json"),
                                     ("alerts", "channels", "list")])
def test_a_command_on_an_unmigrated_database_says_to_run_init(cli: CLI, command: tuple[str, ...]) -> None:
    result = cli(*command)
    assert result.code == 1, result
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("unityctl: error: ")
    assert "run `unityctl init`" in lines[0]
    assert "Traceback" not in result.stderr


def test_a_command_on_a_database_at_an_unknown_revision_says_to_upgrade(db_engine, cli: CLI) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import text

    with db_engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0000_older'"))
    result = cli("status")
    assert result.code == 1
    assert "unityctl db upgrade" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_init_migrates_to_head_and_db_check_is_clean(cli: CLI) -> None:
    assert cli("init").code == 0
    assert cli("db", "current", "--json").json()["current"] == migrate.head_revision()
    assert cli("db", "check").code == 0


def test_the_fast_head_check_agrees_with_alembic() -> None:
    from unityctl.core import migrate

    assert migrate.shipped_head() == migrate.head_revision()
