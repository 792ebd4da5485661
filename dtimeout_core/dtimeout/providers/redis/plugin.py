"""Registers the Redis provider's schemes for both roles; imports only dtimeout.

The factories import redis-py (through ``store``/``transport``) when a Redis URL is actually
used, so listing providers or using SQLite never pays for it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from dtimeout.clock import Clock
from dtimeout.hookspecs import hookimpl
from dtimeout.interfaces import ProviderInfo

if TYPE_CHECKING:
    from dtimeout.providers.redis.store import RedisStore
    from dtimeout.providers.redis.transport import RedisTransport

_DESCRIPTIONS = {
    "redis": "Redis (standalone)",
    "rediss": "Redis over TLS",
    "redis+cluster": "Redis Cluster",
    "redis+sentinel": "Redis behind Sentinel",
}


def open_store(url: str, clock: Clock) -> RedisStore:
    """Factory of the store role (``redis://…`` and friends)."""
    from dtimeout.providers.redis.settings import parse_url
    from dtimeout.providers.redis.store import RedisStore

    return RedisStore(parse_url(url), clock)


def open_transport(url: str, clock: Clock) -> RedisTransport:
    """Factory of the transport role."""
    from dtimeout.providers.redis.settings import parse_url
    from dtimeout.providers.redis.transport import RedisTransport

    return RedisTransport(parse_url(url), clock)


def _transient_errors() -> tuple[type[BaseException], ...]:
    # Everything redis-py raises is translated at our edge; nothing extra to declare.
    return ()


@hookimpl
def dtimeout_register_transports(register: Callable[[ProviderInfo], None]) -> None:
    for scheme, text in _DESCRIPTIONS.items():
        register(
            ProviderInfo(
                scheme=scheme,
                name="redis",
                factory=open_transport,
                description=f"{text}: delayed queue on sorted sets, native cancel",
                transient_errors=_transient_errors(),
            )
        )


@hookimpl
def dtimeout_register_stores(register: Callable[[ProviderInfo], None]) -> None:
    for scheme, text in _DESCRIPTIONS.items():
        register(
            ProviderInfo(
                scheme=scheme,
                name="redis",
                factory=open_store,
                description=f"{text}: one Lua script per transition",
            )
        )
