"""SDK errors → dtimeout errors, in one place, at the transport's edge.

The Azure SDK already retries what it considers retryable (``retry_total`` times, kept small by
``settings.RetryOptions``); whatever reaches us afterwards is sorted into three bins:

* configuration — wrong credentials, missing rights, a queue that does not exist or is disabled:
  :class:`~dtimeout.errors.ConfigurationError`, so the CLI exits 2 with one line instead of a
  consumer retrying a typo forever;
* transient — connection, communication, timeout, server busy, quota:
  :class:`~dtimeout.errors.TransientTransportError`, retried by dtimeout's tenacity policy;
* anything else — a plain :class:`~dtimeout.errors.TransportError`.

The original exception is always chained (``raise … from exc``). Messages are scrubbed of
anything that looks like a key or signature, although the SDK's texts carry none.
"""

from __future__ import annotations

import re

from azure.core.exceptions import AzureError, ClientAuthenticationError
from azure.servicebus.exceptions import (
    MessageSizeExceededError,
    MessagingEntityDisabledError,
    MessagingEntityNotFoundError,
    OperationTimeoutError,
    ServiceBusAuthenticationError,
    ServiceBusAuthorizationError,
    ServiceBusCommunicationError,
    ServiceBusConnectionError,
    ServiceBusError,
    ServiceBusQuotaExceededError,
    ServiceBusServerBusyError,
)

from dtimeout.errors import (
    ConfigurationError,
    DtimeoutError,
    TransientTransportError,
    TransportError,
)

_SECRETS = re.compile(r"(?i)\b(SharedAccessKey|SharedAccessSignature|sig|skn|se)=[^;&\s]*")

TRANSIENT = (
    ServiceBusConnectionError,
    ServiceBusCommunicationError,
    OperationTimeoutError,
    ServiceBusServerBusyError,
    ServiceBusQuotaExceededError,
    ConnectionError,
    TimeoutError,
)
"""Failures a later attempt may not meet (the SDK has already retried them ``retry_total``
times). Quota counts: a full queue drains as consumers complete messages."""


class SendError(TransportError):
    """Raised when ``send`` could not schedule some messages.

    ``failed`` lists the message ids that were not accepted (the group that failed and every
    group after it); the groups before it were scheduled and stay scheduled — cancelling them
    would put their ids in the duplicate-detection history and make a retry silently vanish.
    """

    def __init__(self, message: str, *, failed: list[str], transient: bool = False) -> None:
        super().__init__(message, transient=transient)
        self.failed = failed

    @staticmethod
    def make(message: str, *, failed: list[str], transient: bool) -> SendError:
        """The right class: a transient one is also a ``TransientTransportError``."""
        cls = TransientSendError if transient else SendError
        return cls(message, failed=failed, transient=transient)


class TransientSendError(SendError, TransientTransportError):
    """Raised when ``send`` failed in a way a retry may fix; ``failed`` as for SendError."""


def describe(exc: BaseException) -> str:
    """One line of the SDK's text, without secrets."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return _SECRETS.sub(lambda m: f"{m.group(1)}=****", text)[:500]


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, TRANSIENT)


def is_configuration(exc: BaseException) -> bool:
    return isinstance(
        exc,
        ServiceBusAuthenticationError
        | ServiceBusAuthorizationError
        | MessagingEntityNotFoundError
        | MessagingEntityDisabledError
        | ClientAuthenticationError,
    )


def translate(exc: BaseException, what: str, where: str) -> DtimeoutError:
    """The dtimeout error for ``exc`` raised while doing ``what`` on ``where`` (ns/queue).

    Callers write ``raise translate(exc, …) from exc`` so the SDK error stays visible.
    """
    if isinstance(exc, DtimeoutError):
        return exc
    text = describe(exc)
    if isinstance(exc, ServiceBusAuthenticationError | ClientAuthenticationError):
        return ConfigurationError(
            f"azure-servicebus: cannot authenticate to {where} ({what}): check "
            f"DTIMEOUT_AZURE_CONNECTION_STRING or the DefaultAzureCredential chain: {text}"
        )
    if isinstance(exc, ServiceBusAuthorizationError):
        return ConfigurationError(
            f"azure-servicebus: not authorized to {what} on {where}: the key or identity needs "
            f"Send and Listen rights (Azure Service Bus Data Sender/Receiver): {text}"
        )
    if isinstance(exc, MessagingEntityNotFoundError):
        return ConfigurationError(f"azure-servicebus: queue {where} does not exist: {text}")
    if isinstance(exc, MessagingEntityDisabledError):
        return ConfigurationError(f"azure-servicebus: queue {where} is disabled: {text}")
    if isinstance(exc, MessageSizeExceededError):
        return TransportError(
            f"azure-servicebus: {what} on {where}: a message exceeds the queue's size limit "
            f"(lower ?max_message_bytes= to match the tier): {text}",
            transient=False,
        )
    if is_transient(exc):
        return TransientTransportError(f"azure-servicebus: {what} on {where} failed: {text}")
    if isinstance(exc, ServiceBusError):
        return TransportError(f"azure-servicebus: {what} on {where} failed: {text}")
    return TransportError(
        f"azure-servicebus: {what} on {where} failed unexpectedly: {type(exc).__name__}: {text}"
    )


def link_broken(exc: BaseException) -> bool:
    """The handler should not be used again: a detached or dead link, a timeout acquiring it,
    a handler the SDK shut down (``ValueError``), or a Python error inside the SDK that it
    wrapped as a bare ``ServiceBusError("Handler failed: …")`` (the wedge seen after idle
    periods). A bare ``ServiceBusError`` answered by the service (say, "already being
    cancelled") carries no inner exception and leaves the handler alone."""
    if isinstance(exc, ServiceBusConnectionError | ServiceBusCommunicationError):
        return True
    if isinstance(exc, OperationTimeoutError | ValueError):
        return True
    if type(exc) is ServiceBusError:
        inner = getattr(exc, "inner_exception", None)
        return isinstance(inner, Exception) and not isinstance(inner, AzureError)
    return not isinstance(exc, ServiceBusError) and is_transient(exc)


def broken(exc: BaseException, what: str, where: str) -> DtimeoutError:
    """The error for a handle that broke and was dropped: transient, since a fresh handle
    (opened on the next attempt) may well succeed."""
    translated = translate(exc, what, where)
    if isinstance(translated, ConfigurationError) or translated.__class__ is not TransportError:
        return translated
    return TransientTransportError(str(translated))
