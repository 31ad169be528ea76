"""`unityctl config`: show the effective settings, validate a file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from unityctl.core.cli.common import JsonOpt, app_ctx

app = typer.Typer(help="Configuration: show the effective settings, validate a file.", no_args_is_help=True)


@app.command()
def show(ctx: typer.Context, json_: JsonOpt = False) -> None:
    """Print the effective settings (file, environment and flags merged; secrets redacted)."""
    import yaml

    from unityctl.core.config import redacted

    a = app_ctx(ctx)
    out = a.output(json_)
    doc = redacted(a.settings)
    doc["source_file"] = str(a.settings.source_file) if a.settings.source_file else None
    out.emit(doc, lambda c: c.print(yaml.safe_dump(doc, sort_keys=False).rstrip(), markup=False))


@app.command()
def validate(ctx: typer.Context, file: Annotated[Path, typer.Argument(help="Config file to check.")]) -> None:
    """Check FILE against the schema; one line per problem, non-zero exit when invalid."""
    from unityctl.core.config import validate_file

    validate_file(file)
    app_ctx(ctx).output().success(f"{file}: valid")
