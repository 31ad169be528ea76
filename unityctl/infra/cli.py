"""`unityctl infra`: monitored servers, disks, pools, arrays, databases."""

from __future__ import annotations

import typer

app = typer.Typer(help="Monitored servers: health, disks, pools, arrays, databases.", no_args_is_help=True)


@app.callback()
def _group() -> None:
    """Monitored servers: health, disks, pools, arrays, databases."""
