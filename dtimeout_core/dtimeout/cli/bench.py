"""``dtimeout bench``: throughput, fire lateness, round trips and consumer RSS on the configured
providers (see ``dtimeout.bench`` for what each phase measures)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

import typer

from dtimeout.cli import params
from dtimeout.cli.context import echo, get_state, print_json
from dtimeout.registry import mask_url

_PHASES = ("single", "batched", "fire", "lateness")


def register(app: typer.Typer) -> None:
    app.command()(bench)


def bench(
    ctx: typer.Context,
    count: Annotated[int, typer.Option(help="Timeouts for the batched and fire phases.")] = 20_000,
    single: Annotated[int, typer.Option(help="Single schedule() calls.")] = 2_000,
    batch: Annotated[int, typer.Option(help="Items per schedule_many/cancel_many.")] = 1_000,
    rate: Annotated[float, typer.Option(help="Offered timeouts/s in the lateness phase.")] = 5_000,
    duration: Annotated[
        timedelta,
        typer.Option(
            parser=params.duration,
            metavar="DURATION",
            show_default="10s",
            help="Offered load for this long (10s, 1m; a bare number is seconds).",
        ),
    ] = timedelta(seconds=10),
    delay: Annotated[
        timedelta,
        typer.Option(
            parser=params.duration,
            metavar="DURATION",
            show_default="1s",
            help="From schedule to due in the lateness phase (500ms, 2s).",
        ),
    ] = timedelta(seconds=1),
    pending: Annotated[
        int, typer.Option(help="Far-future timeouts parked while the consumer runs.")
    ] = 0,
    concurrency: Annotated[int, typer.Option(help="Consumer handler threads.")] = 8,
    batch_size: Annotated[int, typer.Option(help="Consumer receive batch.")] = 500,
    phases: Annotated[
        str, typer.Option(help=f"Comma-separated phases out of {','.join(_PHASES)}.")
    ] = ",".join(_PHASES),
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Measure schedule/cancel rates, sustained fire rate, fire lateness p50/p95/p99/max,
    round trips per fired timeout and the consumer's peak RSS on the configured providers."""
    from dtimeout.bench import BenchOptions, run_bench
    from dtimeout.errors import ValidationError

    chosen = tuple(p.strip() for p in phases.split(",") if p.strip())
    unknown = [p for p in chosen if p not in _PHASES]
    if unknown:
        raise ValidationError(f"unknown bench phase(s) {', '.join(unknown)}; use {_PHASES}")
    for name, value in (("count", count), ("single", single), ("batch", batch)):
        if value < 1:
            raise ValidationError(f"--{name} must be at least 1")
    if rate <= 0 or duration <= timedelta(0) or pending < 0 or concurrency < 1 or batch_size < 1:
        raise ValidationError("--rate, --duration, --concurrency and --batch-size must be positive")
    settings = get_state(ctx).settings
    options = BenchOptions(
        transport=settings.transport,
        store=settings.store,
        count=count,
        single=single,
        batch=batch,
        rate=rate,
        duration=duration.total_seconds(),
        delay=delay.total_seconds(),
        pending=pending,
        concurrency=concurrency,
        batch_size=batch_size,
        phases=chosen,
    )
    report = run_bench(options, progress=None if as_json else lambda text: echo(f"... {text}"))
    data = report.as_dict()
    data["options"]["transport"] = mask_url(options.transport)
    data["options"]["store"] = mask_url(options.store)
    if as_json:
        print_json(data)
        return
    for line in summary(data["results"]):
        echo(line)


def summary(results: dict[str, Any]) -> list[str]:
    """The report as aligned lines, one figure each."""
    lines: list[str] = []

    def add(label: str, value: Any, unit: str = "") -> None:
        lines.append(f"{label:<38} {value}{unit}")

    if "single" in results:
        r = results["single"]
        add("schedule (single calls)", f"{r['schedule_per_s']:,.0f}", " /s")
        add("cancel (single calls)", f"{r['cancel_per_s']:,.0f}", " /s")
    if "batched" in results:
        r = results["batched"]
        add("schedule_many", f"{r['schedule_many_per_s']:,.0f}", " /s")
        add("cancel_many", f"{r['cancel_many_per_s']:,.0f}", " /s")
        add("round trips per scheduled (batched)", r["round_trips_per_scheduled"])
    if "pending" in results:
        add("parked pending timeouts", f"{results['pending']['pending']:,}")
    if "fire" in results:
        add("sustained fire", f"{results['fire']['fired_per_s']:,.0f}", " /s")
    if "lateness" in results:
        r = results["lateness"]
        ms = r["lateness_ms"]
        add("offered load", f"{r['offered_per_s']:,.0f}", " /s")
        add(
            "lateness p50/p95/p99/max",
            f"{ms['p50']:.0f} / {ms['p95']:.0f} / {ms['p99']:.0f} / {ms['max']:.0f}",
            " ms",
        )
    if "consumer" in results:
        r = results["consumer"]
        add("round trips per fired (both processes)", r["round_trips_per_fired"])
        add("consumer peak RSS", r["peak_rss_mb"], " MB")
    return lines
