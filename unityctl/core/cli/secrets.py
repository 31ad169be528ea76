"""`unityctl secrets`: the master key's life cycle."""

from __future__ import annotations

from typing import Annotated

import typer

from unityctl.core.cli.common import app_ctx, read_secret_stdin

app = typer.Typer(help="Encrypted secrets and the master key.", no_args_is_help=True)


@app.callback()
def _group() -> None:
    """Encrypted secrets and the master key."""


@app.command("rotate-master-key")
def rotate_master_key(
    ctx: typer.Context,
    new_passphrase_stdin: Annotated[bool, typer.Option("--new-passphrase-stdin", help="Switch to (or change) a "
                                                       "passphrase-derived key, read from standard input.")] = False,
) -> None:
    """Re-wrap every secret under a new master key, in one transaction (all or nothing)."""
    from unityctl.core import audit, secrets
    from unityctl.core.db import session_scope

    a = app_ctx(ctx)
    settings = a.settings
    old = a.keyring()
    new_pass = read_secret_stdin("new passphrase") if new_passphrase_stdin else None
    count = 0

    def progress(_row: object) -> None:
        nonlocal count
        count += 1

    try:
        with session_scope(a.engine(), write=True) as session:
            new = secrets.rotate_master_key(session, settings, old, new_passphrase=new_pass, on_secret=progress)
            audit.record(session, new, action="core.secrets.rotate_master_key", object_type="master_key",
                         object_id=new.key_id, details={"secrets": count, "from_key": old.key_id, "mode": new.source})
    except BaseException:
        secrets.abandon_rotation(settings)
        raise
    secrets.finish_rotation(settings, new)
    a.output().success(f"{count} secret(s) re-wrapped; master key is now {new.key_id}"
                       + (" (passphrase)" if new.source == "passphrase" else f" ({settings.master_key_file})"))
