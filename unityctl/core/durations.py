"""Human durations ("90s", "5m", "8h", "7d", "1w") used by config and command-line options."""

from __future__ import annotations

import re
from datetime import timedelta

from unityctl.core.errors import UsageError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+)\s*([smhdw])")


def parse_seconds(value: str | int | float) -> int:
    """Turn ``"1h30m"``, ``"5m"``, ``"90"`` or ``90`` into whole seconds.

    Raises UsageError naming the bad value when it is not a positive duration.
    """
    if isinstance(value, bool):
        raise UsageError(f"not a duration: {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise UsageError(f"duration must not be negative: {value!r}")
        return int(value)
    text = str(value).strip().lower()
    if text.isdigit():
        return int(text)
    pos, total = 0, 0
    for match in _PART.finditer(text):
        if text[pos:match.start()].strip():
            break
        total += int(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos == 0 or text[pos:].strip():
        raise UsageError(f"not a duration: {value!r} (use e.g. 90s, 5m, 8h, 7d, 1w)")
    return total


def parse_timedelta(value: str | int) -> timedelta:
    """Like :func:`parse_seconds`, as a timedelta."""
    return timedelta(seconds=parse_seconds(value))


def format_seconds(seconds: float) -> str:
    """Compact human form: 3700 -> "1h1m"."""
    seconds = int(seconds)
    if seconds == 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts[:2])
