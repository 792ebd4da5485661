"""``run consume`` and ``run produce``: the long-running processes of the seed's scenario.

``run consume --app module:attr`` runs the handlers of *your* ``Timeouts`` object. That object
owns its providers: it was built with explicit URLs or from ``DTIMEOUT_*``/``dtimeout.toml``.
Global ``--transport``/``--store`` therefore cannot apply to it, and combining them with
``run consume`` is refused (exit 2) instead of silently ignored or silently overriding what the
app's author chose.

SIGINT/SIGTERM stop a consumer gracefully: no new receive, in-flight handlers finish and are
settled, exit 0. Repeats in the next seconds are ignored (GNU ``timeout`` signals the process and
then its group); a signal after that forces quit with 128 + the signal number — see
:mod:`dtimeout.cli.signals`. Leases of abandoned work expire and another consumer takes it over.

``--orphans fire|drop`` is the one consume-time policy the command line may set on the app's
object: it decides what this consumer does with messages whose record is gone.
"""

from __future__ import annotations

import importlib
import sys
import threading
from datetime import timedelta
from typing import Annotated, Any

import typer

from dtimeout.app import Timeouts
from dtimeout.cli import help, params
from dtimeout.cli.context import echo, get_state, print_json
from dtimeout.cli.errors import one_line
from dtimeout.cli.signals import StopOnSignal
from dtimeout.consumer import ConsumerStats
from dtimeout.demo import (
    DEMO_KIND,
    ProduceEvent,
    ProduceOptions,
    Producer,
    ProduceSummary,
    run_id,
)
from dtimeout.durations import format_duration
from dtimeout.errors import ConfigurationError, DtimeoutError
from dtimeout.hookspecs import hookimpl
from dtimeout.model import DueTimeout, OrphanPolicy
from dtimeout.retries import RetryPolicy


def register(app: typer.Typer) -> None:
    run_app = typer.Typer(
        cls=help.Group,
        help="Long-running consumer and producer processes.",
        no_args_is_help=True,
    )
    run_app.command("consume")(consume)
    run_app.command("produce")(produce)
    app.add_typer(run_app, name="run")


# --------------------------------------------------------------------------------------------
# helpers


def load_app(spec: str, source: str = "--app") -> Timeouts:
    """Import ``module:attr`` (``attr`` may be dotted) and return the ``Timeouts`` it names.

    A callable that is not a ``Timeouts`` is treated as a factory and called with no arguments.
    The current directory is importable, as with ``python -m``. ``source`` is where the spec came
    from (``--app``, ``DTIMEOUT_APP``, a config file key), so an error names what to fix.
    """
    where = f"{source} {spec!r}"
    module_name, _, attr_path = spec.partition(":")
    if not module_name or not attr_path:
        raise ConfigurationError(f"{where}: expected module:attribute")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise ConfigurationError(f"{where}: no module named {exc.name!r}") from exc
        raise DtimeoutError(f"{where}: importing {module_name} failed: {exc}") from exc
    except DtimeoutError:
        raise
    except Exception as exc:
        raise DtimeoutError(
            f"{where}: importing {module_name} raised {type(exc).__name__}: {exc}"
        ) from exc
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise ConfigurationError(f"{where}: {module_name} has no attribute {part!r}")
        obj = getattr(obj, part)
    if not isinstance(obj, Timeouts) and callable(obj):
        obj = obj()
    if not isinstance(obj, Timeouts):
        raise ConfigurationError(f"{where} is a {type(obj).__name__}, not a dtimeout.Timeouts")
    return obj


class _EventPrinter:
    """Prints what a consumer does, from the lifecycle hooks (so it sees drops too)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def _line(self, text: str) -> None:
        with self._lock:
            echo(text)

    @hookimpl
    def dtimeout_timeout_fired(self, timeout: DueTimeout, lateness_ms: int) -> None:
        self._line(
            f"fired {timeout.kind}:{timeout.key} (generation {timeout.generation}, "
            f"attempt {timeout.attempt}, {lateness_ms} ms after due)"
        )

    @hookimpl
    def dtimeout_message_dropped(self, message_id: str, reason: str) -> None:
        self._line(f"already handled {message_id}: {reason}")

    @hookimpl
    def dtimeout_timeout_failed(
        self, timeout: DueTimeout, error: BaseException, will_retry: bool
    ) -> None:
        then = "will retry" if will_retry else "no attempts left"
        self._line(
            f"failed {timeout.idempotency_key} attempt {timeout.attempt}: "
            f"{type(error).__name__}: {one_line(str(error))} ({then})"
        )

    @hookimpl
    def dtimeout_message_dead_lettered(self, message_id: str, reason: str) -> None:
        self._line(f"dead-lettered {message_id}: {one_line(reason)}")


def summarize(stats: ConsumerStats) -> dict[str, Any]:
    data = stats.as_dict()
    data["already_handled"] = sum(stats.dropped.values())
    lateness = sorted(stats.lateness_ms)
    for pct in (50, 99):
        data[f"lateness_p{pct}_ms"] = (
            lateness[min(len(lateness) - 1, (len(lateness) * pct) // 100)] if lateness else None
        )
    return data


# --------------------------------------------------------------------------------------------
# commands


def consume(
    ctx: typer.Context,
    app_spec: Annotated[
        str | None,
        typer.Option(
            "--app",
            metavar="MODULE:ATTR",
            help="Your Timeouts object (or a factory returning one); env DTIMEOUT_APP.",
        ),
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(min=1, help="Handler threads (env DTIMEOUT_CONCURRENCY; default 1)."),
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(min=1, help="Messages per receive (default: automatic).")
    ] = None,
    once: Annotated[
        bool, typer.Option("--once", help="One receive cycle, finish it, exit.")
    ] = False,
    burst: Annotated[
        bool, typer.Option("--burst", help="Exit once nothing has arrived for --idle.")
    ] = False,
    idle: Annotated[
        timedelta,
        typer.Option(
            parser=params.duration,
            metavar="DURATION",
            show_default="2s",
            help="Idle time for --burst.",
        ),
    ] = timedelta(seconds=2),
    orphans: Annotated[
        OrphanPolicy | None,
        typer.Option(
            "--orphans",
            case_sensitive=False,
            help="A message whose record is gone: fire it (default) or drop it (env "
            "DTIMEOUT_ORPHANS; on the command line it overrides the app's own choice).",
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the summary.")] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the summary as JSON (no event lines).")
    ] = False,
) -> None:
    """Run the handlers of --app as their timeouts come due, until SIGINT/SIGTERM."""
    state = get_state(ctx)
    if state.transport is not None or state.store is not None:
        raise typer.BadParameter(
            "they do not apply to 'run consume': the --app object owns its providers (build "
            "it with URLs, or with Timeouts() and DTIMEOUT_TRANSPORT/DTIMEOUT_STORE)",
            ctx=ctx,
            param_hint=["--transport", "--store"],
        )
    settings = state.settings_with(
        app=app_spec, concurrency=concurrency, batch_size=batch_size, orphans=orphans
    )
    if settings.app is None:
        raise typer.BadParameter(
            "missing: name a Timeouts object with handlers as MODULE:ATTR (or set DTIMEOUT_APP)",
            ctx=ctx,
            param_hint=["--app"],
        )
    app_source = settings.source_of("app")
    timeouts = load_app(settings.app, app_source)
    if not timeouts.handlers:
        raise ConfigurationError(f"{app_source} {settings.app!r} has no handlers registered")
    if orphans is not None:
        # The app built its Timeouts (and its orphan policy) itself; an explicit option is the
        # operator's decision for this consumer, so it wins. DTIMEOUT_ORPHANS and the config
        # file already reached an app built with Timeouts() from configuration.
        timeouts.orphans = settings.orphans
    consumer = timeouts.consumer(
        concurrency=settings.concurrency,
        batch_size=settings.batch_size,
        wait_seconds=settings.wait.total_seconds(),
    )
    printer = _EventPrinter() if not (quiet or as_json) else None
    pm = timeouts.plugin_manager
    if printer is not None:
        pm.register(printer, name=f"dtimeout-cli-printer-{id(printer)}")
    if not (quiet or as_json):
        kinds = ", ".join(sorted(timeouts.handlers))
        echo(
            f"consuming {kinds} with {settings.concurrency} worker(s), orphans "
            f"{timeouts.orphans.value}; Ctrl-C or SIGTERM stops gracefully"
        )
    # The guard stays installed until the summary is out: a repeated signal arriving while the
    # consumer settles its last handlers must not cut the summary off.
    with StopOnSignal(consumer.stop, "finishing in-flight handlers"):
        try:
            if once:
                consumer.run_once()
                consumer.drain()
            elif burst:
                consumer.run(max_idle_seconds=idle.total_seconds())
            else:
                consumer.run()
        finally:
            if printer is not None:
                pm.unregister(printer)
            timeouts.close()
        _print_consume_summary(consumer.stats, as_json)


def _print_consume_summary(stats: ConsumerStats, as_json: bool) -> None:
    summary = summarize(stats)
    if as_json:
        print_json(summary)
        return
    drops = ", ".join(f"{k} {v}" for k, v in sorted(stats.dropped.items()))
    lateness = (
        f"; lateness p50 {summary['lateness_p50_ms']} ms, p99 {summary['lateness_p99_ms']} ms"
        if summary["lateness_p50_ms"] is not None
        else ""
    )
    echo(
        f"stopped: fired {summary['fired']}, already handled {summary['already_handled']}"
        f"{f' ({drops})' if drops else ''}, failed {summary['failed']}, "
        f"dead-lettered {summary['dead_lettered']}{lateness}"
    )


def produce(
    ctx: typer.Context,
    count: Annotated[
        int | None, typer.Option(min=1, help="Stop after this many (default: until stopped).")
    ] = None,
    interval: Annotated[
        timedelta,
        typer.Option(
            parser=params.duration,
            metavar="DURATION",
            show_default="3s",
            help="Time between timeouts.",
        ),
    ] = timedelta(seconds=3),
    delay: Annotated[
        timedelta,
        typer.Option(
            parser=params.duration,
            metavar="DURATION",
            show_default="6s",
            help="Each timeout's delay.",
        ),
    ] = timedelta(seconds=6),
    complete_ratio: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="Share whose complementary action (cancel) follows."),
    ] = 0.6,
    kind: Annotated[str, typer.Option(help="Kind to schedule.")] = DEMO_KIND,
    key_prefix: Annotated[
        str | None, typer.Option(help="Key prefix (default: order-<run id>-).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed, for repeatable runs.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the summary.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """The seed's producer: one timeout every --interval, some cancelled before due.

    For --complete-ratio of them the complementary action (cancel) follows at a random moment
    before due. Run 'dtimeout run consume --app dtimeout.demo:seed_app' beside it to fire the
    others.
    """
    options = ProduceOptions(
        count=count,
        interval=interval,
        delay=delay,
        complete_ratio=complete_ratio,
        kind=kind,
        key_prefix=key_prefix if key_prefix is not None else f"order-{run_id()}-",
        seed=seed,
    )
    printing = not (quiet or as_json)

    def show(event: ProduceEvent) -> None:
        if not printing:
            return
        if event.what == "scheduled":
            echo(f"scheduled {event.kind}:{event.key} (fires in {format_duration(delay)})")
        else:
            assert event.result is not None
            echo(f"completed {event.kind}:{event.key}: cancel answered {event.result.value}")

    # A long-running process: it rides out provider outages with the full retry policy.
    with get_state(ctx).open_timeouts(retry=RetryPolicy(), one_shot=False) as timeouts:
        producer = Producer(timeouts, options, show)
        with StopOnSignal(producer.stop, "no new timeouts; finishing planned cancels"):
            summary = producer.run()
            _print_produce_summary(summary, as_json)


def _print_produce_summary(summary: ProduceSummary, as_json: bool) -> None:
    if as_json:
        print_json({"scheduled": summary.scheduled, "completed": summary.completions})
        return
    answers = ", ".join(f"{k} {v}" for k, v in sorted(summary.completions.items()))
    completed = sum(summary.completions.values())
    to_fire = summary.scheduled - summary.completions.get("cancelled", 0)
    echo(
        f"produced {summary.scheduled}: completed {completed}"
        f"{f' ({answers})' if answers else ''}, left to fire {to_fire}"
    )
