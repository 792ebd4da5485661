"""The embedded default provider ``sqlite``: a store and a transport in one local file.

This module is the plugin (listed in ``dtimeout.plugins.DEFAULT_PLUGINS``): it registers the
``sqlite`` scheme for both roles and nothing else, so loading it costs nothing until a
``sqlite://`` URL is opened. The work lives in ``sqlite_db`` (URL settings, connections, lock
retry), ``sqlite_store`` and ``sqlite_transport``.

``sqlite:///./.dtimeout/dtimeout.db`` — the default — serves both roles from one file (separate
tables); several producer, canceller and consumer processes on one host may share it.
"""

from __future__ import annotations

from collections.abc import Callable

from dtimeout.clock import Clock
from dtimeout.hookspecs import hookimpl
from dtimeout.interfaces import ProviderInfo, Store, Transport
from dtimeout.providers.sqlite_db import DEFAULT_URL, SCHEME, SqliteSettings

__all__ = ["DEFAULT_URL", "SCHEME", "SqliteSettings", "open_store", "open_transport"]


def open_store(url: str, clock: Clock) -> Store:
    """Factory for ``sqlite://`` stores (imported late so loading the plugin stays cheap)."""
    from dtimeout.providers.sqlite_store import SqliteStore

    return SqliteStore.from_url(url, clock)


def open_transport(url: str, clock: Clock) -> Transport:
    """Factory for ``sqlite://`` transports."""
    from dtimeout.providers.sqlite_transport import SqliteTransport

    return SqliteTransport.from_url(url, clock)


@hookimpl
def dtimeout_register_transports(register: Callable[[ProviderInfo], None]) -> None:
    register(
        ProviderInfo(
            scheme=SCHEME,
            name="sqlite",
            factory=open_transport,
            description="delayed messages in a local SQLite file (embedded default)",
        )
    )


@hookimpl
def dtimeout_register_stores(register: Callable[[ProviderInfo], None]) -> None:
    register(
        ProviderInfo(
            scheme=SCHEME,
            name="sqlite",
            factory=open_store,
            description="timeout records in a local SQLite file (embedded default)",
        )
    )
