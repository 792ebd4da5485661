"""Fixtures for the Azure Service Bus transport: the SDK double, driven by a fake clock.

No Service Bus broker can run here (the emulator ships only as a container image), so every test
in this folder but the live ones talks to ``sbdouble.FakeNamespace``; the live ones need
``DTIMEOUT_AZURE_CONNECTION_STRING`` and ``DTIMEOUT_AZURE_QUEUE`` (see test_azure_contract.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from azure_support import make_double
from sbdouble import FakeNamespace

from dtimeout.clock import FakeClock
from dtimeout_azure.transport import AzureServiceBusTransport


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def double(fake_clock: FakeClock) -> Iterator[tuple[AzureServiceBusTransport, FakeNamespace]]:
    """Transport + namespace; the queue locks messages for 30 s, dead-letters after 10."""
    transport, namespace = make_double(fake_clock, lock_seconds=30.0)
    yield transport, namespace
    transport.close()
