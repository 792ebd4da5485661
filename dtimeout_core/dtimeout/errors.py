"""One error hierarchy for dtimeout.

Every error the library raises derives from :class:`DtimeoutError`, so callers can catch one
type. Providers translate SDK errors at their edge into these classes and keep the original
exception chained (``raise ... from exc``). The CLI maps each branch to an exit code in one place
(``dtimeout.cli.errors``): configuration problems exit 2, runtime failures exit 1.

Messages never contain secrets: URLs are masked before they are put into a message.
"""

from __future__ import annotations


class DtimeoutError(Exception):
    """Raised for any dtimeout failure; the root of the hierarchy."""


class ConfigurationError(DtimeoutError):
    """Raised when settings, a URL, an option or a credential source is wrong.

    The CLI exits 2 on it. The message is one line naming what is wrong.
    """


class PluginError(ConfigurationError):
    """Raised when a provider plugin cannot be loaded, or two plugins claim one URL scheme."""


class UnknownSchemeError(ConfigurationError):
    """Raised when a provider URL uses a scheme no loaded plugin registered."""


class MissingDependencyError(ConfigurationError):
    """Raised when a provider's SDK is not installed; the message names the install command."""


class ValidationError(ConfigurationError, ValueError):
    """Raised when caller input is refused before anything is written.

    Examples: a naive datetime, a negative delay, a payload that is not JSON or is larger than
    the transport accepts, an empty kind or key.
    """


class PayloadTooLargeError(ValidationError):
    """Raised when an encoded message would exceed the transport's ``max_message_bytes``."""


class InvalidTransitionError(DtimeoutError):
    """Raised when an operation is not allowed in the timeout's current state.

    For example scheduling an identity whose handler is running right now (FIRING).
    """


class ProviderError(DtimeoutError):
    """Raised when a store or transport operation fails at runtime.

    ``transient`` tells the retry policy whether trying again may succeed (a dropped connection,
    throttling, a server busy) or not (a permission or a missing queue).
    """

    transient: bool = False

    def __init__(self, message: str, *, transient: bool | None = None) -> None:
        super().__init__(message)
        if transient is not None:
            self.transient = transient


class StoreError(ProviderError):
    """Raised when the store cannot perform an operation."""


class TransportError(ProviderError):
    """Raised when the transport cannot perform an operation."""


class TransientStoreError(StoreError):
    """Raised when a store operation failed in a way that a retry may fix."""

    transient = True


class TransientTransportError(TransportError):
    """Raised when a transport operation failed in a way that a retry may fix."""

    transient = True


class SendFailedError(TransportError):
    """Raised by ``schedule`` when the message could not be sent after retries.

    The timeout's record was moved to CANCELLED with reason ``send_failed`` before this was
    raised, so a message that reached the broker anyway is dropped at claim and never fires.
    """


class MalformedMessageError(DtimeoutError):
    """Raised when a delivered message body is not a valid dtimeout message.

    The consumer dead-letters such a message with this error's text as the reason.
    """
