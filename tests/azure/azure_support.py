"""Helpers shared by the Azure tests (a module of its own: ``conftest`` is not importable by
name when several test folders have one)."""

from __future__ import annotations

from typing import Any

from sbdouble import FakeNamespace

from dtimeout.clock import Clock
from dtimeout_azure.transport import AzureServiceBusTransport

QUEUE = "timeouts"


def make_double(
    clock: Clock, *, queue: str = QUEUE, **queue_options: Any
) -> tuple[AzureServiceBusTransport, FakeNamespace]:
    """A transport over a fresh namespace double holding one queue (no lock renewer: on a fake
    clock the SDK's real-time renewer has nothing to measure)."""
    namespace = FakeNamespace(clock)
    namespace.create_queue(queue, **queue_options)
    return AzureServiceBusTransport(namespace.client(), queue, clock), namespace
