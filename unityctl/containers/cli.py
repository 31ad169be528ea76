"""`unityctl containers` (the container domain is not built yet; the group exists for scripts)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Container hosts, update detection and safe updates (not built yet).", no_args_is_help=True)


@app.callback()
def _group() -> None:
    """Container hosts on Docker, Podman or Kubernetes (not built yet)."""
