"""`unityctl init`, `unityctl status`, `unityctl version`."""

from __future__ import annotations

from typing import Annotated

import typer

from unityctl.core.cli.common import JsonOpt, app_ctx, read_secret_stdin


def version(ctx: typer.Context, json_: JsonOpt = False) -> None:
    """Print unityctl's version."""
    from unityctl import __version__

    # No Output object here: rich's import alone would double this command's start-up time.
    if json_ or app_ctx(ctx).json_mode:
        print(f'{{"version": "{__version__}"}}')
    else:
        print(f"unityctl {__version__}")


def init(
    ctx: typer.Context,
    passphrase: Annotated[bool, typer.Option("--passphrase", help="Derive the master key from a passphrase "
                                             "(Argon2id) instead of a key file; read from UNITYCTL_PASSPHRASE "
                                             "or standard input.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Create config, data directory, master key and database schema (safe to run again)."""
    from unityctl.core.setup import initialize

    app = app_ctx(ctx)
    app.config_may_be_missing = True
    out = app.output(json_)
    secret = None
    if passphrase:
        secret = app.get_passphrase() or read_secret_stdin("passphrase")
    report = initialize(app.settings, config_file=app.config_file, passphrase=secret or app.get_passphrase())
    doc = {
        "config_file": str(report.config_file), "config_created": report.config_created,
        "data_dir": str(report.data_dir), "revision": report.revision,
        "master_key": report.key_mode, "master_key_created": report.key_created,
    }
    out.emit(doc, lambda console: console.print(
        f"config    {report.config_file}{' (created)' if report.config_created else ''}\n"
        f"data      {report.data_dir}\n"
        f"schema    {report.revision}\n"
        f"key       {report.key_mode}{' (created)' if report.key_created else ' (kept)'}", markup=False))


def status(ctx: typer.Context, json_: JsonOpt = False) -> None:
    """One screen: counts per domain and open alerts by severity."""
    from unityctl.core.status import summary

    app = app_ctx(ctx)
    out = app.output(json_)
    with app.connection() as db:
        doc = summary(db, database_url=app.settings.database_url)

    def render(console: object) -> None:
        counts = doc["alerts"]["open"]
        rows = [("database", doc["database"]),
                ("alerts open", ", ".join(f"{n} {sev}" for sev, n in reversed(counts.items())))]
        for key, value in doc.items():
            if key in ("database", "alerts"):
                continue
            rows.append((key, ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in value.items())))
        out.table(["", "status"], rows)

    out.emit(doc, render)
