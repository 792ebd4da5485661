"""The two places where the SDK's own code runs, not the double's: its AutoLockRenewer keeping
our locks (real time: the renewer reads the wall clock), and its client failing against a
refused loopback port (real AMQP connection attempt, real exception classes)."""

from __future__ import annotations

import socket
import time

import pytest
from azure.servicebus import AutoLockRenewer
from azure.servicebus.exceptions import ServiceBusConnectionError
from azure_support import QUEUE
from sbdouble import FakeNamespace

from dtimeout.clock import SYSTEM_CLOCK
from dtimeout.errors import TransientTransportError
from dtimeout.interfaces import OutgoingMessage
from dtimeout.model import TimeoutMessage
from dtimeout_azure.plugin import open_transport
from dtimeout_azure.settings import CONNECTION_STRING_ENV
from dtimeout_azure.transport import AzureServiceBusTransport


def _message(key: str) -> OutgoingMessage:
    now = SYSTEM_CLOCK.now_ms()
    return OutgoingMessage(f"k:{key}:1", TimeoutMessage("k", key, 1, now, None).encode(), now)


@pytest.mark.slow
def test_the_sdks_renewer_keeps_a_lock_for_the_lease_and_only_then() -> None:
    """A 3 s LockDuration; one delivery leased for 8 s (registered with the SDK's renewer), one
    for 3 s (the lock covers it: not registered). 4.5 s later only the second came back."""
    ns = FakeNamespace(SYSTEM_CLOCK)
    ns.create_queue(QUEUE, lock_seconds=3)
    transport = AzureServiceBusTransport(
        ns.client(), QUEUE, SYSTEM_CLOCK, lock_renewer=AutoLockRenewer(max_workers=4)
    )
    try:
        transport.send([_message("long"), _message("short")])
        (long_lease,) = transport.receive(1, 1.0, lease_seconds=8)
        (short_lease,) = transport.receive(1, 1.0, lease_seconds=3)
        assert (long_lease.message_id, short_lease.message_id) == ("k:long:1", "k:short:1")
        time.sleep(4.5)
        back = transport.receive(10, 0.2, lease_seconds=3)
        assert [d.message_id for d in back] == ["k:short:1"]
        transport.ack([long_lease, *back])  # the renewed lock is still ours: completes
        assert transport.stats()["completed"] == 2 and "lock_lost" not in transport.stats()
        assert ns.snapshot(QUEUE)["active"] == []
    finally:
        transport.close()


def test_the_real_client_against_a_refused_port_fails_transient_never_empty(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv(
        CONNECTION_STRING_ENV,
        f"Endpoint=sb://127.0.0.1:{port};SharedAccessKeyName=k;SharedAccessKey=c2VjcmV0;"
        "UseDevelopmentEmulator=true",
    )
    transport = open_transport(f"azure-servicebus://127.0.0.1:{port}/q?retry_total=0", SYSTEM_CLOCK)
    try:
        for verb in (
            lambda: transport.send([_message("a")]),
            lambda: transport.receive(1, 0.5, 5),
            transport.ping,
        ):
            with pytest.raises(TransientTransportError) as info:
                verb()
            cause = info.value.__cause__
            while cause is not None and not isinstance(cause, ServiceBusConnectionError):
                cause = cause.__cause__
            assert isinstance(cause, ServiceBusConnectionError)
    finally:
        transport.close()
