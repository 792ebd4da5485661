"""The provider contract suite for ``azure-servicebus``: over the SDK double always, and live
against a namespace or the official emulator when configured.

Live runs need ``DTIMEOUT_AZURE_CONNECTION_STRING`` and ``DTIMEOUT_AZURE_QUEUE`` (a queue the
suite may empty: it purges it before each test). The queue's LockDuration is the lease the
transport contract checks; set ``DTIMEOUT_AZURE_LOCK_SECONDS`` to it (default 5, the smallest
the service allows). How to run it: docs/providers-azure.md.

The double's queues lock for exactly the contract's lease, as a queue configured with
LockDuration = the consumer's lease does: on Azure the broker lock *is* the lease (it cannot be
set per receive), renewed by the SDK's AutoLockRenewer when the lease is longer.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from azure_support import make_double

from dtimeout.clock import Clock
from dtimeout.interfaces import Store, Transport
from dtimeout.providers.memory import MemoryStore
from dtimeout.testing import MultiProcessContract, TimeoutsContract, TransportContract
from dtimeout_azure.settings import CONNECTION_STRING_ENV, parse_connection_string

QUEUE_ENV = "DTIMEOUT_AZURE_QUEUE"
LOCK_ENV = "DTIMEOUT_AZURE_LOCK_SECONDS"
SCENARIO_LEASE_SECONDS = 5.0  # TimeoutsContract's lease

# -- over the double ---------------------------------------------------------------------------


class TestAzureTransportContract(TransportContract):
    @pytest.fixture
    def make_transport(self) -> Callable[[Clock], Transport]:
        return lambda clock: make_double(clock, lock_seconds=self.lease_seconds)[0]


class TestAzureTimeoutsContract(TimeoutsContract):
    @pytest.fixture
    def make_transport(self) -> Callable[[Clock], Transport]:
        return lambda clock: make_double(clock, lock_seconds=SCENARIO_LEASE_SECONDS)[0]

    @pytest.fixture
    def make_store(self) -> Callable[[Clock], Store]:
        return MemoryStore


# -- live --------------------------------------------------------------------------------------

LIVE = bool(os.environ.get(CONNECTION_STRING_ENV) and os.environ.get(QUEUE_ENV))
live = pytest.mark.skipif(
    not LIVE,
    reason=f"live Azure Service Bus run: set {CONNECTION_STRING_ENV} and {QUEUE_ENV} "
    "(namespace or emulator; see docs/providers-azure.md)",
)


def live_url() -> str:
    host = parse_connection_string(os.environ[CONNECTION_STRING_ENV]).host
    return f"azure-servicebus://{host}/{os.environ[QUEUE_ENV]}"


def purge_live_queue() -> None:
    """Empty the live queue: cancel what is scheduled, drain what is active (bounded)."""
    from azure.servicebus import (
        ServiceBusClient,
        ServiceBusMessageState,
        ServiceBusReceiveMode,
    )

    queue = os.environ[QUEUE_ENV]
    with ServiceBusClient.from_connection_string(os.environ[CONNECTION_STRING_ENV]) as client:
        with client.get_queue_sender(queue) as sender, client.get_queue_receiver(queue) as peek:
            for _ in range(50):
                scheduled = [
                    m.sequence_number
                    for m in peek.peek_messages(max_message_count=250)
                    if m.state == ServiceBusMessageState.SCHEDULED and m.sequence_number
                ]
                if not scheduled:
                    break
                sender.cancel_scheduled_messages(scheduled)
        with client.get_queue_receiver(
            queue, receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE
        ) as drain:
            for _ in range(50):
                if not drain.receive_messages(max_message_count=250, max_wait_time=1):
                    break


def open_live(clock: Clock) -> Transport:
    from dtimeout_azure.plugin import open_transport

    purge_live_queue()
    return open_transport(live_url(), clock)


@live
@pytest.mark.live_azure
class TestLiveAzureTransportContract(TransportContract):
    real_time = True
    lease_seconds = float(os.environ.get(LOCK_ENV, "5"))

    @pytest.fixture
    def make_transport(self) -> Callable[[Clock], Transport]:
        return open_live


@live
@pytest.mark.live_azure
class TestLiveAzureTimeoutsContract(TimeoutsContract):
    real_time = True

    @pytest.fixture
    def make_transport(self) -> Callable[[Clock], Transport]:
        return open_live

    @pytest.fixture
    def make_store(self) -> Callable[[Clock], Store]:
        return MemoryStore


@live
@pytest.mark.live_azure
class TestLiveAzureMultiProcess(MultiProcessContract):
    @pytest.fixture
    def transport_url(self) -> str:
        purge_live_queue()
        return live_url()

    @pytest.fixture
    def store_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'store.db'}"
