"""``schedule``, ``cancel``, ``status``, ``list``: one timeout at a time, from a shell.

Input is validated through Typer's ``parser=`` (``dtimeout.cli.params``: durations, aware
date-times, JSON), so a typo is a usage error (exit 2) naming the option before anything
connects. These are one-shot commands: they use the short retry policy (see
``dtimeout.cli.context``).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

import typer

from dtimeout.cli import params
from dtimeout.cli.context import echo, get_state, print_json, render_table
from dtimeout.cli.errors import CommandFailed
from dtimeout.durations import format_duration
from dtimeout.model import Timeout, TimeoutState

KIND = Annotated[str, typer.Argument(metavar="KIND", help="Handler name, e.g. payment.")]
KEY = Annotated[str, typer.Argument(metavar="KEY", help="Your id, e.g. order-42.")]


def describe(t: Timeout) -> str:
    due = t.due_at.isoformat(timespec="milliseconds")
    extra = f", reason {t.reason}" if t.reason and t.state is not TimeoutState.PENDING else ""
    return (
        f"{t.kind}:{t.key} {t.state.value} (generation {t.generation}, due {due}, "
        f"attempts {t.attempts}{extra})"
    )


def register(app: typer.Typer) -> None:
    app.command()(schedule)
    app.command()(cancel)
    app.command()(status)
    app.command("list")(list_timeouts)


def schedule(
    ctx: typer.Context,
    kind: KIND,
    key: KEY,
    in_: Annotated[
        timedelta | None,
        typer.Option(
            "--in",
            parser=params.duration,
            metavar="DURATION",
            help="Fire after this long: 500ms, 6s, 15m, 2h, 1d, 1m30s.",
        ),
    ] = None,
    at: Annotated[
        datetime | None,
        typer.Option(
            "--at",
            parser=params.aware_datetime,
            metavar="ISO-8601",
            help="Fire at this instant; needs a timezone (2030-01-01T12:00:00Z).",
        ),
    ] = None,
    payload: Annotated[
        Any,
        typer.Option(
            "--payload",
            parser=params.json_value,
            metavar="JSON",
            help="Payload: a JSON document, @FILE to read it from a file, @- from stdin.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the record as JSON.")] = False,
) -> None:
    """Schedule KIND KEY (again: a pending one is rescheduled)."""
    if (in_ is None) == (at is None):
        raise typer.BadParameter("give exactly one of them", ctx=ctx, param_hint=["--in", "--at"])
    with get_state(ctx).open_timeouts() as timeouts:
        record = timeouts.schedule(kind, key, after=in_, at=at, payload=payload)
    if as_json:
        print_json(record.to_dict())
    else:
        when = f" (in {format_duration(in_)})" if in_ is not None else ""
        echo(f"scheduled {describe(record)}{when}")


def cancel(
    ctx: typer.Context,
    kind: KIND,
    key: KEY,
    as_json: Annotated[bool, typer.Option("--json", help="Print the answer as JSON.")] = False,
) -> None:
    """Cancel KIND KEY (the complementary action).

    Prints what cancel answered: cancelled (it will never fire), too_late (firing or fired),
    not_found or already_cancelled. Every answer exits 0: each is a truthful outcome.
    """
    with get_state(ctx).open_timeouts() as timeouts:
        result = timeouts.cancel(kind, key)
    if as_json:
        print_json({"kind": kind, "key": key, "result": result.value})
    else:
        echo(f"{kind}:{key} {result.value}")


def status(
    ctx: typer.Context,
    kind: KIND,
    key: KEY,
    as_json: Annotated[bool, typer.Option("--json", help="Print the record as JSON.")] = False,
) -> None:
    """Show the record of KIND KEY; exit 1 when there is none."""
    with get_state(ctx).open_timeouts() as timeouts:
        record = timeouts.status(kind, key)
    if record is None:
        if as_json:
            print_json(None)
        raise CommandFailed(f"no timeout {kind}:{key} (never scheduled, or its record expired)")
    if as_json:
        print_json(record.to_dict())
    else:
        echo(describe(record))


def list_timeouts(
    ctx: typer.Context,
    states: Annotated[
        list[str] | None,
        typer.Option(
            "--state",
            metavar="STATE",
            help="Only this state: pending, firing, fired, cancelled or dead; repeat the "
            "option for several.",
        ),
    ] = None,
    kind: Annotated[
        str | None, typer.Option("--kind", metavar="KIND", help="Only this kind.")
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", metavar="N", min=1, help="At most this many.")
    ] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Print records as JSON.")] = False,
) -> None:
    """List timeouts ordered by due time."""
    wanted: list[TimeoutState | None] = [None]
    if states:
        wanted = list(dict.fromkeys(params.state(s, ctx) for s in states))
    with get_state(ctx).open_timeouts() as timeouts:
        # The store answers one state per query. The first --limit of each, merged by due
        # time, are the first --limit of all of them.
        records = [r for st in wanted for r in timeouts.list(state=st, kind=kind, limit=limit)]
    if len(wanted) > 1:
        records = sorted(records, key=lambda r: r.due_at_ms)[:limit]
    if as_json:
        print_json([r.to_dict() for r in records])
        return
    rows = [
        [
            r.kind,
            r.key,
            r.state.value,
            str(r.generation),
            r.due_at.isoformat(timespec="milliseconds"),
            str(r.attempts),
            r.reason or "",
        ]
        for r in records
    ]
    render_table(
        "timeouts",
        ["kind", "key", "state", "generation", "due", "attempts", "reason"],
        rows,
        whole=("due", "state"),
    )
