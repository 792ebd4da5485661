"""The entry module dtimeout loads: hook implementations only, importing nothing but dtimeout.

dtimeout imports this module for every ``dtimeout`` command, so it must be cheap and must not
fail when the broker SDK is missing. The factories run only when a user picks ``example://``:
that is where the SDK import goes, and where a missing SDK becomes a ``MissingDependencyError``
naming the install command.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from dtimeout import ProviderInfo, hookimpl
from dtimeout.clock import Clock
from dtimeout.errors import ConfigurationError


def _name(url: str) -> str:
    """``example://NAME`` → ``NAME``; the same name means the same instance in one process."""
    parts = urlsplit(url)
    name = (parts.netloc + parts.path).strip("/")
    if not name:
        raise ConfigurationError("example:// needs a name, e.g. example://orders")
    return name


def open_transport(url: str, clock: Clock) -> Any:
    # A real provider imports its SDK here, e.g. ``import pika`` (late: only when used).
    from dtimeout.providers import memory

    return memory.open_transport(f"memory://example-{_name(url)}", clock)


def open_store(url: str, clock: Clock) -> Any:
    from dtimeout.providers import memory

    return memory.open_store(f"memory://example-{_name(url)}", clock)


@hookimpl
def dtimeout_register_transports(register: Callable[[ProviderInfo], None]) -> None:
    register(
        ProviderInfo(
            scheme="example",
            name="example",
            factory=open_transport,
            description="example provider (in-process, for the docs)",
        )
    )


@hookimpl
def dtimeout_register_stores(register: Callable[[ProviderInfo], None]) -> None:
    register(
        ProviderInfo(
            scheme="example",
            name="example",
            factory=open_store,
            description="example provider (in-process, for the docs)",
        )
    )
