"""Human durations ("90s", "5m", "1h30m") as used by config keys and command-line options."""

from __future__ import annotations

from datetime import timedelta

import pytest

from unityctl.core.durations import format_seconds, parse_seconds, parse_timedelta
from unityctl.core.errors import UsageError


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("5m", 300),
        ("8h", 28800),
        ("7d", 604800),
        ("1w", 604800),
        ("1h30m", 5400),
        ("1h 30m", 5400),
        ("2D", 172800),
        (" 45s ", 45),
        ("90", 90),
        ("0s", 0),
        (90, 90),
        (0, 0),
        (2.9, 2),
    ],
)
def test_a_duration_is_parsed_into_whole_seconds(text: str | int | float, seconds: int) -> None:
    assert parse_seconds(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "5x", "h", "1.5h", "5m5", "1h-", "-5", "- 5m", "5m soon"])
def test_a_malformed_duration_is_refused_naming_the_value(text: str) -> None:
    with pytest.raises(UsageError) as err:
        parse_seconds(text)
    assert repr(text) in str(err.value)
    assert "\n" not in str(err.value)


def test_a_negative_number_of_seconds_is_refused() -> None:
    with pytest.raises(UsageError, match="negative"):
        parse_seconds(-1)


def test_a_boolean_is_not_a_duration() -> None:
    # YAML turns `yes` into True: it must not silently become 1 second.
    with pytest.raises(UsageError):
        parse_seconds(True)


def test_parse_timedelta_gives_the_same_amount_as_a_timedelta() -> None:
    assert parse_timedelta("1d2h") == timedelta(days=1, hours=2)
    assert parse_timedelta(30) == timedelta(seconds=30)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (59, "59s"), (60, "1m"), (3700, "1h1m"), (90061, "1d1h"), (604800, "7d"), (12.7, "12s")],
)
def test_format_seconds_gives_at_most_two_units(seconds: float, text: str) -> None:
    assert format_seconds(seconds) == text


@pytest.mark.parametrize("seconds", [1, 59, 60, 61, 3600, 5400, 86400, 90000])
def test_formatting_then_parsing_keeps_the_leading_units(seconds: int) -> None:
    # Two units at most, so round-tripping is exact for values with two non-zero units or fewer.
    assert parse_seconds(format_seconds(seconds)) == seconds
