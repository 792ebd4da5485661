"""``dtimeout bench``: throughput, lateness, round trips and consumer memory on any providers.

Generic over every transport and store: it drives the public API (``Timeouts``) and one consumer
in a child process, exactly as an application would, and reads the providers' ``stats()`` for
round trips. Phases, each reported on its own:

1. **single schedule** — ``schedule()`` one call at a time (far-future timeouts), then one
   ``cancel()`` at a time for part of them and ``cancel_many`` for the rest.
2. **batched schedule** — ``schedule_many`` in batches, then ``cancel_many`` (cleans up).
3. **pending** (optional) — park N far-future timeouts that stay pending while the consumer
   runs: its memory must not depend on them (they live in the store, not in the process).
4. **sustained fire** — ``count`` timeouts already due when the consumer starts; the rate is
   fired / (last handler start - first handler start): schedule → due → handler → FIRED.
5. **lateness** — ``rate`` timeouts/s offered for ``duration`` seconds, each due ``delay`` after
   it was scheduled, with the consumer running: lateness = handler start - due, p50…max.

Round trips per fired timeout count every provider request of both processes (scheduling and
consuming) during the fire and lateness phases, divided by what fired. Numbers come from the
machine they run on: the bench reports, it never asserts.
"""

from __future__ import annotations

import multiprocessing
import resource
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

from dtimeout.app import ScheduleItem, Timeouts
from dtimeout.model import DueTimeout

FIRE_KIND = "bench-fire"
LATE_KIND = "bench-late"
FAR = timedelta(hours=6)  # "never fires during the bench"
_SPAWN = multiprocessing.get_context("spawn")


@dataclass
class BenchOptions:
    """What to run; the defaults finish in well under a minute on a local Redis."""

    transport: str
    store: str
    count: int = 20_000  # batched schedule phase and sustained-fire phase
    single: int = 2_000  # single schedule() calls
    batch: int = 1_000  # items per schedule_many / cancel_many call
    rate: float = 5_000.0  # offered timeouts/s in the lateness phase
    duration: float = 10.0  # seconds of offered load
    delay: float = 1.0  # seconds from schedule to due in the lateness phase
    pending: int = 0  # far-future timeouts parked during the consumer's run
    concurrency: int = 8  # consumer handler threads
    batch_size: int = 500  # consumer receive batch
    phases: tuple[str, ...] = ("single", "batched", "fire", "lateness")


@dataclass
class BenchReport:
    options: dict[str, Any]
    results: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"options": self.options, "results": self.results}


def round_trips(stats: Mapping[str, int]) -> int:
    """A provider's request count, whatever it calls it."""
    for name in ("round_trips", "requests", "calls"):
        if name in stats:
            return int(stats[name])
    return 0


def _trips(timeouts: Timeouts) -> int:
    return round_trips(timeouts.transport.stats()) + round_trips(timeouts.store.stats())


def percentiles(values: list[int]) -> dict[str, float]:
    """p50/p95/p99/max (nearest rank) of ``values`` in ms; empty gives zeros."""
    if not values:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0, "n": 0}
    ordered = sorted(values)

    def rank(p: float) -> float:
        return float(ordered[min(len(ordered) - 1, max(0, round(p * len(ordered)) - 1))])

    return {
        "p50": rank(0.50),
        "p95": rank(0.95),
        "p99": rank(0.99),
        "max": float(ordered[-1]),
        "n": len(ordered),
    }


def _rate(n: int, seconds: float) -> float:
    return round(n / seconds, 1) if seconds > 0 else 0.0


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# -- the consumer process --------------------------------------------------------------------------


def consumer_main(opts: dict[str, Any], conn: Any, counts: Any) -> None:
    """Child process: consume until told to stop; report handler timings, stats and peak RSS.

    Messages: parent → child ``("stop", None)``; child → parent ``("ready", None)`` then
    ``("result", dict)``. ``counts`` (shared ints: fire, late) lets the parent watch progress.
    Handler starts are recorded per kind with the wall clock (both processes share the host's
    clock, so lateness is comparable with due times).
    """
    timeouts = Timeouts(opts["transport"], opts["store"], lease=timedelta(seconds=30))
    starts: dict[str, list[int]] = {FIRE_KIND: [], LATE_KIND: []}
    lateness: list[int] = []

    @timeouts.handler(FIRE_KIND)
    def fire(t: DueTimeout) -> None:
        starts[FIRE_KIND].append(time.time_ns() // 1_000_000)
        with counts.get_lock():
            counts[0] += 1

    @timeouts.handler(LATE_KIND)
    def late(t: DueTimeout) -> None:
        now = time.time_ns() // 1_000_000
        starts[LATE_KIND].append(now)
        lateness.append(now - int(t.due_at.timestamp() * 1000))
        with counts.get_lock():
            counts[1] += 1

    consumer = timeouts.consumer(
        concurrency=opts["concurrency"], batch_size=opts["batch_size"], wait_seconds=0.05
    )
    stop = threading.Event()

    def listen() -> None:
        while not stop.is_set():
            if conn.poll(0.1) and conn.recv()[0] == "stop":
                stop.set()

    threading.Thread(target=listen, daemon=True).start()
    conn.send(("ready", None))
    stats = consumer.run(stop_when=stop.is_set)
    conn.send(
        (
            "result",
            {
                "starts": starts,
                "lateness": lateness,
                "round_trips": _trips(timeouts),
                "stats": stats.as_dict(),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            },
        )
    )
    timeouts.close()


class ConsumerProcess:
    def __init__(self, options: BenchOptions) -> None:
        self.parent, child = _SPAWN.Pipe()
        self.counts = _SPAWN.Array("q", 2)
        args = {
            "transport": options.transport,
            "store": options.store,
            "concurrency": options.concurrency,
            "batch_size": options.batch_size,
        }
        self.process = _SPAWN.Process(
            target=consumer_main, args=(args, child, self.counts), daemon=True
        )
        self.process.start()
        self._wait_for("ready", 60)

    def _wait_for(self, what: str, seconds: float) -> Any:
        if not self.parent.poll(seconds):
            self.process.kill()
            raise RuntimeError(f"bench consumer did not report {what!r} in {seconds:.0f}s")
        kind, value = self.parent.recv()
        if kind != what:
            raise RuntimeError(f"bench consumer sent {kind!r}, expected {what!r}")
        return value

    def stop(self) -> dict[str, Any]:
        self.parent.send(("stop", None))
        result: dict[str, Any] = self._wait_for("result", 120)
        self.process.join(30)
        return result


# -- the phases ------------------------------------------------------------------------------------


def _single(t: Timeouts, o: BenchOptions, tag: str) -> dict[str, Any]:
    keys = [f"{tag}-s{i}" for i in range(o.single)]
    started = time.perf_counter()
    for key in keys:
        t.schedule(FIRE_KIND, key, after=FAR)
    scheduled = time.perf_counter() - started
    one_by_one = keys[: max(1, len(keys) // 2)]
    started = time.perf_counter()
    for key in one_by_one:
        t.cancel(FIRE_KIND, key)
    cancelled = time.perf_counter() - started
    rest = keys[len(one_by_one) :]
    started = time.perf_counter()
    for chunk in _chunks(rest, o.batch):
        t.cancel_many([(FIRE_KIND, k) for k in chunk])
    batched = time.perf_counter() - started
    return {
        "schedule_per_s": _rate(len(keys), scheduled),
        "cancel_per_s": _rate(len(one_by_one), cancelled),
        "cancel_many_per_s": _rate(len(rest), batched),
    }


def _batched(t: Timeouts, o: BenchOptions, tag: str) -> dict[str, Any]:
    keys = [f"{tag}-b{i}" for i in range(o.count)]
    trips = _trips(t)
    started = time.perf_counter()
    for chunk in _chunks(keys, o.batch):
        t.schedule_many(ScheduleItem(FIRE_KIND, k, after=FAR) for k in chunk)
    scheduled = time.perf_counter() - started
    schedule_trips = _trips(t) - trips
    started = time.perf_counter()
    for chunk in _chunks(keys, o.batch):
        t.cancel_many([(FIRE_KIND, k) for k in chunk])
    cancelled = time.perf_counter() - started
    return {
        "schedule_many_per_s": _rate(len(keys), scheduled),
        "cancel_many_per_s": _rate(len(keys), cancelled),
        "round_trips_per_scheduled": round(schedule_trips / max(1, len(keys)), 4),
    }


def _park(t: Timeouts, o: BenchOptions, tag: str) -> dict[str, Any]:
    started = time.perf_counter()
    for start in range(0, o.pending, o.batch):
        stop = min(o.pending, start + o.batch)
        t.schedule_many(
            ScheduleItem(FIRE_KIND, f"{tag}-p{i}", after=FAR) for i in range(start, stop)
        )
    return {"pending": o.pending, "seconds": round(time.perf_counter() - started, 1)}


def _offer(t: Timeouts, o: BenchOptions, tag: str) -> tuple[int, float]:
    """Schedule at ``rate`` per second for ``duration`` seconds in 10 ms ticks; returns how many
    were scheduled and the rate actually achieved."""
    total = int(o.rate * o.duration)
    tick = 0.01
    per_tick = max(1, round(o.rate * tick))
    sent = 0
    started = time.perf_counter()
    while sent < total:
        target = started + (sent / o.rate)
        pause = target - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        n = min(per_tick, total - sent)
        t.schedule_many(
            ScheduleItem(LATE_KIND, f"{tag}-l{sent + i}", after=o.delay) for i in range(n)
        )
        sent += n
    return sent, _rate(sent, time.perf_counter() - started)


def _wait(done: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if done():
            return True
        time.sleep(0.05)
    return done()


def run_bench(options: BenchOptions, progress: Callable[[str], None] | None = None) -> BenchReport:
    """Run the selected phases; every timeout it creates uses a fresh key tag."""
    say = progress or (lambda _text: None)
    report = BenchReport(options=asdict(options))
    tag = uuid.uuid4().hex[:8]
    with Timeouts(options.transport, options.store) as t:
        if "single" in options.phases:
            say(f"single schedule: {options.single} calls")
            report.results["single"] = _single(t, options, tag)
        if "batched" in options.phases:
            say(f"schedule_many: {options.count} timeouts in batches of {options.batch}")
            report.results["batched"] = _batched(t, options, tag)
        if options.pending:
            say(f"parking {options.pending} far-future timeouts")
            report.results["pending"] = _park(t, options, tag)
        if not {"fire", "lateness"} & set(options.phases):
            return report
        fire_keys = [f"{tag}-f{i}" for i in range(options.count)]
        producer_trips = _trips(t)
        if "fire" in options.phases:
            say(f"sustained fire: {options.count} timeouts due now")
            for chunk in _chunks(fire_keys, options.batch):
                t.schedule_many(ScheduleItem(FIRE_KIND, k, after=0) for k in chunk)
        consumer = ConsumerProcess(options)
        try:
            if "fire" in options.phases:
                _wait(lambda: consumer.counts[0] >= len(fire_keys), 300)
            offered: tuple[int, float] = (0, 0.0)
            if "lateness" in options.phases:
                say(f"lateness: {options.rate:.0f}/s for {options.duration:.0f}s")
                offered = _offer(t, options, tag)
                _wait(lambda: consumer.counts[1] >= offered[0], 120)
        finally:
            result = consumer.stop()
        producer_trips = _trips(t) - producer_trips
    fire_starts = result["starts"][FIRE_KIND]
    fired_total = len(fire_starts) + len(result["starts"][LATE_KIND])
    if fire_starts:
        span = (max(fire_starts) - min(fire_starts)) / 1000
        report.results["fire"] = {
            "fired": len(fire_starts),
            "fired_per_s": _rate(len(fire_starts), span),
        }
    if "lateness" in options.phases:
        report.results["lateness"] = {
            "offered": offered[0],
            "offered_per_s": offered[1],
            "fired": len(result["lateness"]),
            "lateness_ms": percentiles(result["lateness"]),
        }
    report.results["consumer"] = {
        "round_trips": result["round_trips"],
        "producer_round_trips": producer_trips,
        "round_trips_per_fired": round(
            (result["round_trips"] + producer_trips) / max(1, fired_total), 4
        ),
        "consumer_round_trips_per_fired": round(result["round_trips"] / max(1, fired_total), 4),
        "peak_rss_mb": result["peak_rss_mb"],
        "stats": result["stats"],
    }
    return report
