"""Typer parameter parsers: durations, aware date-times, JSON.

Each is passed as Typer's ``parser=``. They raise ``typer.BadParameter`` — Typer attaches the
option's name and turns it into a usage error (exit 2): ``Invalid value for '--in': '5x' is not
a duration (…)``. Raising a plain ``ValueError`` would work too, but Typer's validation layer
would prefix it with its own wording; ``BadParameter`` keeps the line exactly ours.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import typer

from dtimeout.durations import parse_duration
from dtimeout.model import TimeoutState


def duration(value: str | timedelta) -> timedelta:
    """``500ms``, ``6s``, ``15m``, ``2h``, ``1d``, ``1m30s`` or seconds."""
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def aware_datetime(value: str | datetime) -> datetime:
    """ISO 8601 with a timezone (``2030-01-01T12:00:00Z``, ``…+02:00``); naive is refused.

    A naive time means different instants on the machines that schedule and fire a timeout,
    so the CLI refuses it exactly like the Python API does.
    """
    if isinstance(value, datetime):
        parsed = value
    else:
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            raise typer.BadParameter(
                f"{value!r} is not an ISO 8601 date-time (e.g. 2030-01-01T12:00:00Z)"
            ) from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise typer.BadParameter(
            f"{value!r} has no timezone; add one, e.g. {parsed.isoformat()}Z or "
            f"{parsed.isoformat()}+02:00"
        )
    return parsed


def json_value(value: Any) -> Any:
    """A JSON document; a bad one is a usage error with the JSON parser's reason.

    ``@path`` reads the document from a file and ``@-`` from standard input, like curl's
    ``--data @file``: payloads too large for a command line (or holding quotes a shell would
    mangle) still get in. No JSON document starts with ``@``, so the two never clash.
    """
    if not isinstance(value, str):
        return value
    source = ""
    if value.startswith("@"):
        source = f" in {'standard input' if value == '@-' else repr(value[1:])}"
        value = _read_document(value[1:])
    try:
        return json.loads(value)
    except ValueError as exc:
        raise typer.BadParameter(f"not valid JSON{source} ({exc})") from None


def _read_document(name: str) -> str:
    try:
        if name == "-":
            return sys.stdin.read()
        if not name:
            raise typer.BadParameter("'@' needs a file name (@payload.json) or - for stdin")
        return Path(name).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise typer.BadParameter(f"{name!r} is not UTF-8 text") from None
    except OSError as exc:
        raise typer.BadParameter(f"cannot read {name!r}: {exc.strerror or exc}") from None


def state(value: str, ctx: typer.Context) -> TimeoutState:
    """One of the timeout states, case-insensitive (checked in the command: Typer validates
    Enum-typed options itself, with wording of its own)."""
    try:
        return TimeoutState(value.strip().lower())
    except ValueError:
        choices = ", ".join(s.value for s in TimeoutState)
        raise typer.BadParameter(
            f"{value!r} is not a state ({choices})", ctx=ctx, param_hint=["--state"]
        ) from None
