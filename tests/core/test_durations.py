"""Human durations, the same everywhere (CLI, environment, dtimeout.toml)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dtimeout.durations import format_duration, parse_duration
from dtimeout.errors import ValidationError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("500ms", timedelta(milliseconds=500)),
        ("6s", timedelta(seconds=6)),
        ("15m", timedelta(minutes=15)),
        ("2h", timedelta(hours=2)),
        ("1d", timedelta(days=1)),
        ("1w", timedelta(weeks=1)),
        ("1m30s", timedelta(seconds=90)),
        ("1h 30m", timedelta(minutes=90)),
        ("1.5s", timedelta(milliseconds=1500)),
        ("90", timedelta(seconds=90)),
        ("0.25", timedelta(milliseconds=250)),
        ("0", timedelta(0)),
        (" 6S ", timedelta(seconds=6)),
        (3, timedelta(seconds=3)),
        (2.5, timedelta(seconds=2.5)),
        (timedelta(minutes=1), timedelta(minutes=1)),
    ],
)
def test_parse(text: str | float, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "text", ["", "5x", "s", "-5s", "1s1m", "1m1m", "1.2.3s", "5 minutes", "ms5", "nan", True, -1]
)
def test_refused(text: str | int) -> None:
    with pytest.raises(ValidationError) as info:
        parse_duration(text)
    assert isinstance(info.value, ValueError)  # what Click turns into a usage error
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (timedelta(milliseconds=500), "500ms"),
        (timedelta(seconds=6), "6s"),
        (timedelta(seconds=90), "1m30s"),
        (timedelta(days=7), "7d"),
        (timedelta(0), "0s"),
        (timedelta(seconds=1, milliseconds=5), "1s5ms"),
    ],
)
def test_format(value: timedelta, text: str) -> None:
    assert format_duration(value) == text


@given(st.integers(min_value=0, max_value=10**12))
def test_format_then_parse_round_trips(ms: int) -> None:
    value = timedelta(milliseconds=ms)
    assert parse_duration(format_duration(value)) == value
