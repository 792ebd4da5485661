"""Races between real processes on one shared transport and store.

Threads share a GIL and a memory model; the failures users meet in production (two consumers
claiming one timeout, a cancel that does not stick, "database is locked") show up only between
processes. Subclass :class:`MultiProcessContract` with fixtures ``transport_url`` and
``store_url`` naming a fresh, shared instance. Child processes are started with ``spawn`` and
report every handler call as one line appended to a file (O_APPEND keeps lines whole).
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

from dtimeout.app import Timeouts
from dtimeout.model import CancelResult, DueTimeout, TimeoutState
from dtimeout.testing.contracts import KIND

_SPAWN = multiprocessing.get_context("spawn")


def consumer_process(
    transport_url: str, store_url: str, out_path: str, stop_path: str, max_seconds: float
) -> None:
    """A consumer in its own process; stops on SIGTERM, on ``stop_path`` existing, or at
    ``max_seconds``. Each handler call appends ``key generation started_ms due_ms``."""
    timeouts = Timeouts(transport_url, store_url, lease=timedelta(seconds=5))

    @timeouts.handler(KIND)
    def record(t: DueTimeout) -> None:
        line = f"{t.key} {t.generation} {time.time_ns() // 1_000_000} "
        line += f"{int(t.due_at.timestamp() * 1000)}\n"
        fd = os.open(out_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    consumer = timeouts.consumer(concurrency=2, wait_seconds=0.2)
    signal.signal(signal.SIGTERM, lambda *_: consumer.stop())
    deadline = time.monotonic() + max_seconds
    consumer.run(stop_when=lambda: time.monotonic() > deadline or os.path.exists(stop_path))
    timeouts.close()


def producer_process(
    transport_url: str, store_url: str, keys: list[str], due_ms: list[int], errors_path: str
) -> None:
    """Schedules each key one call at a time (the contended path) and records any error."""
    timeouts = Timeouts(transport_url, store_url)
    from datetime import UTC, datetime

    for key, due in zip(keys, due_ms, strict=True):
        try:
            timeouts.schedule(KIND, key, at=datetime.fromtimestamp(due / 1000, tz=UTC))
        except Exception as exc:  # any error reaching a producer fails the test
            with open(errors_path, "a") as f:
                f.write(f"schedule {key}: {type(exc).__name__}: {exc}\n")
    timeouts.close()


def canceller_process(
    transport_url: str, store_url: str, keys: list[str], out_path: str, errors_path: str
) -> None:
    """Cancels each key as soon as it exists; writes ``key answer`` lines."""
    timeouts = Timeouts(transport_url, store_url)
    lines = []
    for key in keys:
        answer = CancelResult.NOT_FOUND
        for _ in range(400):  # the producer may not have scheduled it yet: bounded wait
            try:
                answer = timeouts.cancel(KIND, key)
            except Exception as exc:
                with open(errors_path, "a") as f:
                    f.write(f"cancel {key}: {type(exc).__name__}: {exc}\n")
                break
            if answer is not CancelResult.NOT_FOUND:
                break
            time.sleep(0.01)
        lines.append(f"{key} {answer.value}\n")
    Path(out_path).write_text("".join(lines))
    timeouts.close()


def read_calls(path: Path) -> list[tuple[str, int, int, int]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        key, gen, started, due = line.split()
        out.append((key, int(gen), int(started), int(due)))
    return out


class MultiProcessContract:
    """Races between real consumer, producer and canceller processes."""

    race_count = 300  # timeouts whose cancel is aimed at the due instant
    race_consumers = 3
    load_count = 2000
    load_consumers = 4
    load_producers = 2
    startup_seconds = 4.0  # spawn + import before the first timeout comes due

    def _start_consumers(self, urls: tuple[str, str], n: int, tmp: Path, max_s: float) -> list[Any]:
        procs = [
            _SPAWN.Process(
                target=consumer_process,
                args=(*urls, str(tmp / "calls.log"), str(tmp / "stop"), max_s),
            )
            for _ in range(n)
        ]
        for p in procs:
            p.start()
        return procs

    def _stop(self, procs: list[Any], tmp: Path) -> list[int | None]:
        (tmp / "stop").touch()
        for p in procs:
            p.join(30)
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(5)
        return [p.exitcode for p in procs]

    def _wait_until_settled(self, timeouts: Timeouts, keys: list[str], seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            done = {TimeoutState.FIRED, TimeoutState.CANCELLED}
            rows = timeouts.list(kind=KIND, limit=len(keys) + 10)
            if len(rows) >= len(keys) and all(r.state in done for r in rows):
                return
            time.sleep(0.2)

    def test_cancel_at_the_due_instant_against_consumer_processes(
        self, transport_url: str, store_url: str, tmp_path: Path
    ) -> None:
        timeouts = Timeouts(transport_url, store_url)
        n, spread = self.race_count, 3.0
        base = time.time() + self.startup_seconds
        keys = [f"race-{i}" for i in range(n)]
        dues = [base + spread * i / n for i in range(n)]
        from datetime import UTC, datetime

        timeouts.schedule_many(
            [
                {"kind": KIND, "key": k, "at": datetime.fromtimestamp(d, tz=UTC)}
                for k, d in zip(keys, dues, strict=True)
            ]
        )
        procs = self._start_consumers((transport_url, store_url), self.race_consumers, tmp_path, 60)
        rng = random.Random(11)
        answers: dict[str, CancelResult] = {}
        try:
            for key, due in zip(keys, dues, strict=True):
                if rng.random() < 0.5:
                    continue  # half are left to fire
                delay = due + rng.uniform(-0.02, 0.02) - time.time()
                if delay > 0:
                    time.sleep(delay)
                answers[key] = timeouts.cancel(KIND, key)
            self._wait_until_settled(timeouts, keys, 30)
        finally:
            codes = self._stop(procs, tmp_path)
        calls = read_calls(tmp_path / "calls.log")
        fired = Counter(k for k, *_ in calls)
        assert codes == [0] * len(procs)
        for key in keys:
            if answers.get(key) is CancelResult.CANCELLED:
                assert fired[key] == 0, f"{key}: cancel answered cancelled but it fired"
            else:
                assert fired[key] == 1, f"{key}: fired {fired[key]} times ({answers.get(key)})"
        for key, _, started, due in calls:
            assert started >= due, f"{key} fired {due - started} ms early"
        won = sum(1 for a in answers.values() if a is CancelResult.CANCELLED)
        assert won > 0  # the race really happened on both sides
        assert any(a is CancelResult.TOO_LATE for a in answers.values()) or won == len(answers)
        timeouts.close()

    def test_many_producers_consumers_and_a_canceller_on_one_store(
        self, transport_url: str, store_url: str, tmp_path: Path
    ) -> None:
        n = self.load_count
        keys = [f"load-{i}" for i in range(n)]
        base_ms = int((time.time() + self.startup_seconds) * 1000)
        rng = random.Random(5)
        dues = [base_ms + rng.randint(0, 2000) for _ in keys]
        errors = tmp_path / "errors.log"
        consumers = self._start_consumers(
            (transport_url, store_url), self.load_consumers, tmp_path, 90
        )
        share = [keys[i :: self.load_producers] for i in range(self.load_producers)]
        share_due = [dues[i :: self.load_producers] for i in range(self.load_producers)]
        producers = [
            _SPAWN.Process(
                target=producer_process,
                args=(transport_url, store_url, share[i], share_due[i], str(errors)),
            )
            for i in range(self.load_producers)
        ]
        to_cancel = keys[::2]
        canceller = _SPAWN.Process(
            target=canceller_process,
            args=(transport_url, store_url, to_cancel, str(tmp_path / "cancels"), str(errors)),
        )
        timeouts = Timeouts(transport_url, store_url)
        try:
            for p in [*producers, canceller]:
                p.start()
            for p in [*producers, canceller]:
                p.join(90)
            self._wait_until_settled(timeouts, keys, 45)
        finally:
            codes = self._stop(consumers, tmp_path)
        assert not errors.exists(), errors.read_text()[:2000]
        assert codes == [0] * len(consumers)
        assert [p.exitcode for p in [*producers, canceller]] == [0] * (len(producers) + 1)
        answers = dict(line.split() for line in (tmp_path / "cancels").read_text().splitlines())
        fired = Counter(k for k, *_ in read_calls(tmp_path / "calls.log"))
        states = {t.key: t.state for t in timeouts.list(kind=KIND, limit=n + 10)}
        assert len(states) == n
        for key in keys:
            state = states[key]
            assert state in (TimeoutState.FIRED, TimeoutState.CANCELLED), (key, state)
            assert fired[key] == (1 if state is TimeoutState.FIRED else 0), (key, fired[key])
            if answers.get(key) == "cancelled":
                assert state is TimeoutState.CANCELLED
        assert sum(fired.values()) == sum(1 for s in states.values() if s is TimeoutState.FIRED)
        timeouts.close()
