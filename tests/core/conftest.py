"""Fixtures for core tests: a fake clock and memory providers wired into ``Timeouts``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dtimeout.app import Timeouts
from dtimeout.clock import FakeClock
from dtimeout.providers.memory import MemoryStore, MemoryTransport


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def memory(clock: FakeClock) -> Iterator[Timeouts]:
    timeouts = Timeouts(MemoryTransport(clock), MemoryStore(clock), clock=clock)
    yield timeouts
    timeouts.close()
