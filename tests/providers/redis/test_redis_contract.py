"""The provider contract suite against real Redis servers: standalone, 3-master cluster, TLS.

Each factory call opens a provider on a fresh key prefix, so every test starts empty while the
servers are started once per session (tests/conftest.py). The multi-process races run against
the standalone server only: on the cluster they cost another 30 s for the same scripts, which
the cluster's store, transport and end-to-end classes already exercise slot by slot.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from fused_env import FusedEnv

from dtimeout.clock import Clock
from dtimeout.providers.redis.plugin import open_store, open_transport
from dtimeout.providers.redis.store import RedisStore
from dtimeout.providers.redis.transport import RedisTransport
from dtimeout.testing import (
    MultiProcessContract,
    StoreContract,
    TimeoutsContract,
    TransportContract,
)


def _fresh(url: str) -> str:
    """``url`` on a key prefix no other test uses."""
    return f"{url}{'&' if '?' in url else '?'}prefix=c{uuid.uuid4().hex[:12]}"


class _Standalone:
    @pytest.fixture
    def base_url(self, redis_url: str) -> str:
        return redis_url


class _Cluster:
    @pytest.fixture
    def base_url(self, redis_cluster_url: str) -> str:
        return redis_cluster_url


class _Tls:
    @pytest.fixture
    def base_url(self, redis_tls_url: str) -> str:
        return redis_tls_url


class _Factories:
    @pytest.fixture
    def make_store(self, base_url: str) -> Callable[[Clock], RedisStore]:
        return lambda clock: open_store(_fresh(base_url), clock)

    @pytest.fixture
    def make_transport(self, base_url: str) -> Callable[[Clock], RedisTransport]:
        return lambda clock: open_transport(_fresh(base_url), clock)


class _SharedUrls:
    @pytest.fixture
    def shared_url(self, base_url: str) -> str:
        return _fresh(base_url)

    @pytest.fixture
    def transport_url(self, shared_url: str) -> str:
        return shared_url

    @pytest.fixture
    def store_url(self, shared_url: str) -> str:
        return shared_url


class _SharedFactories:
    """Store and transport on one fresh prefix per test (``RedisStore.schedule_and_send`` can
    then enqueue the messages itself; see fused_env.py)."""

    @pytest.fixture
    def shared_url(self, base_url: str) -> str:
        return _fresh(base_url)

    @pytest.fixture
    def make_store(self, shared_url: str) -> Callable[[Clock], RedisStore]:
        return lambda clock: open_store(shared_url, clock)

    @pytest.fixture
    def make_transport(self, shared_url: str) -> Callable[[Clock], RedisTransport]:
        return lambda clock: open_transport(shared_url, clock)


class TestStandaloneStore(_Standalone, _Factories, StoreContract):
    pass


class TestStandaloneTransport(_Standalone, _Factories, TransportContract):
    pass


class TestStandaloneTimeouts(_Standalone, _Factories, TimeoutsContract):
    pass


class TestStandaloneProcesses(_Standalone, _SharedUrls, MultiProcessContract):
    pass


class TestClusterStore(_Cluster, _Factories, StoreContract):
    pass


class TestClusterTransport(_Cluster, _Factories, TransportContract):
    pass


class TestClusterTimeouts(_Cluster, _Factories, TimeoutsContract):
    pass


class TestTlsStore(_Tls, _Factories, StoreContract):
    pass


class TestTlsTransport(_Tls, _Factories, TransportContract):
    pass


class TestTlsTimeouts(_Tls, _SharedFactories, FusedEnv, TimeoutsContract):
    """Store and transport on one URL, as most deployments run them: the fused schedule."""
