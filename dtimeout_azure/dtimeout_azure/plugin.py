"""Entry module of the ``dtimeout-azure`` plugin: registers the ``azure-servicebus://`` transport.

Loaded through the ``dtimeout`` entry-point group every time a plugin manager is built, so it
imports only dtimeout: the Azure SDK (slow to import, and optional) is imported by the factory
when a user actually selects ``azure-servicebus://``. A missing SDK then says how to install it.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from dtimeout import hookimpl
from dtimeout.clock import Clock
from dtimeout.errors import MissingDependencyError
from dtimeout.interfaces import ProviderInfo, Transport
from dtimeout_azure.settings import SCHEME, parse_url

INSTALL_HINT = "pip install 'dtimeout[azure]'"


def open_transport(url: str, clock: Clock) -> Transport:
    """Factory for ``azure-servicebus://NAMESPACE/QUEUE``: parse, import the SDK, build.

    Nothing is connected here: the SDK opens its links on first use, so ``dtimeout check``
    (``Transport.ping``) is where an unreachable namespace or a wrong key shows up.
    """
    settings = parse_url(url, os.environ)  # a bad URL is reported even when the SDK is missing
    try:
        from dtimeout_azure.transport import AzureServiceBusTransport
    except ImportError as exc:
        if (exc.name or "").split(".")[0] == "azure":
            raise MissingDependencyError(
                f"{SCHEME}:// needs azure-servicebus, which is not installed: {INSTALL_HINT}"
            ) from exc
        raise
    return AzureServiceBusTransport.from_settings(settings, clock)


@hookimpl
def dtimeout_register_transports(register: Callable[[ProviderInfo], None]) -> None:
    register(
        ProviderInfo(
            scheme=SCHEME,
            name="azure-servicebus",
            factory=open_transport,
            description=(
                "Azure Service Bus queue: scheduled messages, native cancel by sequence number"
            ),
        )
    )
