"""Small helpers shared by every CLI module: the context, the ``--json`` option, reading secrets."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from unityctl.core.context import AppContext
from unityctl.core.errors import UsageError

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Show what would change; change nothing.")]


def app_ctx(ctx: typer.Context) -> AppContext:
    """The AppContext the root callback stored (a fresh default one when called in isolation)."""
    root = ctx.find_root()
    if not isinstance(root.obj, AppContext):
        root.obj = AppContext()
    return root.obj


def read_secret_stdin(what: str) -> str:
    """Read one secret from stdin (first line, without its newline); never echoed or logged."""
    if sys.stdin is None or sys.stdin.closed:
        raise UsageError(f"{what}: nothing on standard input")
    data = sys.stdin.readline().rstrip("\r\n")
    if not data:
        raise UsageError(f"{what}: standard input was empty")
    return data


def prompt_secret(what: str, *, confirm: bool = False) -> str:
    """Ask for a secret on the terminal; UsageError when there is no terminal."""
    if not sys.stdin.isatty():
        raise UsageError(f"{what} is needed: pass it on standard input with the --*-stdin option")
    import getpass

    value = getpass.getpass(f"{what}: ")
    if confirm and getpass.getpass(f"{what} (again): ") != value:
        raise UsageError(f"the two {what}s differ")
    if not value:
        raise UsageError(f"{what} must not be empty")
    return value
