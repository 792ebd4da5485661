"""dtimeout: durable, cancellable timeouts for distributed Python systems.

Schedule "run Y unless X happens within N minutes" as a delayed message on the queue you already
run; cancel it from any process when X happens; consumers run Y when the delay ends and nobody
cancelled. See ``docs/concepts.md`` for the states and what ``cancel`` answers.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from dtimeout.app import BatchScheduleError, ScheduleItem, Timeouts
from dtimeout.clock import Clock, FakeClock, SystemClock
from dtimeout.errors import (
    ConfigurationError,
    DtimeoutError,
    InvalidTransitionError,
    MalformedMessageError,
    PayloadTooLargeError,
    PluginError,
    ProviderError,
    SendFailedError,
    StoreError,
    TransportError,
    UnknownSchemeError,
    ValidationError,
)
from dtimeout.hookspecs import hookimpl
from dtimeout.interfaces import ProviderInfo, Store, Transport, TransportCapabilities
from dtimeout.model import CancelResult, DueTimeout, OrphanPolicy, Timeout, TimeoutState

try:
    __version__ = version("dtimeout")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0+unknown"


__all__ = [
    "BatchScheduleError",
    "CancelResult",
    "Clock",
    "ConfigurationError",
    "DtimeoutError",
    "DueTimeout",
    "FakeClock",
    "InvalidTransitionError",
    "MalformedMessageError",
    "OrphanPolicy",
    "PayloadTooLargeError",
    "PluginError",
    "ProviderError",
    "ProviderInfo",
    "ScheduleItem",
    "SendFailedError",
    "Store",
    "StoreError",
    "SystemClock",
    "Timeout",
    "TimeoutState",
    "Timeouts",
    "Transport",
    "TransportCapabilities",
    "TransportError",
    "UnknownSchemeError",
    "ValidationError",
    "__version__",
    "hookimpl",
]
