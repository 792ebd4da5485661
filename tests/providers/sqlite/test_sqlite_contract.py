"""The provider contract suite against the built-in ``sqlite`` provider, on real files.

Each factory call opens a fresh file under ``tmp_path`` (fresh and empty, as the kit requires).
Store and transport of one test share the same file, the way the default configuration runs, so
the suite also proves the two roles coexist in one database. The multi-process class runs real
consumer, producer and canceller processes against one file.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import pytest

from dtimeout.clock import Clock
from dtimeout.providers.sqlite_store import SqliteStore
from dtimeout.providers.sqlite_transport import SqliteTransport
from dtimeout.testing import (
    MultiProcessContract,
    StoreContract,
    TimeoutsContract,
    TransportContract,
)


@pytest.fixture
def make_store(tmp_path: Path) -> Callable[[Clock], SqliteStore]:
    # The n-th store and the n-th transport of a test open the same file.
    counter = itertools.count()
    return lambda clock: SqliteStore.from_url(
        f"sqlite:///{tmp_path}/shared-{next(counter)}.db", clock
    )


@pytest.fixture
def make_transport(tmp_path: Path) -> Callable[[Clock], SqliteTransport]:
    counter = itertools.count()
    return lambda clock: SqliteTransport.from_url(
        f"sqlite:///{tmp_path}/shared-{next(counter)}.db", clock
    )


class TestSqliteStore(StoreContract):
    pass


class TestSqliteTransport(TransportContract):
    pass


class TestSqliteTimeouts(TimeoutsContract):
    pass


class TestSqliteProcesses(MultiProcessContract):
    @pytest.fixture
    def store_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path}/processes.db"

    @pytest.fixture
    def transport_url(self, store_url: str) -> str:
        return store_url
