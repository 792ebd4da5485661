"""Timeouts + Consumer over the Azure transport (SDK double) and a memory store: the cases the
issue names — native cancel, cancel after enqueue, long handlers, lost locks, idle detach,
malformed bodies — end to end, on a fake clock."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from azure.servicebus import ServiceBusMessage
from azure_support import QUEUE, make_double

from dtimeout.app import Timeouts
from dtimeout.clock import FakeClock
from dtimeout.model import CancelResult, DueTimeout, TimeoutState
from dtimeout.providers.memory import MemoryStore
from dtimeout.testing import pump

KIND = "payment"


class Env:
    def __init__(self, clock: FakeClock, lock_seconds: float, lease_seconds: float) -> None:
        self.clock = clock
        self.transport, self.ns = make_double(clock, lock_seconds=lock_seconds)
        self.timeouts = Timeouts(
            self.transport,
            MemoryStore(clock),
            clock=clock,
            lease=timedelta(seconds=lease_seconds),
            retry_backoff=timedelta(seconds=1),
        )
        self.calls: list[DueTimeout] = []
        self.timeouts.handler(KIND)(self.calls.append)

    def snapshot(self) -> dict[str, list]:  # type: ignore[type-arg]
        return self.ns.snapshot(QUEUE)


@pytest.fixture
def env(fake_clock: FakeClock) -> Iterator[Env]:
    e = Env(fake_clock, lock_seconds=10, lease_seconds=30)
    yield e
    e.timeouts.close()


def test_cancel_before_the_scheduled_time_removes_the_message_natively(env: Env) -> None:
    env.timeouts.schedule(KIND, "o1", after=timedelta(minutes=15))
    record = env.timeouts.status(KIND, "o1")
    assert record is not None and record.handle is not None  # the sequence number is kept
    assert len(env.snapshot()["scheduled"]) == 1
    assert env.timeouts.cancel(KIND, "o1") is CancelResult.CANCELLED
    assert env.snapshot()["scheduled"] == []  # gone from the broker, not just from the store
    env.clock.advance(16 * 60)
    consumer = env.timeouts.consumer(wait_seconds=0.0)
    pump(consumer)
    assert env.calls == [] and consumer.stats.received == 0


def test_cancel_after_enqueue_is_answered_by_the_store_and_the_message_dropped(
    env: Env,
) -> None:
    env.timeouts.schedule(KIND, "o1", after=timedelta(seconds=5))
    env.clock.advance(6)  # the broker has enqueued it; nobody consumed it yet
    assert env.timeouts.cancel(KIND, "o1") is CancelResult.CANCELLED
    assert len(env.snapshot()["active"]) == 1  # native cancel could not reach it
    assert env.transport.stats()["cancel_not_scheduled"] == 1
    consumer = env.timeouts.consumer(wait_seconds=0.0)
    pump(consumer)
    assert env.calls == []
    assert consumer.stats.dropped == {"cancelled": 1}
    assert env.snapshot()["active"] == []  # completed, not left to expire and come back


@pytest.mark.parametrize("heartbeat", [True, False], ids=["renewed", "not-renewed"])
def test_a_handler_longer_than_the_lock_keeps_it_by_renewal(env: Env, heartbeat: bool) -> None:
    release = threading.Event()
    started: list[DueTimeout] = []

    @env.timeouts.handler("slow")
    def slow(t: DueTimeout) -> None:
        started.append(t)
        release.wait(10)

    env.timeouts.schedule("slow", "s1", after=0)
    consumer = env.timeouts.consumer(
        concurrency=2, wait_seconds=0.0, heartbeat_seconds=0.001 if heartbeat else 3600
    )
    for _ in range(12):  # 60 s of handler time against a 10 s lock (and a 30 s lease)
        consumer.run_once()
        env.clock.advance(5)
        time.sleep(0.002)  # let the heartbeat come due in real time
    release.set()
    pump(consumer, until=lambda: not consumer.in_flight)
    if heartbeat:
        assert consumer.stats.received == 1 and len(started) == 1
        assert env.transport.stats()["renewals"] >= 10
        assert consumer.stats.fired == 1 and env.snapshot()["active"] == []
    else:  # control: without renewal the lock lapses and the message comes back
        assert consumer.stats.received > 1
    consumer.drain()


def test_a_lost_lock_is_not_completed_and_the_store_drops_the_redelivery(
    fake_clock: FakeClock,
) -> None:
    env = Env(fake_clock, lock_seconds=10, lease_seconds=120)

    @env.timeouts.handler("long")
    def long_running(t: DueTimeout) -> None:
        env.clock.advance(40)  # one thread, no heartbeat while it runs: the lock lapses

    env.timeouts.schedule("long", "x", after=0)
    consumer = env.timeouts.consumer(wait_seconds=0.0)
    pump(consumer)
    assert env.transport.stats()["lock_lost"] == 1  # the complete was refused, not retried
    # The broker delivered it again. If that copy arrived while the handler still ran, the
    # claim found a live lease (BUSY) and put it back for the lease's remainder: let that pass.
    env.clock.advance(130)
    pump(consumer)
    # either way the store answered the redelivery: already fired
    assert consumer.stats.received in (2, 3) and consumer.stats.dropped == {"fired": 1}
    assert consumer.stats.fired == 1 and env.snapshot()["active"] == []
    record = env.timeouts.status("long", "x")
    assert record is not None and record.state is TimeoutState.FIRED
    env.timeouts.close()


def test_the_loop_survives_an_idle_detach_and_an_outage(env: Env) -> None:
    env.timeouts.schedule(KIND, "a", after=0)
    consumer = env.timeouts.consumer(wait_seconds=0.0)
    pump(consumer, until=lambda: len(env.calls) >= 1)
    env.ns.detach_links(wedge=True)  # the receiver the consumer used is dead for good
    env.timeouts.schedule(KIND, "b", after=0)
    pump(consumer, until=lambda: len(env.calls) >= 2)
    assert env.transport.stats()["reconnects"] == 1
    env.timeouts.schedule(KIND, "c", after=0)
    env.ns.outage = True  # the namespace is unreachable: receive fails, after SDK retries
    runner = threading.Thread(
        target=consumer.run, kwargs={"stop_when": lambda: len(env.calls) >= 3}, daemon=True
    )
    runner.start()
    time.sleep(0.3)
    assert runner.is_alive()  # backing off, not ended
    env.ns.outage = False
    runner.join(10)
    assert not runner.is_alive() and [t.key for t in env.calls] == ["a", "b", "c"]


def test_a_malformed_body_is_dead_lettered_and_the_loop_goes_on(env: Env) -> None:
    sender = env.ns.client().get_queue_sender(QUEUE)
    sender.send_messages(ServiceBusMessage(b"{not json", message_id="foreign-1"))
    env.timeouts.schedule(KIND, "good", after=0)
    consumer = env.timeouts.consumer(wait_seconds=0.0)
    pump(consumer, until=lambda: len(env.calls) >= 1 and consumer.stats.dead_lettered >= 1)
    (dead,) = env.snapshot()["dead"]
    assert dead.message_id == "foreign-1"
    assert (dead.dead_letter_reason or "").startswith("malformed: body is not JSON")
    assert [t.key for t in env.calls] == ["good"]


def test_a_failed_handler_waits_its_backoff_in_a_scheduled_copy(env: Env) -> None:
    failures = {"left": 1}

    @env.timeouts.handler("flaky")
    def flaky(t: DueTimeout) -> None:
        if failures["left"]:
            failures["left"] -= 1
            raise RuntimeError("downstream unavailable")
        env.calls.append(t)

    env.timeouts.schedule("flaky", "f", after=0)
    consumer = env.timeouts.consumer(wait_seconds=0.0)
    pump(consumer, until=lambda: consumer.stats.failed >= 1)
    (copy,) = env.snapshot()["scheduled"]  # not abandoned: no redelivery hot loop
    assert copy.message_id == "flaky:f:1/r1" and copy.failures == 0
    pump(consumer)
    assert env.calls == []  # not before the backoff
    env.clock.advance(1.1)
    pump(consumer, until=lambda: len(env.calls) >= 1)
    assert [t.attempt for t in env.calls] == [2]
    assert env.snapshot() == {"scheduled": [], "active": [], "dead": []}
