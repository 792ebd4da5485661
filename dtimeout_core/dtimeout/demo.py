"""The seed's scenario as a library: a producer, the complementary action, consumers, a tally.

``dtimeout run produce`` runs :class:`Producer` alone (the consumers are other processes);
``dtimeout demo`` runs :func:`run_demo`, which wires a producer and several consumers on the
same providers inside one process and then checks its own invariants: no duplicate fire, none
lost, no fire for a timeout whose cancel answered ``cancelled``, none early, and the store
agreeing with what the handlers saw. A demo that only printed numbers would prove nothing.

A run can be stopped early through the ``stop`` event (the CLI sets it on SIGINT/SIGTERM): the
producer stops at once (planned cancels are dropped too), the consumers finish what they hold,
and the tally covers what happened so far — timeouts neither fired nor cancelled yet count as
``unsettled``, not ``lost``. Every actor thread is joined (within ``SHUTDOWN_SECONDS``) before
its providers are closed: closing SQLite connections under threads still using them, or letting
the interpreter shut down around them, can crash the process.
"""

from __future__ import annotations

import heapq
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from dtimeout.app import Timeouts
from dtimeout.clock import to_ms
from dtimeout.errors import DtimeoutError
from dtimeout.model import CancelResult, DueTimeout, TimeoutState

if TYPE_CHECKING:
    from dtimeout.consumer import Consumer

log = logging.getLogger(__name__)

DEMO_KIND = "demo"
SHUTDOWN_SECONDS = 10.0  # how long stopping may take before the demo gives up on its threads


class DemoStuckError(DtimeoutError):
    """Raised when actor threads did not stop within ``SHUTDOWN_SECONDS``; their providers are
    left open (closing them under a running thread is what crashes), so the caller should end
    the process."""


def run_id() -> str:
    """A short token that keeps the keys of one run apart from every other run's."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:4]


# --------------------------------------------------------------------------------------------
# The producer (``run produce`` and the demo)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProduceOptions:
    count: int | None = None  # None: until stopped
    interval: timedelta = timedelta(seconds=3)
    delay: timedelta = timedelta(seconds=6)
    complete_ratio: float = 0.6
    kind: str = DEMO_KIND
    key_prefix: str = "order-"
    seed: int | None = None


@dataclass(frozen=True)
class ProduceEvent:
    """``scheduled`` (with ``due_at_ms``) or ``completed`` (with the cancel's answer)."""

    what: str
    kind: str
    key: str
    due_at_ms: int
    result: CancelResult | None = None


@dataclass
class ProduceSummary:
    scheduled: int = 0
    completions: dict[str, int] = field(default_factory=dict)  # cancel answer -> count


class Producer:
    """Schedules one timeout every ``interval``; for ``complete_ratio`` of them the
    complementary action (cancel) follows at a random moment before the timeout is due."""

    def __init__(
        self,
        timeouts: Timeouts,
        options: ProduceOptions,
        on_event: Callable[[ProduceEvent], None] | None = None,
    ) -> None:
        if not 0.0 <= options.complete_ratio <= 1.0:
            raise ValueError("complete_ratio must be between 0 and 1")
        self.timeouts = timeouts
        self.options = options
        self.on_event = on_event
        self.summary = ProduceSummary()
        self.done = threading.Event()
        self._stop = threading.Event()
        self._drop_planned = False
        self._rng = random.Random(options.seed)

    def stop(self, *, finish_planned: bool = True) -> None:
        """Stop scheduling. Cancels already planned are still made (they are due soon) unless
        ``finish_planned`` is false — an interrupted demo stops at once."""
        self._drop_planned = self._drop_planned or not finish_planned
        self._stop.set()

    def run(self) -> ProduceSummary:
        opts = self.options
        interval = opts.interval.total_seconds()
        delay = opts.delay.total_seconds()
        planned: list[tuple[float, int, str, int]] = []  # (when, seq, key, due_at_ms)
        next_at = time.monotonic()
        made = 0
        try:
            while True:
                if self._drop_planned:
                    return self.summary
                now = time.monotonic()
                while planned and planned[0][0] <= now:
                    _, _, key, due = heapq.heappop(planned)
                    result = self.timeouts.cancel(opts.kind, key)
                    counts = self.summary.completions
                    counts[result.value] = counts.get(result.value, 0) + 1
                    self._emit(ProduceEvent("completed", opts.kind, key, due, result))
                more = not self._stop.is_set() and (opts.count is None or made < opts.count)
                if more and now >= next_at:
                    made += 1
                    key = f"{opts.key_prefix}{made}"
                    record = self.timeouts.schedule(opts.kind, key, after=opts.delay)
                    self.summary.scheduled += 1
                    self._emit(ProduceEvent("scheduled", opts.kind, key, record.due_at_ms))
                    if self._rng.random() < opts.complete_ratio:
                        when = now + self._rng.uniform(0.0, delay * 0.9)
                        heapq.heappush(planned, (when, made, key, record.due_at_ms))
                    next_at += interval
                    continue
                if not more and not planned:
                    return self.summary
                targets = ([next_at] if more else []) + ([planned[0][0]] if planned else [])
                # Sleep until the next action; a stop() wakes us (it only ends scheduling).
                self._stop.wait(min(max(0.0, min(targets) - time.monotonic()), 0.5))
        finally:
            self.done.set()

    def _emit(self, event: ProduceEvent) -> None:
        if self.on_event is not None:
            self.on_event(event)


# --------------------------------------------------------------------------------------------
# The demo
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoOptions:
    count: int = 50
    delay: timedelta = timedelta(seconds=2)
    complete_ratio: float = 0.6
    interval: timedelta = timedelta(milliseconds=100)
    consumers: int = 2
    concurrency: int = 2
    settle_timeout: timedelta = timedelta(seconds=15)  # after the last due time
    seed: int | None = None


@dataclass(frozen=True)
class DemoProgress:
    scheduled: int
    cancelled: int
    too_late: int
    fired: int
    total: int
    elapsed_s: float

    @property
    def settled(self) -> int:
        return self.cancelled + self.fired


@dataclass
class DemoTally:
    """The result table, and the invariants the demo checks."""

    scheduled: int = 0
    cancelled: int = 0  # completed before due: cancel answered ``cancelled``
    fired: int = 0  # distinct timeouts whose handler ran
    too_late: int = 0  # cancels that answered ``too_late``
    duplicates: int = 0  # handler runs beyond the first, per timeout
    lost: int = 0  # neither fired nor cancelled at the end
    early: int = 0  # handler started before the due time
    cancelled_but_fired: int = 0  # cancel said ``cancelled`` and the handler ran anyway
    store_mismatches: int = 0  # the store's final state disagrees with what was observed
    unsettled: int = 0  # stopped early: neither fired nor cancelled yet (not a failure)
    interrupted: str | None = None  # why it stopped early (the signal's name), None: it did not
    lateness_p50_ms: float | None = None
    lateness_p99_ms: float | None = None
    elapsed_s: float = 0.0

    def problems(self) -> list[str]:
        names = ("duplicates", "lost", "early", "cancelled_but_fired", "store_mismatches")
        return [f"{n}={getattr(self, n)}" for n in names if getattr(self, n)]

    @property
    def ok(self) -> bool:
        return not self.problems()

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        return data


class _Observed:
    """What the handlers and the canceller saw, shared by the demo's threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.runs: dict[str, list[tuple[int, int]]] = {}  # key -> [(started_ms, due_ms)]
        self.answers: dict[str, CancelResult] = {}
        self.scheduled: set[str] = set()

    def handler(self, t: DueTimeout) -> None:
        started = time.time_ns() // 1_000_000
        with self.lock:
            self.runs.setdefault(t.key, []).append((started, to_ms(t.due_at)))

    def on_produce(self, event: ProduceEvent) -> None:
        with self.lock:
            if event.what == "scheduled":
                self.scheduled.add(event.key)
            elif event.result is not None:
                self.answers[event.key] = event.result

    def progress(self, total: int, started: float) -> DemoProgress:
        with self.lock:
            answers = list(self.answers.values())
            return DemoProgress(
                scheduled=len(self.scheduled),
                cancelled=answers.count(CancelResult.CANCELLED),
                too_late=answers.count(CancelResult.TOO_LATE),
                fired=len(self.runs),
                total=total,
                elapsed_s=time.monotonic() - started,
            )

    def settled(self) -> bool:
        with self.lock:
            return all(
                k in self.runs or self.answers.get(k) is CancelResult.CANCELLED
                for k in self.scheduled
            )


def run_demo(
    open_timeouts: Callable[[], Timeouts],
    options: DemoOptions | None = None,
    on_progress: Callable[[DemoProgress], None] | None = None,
    stop: threading.Event | None = None,
) -> DemoTally:
    """Run the scenario and return the tally; ``open_timeouts`` gives one object per actor
    (producer, each consumer) as separate processes would have. Setting ``stop`` ends the run
    early (from any thread); the tally then has ``interrupted`` set."""
    options = options or DemoOptions()
    stop = stop if stop is not None else threading.Event()
    started = time.monotonic()
    observed = _Observed()
    prefix = f"{run_id()}-"
    produce = ProduceOptions(
        count=options.count,
        interval=options.interval,
        delay=options.delay,
        complete_ratio=options.complete_ratio,
        key_prefix=prefix,
        seed=options.seed,
    )
    actors: list[Timeouts] = []
    threads_stopped = True
    try:
        producer_side = open_timeouts()
        actors.append(producer_side)
        consumers: list[Consumer] = []
        for _ in range(options.consumers):
            side = open_timeouts()
            actors.append(side)
            side.handler(DEMO_KIND)(observed.handler)
            consumers.append(side.consumer(concurrency=options.concurrency, wait_seconds=0.2))
        producer = Producer(producer_side, produce, observed.on_produce)
        try:
            _drive(producer, consumers, observed, options, started, on_progress, stop)
        except DemoStuckError:
            threads_stopped = False
            raise
        if on_progress is not None:
            on_progress(observed.progress(options.count, started))
        tally = _tally(observed, producer_side, time.monotonic() - started, stop.is_set())
        tally.interrupted = "stopped" if stop.is_set() else None
        return tally
    finally:
        if threads_stopped:
            for actor in actors:
                actor.close()


def _drive(
    producer: Producer,
    consumers: list[Consumer],
    observed: _Observed,
    options: DemoOptions,
    started: float,
    on_progress: Callable[[DemoProgress], None] | None,
    stop: threading.Event,
) -> None:
    """Run the actors' threads until every timeout settled, the deadline passed or ``stop`` was
    set; then stop them and join them all (bounded by ``SHUTDOWN_SECONDS``).

    An exception in any actor stops the run and is re-raised here; so is Ctrl-C when no signal
    handling is installed, after the threads were stopped and joined."""
    errors: list[BaseException] = []

    def guarded(fn: Callable[[], object]) -> Callable[[], None]:
        def target() -> None:
            try:
                fn()
            except BaseException as exc:  # re-raised on the calling thread below
                errors.append(exc)

        return target

    threads = [
        threading.Thread(target=guarded(c.run), name=f"consumer-{i}", daemon=True)
        for i, c in enumerate(consumers)
    ]
    threads.append(threading.Thread(target=guarded(producer.run), name="producer", daemon=True))
    for thread in threads:
        thread.start()
    try:
        deadline: float | None = None
        while not errors and not stop.is_set():
            if on_progress is not None:
                on_progress(observed.progress(options.count, started))
            if producer.done.is_set():
                if deadline is None:
                    wait = options.delay + options.settle_timeout
                    deadline = time.monotonic() + wait.total_seconds()
                if observed.settled() or time.monotonic() >= deadline:
                    break
            stop.wait(0.1)
        if not stop.is_set():
            time.sleep(0.3)  # a late duplicate would show up now, not after we stopped looking
    finally:
        producer.stop(finish_planned=not stop.is_set())
        for consumer in consumers:
            consumer.stop()
        end = time.monotonic() + SHUTDOWN_SECONDS
        for thread in threads:
            thread.join(timeout=max(0.0, end - time.monotonic()))
        stuck = [thread.name for thread in threads if thread.is_alive()]
        if stuck:
            raise DemoStuckError(
                f"the demo's {', '.join(stuck)} thread(s) did not stop within "
                f"{SHUTDOWN_SECONDS:g} s"
            )
    if errors:
        raise errors[0]


def _tally(observed: _Observed, timeouts: Timeouts, elapsed: float, interrupted: bool) -> DemoTally:
    tally = DemoTally(elapsed_s=round(elapsed, 2))
    lateness: list[int] = []
    for key in sorted(observed.scheduled):
        runs = observed.runs.get(key, [])
        answer = observed.answers.get(key)
        tally.scheduled += 1
        if answer is CancelResult.CANCELLED:
            tally.cancelled += 1
            tally.cancelled_but_fired += bool(runs)
        elif answer is CancelResult.TOO_LATE:
            tally.too_late += 1
        if runs:
            tally.fired += 1
            tally.duplicates += len(runs) - 1
            tally.early += sum(1 for started, due in runs if started < due)
            lateness.append(runs[0][0] - runs[0][1])
        elif answer is not CancelResult.CANCELLED:
            if interrupted:
                tally.unsettled += 1  # it may still fire: nobody waited for it
            else:
                tally.lost += 1
        record = timeouts.status(DEMO_KIND, key)
        expected = TimeoutState.CANCELLED if answer is CancelResult.CANCELLED else None
        if runs:
            expected = TimeoutState.FIRED
        if expected is not None and (record is None or record.state is not expected):
            tally.store_mismatches += 1
    if lateness:
        lateness.sort()
        tally.lateness_p50_ms = float(_percentile(lateness, 50))
        tally.lateness_p99_ms = float(_percentile(lateness, 99))
    return tally


def _percentile(sorted_values: list[int], pct: int) -> int:
    index = min(len(sorted_values) - 1, max(0, round(pct / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]


# --------------------------------------------------------------------------------------------
# The seed's consumer app, for ``dtimeout run consume --app dtimeout.demo:seed_app``
# --------------------------------------------------------------------------------------------


def seed_app() -> Timeouts:
    """A ``Timeouts`` from configuration with a handler for the ``demo`` kind that ``run
    produce`` schedules. The CLI prints what fires; the handler itself only logs."""
    timeouts = Timeouts()

    @timeouts.handler(DEMO_KIND)
    def timed_out(t: DueTimeout) -> None:
        log.info("timeout %s fired (attempt %d)", t.idempotency_key, t.attempt)

    return timeouts
