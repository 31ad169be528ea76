"""Rendering: one JSON document on stdout with ``--json``, rich tables for people otherwise.

stdout carries data only; messages, warnings and progress go to stderr. Colour is off with
``--json``, ``--no-color``, ``NO_COLOR``, or when the stream is not a terminal.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console


def json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return value.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")
    if isinstance(value, (dt.date, dt.timedelta)):
        return str(value)
    if isinstance(value, (Path, enum.Enum)):
        return str(value.value if isinstance(value, enum.Enum) else value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    raise TypeError(f"cannot serialise {type(value).__name__}")


def dumps(document: Any) -> str:
    return json.dumps(document, default=json_default, indent=2, sort_keys=False)


def _color_wanted(stream: Any, no_color: bool) -> bool:
    if no_color or "NO_COLOR" in os.environ:
        return False
    return bool(getattr(stream, "isatty", lambda: False)())


class Output:
    """Where a command writes. Created once per invocation from the global options."""

    def __init__(self, *, json_mode: bool = False, quiet: bool = False, verbose: bool = False,
                 no_color: bool = False) -> None:
        self.json_mode = json_mode
        self.quiet = quiet
        self.verbose = verbose
        self.no_color = no_color
        self._out: Console | None = None
        self._err: Console | None = None

    # The consoles are made on first use: a --json command that prints no message never imports rich.
    @property
    def out(self) -> Console:
        if self._out is None:
            from rich.console import Console

            color = not self.json_mode and _color_wanted(sys.stdout, self.no_color)
            self._out = Console(file=sys.stdout, color_system="auto" if color else None, no_color=not color,
                                highlight=False, soft_wrap=not sys.stdout.isatty(), emoji=False)
        return self._out

    @property
    def err(self) -> Console:
        if self._err is None:
            from rich.console import Console

            color = _color_wanted(sys.stderr, self.no_color)
            # Into a log or a pipe, a message stays one line (no wrapping at 80 columns).
            self._err = Console(file=sys.stderr, color_system="auto" if color else None, no_color=not color,
                                highlight=False, soft_wrap=not sys.stderr.isatty(), emoji=False)
        return self._err

    @property
    def interactive(self) -> bool:
        """True when a person watches stderr (progress bars make sense)."""
        return sys.stderr.isatty() and not self.quiet

    def emit(self, document: Any, render: Callable[[Console], None] | None = None) -> None:
        """Print a command's result: JSON when asked, else ``render`` (or a plain key/value view)."""
        if self.json_mode:
            sys.stdout.write(dumps(document) + "\n")
            sys.stdout.flush()
        elif render is not None:
            render(_LazyConsole(self))
        else:
            self.out.print(_plain(document), markup=False)

    def table(self, columns: Sequence[str], rows: Iterable[Sequence[Any]], *, title: str | None = None,
              empty: str = "nothing to show") -> None:
        """Print a table of rows (text mode only); prints ``empty`` on stderr when there are no rows.

        On a terminal: a rich table. Into a pipe, a file or a cron mail: plain columns separated by
        two spaces, one line per row, no box drawing, so grep/awk/cut work on it (and it is ten
        times quicker to render for a large fleet).
        """
        cells = [["" if cell is None else str(cell) for cell in row] for row in rows]
        if not cells:
            self.note(empty)
            return
        if not sys.stdout.isatty():
            self._plain_table(list(columns), cells, title)
            return
        from rich.table import Table

        table = Table(title=title, header_style="bold", show_lines=False)
        for column in columns:
            table.add_column(column, overflow="fold")
        for row in cells:
            table.add_row(*row)
        self.out.print(table)

    @staticmethod
    def _plain_table(columns: list[str], rows: list[list[str]], title: str | None) -> None:
        rows = [[cell.replace("\n", " ") for cell in row] for row in rows]
        widths = [max(len(str(c)) for c in col) for col in zip(columns, *rows, strict=False)]
        lines = [title] if title else []
        for row in [columns, *rows]:
            lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)).rstrip())
        sys.stdout.write("\n".join(lines) + "\n")

    def note(self, message: str) -> None:
        """An informational message on stderr (hidden by --quiet)."""
        if not self.quiet:
            self.err.print(message, markup=False, highlight=False)

    def success(self, message: str) -> None:
        """A confirmation on stderr (hidden by --quiet); green for people, plain beside --json."""
        if not self.quiet:
            self.err.print(message, markup=False, style=None if self.json_mode else "green")

    def warn(self, message: str) -> None:
        self.err.print(f"warning: {message}", markup=False, style="yellow")

    def debug(self, message: str) -> None:
        if self.verbose:
            self.err.print(message, markup=False, style="dim")


class _LazyConsole:
    """Stands in for the stdout console until a renderer really prints through it (most render
    with :meth:`Output.table`, which needs no console for pipes)."""

    def __init__(self, output: Output) -> None:
        self._output = output

    def __getattr__(self, name: str) -> Any:
        return getattr(self._output.out, name)


def _plain(document: Any, indent: int = 0) -> str:
    pad = "  " * indent
    if isinstance(document, dict):
        lines = []
        for key, value in document.items():
            if isinstance(value, (dict, list)) and value:
                lines.append(f"{pad}{key}:")
                lines.append(_plain(value, indent + 1))
            else:
                lines.append(f"{pad}{key}: {_scalar(value)}")
        return "\n".join(lines)
    if isinstance(document, list):
        return "\n".join(f"{pad}- {_plain(item, 0) if not isinstance(item, (dict, list)) else chr(10) + _plain(item, indent + 1)}"
                         for item in document)
    return f"{pad}{_scalar(document)}"


def _scalar(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dt.datetime):
        return json_default(value)
    if isinstance(value, (list, dict)):
        return "[]" if isinstance(value, list) else "{}"
    return str(value)


def ago(when: dt.datetime | None, now: dt.datetime | None = None) -> str:
    """"5m ago" style age for tables; "-" for never."""
    if when is None:
        return "-"
    from unityctl.core.durations import format_seconds

    now = now or dt.datetime.now(dt.timezone.utc)
    delta = (now - when).total_seconds()
    return f"{format_seconds(delta)} ago" if delta >= 0 else f"in {format_seconds(-delta)}"
