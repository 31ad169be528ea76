"""Run Alembic migrations programmatically against the process's engine.

`unityctl db upgrade|downgrade|current|check` and `unityctl init` call these functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from unityctl.core.errors import MigrationError

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def _config(connection: Any = None) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str | None:
    """The newest revision shipped with this version of unityctl."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None for an empty database."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate the database up to ``revision`` (default head), in a transaction."""
    from alembic import command

    with engine.begin() as conn:
        command.upgrade(_config(conn), revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Migrate the database down to ``revision`` (``base`` empties it)."""
    from alembic import command

    with engine.begin() as conn:
        command.downgrade(_config(conn), revision)


def schema_differences(engine: Engine) -> list[str]:
    """Differences between the models and the migrated schema; [] when they agree."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from sqlmodel import SQLModel

    from unityctl.domains import import_models

    import_models()
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return [str(diff) for diff in compare_metadata(ctx, SQLModel.metadata)]


def check(engine: Engine) -> None:
    """Raise MigrationError when the database is behind head or the models differ from migrations."""
    head, current = head_revision(), current_revision(engine)
    if current != head:
        raise MigrationError(f"database is at revision {current or 'none (empty)'}, code expects {head}: "
                             "run `unityctl db upgrade`")
    diffs = schema_differences(engine)
    if diffs:
        raise MigrationError(f"models and migrations differ ({len(diffs)} change(s)), first: {diffs[0]}")


def shipped_head() -> str:
    """The head revision, read from the version files without importing Alembic (start-up time).

    Each file declares ``revision = '...'`` and ``down_revision = ...``; the head is the revision
    no other file names as its parent. :func:`head_revision` (Alembic's own answer) is checked
    against this in the tests.
    """
    import re

    revisions, parents = set(), set()
    for path in (MIGRATIONS_DIR / "versions").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        rev = re.search(r"^revision\s*=\s*['\"]([^'\"]+)['\"]", text, re.M)
        down = re.search(r"^down_revision\s*=\s*(.+)$", text, re.M)
        if rev:
            revisions.add(rev.group(1))
        if down:
            parents.update(re.findall(r"['\"]([^'\"]+)['\"]", down.group(1)))
    heads = revisions - parents
    if len(heads) != 1:
        raise MigrationError(f"the shipped migrations have {len(heads)} heads: {sorted(heads)}")
    return heads.pop()


def require_head(engine: Engine) -> None:
    """Refuse to work on a database that is not migrated to head (one query, no Alembic import)."""
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    from unityctl.core.dburl import describe_db_error
    from unityctl.core.errors import DatabaseError

    try:
        with engine.connect() as conn:
            try:
                current = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
            except DBAPIError:
                current = None  # no alembic_version table: an empty database
    except Exception as exc:  # noqa: BLE001 - any driver failure here means "cannot reach the database"
        raise DatabaseError(f"cannot open the database: {describe_db_error(exc)}") from None
    check_revision(current)


def check_revision(current: str | None) -> None:
    """MigrationError unless ``current`` (alembic_version's row, None when absent) is the shipped head."""
    if current is None:
        raise MigrationError("the database is empty: run `unityctl init` (or `unityctl db upgrade`)")
    head = shipped_head()
    if current != head:
        raise MigrationError(f"the database is at revision {current}, this unityctl expects {head}: "
                             "run `unityctl db upgrade`")
