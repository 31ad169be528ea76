"""`unityctl daemon`: run the timed jobs."""

from __future__ import annotations

import typer

app = typer.Typer(help="Run the timed jobs (collection, notifications, housekeeping).", no_args_is_help=True)


@app.callback()
def _group() -> None:
    """Run the timed jobs (collection, notifications, housekeeping)."""
