"""Building the SDK client from settings: the only code that touches the credential.

Two sources, nothing else: the connection string from ``DTIMEOUT_AZURE_CONNECTION_STRING``
(works for namespaces and for the emulator, whose strings carry ``UseDevelopmentEmulator=true``
and make the SDK speak plain AMQP to localhost), or ``DefaultAzureCredential`` from the optional
``azure-identity`` package (managed identity, workload identity, ``az login``…) against the
namespace named in the URL. The SDK's retry options are always passed explicitly (see
:class:`~dtimeout_azure.settings.RetryOptions`).
"""

from __future__ import annotations

from typing import Any

from azure.servicebus import AutoLockRenewer, ServiceBusClient, TransportType

from dtimeout.errors import ConfigurationError, MissingDependencyError
from dtimeout_azure.settings import CONNECTION_STRING_ENV, AzureSettings

IDENTITY_HINT = "pip install 'dtimeout-azure[identity]'"


def client_options(settings: AzureSettings) -> dict[str, Any]:
    """Keyword arguments for ``ServiceBusClient``: retries and transport, all explicit."""
    return {
        "retry_total": settings.retry.total,
        "retry_backoff_factor": settings.retry.backoff_factor,
        "retry_backoff_max": settings.retry.backoff_max,
        "retry_mode": settings.retry.mode,
        "try_timeout": settings.retry.try_timeout,
        "transport_type": (
            TransportType.AmqpOverWebsocket if settings.websockets else TransportType.Amqp
        ),
    }


def build_client(settings: AzureSettings) -> ServiceBusClient:
    """A ``ServiceBusClient`` for ``settings``; nothing is connected until first use."""
    options = client_options(settings)
    if settings.connection_string is not None:
        try:
            return ServiceBusClient.from_connection_string(settings.connection_string, **options)
        except ValueError as exc:  # the SDK's texts never quote the string
            raise ConfigurationError(
                f"azure-servicebus: {CONNECTION_STRING_ENV} was refused by the SDK: {exc}"
            ) from exc
    try:
        from azure.identity import DefaultAzureCredential
    except ImportError as exc:
        raise MissingDependencyError(
            f"azure-servicebus: no {CONNECTION_STRING_ENV} is set and azure-identity is not "
            f"installed for DefaultAzureCredential: set the variable, or {IDENTITY_HINT}"
        ) from exc
    return ServiceBusClient(settings.namespace, DefaultAzureCredential(), **options)


def build_lock_renewer(settings: AzureSettings) -> AutoLockRenewer | None:
    """The SDK's renewer, which keeps message locks alive in the background (or None)."""
    return AutoLockRenewer() if settings.lock_renewal else None
