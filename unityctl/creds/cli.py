"""`unityctl creds`: SSH keys, server logins, SSH CA, TLS certificates."""

from __future__ import annotations

import typer

app = typer.Typer(help="Credentials: SSH keys, server logins, SSH CA, TLS certificates.", no_args_is_help=True)


@app.callback()
def _group() -> None:
    """Credentials: SSH keys, server logins, SSH CA, TLS certificates."""
