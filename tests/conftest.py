"""Session-wide Redis servers for the provider tests.

Started once per test session on free loopback ports (never 6379) from ``dtimeout.testing.servers``
and stopped by finalizers: a standalone server, a 3-master cluster, and a TLS-only server whose CA
and certificate are made at test time. Tests get isolation without restarting servers: each one
uses a fresh key prefix (``redis_prefix``), so nothing one test writes is seen by another.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from dtimeout.testing.servers import (
    RedisClusterServers,
    RedisServer,
    make_tls_files,
)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    """``redis://127.0.0.1:PORT/0`` of the session's standalone server."""
    return redis_server.url


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    cluster = RedisClusterServers(tmp_path_factory.mktemp("redis-cluster")).start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def redis_cluster_url(redis_cluster: RedisClusterServers) -> str:
    """``redis+cluster://…`` naming the three masters of the session's cluster."""
    return redis_cluster.url


@pytest.fixture(scope="session")
def redis_tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    workdir: Path = tmp_path_factory.mktemp("redis-tls")
    server = RedisServer(workdir, tls=make_tls_files(workdir / "certs")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_tls_url(redis_tls_server: RedisServer) -> str:
    """``rediss://…?ssl_ca_certs=…&ssl_certfile=…&ssl_keyfile=…`` of the TLS-only server."""
    return redis_tls_server.url


def with_prefix(url: str, prefix: str) -> str:
    """``url`` with ``prefix=`` added, so a test's keys never meet another test's."""
    return f"{url}{'&' if '?' in url else '?'}prefix={prefix}"


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix no other test uses."""
    return f"t{uuid.uuid4().hex[:12]}"
