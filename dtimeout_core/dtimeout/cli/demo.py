"""``dtimeout demo``: the seed's scenario in one command, with a live tally and a verdict.

By default it runs on a fresh SQLite file under ``./.dtimeout/`` (removed afterwards unless
``--keep-db``) so it never writes into the user's real database; a configured transport or
store is used as configured. The verdict is real: the demo exits 1 when it saw a duplicate, a
lost timeout, an early fire or a fire after a successful cancel.

SIGINT/SIGTERM stop it early and cleanly: producer and consumers stop and are joined, the tally
so far is printed (verdict ``INTERRUPTED``), the throwaway database and its ``-wal``/``-shm`` are
removed, and the exit code is 130 (SIGINT) or 143 (SIGTERM). Signals during that shutdown are
ignored for ``SHUTDOWN_SECONDS``; one after that forces quit (files still removed).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer

from dtimeout.app import Timeouts
from dtimeout.cli import params
from dtimeout.cli.context import CliState, echo, get_state, print_json
from dtimeout.cli.errors import CommandFailed, report
from dtimeout.cli.signals import StopOnSignal, exit_code_for
from dtimeout.demo import (
    SHUTDOWN_SECONDS,
    DemoOptions,
    DemoProgress,
    DemoStuckError,
    DemoTally,
    run_demo,
    run_id,
)
from dtimeout.durations import format_duration
from dtimeout.registry import mask_url, scheme_of
from dtimeout.retries import RetryPolicy

DEMO_DIR = Path(".dtimeout")


def register(app: typer.Typer) -> None:
    app.command()(demo)


def demo(
    ctx: typer.Context,
    count: Annotated[int, typer.Option(min=1, max=100_000, help="Timeouts to schedule.")] = 50,
    delay: Annotated[
        timedelta,
        typer.Option(
            parser=params.duration,
            metavar="DURATION",
            show_default="2s",
            help="Delay of each timeout.",
        ),
    ] = timedelta(seconds=2),
    complete_ratio: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="Share cancelled at a random moment before due."),
    ] = 0.6,
    interval: Annotated[
        timedelta,
        typer.Option(
            parser=params.duration,
            metavar="DURATION",
            show_default="100ms",
            help="Time between schedules.",
        ),
    ] = timedelta(milliseconds=100),
    consumers: Annotated[int, typer.Option(min=1, max=32, help="Consumer threads.")] = 2,
    concurrency: Annotated[
        int, typer.Option(min=1, max=64, help="Handler threads per consumer.")
    ] = 2,
    seed: Annotated[int | None, typer.Option(help="Random seed, for repeatable runs.")] = None,
    keep_db: Annotated[
        bool, typer.Option("--keep-db", help="Keep the demo's SQLite file afterwards.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the tally as JSON.")] = False,
) -> None:
    """Run the seed's scenario with a live tally and check every timeout ended exactly once.

    Schedules --count timeouts, cancels --complete-ratio of them at a random moment before
    due, fires the rest with --consumers consumers, then verifies: no duplicates, none lost,
    none early, none fired after a successful cancel. Exits 1 when a check fails.
    """
    state = get_state(ctx)
    options = DemoOptions(
        count=count,
        delay=delay,
        complete_ratio=complete_ratio,
        interval=interval,
        consumers=consumers,
        concurrency=concurrency,
        seed=seed,
    )
    transport, store, db = _providers(state)

    def remove_db() -> None:
        if db is not None and not keep_db:
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(f"{db}{suffix}").unlink(missing_ok=True)

    def open_timeouts() -> Timeouts:
        # Its own long-running actors: the full retry policy, warnings at the configured level.
        return state.open_timeouts(transport, store, one_shot=False, retry=RetryPolicy())

    stop = threading.Event()
    guard = StopOnSignal(
        stop.set,
        "stopping the demo; the tally so far follows",
        grace=SHUTDOWN_SECONDS,
        on_force=remove_db,
    )
    # The guard stays until the tally is out and the files are gone: a repeated signal must not
    # cut the shutdown short (it used to, leaving threads inside SQLite as the process died).
    with guard:
        try:
            if as_json:
                tally = run_demo(open_timeouts, options, stop=stop)
            else:
                echo(
                    f"demo: {count} timeouts due {format_duration(delay)} after scheduling, "
                    f"{complete_ratio:.0%} cancelled before due, {consumers} consumer(s) x "
                    f"{concurrency} thread(s)"
                )
                echo(f"transport {mask_url(transport)}  store {mask_url(store)}")
                tally = _run_with_display(open_timeouts, options, stop)
        except DemoStuckError as exc:
            # Threads are still inside the providers: a normal interpreter exit around them can
            # crash. Report, clean up, and end the process here.
            remove_db()
            code = report(exc)
            sys.stdout.flush()
            os._exit(exit_code_for(guard.signum) if guard.signum is not None else code)
        finally:
            remove_db()
        if guard.stopped_by is not None:
            tally.interrupted = guard.stopped_by
        if as_json:
            data = tally.as_dict()
            data.update(transport=mask_url(transport), store=mask_url(store))
            print_json(data)
        else:
            _print_tally(tally)
    if guard.signum is not None:
        raise typer.Exit(exit_code_for(guard.signum))
    if not tally.ok:
        raise CommandFailed(f"the demo failed its own checks: {', '.join(tally.problems())}")


def _providers(state: CliState) -> tuple[str, str, Path | None]:
    """The URLs to use — configured ones as they are, defaults replaced by a fresh file — and
    that fresh file (``None`` when nothing is the default)."""
    settings = state.settings
    rid = run_id()
    db = DEMO_DIR / f"demo-{rid}.db"
    fresh = f"sqlite:///./{db.as_posix()}"
    urls = []
    for role in ("transport", "store"):
        url = settings.transport if role == "transport" else settings.store
        if settings.source_of(role) == "default":
            url = fresh
        elif url.rstrip("/") == "memory:":
            url = f"memory://demo-{rid}"  # a named instance, so every actor shares it
        scheme_of(url)
        urls.append(url)
    transport, store = urls
    if fresh not in urls:
        return transport, store, None
    DEMO_DIR.mkdir(parents=True, exist_ok=True)
    return transport, store, db


def _run_with_display(
    open_timeouts: Callable[[], Timeouts], options: DemoOptions, stop: threading.Event
) -> DemoTally:
    if not sys.stdout.isatty():
        last = [0.0]

        def plain(p: DemoProgress) -> None:
            now = time.monotonic()
            if now - last[0] >= 1.0 or p.settled == p.total:
                last[0] = now
                echo(
                    f"{p.elapsed_s:5.1f}s  scheduled {p.scheduled}/{p.total}  "
                    f"cancelled {p.cancelled}  fired {p.fired}  too late {p.too_late}"
                )

        return run_demo(open_timeouts, options, plain, stop)

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    with Progress(
        TextColumn("{task.description:<10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
    ) as progress:
        scheduled = progress.add_task("scheduled", total=options.count, detail="")
        settled = progress.add_task("settled", total=options.count, detail="")

        def live(p: DemoProgress) -> None:
            progress.update(scheduled, completed=p.scheduled)
            progress.update(
                settled,
                completed=p.settled,
                detail=f"cancelled {p.cancelled}  fired {p.fired}  too late {p.too_late}",
            )

        return run_demo(open_timeouts, options, live, stop)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def _verdict(tally: DemoTally) -> str:
    if tally.interrupted is None:
        return "OK" if tally.ok else "FAILED"
    checks = "checks OK so far" if tally.ok else f"FAILED: {', '.join(tally.problems())}"
    return f"INTERRUPTED by {tally.interrupted} ({checks})"


def _print_tally(tally: DemoTally) -> None:
    rows = [
        ("scheduled", str(tally.scheduled)),
        ("completed before due (cancelled)", str(tally.cancelled)),
        ("fired", str(tally.fired)),
        ("cancels that came too late", str(tally.too_late)),
        ("duplicates (handler ran twice)", str(tally.duplicates)),
        ("lost (neither fired nor cancelled)", str(tally.lost)),
        ("fired early", str(tally.early)),
        ("fired after a successful cancel", str(tally.cancelled_but_fired)),
        ("store disagrees", str(tally.store_mismatches)),
        *([("unsettled when stopped", str(tally.unsettled))] if tally.interrupted else []),
        ("fire lateness p50", _ms(tally.lateness_p50_ms)),
        ("fire lateness p99", _ms(tally.lateness_p99_ms)),
        ("elapsed", f"{tally.elapsed_s:.1f} s"),
        ("verdict", _verdict(tally)),
    ]

    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(title="dtimeout demo", show_header=False)
        table.add_column("")
        table.add_column("", justify="right")
        for name, value in rows:
            table.add_row(name, value)
        Console().print(table)
        return
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        echo(f"{name:<{width}}  {value}")
