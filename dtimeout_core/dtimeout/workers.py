"""The threads that run handlers for one consumer.

Why not ``ThreadPoolExecutor``: a ``Future`` carries a ``Condition`` and waiting on many of them
registers a waiter on each, which at thousands of timeouts a second costs more than the work
itself. Here a job goes in through one C-implemented ``SimpleQueue`` and comes back through
another; the loop thread blocks on the outbox when it has nothing else to do.

A job that was handed to the pool but has not started can still be taken back (on shutdown):
the loop and the worker race for the job's gate lock, and whoever gets it decides — the worker
runs it, or the loop releases the timeout for another consumer.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

log = logging.getLogger(__name__)


class Gated(Protocol):
    gate: threading.Lock


J = TypeVar("J", bound=Gated)


class Workers(Generic[J]):
    """``size`` daemon threads applying ``work`` to jobs, finished jobs collected in order."""

    def __init__(self, size: int, work: Callable[[J], Any], name: str = "dtimeout-handler") -> None:
        self._work = work
        self._inbox: queue.SimpleQueue[J | None] = queue.SimpleQueue()
        self._outbox: queue.SimpleQueue[J] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._loop, name=f"{name}-{i}", daemon=True)
            for i in range(size)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, job: J) -> None:
        self._inbox.put(job)

    @staticmethod
    def take_back(job: J) -> bool:
        """True when ``job`` had not started and now never will (the caller owns it again)."""
        return job.gate.acquire(blocking=False)

    def finished(self, *, wait: float | None = None) -> list[J]:
        """Jobs done since the last call; with ``wait``, block up to that long for the first."""
        out: list[J] = []
        if wait is not None:
            try:
                out.append(self._outbox.get(timeout=max(wait, 0.0)))
            except queue.Empty:
                return out
        while True:
            try:
                out.append(self._outbox.get_nowait())
            except queue.Empty:
                return out

    def close(self, timeout: float = 30.0) -> None:
        """Stop the threads once they finish what they run now."""
        for _ in self._threads:
            self._inbox.put(None)
        for thread in self._threads:
            thread.join(timeout)

    def _loop(self) -> None:
        while True:
            job = self._inbox.get()
            if job is None:
                return
            if not job.gate.acquire(blocking=False):
                continue  # taken back by the loop before it started
            try:
                self._work(job)
            except BaseException:  # work() records handler errors itself; this is a bug guard
                log.exception("handler worker failed unexpectedly")
            self._outbox.put(job)
