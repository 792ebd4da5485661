"""The SQS transport under dtimeout's own API and consumer, against moto's server: long delays
bridged, oversize payloads refused by name, long handlers kept invisible, bad bodies
dead-lettered while the loop keeps running."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta

import pytest
from sqs_support import Drain, MakeQueue, OpenTransport

from dtimeout.app import BatchScheduleError, ScheduleItem, Timeouts
from dtimeout.clock import SYSTEM_CLOCK, to_ms
from dtimeout.errors import PayloadTooLargeError
from dtimeout.model import DueTimeout, Timeout, TimeoutState
from dtimeout.providers.memory import MemoryStore
from dtimeout_sqs import wire

pytestmark = pytest.mark.timeout(60)


def run_until(timeouts: Timeouts, done: Callable[[], bool], *, seconds: float, **options: object):  # type: ignore[no-untyped-def]
    consumer = timeouts.consumer(**options)
    deadline = time.monotonic() + seconds
    return consumer.run(stop_when=lambda: done() or time.monotonic() > deadline)


def test_a_delay_beyond_the_native_maximum_hops_and_fires_once_at_due(
    make_queue: MakeQueue, open_transport: OpenTransport, drain: Drain
) -> None:
    # Test-only cap of 1 s stands for SQS's 900 s; maxReceiveCount=1 proves hops never
    # count toward the DLQ (a second receipt of one message would move it there).
    q = make_queue(redrive=1)
    transport = open_transport(q, max_native_delay_seconds=1)
    timeouts = Timeouts(transport, MemoryStore(SYSTEM_CLOCK))
    runs: list[tuple[DueTimeout, int]] = []

    @timeouts.handler("payment")
    def fire(t: DueTimeout) -> None:
        runs.append((t, SYSTEM_CLOCK.now_ms()))

    scheduled = timeouts.schedule("payment", "order-42", after=timedelta(seconds=3.5))
    stats = run_until(timeouts, lambda: bool(runs), seconds=15, wait_seconds=1.0)
    time.sleep(1.2)  # would a duplicate still arrive?
    stats = run_until(timeouts, lambda: False, seconds=1.5, wait_seconds=1.0)
    ((due, started_ms),) = runs
    assert due.key == "order-42" and due.attempt == 1
    assert started_ms >= scheduled.due_at_ms == to_ms(due.due_at)
    assert transport.stats()["hops"] >= 3
    assert stats.received == 0
    record = timeouts.status("payment", "order-42")
    assert record is not None and record.state is TimeoutState.FIRED
    assert q.dlq_url is not None and drain(q.dlq_url, rounds=1, wait=0) == []


def test_a_batch_of_25_with_one_oversize_payload_schedules_the_other_24(
    make_queue: MakeQueue, open_transport: OpenTransport, drain: Drain
) -> None:
    q = make_queue(max_size=1024)
    transport = open_transport(q)
    timeouts = Timeouts(transport, MemoryStore(SYSTEM_CLOCK))
    items = [ScheduleItem("payment", f"order-{i}", after=0, payload={"n": i}) for i in range(25)]
    items[11] = ScheduleItem("payment", "order-huge", after=0, payload={"blob": "x" * 1500})
    with pytest.raises(BatchScheduleError) as info:
        timeouts.schedule_many(items)
    results = info.value.results
    refused = [r for r in results if isinstance(r, PayloadTooLargeError)]
    assert len(refused) == 1 and results[11] is refused[0]
    assert "order-huge" in str(refused[0])
    assert f"limit of {transport.capabilities.max_message_bytes} bytes" in str(refused[0])
    assert sum(isinstance(r, Timeout) for r in results) == 24
    assert timeouts.status("payment", "order-huge") is None  # nothing written for it
    ids = sorted(m["MessageAttributes"][wire.ATTR_ID]["StringValue"] for m in drain(q.url))
    assert ids == sorted(f"payment:order-{i}:1" for i in range(25) if i != 11)
    assert transport.stats()["requests.SendMessageBatch"] >= 3  # ≤ 10 entries and ≤ 1 KiB each


def test_a_long_handler_is_kept_invisible_by_the_heartbeat_and_runs_once(
    make_queue: MakeQueue, open_transport: OpenTransport
) -> None:
    q = make_queue(visibility=1)
    transport = open_transport(q)
    # Lease (and so the visibility requested at receive) of 2 s; the handler takes 5 s.
    timeouts = Timeouts(transport, MemoryStore(SYSTEM_CLOCK), lease=timedelta(seconds=2))
    calls: list[str] = []
    finished = threading.Event()

    @timeouts.handler("report")
    def slow(t: DueTimeout) -> None:
        calls.append(t.key)
        time.sleep(5)
        finished.set()

    timeouts.schedule("report", "r1", after=0)
    # Two workers: the consumer keeps receiving while the handler runs, so a message that
    # became visible again would be delivered a second time.
    stats = run_until(timeouts, finished.is_set, seconds=20, concurrency=2, wait_seconds=1.0)
    assert calls == ["r1"]
    assert stats.received == 1 and stats.fired == 1
    assert transport.stats()["extends"] >= 3
    record = timeouts.status("report", "r1")
    assert record is not None and record.state is TimeoutState.FIRED


def test_bodies_that_are_not_dtimeout_messages_are_dead_lettered_and_the_loop_goes_on(
    make_queue: MakeQueue, open_transport: OpenTransport, drain: Drain, sqs_admin: object
) -> None:
    q = make_queue(redrive=3)
    transport = open_transport(q)
    timeouts = Timeouts(transport, MemoryStore(SYSTEM_CLOCK))
    fired: list[str] = []
    timeouts.handler("payment")(lambda t: fired.append(t.key))
    for body in ("not json at all", '{"v": 1, "kind": "payment"}'):
        sqs_admin.send_message(QueueUrl=q.url, MessageBody=body)  # type: ignore[attr-defined]
    timeouts.schedule("payment", "good", after=0)
    stats = run_until(
        timeouts, lambda: bool(fired) and transport.stats().get("dead_lettered", 0) == 2, seconds=15
    )
    assert fired == ["good"]
    assert stats.dead_lettered == 2
    assert q.dlq_url is not None
    reasons = sorted(
        m["MessageAttributes"][wire.ATTR_REASON]["StringValue"] for m in drain(q.dlq_url)
    )
    assert reasons[0].startswith("malformed: body is not JSON")
    assert reasons[1].startswith("malformed: field 'key'")
    assert drain(q.url, rounds=1, wait=0) == []
