"""The only place dtimeout reads wall time.

Everything that needs "now" receives a :class:`Clock`. Production code uses :data:`SYSTEM_CLOCK`;
the contract suite injects a :class:`FakeClock` and advances it instead of sleeping, which keeps
tests fast and free of timing flakiness. Times are integer milliseconds since the Unix epoch (UTC)
throughout the library; datetimes appear only at the public API edge.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    """A source of wall time in epoch milliseconds, and a way to wait on it."""

    def now_ms(self) -> int:
        """Current time, milliseconds since the Unix epoch (UTC)."""
        ...

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time."""
        ...


class SystemClock:
    """Wall time from the operating system."""

    is_fake = False

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class FakeClock:
    """A clock that moves only when told to; ``sleep`` advances it instantly.

    Thread-safe, so consumer threads and the test driving them can share one.
    """

    is_fake = True

    # Far in the future (year 2096) by default, so a store that turns our times into server-side
    # expiries (Redis PEXPIREAT) never computes one in the real past and loses records early.
    def __init__(self, start_ms: int = 4_000_000_000_000) -> None:
        self._now = start_ms
        self._lock = threading.Lock()

    def now_ms(self) -> int:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``."""
        with self._lock:
            self._now += round(seconds * 1000)

    def set(self, now_ms: int) -> None:
        with self._lock:
            self._now = now_ms

    def sleep(self, seconds: float) -> None:
        # Yield to other threads so loops that "sleep" on a fake clock do not spin hot.
        time.sleep(0)
        if seconds > 0:
            self.advance(seconds)


SYSTEM_CLOCK = SystemClock()


def is_fake(clock: Clock) -> bool:
    """True when ``clock`` is not real time (providers with a server clock then take ours)."""
    return bool(getattr(clock, "is_fake", False))


def to_datetime(ms: int) -> datetime:
    """Epoch milliseconds → aware UTC datetime."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def to_ms(value: datetime) -> int:
    """Aware datetime → epoch milliseconds. Callers validate awareness first."""
    return int(value.timestamp() * 1000)
