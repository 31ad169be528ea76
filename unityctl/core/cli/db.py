"""`unityctl db`: schema migrations."""

from __future__ import annotations

from typing import Annotated

import typer

from unityctl.core.cli.common import JsonOpt, app_ctx

app = typer.Typer(help="Database schema: upgrade, downgrade, current revision, drift check.", no_args_is_help=True)


@app.command()
def upgrade(ctx: typer.Context, revision: Annotated[str, typer.Argument(help="Target revision.")] = "head") -> None:
    """Migrate the database up to REVISION (default: head)."""
    from unityctl.core import migrate

    a = app_ctx(ctx)
    migrate.upgrade(a.engine(migrated=False), revision)
    a.output().success(f"database at {migrate.current_revision(a.engine(migrated=False))}")


@app.command()
def downgrade(ctx: typer.Context, revision: Annotated[str, typer.Argument(help="Target revision, or 'base'.")]) -> None:
    """Migrate the database down to REVISION ('base' removes every table)."""
    from unityctl.core import migrate

    a = app_ctx(ctx)
    migrate.downgrade(a.engine(migrated=False), revision)
    a.output().success(f"database at {migrate.current_revision(a.engine(migrated=False)) or 'base'}")


@app.command()
def current(ctx: typer.Context, json_: JsonOpt = False) -> None:
    """Show the database's revision and the newest one this unityctl knows."""
    from unityctl.core import migrate

    a = app_ctx(ctx)
    out = a.output(json_)
    doc = {"current": migrate.current_revision(a.engine(migrated=False)), "head": migrate.head_revision()}
    out.emit(doc, lambda c: c.print(f"current {doc['current'] or '(empty)'}\nhead    {doc['head']}", markup=False))


@app.command()
def check(ctx: typer.Context) -> None:
    """Fail when the database is behind, or the models and the migrations differ."""
    from unityctl.core import migrate

    a = app_ctx(ctx)
    migrate.check(a.engine(migrated=False))
    a.output().success("schema matches the models")
