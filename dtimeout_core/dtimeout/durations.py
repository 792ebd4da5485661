"""Human durations: ``500ms``, ``6s``, ``15m``, ``2h``, ``1d``, ``1w``, ``1m30s``, bare seconds.

One parser for the CLI, the environment and ``dtimeout.toml`` so ``--delay 6s``,
``DTIMEOUT_RETENTION=7d`` and ``retention = "7d"`` mean the same thing everywhere. It raises
``ValidationError`` (a ``ValueError``), which is what Click expects from a parameter converter:
passed as Typer's ``parser=``, bad input becomes Click's usage error (exit 2, one clear line)
without any code of ours.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta

from dtimeout.errors import ValidationError

_UNITS_MS: dict[str, int] = {
    "ms": 1,
    "s": 1000,
    "m": 60_000,
    "h": 3_600_000,
    "d": 86_400_000,
    "w": 7 * 86_400_000,
}
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)", re.IGNORECASE)
_BARE = re.compile(r"\d+(?:\.\d+)?")

EXAMPLES = "500ms, 6s, 15m, 2h, 1d, 1m30s or a number of seconds"


def parse_duration(value: str | int | float | timedelta) -> timedelta:
    """``value`` as a non-negative ``timedelta``; ``ValidationError`` naming the input if not.

    Numbers and unit-less strings are seconds. Compound forms go from the largest unit to the
    smallest (``1h30m``, ``1m 30s``), each unit at most once.
    """
    if isinstance(value, timedelta):
        if value < timedelta(0):
            raise ValidationError(f"duration {value} is negative")
        return value
    if isinstance(value, bool):
        raise ValidationError(f"{value!r} is not a duration (use {EXAMPLES})")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise ValidationError(f"{value!r} is not a non-negative number of seconds")
        return timedelta(seconds=value)
    if not isinstance(value, str):
        raise ValidationError(f"{value!r} is not a duration (use {EXAMPLES})")
    text = value.strip().lower()
    if text.startswith("-"):
        raise ValidationError(f"duration {value!r} is negative")
    if _BARE.fullmatch(text):
        return timedelta(seconds=float(text))
    total_ms = 0.0
    position = 0
    last_rank = len(_UNITS_MS)
    ranks = {unit: rank for rank, unit in enumerate(_UNITS_MS)}
    for match in _PART.finditer(text):
        between = text[position : match.start()]
        if between.strip():
            break
        unit = match.group(2)
        if ranks[unit] >= last_rank:
            raise ValidationError(
                f"{value!r} is not a duration: units go from largest to smallest, once each"
            )
        last_rank = ranks[unit]
        total_ms += float(match.group(1)) * _UNITS_MS[unit]
        position = match.end()
    if position == 0 or text[position:].strip():
        raise ValidationError(f"{value!r} is not a duration (use {EXAMPLES})")
    return timedelta(milliseconds=total_ms)


def format_duration(value: timedelta) -> str:
    """The shortest readable form of ``value``: ``500ms``, ``6s``, ``1m30s``, ``7d``."""
    ms = round(value.total_seconds() * 1000)
    if ms == 0:
        return "0s"
    sign = "-" if ms < 0 else ""
    ms = abs(ms)
    if ms < 1000:
        return f"{sign}{ms}ms"
    parts: list[str] = []
    for unit in ("d", "h", "m", "s"):
        size = _UNITS_MS[unit]
        count, ms = divmod(ms, size)
        if count:
            parts.append(f"{count}{unit}")
    if ms:
        parts.append(f"{ms}ms")
    return sign + "".join(parts)
