"""The provider contract suite against the built-in ``memory`` provider."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from dtimeout.clock import Clock
from dtimeout.providers.memory import MemoryStore, MemoryTransport
from dtimeout.testing import StoreContract, TimeoutsContract, TransportContract


@pytest.fixture
def make_store() -> Callable[[Clock], MemoryStore]:
    return MemoryStore


@pytest.fixture
def make_transport() -> Callable[[Clock], MemoryTransport]:
    return MemoryTransport


class TestMemoryStore(StoreContract):
    pass


class TestMemoryTransport(TransportContract):
    pass


class TestMemoryTimeouts(TimeoutsContract):
    pass
