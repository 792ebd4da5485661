"""dtimeout next to arq and Celery on the same Redis: delayed jobs scheduled, cancelled and fired.

Issue 3 asks for the queues our users reach for instead of dtimeout to be measured on the same
server, the same machine and with one worker process each, so that the figures can be read side
by side. Every tool is driven through its public API by the same code, one tool after the
other, against one ``redis-server`` this script starts on a free loopback port (no
persistence) and flushes between tools:

1. schedule rate: ``count`` far-future jobs, one call at a time, then in batches where the tool
   has a batch API (dtimeout ``schedule_many``; arq and Celery have none);
2. cancel rate of those, one call at a time (dtimeout ``cancel``, arq ``Job.abort``, Celery
   ``revoke``), and batched where offered (``cancel_many``; Celery's ``revoke`` takes a list).
   The worker runs meanwhile: a Celery revoke is a broadcast only a running worker hears, and
   an arq abort is carried out by the worker;
3. sustained fire: ``count`` jobs already due when the worker starts;
   rate = fired / (last handler start - first handler start);
4. lateness (handler start - due) p50/p95/p99/max at each ``--rate`` (200 and 500 jobs/s)
   offered for ``duration`` seconds, each due ``delay`` after it was scheduled, one call at a
   time: 200/s is well within every tool's fire rate here, 500/s is near arq's and Celery's;
5. correctness sample: 200 jobs due in 1-2 s, 60% of them cancelled at random moments (some
   well before due, some right at due, some just after), counting jobs that fired although
   their cancel answered "cancelled", duplicates and lost jobs, as measured;
6. Redis commands and reads per job (``INFO commandstats`` / ``INFO stats`` deltas over each
   lateness run, scheduling and firing together; a read is one network read by the server,
   about one round trip; commands run inside Lua scripts and MULTI blocks count in
   commandstats).

Handlers only record the job id and the wall-clock start in a file (workers and this process
share the host clock). Equal knobs: 8 handler threads/tasks per worker, a 50 ms poll where the
tool polls (dtimeout's receive wait, arq's ``poll_delay``; Celery's worker is push-based).

    uv run --group compare python benchmarks/compare_queues.py [--count N] [--json PATH]

About three minutes with the defaults. ``UV_PROJECT_ENVIRONMENT=/tmp/compare-venv`` in front
keeps arq and Celery out of the shared ``.venv``.

Numbers belong to the machine they were measured on; the table prints the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

from dtimeout.testing.servers import RedisServer

TOOLS = ("dtimeout", "arq", "celery")
KIND = "compare"  # dtimeout kind; arq function name and Celery task name derive from it
CELERY_TASK = "compare.fire"
CONCURRENCY = 8  # handler threads (dtimeout, Celery threads pool) / concurrent jobs (arq)
POLL_SECONDS = 0.05  # dtimeout receive wait and arq poll_delay
FAR_MS = 6 * 3600 * 1000  # "never fires during the run"
WORKER_START_TIMEOUT = 60.0
WORKER_STOP_TIMEOUT = 30.0
CORRECTNESS_JOBS = 200
CORRECTNESS_CANCEL_SHARE = 0.6
EARLY_MARGIN_MS = 50  # an "early" cancel is requested at least this long before due


def now_ms() -> float:
    return time.time_ns() / 1_000_000


def to_datetime(ms: float) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/max by nearest rank, as ``dtimeout bench`` computes them."""
    if not values:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0, "n": 0}
    ordered = sorted(values)

    def rank(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, max(0, round(p * len(ordered)) - 1))], 1)

    return {
        "p50": rank(0.50),
        "p95": rank(0.95),
        "p99": rank(0.99),
        "max": round(ordered[-1], 1),
        "n": len(ordered),
    }


def rate(n: int, seconds: float) -> float:
    return round(n / seconds, 1) if seconds > 0 else 0.0


def chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


# -- worker processes (this file run with --worker TOOL) ------------------------------------------


def _record(fd: int, job_id: str) -> None:
    """One line per handler start; a single O_APPEND write, so threads never interleave."""
    os.write(fd, f"{job_id} {now_ms():.3f}\n".encode())


def dtimeout_worker(url: str, fd: int, ready: Path) -> None:
    from dtimeout import DueTimeout, Timeouts

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    timeouts = Timeouts(url, url, lease=timedelta(seconds=30))

    @timeouts.handler(KIND)
    def fire(t: DueTimeout) -> None:
        _record(fd, t.key)

    consumer = timeouts.consumer(concurrency=CONCURRENCY, batch_size=500, wait_seconds=POLL_SECONDS)
    ready.touch()
    try:
        consumer.run(stop_when=stop.is_set)
    finally:
        timeouts.close()


def arq_worker(url: str, fd: int, ready: Path) -> None:
    from arq.connections import RedisSettings
    from arq.worker import Worker, func

    async def fire(ctx: dict[str, Any]) -> None:
        _record(fd, ctx["job_id"])

    async def startup(ctx: dict[str, Any]) -> None:
        ready.touch()

    worker = Worker(
        functions=[func(fire, name=KIND)],
        redis_settings=RedisSettings.from_dsn(url),
        max_jobs=CONCURRENCY,  # 32 or 100 fired no faster here: its event loop is the limit
        poll_delay=POLL_SECONDS,
        allow_abort_jobs=True,  # without it Job.abort() has no effect
        on_startup=startup,
        handle_signals=True,
    )
    worker.run()


def make_celery(url: str, fd: int | None = None) -> tuple[Any, Any]:
    """The Celery app and its one task, the same in the producer and the worker."""
    from celery import Celery  # type: ignore[import-untyped]

    app = Celery("compare", broker=url, set_as_current=False)
    app.conf.update(
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        task_default_queue="compare",
    )

    @app.task(name=CELERY_TASK, bind=True)  # type: ignore[untyped-decorator]
    def fire(self: Any) -> None:
        if fd is not None:
            _record(fd, self.request.id)

    return app, fire


def celery_worker(url: str, fd: int, ready: Path) -> None:
    from celery.signals import worker_ready  # type: ignore[import-untyped]

    app, _task = make_celery(url, fd)
    worker_ready.connect(lambda **_: ready.touch(), weak=False)
    app.worker_main(
        argv=[
            "worker",
            "--pool=threads",
            f"--concurrency={CONCURRENCY}",
            "--loglevel=ERROR",  # WARNING logs every revoke (no result backend)
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--hostname=compare@%h",
        ]
    )


WORKERS: dict[str, Callable[[str, int, Path], None]] = {
    "dtimeout": dtimeout_worker,
    "arq": arq_worker,
    "celery": celery_worker,
}


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it if this process dies, so no worker outlives us."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class WorkerProcess:
    """One worker subprocess of one tool; its handler starts are read back from a file."""

    def __init__(self, tool: str, url: str, workdir: Path, tag: str) -> None:
        self.out = workdir / f"{tool}-{tag}.fired"
        self.ready = workdir / f"{tool}-{tag}.ready"
        self.log_path = workdir / f"{tool}-{tag}.log"
        self.out.touch()
        with self.log_path.open("wb") as log:
            command = [sys.executable, __file__, "--worker", tool, "--url", url]
            command += ["--out", str(self.out), "--ready", str(self.ready)]
            self.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() takes all of it
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + WORKER_START_TIMEOUT
        while not self.ready.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{tool} worker did not start: {self.log_tail()}")
            time.sleep(0.05)
        self.ready_ms = self.ready.stat().st_mtime_ns / 1_000_000

    def log_tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def fired(self, prefix: str = "") -> list[tuple[str, float]]:
        """(job id, handler start in epoch ms) for every handler start so far."""
        rows = []
        for line in self.out.read_text().splitlines():
            job_id, _, start = line.partition(" ")
            if job_id.startswith(prefix) and start:
                rows.append((job_id, float(start)))
        return rows

    async def wait_fired(self, prefix: str, count: int, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if len(self.fired(prefix)) >= count:
                return True
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited: {self.log_tail()}")
            await asyncio.sleep(0.1)
        return len(self.fired(prefix)) >= count

    def stop(self) -> None:
        """SIGTERM (each tool's graceful shutdown), SIGKILL if it lingers; never raises."""
        for sig, wait in ((signal.SIGTERM, WORKER_STOP_TIMEOUT), (signal.SIGKILL, 10.0)):
            if self.process.poll() is not None:
                return
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=wait)


# -- producers: the application side of each tool ------------------------------------------------


class Producer(Protocol):
    """What the phases need from a tool; ``None`` batch methods mean "no batch API"."""

    schedule_batch_api: str | None
    cancel_batch_api: str | None

    async def schedule(self, job_id: str, due_ms: float) -> None: ...
    async def schedule_many(self, items: list[tuple[str, float]]) -> None: ...
    async def cancel(self, job_id: str) -> str: ...
    async def cancel_many(self, job_ids: list[str]) -> None: ...
    async def cancel_confirmed(self, job_id: str) -> str: ...
    async def close(self) -> None: ...


class DtimeoutProducer:
    schedule_batch_api: str | None = "schedule_many"
    cancel_batch_api: str | None = "cancel_many"

    def __init__(self, url: str) -> None:
        from dtimeout import Timeouts

        self.timeouts = Timeouts(url, url)

    async def schedule(self, job_id: str, due_ms: float) -> None:
        self.timeouts.schedule(KIND, job_id, at=to_datetime(due_ms))

    async def schedule_many(self, items: list[tuple[str, float]]) -> None:
        from dtimeout import ScheduleItem

        self.timeouts.schedule_many(ScheduleItem(KIND, k, at=to_datetime(d)) for k, d in items)

    async def cancel(self, job_id: str) -> str:
        # cancelled / too_late / not_found / already_cancelled: a definite answer either way
        return str(self.timeouts.cancel(KIND, job_id).value)

    async def cancel_many(self, job_ids: list[str]) -> None:
        self.timeouts.cancel_many([(KIND, k) for k in job_ids])

    async def cancel_confirmed(self, job_id: str) -> str:
        return await self.cancel(job_id)

    async def close(self) -> None:
        self.timeouts.close()


class ArqProducer:
    schedule_batch_api: str | None = None
    cancel_batch_api: str | None = None

    def __init__(self, url: str) -> None:
        self.url = url
        self.redis: Any = None

    async def start(self) -> ArqProducer:
        from arq.connections import RedisSettings, create_pool

        self.redis = await create_pool(RedisSettings.from_dsn(self.url))
        return self

    async def schedule(self, job_id: str, due_ms: float) -> None:
        job = await self.redis.enqueue_job(KIND, _job_id=job_id, _defer_until=to_datetime(due_ms))
        if job is None:
            raise RuntimeError(f"arq refused job {job_id} (id already used)")

    async def schedule_many(self, items: list[tuple[str, float]]) -> None:
        raise NotImplementedError("arq has no batch enqueue")

    async def cancel(self, job_id: str) -> str:
        """The abort request alone (timeout 0): ``abort()`` otherwise waits for the worker."""
        from arq.jobs import Job

        try:
            aborted = await Job(job_id, self.redis).abort(timeout=0, poll_delay=0)
        except TimeoutError:
            return "requested"
        return "cancelled" if aborted else "too_late"

    async def cancel_many(self, job_ids: list[str]) -> None:
        raise NotImplementedError("arq has no batch abort")

    async def cancel_confirmed(self, job_id: str) -> str:
        """``abort()`` waiting for the worker's answer: True only once the job was aborted."""
        from arq.jobs import Job

        try:
            aborted = await Job(job_id, self.redis).abort(timeout=5, poll_delay=POLL_SECONDS)
        except TimeoutError:
            return "unconfirmed"
        return "cancelled" if aborted else "too_late"

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()


class CeleryProducer:
    schedule_batch_api: str | None = None  # group() is a workflow: it sends one message per task
    cancel_batch_api: str | None = "revoke([ids])"

    def __init__(self, url: str) -> None:
        self.app, self.task = make_celery(url)

    async def schedule(self, job_id: str, due_ms: float) -> None:
        # eta= rather than countdown= so the due time is known to the millisecond here
        self.task.apply_async(task_id=job_id, eta=to_datetime(due_ms))

    async def schedule_many(self, items: list[tuple[str, float]]) -> None:
        raise NotImplementedError("Celery has no batch send")

    async def cancel(self, job_id: str) -> str:
        self.app.control.revoke(job_id)
        return "sent"  # revoke() answers nothing: a broadcast to the workers listening now

    async def cancel_many(self, job_ids: list[str]) -> None:
        self.app.control.revoke(job_ids)

    async def cancel_confirmed(self, job_id: str) -> str:
        return await self.cancel(job_id)

    async def close(self) -> None:
        self.app.close()


async def make_producer(tool: str, url: str) -> Producer:
    if tool == "dtimeout":
        return DtimeoutProducer(url)
    if tool == "arq":
        return await ArqProducer(url).start()
    return CeleryProducer(url)


# -- Redis counters -------------------------------------------------------------------------------


def redis_counters(client: Any) -> dict[str, int]:
    """Commands (commandstats, Lua and MULTI insides included), commands processed, reads."""
    stats = client.info("stats")
    calls = sum(int(v["calls"]) for v in client.info("commandstats").values())
    return {
        "commands": calls,
        "commands_processed": int(stats["total_commands_processed"]),
        "reads": int(stats["total_reads_processed"]),
    }


def per_job(before: dict[str, int], after: dict[str, int], jobs: int) -> dict[str, float]:
    return {k: round((after[k] - before[k]) / max(1, jobs), 2) for k in before}


# -- the phases -----------------------------------------------------------------------------------


async def phase_rates(p: Producer, count: int, batch: int) -> dict[str, Any]:
    far = now_ms() + FAR_MS
    out: dict[str, Any] = {}
    ids = [f"s-{i}" for i in range(count)]
    started = time.perf_counter()
    for job_id in ids:
        await p.schedule(job_id, far)
    out["schedule_per_s"] = rate(count, time.perf_counter() - started)
    answers: Counter[str] = Counter()
    started = time.perf_counter()
    for job_id in ids:
        answers[await p.cancel(job_id)] += 1
    out["cancel_per_s"] = rate(count, time.perf_counter() - started)
    out["cancel_answers"] = dict(answers)
    if p.schedule_batch_api is None and p.cancel_batch_api is None:
        return out
    ids = [f"b-{i}" for i in range(count)]
    if p.schedule_batch_api:
        started = time.perf_counter()
        for chunk in chunks(ids, batch):
            await p.schedule_many([(k, far) for k in chunk])
        out["schedule_many_per_s"] = rate(count, time.perf_counter() - started)
    else:  # something to cancel in batches, scheduled one by one and not timed
        for job_id in ids:
            await p.schedule(job_id, far)
    if p.cancel_batch_api:
        started = time.perf_counter()
        for chunk in chunks(ids, batch):
            await p.cancel_many(chunk)
        out["cancel_many_per_s"] = rate(count, time.perf_counter() - started)
    return out


async def schedule_due_now(p: Producer, count: int, batch: int) -> list[str]:
    due = now_ms()
    ids = [f"f-{i}" for i in range(count)]
    if p.schedule_batch_api:
        for chunk in chunks(ids, batch):
            await p.schedule_many([(k, due) for k in chunk])
    else:
        for job_id in ids:
            await p.schedule(job_id, due)
    return ids


async def phase_fire(worker: WorkerProcess, count: int, before: dict[str, int]) -> dict[str, Any]:
    complete = await worker.wait_fired("f-", count, 300)
    after = redis_counters_cached()
    starts = sorted(start for _, start in worker.fired("f-"))
    span = (starts[-1] - starts[0]) / 1000 if starts else 0.0
    from_ready = (starts[-1] - worker.ready_ms) / 1000 if starts else 0.0
    return {
        "fired": len(starts),
        "complete": complete,
        "fired_per_s": rate(len(starts), span),
        # the first fetch included: batch receivers start their first handlers late
        "fired_per_s_from_ready": rate(len(starts), from_ready),
        "redis_per_fired_worker_only": per_job(before, after, len(starts)),
    }


async def phase_lateness(
    p: Producer, worker: WorkerProcess, offered: float, duration: float, delay: float
) -> dict[str, Any]:
    total = int(offered * duration)
    prefix = f"l{offered:g}-"  # unique per offered rate
    before = redis_counters_cached()
    dues: dict[str, float] = {}
    started = time.perf_counter()
    for i in range(total):
        pause = started + i / offered - time.perf_counter()
        if pause > 0:
            await asyncio.sleep(pause)
        job_id = f"{prefix}{i}"
        due = now_ms() + delay * 1000
        await p.schedule(job_id, due)
        dues[job_id] = due
    achieved = rate(total, time.perf_counter() - started)
    complete = await worker.wait_fired(prefix, total, delay + 60)
    after = redis_counters_cached()
    fired = worker.fired(prefix)
    counts = Counter(job_id for job_id, _ in fired)
    first: dict[str, float] = {}
    for job_id, start in fired:
        first[job_id] = min(start, first.get(job_id, start))
    return {
        "offered": total,
        "offered_per_s": achieved,
        "fired": len(first),
        "complete": complete,
        "duplicates": sum(c - 1 for c in counts.values()),
        "lateness_ms": percentiles([first[k] - dues[k] for k in first]),
        "redis_per_job": per_job(before, after, len(first)),
    }


def _cancel_moment(group: str, due: float, earliest: float, rng: random.Random) -> float:
    if group == "early":
        return rng.uniform(earliest, max(earliest, due - 2 * EARLY_MARGIN_MS))
    if group == "at_due":
        return due + rng.uniform(-10, 10)
    return due + rng.uniform(10, 100)  # just after due


async def phase_correctness(
    tool: str, p: Producer, worker: WorkerProcess, rng: random.Random
) -> dict[str, Any]:
    dues: dict[str, float] = {}
    for i in range(CORRECTNESS_JOBS):
        job_id = f"c-{i}"
        due = now_ms() + rng.uniform(1000, 2000)
        await p.schedule(job_id, due)
        dues[job_id] = due
    scheduled = now_ms()
    to_cancel = rng.sample(sorted(dues), int(CORRECTNESS_JOBS * CORRECTNESS_CANCEL_SHARE))
    groups = ("early", "early", "at_due", "at_due", "after_due")  # 40% / 40% / 20%
    plan = [
        (job_id, g, _cancel_moment(g, dues[job_id], scheduled, rng))
        for job_id, g in zip(to_cancel, (groups[i % 5] for i in range(len(to_cancel))), strict=True)
    ]
    outcome: dict[str, tuple[str, float, float, str]] = {}  # id -> group, called, returned, answer

    async def one(job_id: str, group: str, moment: float) -> None:
        await asyncio.sleep(max(0.0, (moment - now_ms()) / 1000))
        called = now_ms()
        try:
            answer = await p.cancel_confirmed(job_id)
        except Exception as exc:  # a failed cancel is an outcome too
            answer = f"error: {type(exc).__name__}"
        outcome[job_id] = (group, called, now_ms(), answer)

    await asyncio.wait_for(asyncio.gather(*(one(*item) for item in plan)), timeout=60)
    # every due time passed plus 5 s of grace for late fires and duplicates
    await asyncio.sleep(max(0.0, (max(dues.values()) + 5000 - now_ms()) / 1000))
    fired = worker.fired("c-")
    runs = Counter(job_id for job_id, _ in fired)
    first: dict[str, float] = {}
    for job_id, start in fired:
        first[job_id] = min(start, first.get(job_id, start))

    def said_cancelled(job_id: str) -> bool:
        answer = outcome[job_id][3]
        return answer == "cancelled" or (tool == "celery" and answer == "sent")

    # Celery's revoke has no "too late" answer: there, count a start after revoke() returned
    violations = [
        {
            "job": job_id,
            "group": group,
            "cancel_called_minus_due_ms": round(called - dues[job_id], 1),
            "handler_start_minus_cancel_returned_ms": round(first[job_id] - returned, 1),
        }
        for job_id, (group, called, returned, _answer) in sorted(outcome.items())
        if job_id in first
        and said_cancelled(job_id)
        and (tool != "celery" or first[job_id] > returned)
    ]
    lost = [
        k
        for k in dues
        if k not in first and (k not in outcome or outcome[k][3] in ("too_late", "not_found"))
    ]
    answers = Counter(a for _, _, _, a in outcome.values())
    return {
        "jobs": CORRECTNESS_JOBS,
        "cancels": len(outcome),
        "cancels_by_group": dict(Counter(g for g, _, _, _ in outcome.values())),
        "cancel_answers": dict(answers),
        "fired": len(first),
        "fired_after_successful_cancel": len(violations),
        "fired_after_successful_cancel_detail": violations,
        "cancelled_any_answer_but_fired": sum(1 for k in outcome if k in first),
        "early_cancel_but_fired": sum(
            1 for k, o in outcome.items() if o[1] <= dues[k] - EARLY_MARGIN_MS and k in first
        ),
        "duplicates": sum(c - 1 for c in runs.values()),
        "lost": len(lost),
        "cancel_call_ms": percentiles([o[2] - o[1] for o in outcome.values()]),
    }


async def drain_arq(admin: Any, seconds: float) -> float | None:
    """Seconds until arq's queue is empty (aborted jobs are removed by the worker); None if it
    was not empty within ``seconds``."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if admin.zcard("arq:queue") == 0:
            return round(time.monotonic() - started, 1)
        await asyncio.sleep(0.1)
    return None


# -- one tool, start to end -----------------------------------------------------------------------

_COUNTER_CLIENT: Any = None


def redis_counters_cached() -> dict[str, int]:
    return redis_counters(_COUNTER_CLIENT)


async def run_tool(tool: str, server: RedisServer, args: argparse.Namespace, workdir: Path) -> Any:
    """All phases for one tool; the server is flushed before, workers are always stopped."""
    url = f"redis://127.0.0.1:{server.port}/0"
    admin = server.client()
    admin.flushall()
    result: dict[str, Any] = {}
    rng = random.Random(args.seed)
    producer = await make_producer(tool, url)
    workers: list[WorkerProcess] = []
    started = time.monotonic()
    try:
        # warm-up: connections and first-call costs out of the timed loops
        await producer.schedule("warmup", now_ms() + FAR_MS)
        await producer.cancel("warmup")
        workers.append(WorkerProcess(tool, url, workdir, "rates"))
        print(f"  {tool}: schedule and cancel rates ({args.count} jobs)", file=sys.stderr)
        result["rates"] = await phase_rates(producer, args.count, args.batch)
        if tool == "arq":  # an abort is carried out by the worker: let it finish before stopping
            result["rates"]["abort_drain_s"] = await drain_arq(admin, 120)
        workers.pop().stop()
        admin.flushall()
        print(f"  {tool}: sustained fire ({args.count} jobs due)", file=sys.stderr)
        await schedule_due_now(producer, args.count, args.batch)
        before = redis_counters_cached()
        workers.append(WorkerProcess(tool, url, workdir, "fire"))
        worker = workers[-1]
        result["fire"] = await phase_fire(worker, args.count, before)
        result["lateness"] = {}
        for offered in args.rates:
            print(f"  {tool}: lateness ({offered:g}/s for {args.duration:g}s)", file=sys.stderr)
            result["lateness"][f"{offered:g}"] = await phase_lateness(
                producer, worker, offered, args.duration, args.delay
            )
        print(f"  {tool}: correctness sample", file=sys.stderr)
        result["correctness"] = await phase_correctness(tool, producer, worker, rng)
    finally:
        for w in workers:
            w.stop()
        await producer.close()
        admin.flushall()
        admin.close()
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


# -- report ---------------------------------------------------------------------------------------


def versions(server: RedisServer) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("dtimeout", "arq", "celery", "kombu", "redis"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name if name != "redis" else "redis-py"] = metadata.version(name)
    client = server.client()
    out["redis-server"] = str(client.info("server")["redis_version"])
    client.close()
    return out


def _cell(tool_result: dict[str, Any] | None, fn: Callable[[dict[str, Any]], str]) -> str:
    if tool_result is None:
        return "—"
    if "error" in tool_result:
        return "error"
    try:
        return fn(tool_result)
    except (KeyError, TypeError):
        return "n/a"


def _per_s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}/s"


def table(results: dict[str, Any], args: argparse.Namespace) -> str:
    def lat(key: str) -> Callable[[dict[str, Any]], str]:
        def cell(r: dict[str, Any]) -> str:
            ms = r["lateness"][key]["lateness_ms"]
            return f"{ms['p50']:.0f} / {ms['p95']:.0f} / {ms['p99']:.0f} / {ms['max']:.0f} ms"

        return cell

    def offered(key: str) -> Callable[[dict[str, Any]], str]:
        def cell(r: dict[str, Any]) -> str:
            la = r["lateness"][key]
            return f"{la['offered_per_s']:,.0f}/s; {la['fired']:,} / {la['offered']:,}"

        return cell

    def per_job(key: str) -> Callable[[dict[str, Any]], str]:
        def cell(r: dict[str, Any]) -> str:
            pj = r["lateness"][key]["redis_per_job"]
            return f"{pj['commands']:.1f} / {pj['reads']:.1f}"

        return cell

    lateness_rows: list[tuple[str, Callable[[dict[str, Any]], str]]] = []
    for rate_ in args.rates:
        key = f"{rate_:g}"
        lateness_rows += [
            (
                f"lateness p50/p95/p99/max, {rate_:g}/s offered for {args.duration:g} s, "
                f"delay {args.delay:g} s",
                lat(key),
            ),
            (f"  {key}/s: offered rate achieved; fired / offered", offered(key)),
            (f"  {key}/s: Redis commands / reads per job, schedule + fire ²", per_job(key)),
        ]

    def sched_batch(r: dict[str, Any]) -> str:
        return _per_s(r["rates"].get("schedule_many_per_s"))

    def cancel_batch(r: dict[str, Any]) -> str:
        return _per_s(r["rates"].get("cancel_many_per_s"))

    def c(name: str) -> Callable[[dict[str, Any]], str]:
        return lambda r: str(r["correctness"][name])

    rows: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("schedule, one call at a time", lambda r: _per_s(r["rates"]["schedule_per_s"])),
        ("schedule, batched (dtimeout `schedule_many` of 1,000)", sched_batch),
        ("cancel, one call at a time ¹", lambda r: _per_s(r["rates"]["cancel_per_s"])),
        ("cancel, batched (`cancel_many` / `revoke([ids])` of 1,000)", cancel_batch),
        (
            "arq: worker done with the aborts, after the last `abort()` returned",
            lambda r: f"{r['rates']['abort_drain_s']} s" if "abort_drain_s" in r["rates"] else "—",
        ),
        (
            f"sustained fire, {args.count:,} due at worker start",
            lambda r: _per_s(r["fire"]["fired_per_s"]),
        ),
        (
            "sustained fire, from worker ready to last start",
            lambda r: _per_s(r["fire"]["fired_per_s_from_ready"]),
        ),
        *lateness_rows,
        (
            "Redis commands / reads per fired, worker only (fire phase)",
            lambda r: (
                f"{r['fire']['redis_per_fired_worker_only']['commands']:.1f} / "
                f"{r['fire']['redis_per_fired_worker_only']['reads']:.1f}"
            ),
        ),
        (
            f"correctness: cancels of {CORRECTNESS_JOBS} (early / at due / after due)",
            lambda r: "{} ({} / {} / {})".format(
                r["correctness"]["cancels"],
                *(r["correctness"]["cancels_by_group"].get(g, 0) for g in GROUPS),
            ),
        ),
        (
            "correctness: cancel answers",
            lambda r: ", ".join(
                f"{k} {v}" for k, v in sorted(r["correctness"]["cancel_answers"].items())
            ),
        ),
        ("correctness: **fired after successful cancel** ³", c("fired_after_successful_cancel")),
        (
            "correctness: cancelled jobs that fired, whatever the answer",
            c("cancelled_any_answer_but_fired"),
        ),
        (
            f"correctness: cancel requested ≥ {EARLY_MARGIN_MS} ms before due, fired anyway",
            c("early_cancel_but_fired"),
        ),
        ("correctness: **duplicates**", c("duplicates")),
        ("correctness: **lost** (not cancelled, never fired)", c("lost")),
        (
            "correctness: cancel call p50 / max",
            lambda r: (
                f"{r['correctness']['cancel_call_ms']['p50']:.1f} / "
                f"{r['correctness']['cancel_call_ms']['max']:.1f} ms"
            ),
        ),
        ("tool's run time", lambda r: f"{r['seconds']:.0f} s"),
    ]
    header = "| measure | " + " | ".join(NAMES[t] for t in args.tools) + " |"
    lines = [header, "|---" * (len(args.tools) + 1) + "|"]
    for label, fn in rows:
        cells = [_cell(results.get(t), fn) for t in args.tools]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


NAMES = {"dtimeout": "dtimeout", "arq": "arq", "celery": "Celery"}
GROUPS = ("early", "at_due", "after_due")
NOTES = """\
¹ dtimeout `cancel` answers cancelled / too late from the store; arq's is `Job.abort(timeout=0)`,
  the abort request alone (moved to due now, flagged; the worker then drops it); Celery's
  `revoke` is a broadcast with no answer, held in the running worker's memory only; the batched
  figure is one broadcast of 1,000 ids, the workers' handling of it is not timed.
² Over each lateness run: producer and worker, idle polling included. commandstats also counts
  the commands inside Lua scripts (dtimeout) and MULTI blocks (arq); a read is one network read
  by the server, about one client round trip (a pipeline is one).
³ dtimeout and arq: the cancel answered "cancelled" (arq: `abort()` waited up to 5 s for the
  worker's answer) yet the handler ran. Celery's `revoke` answers nothing, so every revoked job
  whose handler started after `revoke()` returned counts."""


def main() -> None:
    global _COUNTER_CLIENT
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=5_000, help="jobs in phases 1-3")
    parser.add_argument("--batch", type=int, default=1_000, help="items per batch call")
    parser.add_argument(
        "--rate", default="200,500", help="offered jobs/s in the lateness phase (comma-separated)"
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of offered load")
    parser.add_argument("--delay", type=float, default=1.0, help="seconds from schedule to due")
    parser.add_argument("--seed", type=int, default=3, help="correctness sample's random seed")
    parser.add_argument("--tools", default=",".join(TOOLS), help="comma-separated subset")
    parser.add_argument("--json", type=Path, help="write every number here")
    parser.add_argument("--logs", type=Path, help="keep the workers' logs in this directory")
    parser.add_argument("--worker", choices=TOOLS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--ready", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:  # child mode: one worker until SIGTERM
        fd = os.open(args.out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        WORKERS[args.worker](args.url, fd, args.ready)
        return
    args.tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    args.rates = [float(r) for r in args.rate.split(",") if r.strip()]
    unknown = set(args.tools) - set(TOOLS)
    if unknown or args.count < 1 or args.batch < 1 or min(args.rates, default=0) <= 0:
        parser.error(f"bad options (unknown tools: {sorted(unknown)})")
    if args.duration <= 0 or args.delay <= 0:
        parser.error("--duration and --delay must be positive")
    load_before = os.getloadavg()
    results: dict[str, Any] = {}
    info: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="dtimeout-compare-") as tmp:
        workdir = args.logs or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        server = RedisServer(Path(tmp)).start()
        try:
            _COUNTER_CLIENT = server.client()
            info = versions(server)
            print(f"redis-server on port {server.port}", file=sys.stderr)
            for tool in args.tools:
                try:
                    results[tool] = asyncio.run(run_tool(tool, server, args, workdir))
                except Exception as exc:  # one tool failing still reports the others
                    results[tool] = {"error": f"{type(exc).__name__}: {exc}"}
                    print(f"  {tool} failed: {exc}", file=sys.stderr)
        finally:
            if _COUNTER_CLIENT is not None:
                _COUNTER_CLIENT.close()
            server.stop()
    load_after = os.getloadavg()
    load = (
        " ".join(f"{x:.2f}" for x in load_before) + " → " + " ".join(f"{x:.2f}" for x in load_after)
    )
    print(f"load average (1/5/15 min) before → after: {load}; cores: {os.cpu_count()}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    print()
    print(table(results, args))
    print()
    print(NOTES)
    for tool, r in results.items():
        if "error" in r:
            print(f"\n{tool}: {r['error']}")
    if args.json:
        report = {
            "options": {k: v for k, v in vars(args).items() if k not in ("json", "logs", "worker")},
            "settings": {"concurrency": CONCURRENCY, "poll_seconds": POLL_SECONDS},
            "load_before": load_before,
            "load_after": load_after,
            "cores": os.cpu_count(),
            "versions": info,
            "results": results,
        }
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
