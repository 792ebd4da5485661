"""The transport over the SDK double: each verb, each failure the service can answer with."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from azure.servicebus import ServiceBusMessage, ServiceBusReceiveMode
from azure.servicebus.exceptions import (
    OperationTimeoutError,
    ServiceBusConnectionError,
    ServiceBusError,
    ServiceBusServerBusyError,
)
from azure_support import QUEUE, make_double
from sbdouble import FakeNamespace

from dtimeout.clock import FakeClock
from dtimeout.errors import (
    ConfigurationError,
    PayloadTooLargeError,
    TransientTransportError,
    ValidationError,
)
from dtimeout.interfaces import CancelRef, OutgoingMessage
from dtimeout.model import TimeoutMessage
from dtimeout_azure.errors import SendError
from dtimeout_azure.transport import AzureServiceBusTransport
from dtimeout_azure.wire import HOP_PROPERTY, ID_PROPERTY, MAX_MESSAGE_ID, aware_utc

Double = tuple[AzureServiceBusTransport, FakeNamespace]


def out(clock: FakeClock, key: str, in_s: float, generation: int = 1) -> OutgoingMessage:
    due = clock.now_ms() + round(in_s * 1000)
    body = TimeoutMessage("payment", key, generation, due, {"k": key}).encode()
    return OutgoingMessage(f"payment:{key}:{generation}", body, due)


def test_send_schedules_by_due_time_with_aware_utc_and_returns_sequence_numbers(
    double: Double, fake_clock: FakeClock
) -> None:
    transport, ns = double
    batch = [out(fake_clock, "a", 10), out(fake_clock, "b", 10), out(fake_clock, "c", 20)]
    handles = transport.send(batch)
    scheduled = {m.message_id: m for m in ns.snapshot(QUEUE)["scheduled"]}
    assert handles == [str(scheduled[f"payment:{k}:1"].seq) for k in "abc"]
    assert ns.calls["schedule"] == 2  # one call per distinct due instant
    assert all(t.tzinfo is UTC for t in ns.schedule_times)
    assert [scheduled[m.message_id].scheduled_ms for m in batch] == [m.due_at_ms for m in batch]
    assert scheduled["payment:a:1"].properties == {ID_PROPERTY: "payment:a:1"}
    assert transport.stats()["scheduled"] == 3


def test_naive_datetimes_are_refused_before_the_sdk_sees_them() -> None:
    with pytest.raises(ValidationError, match="naive"):
        aware_utc(datetime(2030, 1, 1, 12, 0))
    assert aware_utc(datetime(2030, 1, 1, 12, 0, tzinfo=UTC)).tzinfo is UTC


def test_long_ids_get_a_stable_digest_within_the_service_limit(
    double: Double, fake_clock: FakeClock
) -> None:
    transport, ns = double
    long_key = "k" * 300
    transport.send([out(fake_clock, long_key, 5), out(fake_clock, long_key, 5)])
    a, b = ns.snapshot(QUEUE)["scheduled"]
    assert a.message_id == b.message_id and len(a.message_id or "") <= MAX_MESSAGE_ID
    fake_clock.advance(5)
    got = transport.receive(10, 0.01, 30)
    assert {d.message_id for d in got} == {f"payment:{long_key}:1"}  # the logical id survives


def test_oversize_body_is_refused(double: Double, fake_clock: FakeClock) -> None:
    transport, _ = double
    big = OutgoingMessage("payment:x:1", b"x" * (transport.capabilities.max_message_bytes + 1), 0)
    with pytest.raises(PayloadTooLargeError):
        transport.send([big])


def test_native_cancel_before_due_removes_the_message(
    double: Double, fake_clock: FakeClock
) -> None:
    transport, ns = double
    (handle,) = transport.send([out(fake_clock, "a", 60)])
    transport.cancel([CancelRef("payment:a:1", handle)])
    assert ns.snapshot(QUEUE)["scheduled"] == []
    fake_clock.advance(61)
    assert transport.receive(10, 0.01, 30) == []
    assert transport.stats()["cancelled_natively"] == 1


def test_native_cancel_after_enqueue_is_not_an_error(double: Double, fake_clock: FakeClock) -> None:
    transport, ns = double
    ha, hb, _ = transport.send(
        [out(fake_clock, "a", 5), out(fake_clock, "b", 60), out(fake_clock, "c", 60)]
    )
    fake_clock.advance(6)  # a is enqueued now: its scheduled sequence number is gone
    transport.cancel(
        [
            CancelRef("payment:a:1", ha),
            CancelRef("payment:b:1", hb),
            CancelRef("payment:x:1", None),
            CancelRef("payment:y:1", "not-a-number"),
        ]
    )
    # the batch was refused as a whole; b was then cancelled on its own, c is untouched
    assert [m.message_id for m in ns.snapshot(QUEUE)["scheduled"]] == ["payment:c:1"]
    assert [d.message_id for d in transport.receive(10, 0.01, 30)] == ["payment:a:1"]
    assert transport.stats()["cancel_not_scheduled"] == 1


def test_native_cancel_raises_transient_and_configuration_failures(
    double: Double, fake_clock: FakeClock
) -> None:
    transport, ns = double
    (handle,) = transport.send([out(fake_clock, "a", 60)])
    ns.fail_next("cancel", ServiceBusServerBusyError())
    with pytest.raises(TransientTransportError):
        transport.cancel([CancelRef("payment:a:1", handle)])
    ns.deny("Send")
    with pytest.raises(ConfigurationError, match="not authorized"):
        transport.cancel([CancelRef("payment:a:1", handle)])


def test_receive_is_peek_lock_and_reports_deliveries_from_one(
    double: Double, fake_clock: FakeClock
) -> None:
    transport, _ = double
    transport.send([out(fake_clock, "a", 0)])
    (d,) = transport.receive(10, 0.0, 30)  # a zero wait is raised to what the SDK accepts
    assert transport.client.receiver_kwargs == [  # type: ignore[attr-defined]
        {"receive_mode": ServiceBusReceiveMode.PEEK_LOCK, "prefetch_count": 0}
    ]
    assert (d.message_id, d.delivery_count) == ("payment:a:1", 1)
    assert TimeoutMessage.decode(d.body).key == "a"
    fake_clock.advance(31)  # lock expired, never settled
    (again,) = transport.receive(10, 0.01, 30)
    assert again.delivery_count == 2


def test_retry_later_copies_then_completes_and_keeps_the_logical_id(
    fake_clock: FakeClock,
) -> None:
    # duplicate detection on: reusing the original MessageId would make the copy vanish
    transport, ns = make_double(fake_clock, duplicate_detection=True, lock_seconds=30)
    transport.send([out(fake_clock, "a", 0)])
    (d,) = transport.receive(10, 0.01, 30)
    transport.retry_later(d, 5_000)
    snap = ns.snapshot(QUEUE)
    assert snap["active"] == []  # the original is completed
    (copy,) = snap["scheduled"]
    assert copy.message_id == "payment:a:1/r1" and copy.properties[HOP_PROPERTY] == 1
    assert copy.scheduled_ms == fake_clock.now_ms() + 5_000
    fake_clock.advance(4.9)
    assert transport.receive(10, 0.01, 30) == []
    fake_clock.advance(0.2)
    (again,) = transport.receive(10, 0.01, 30)
    assert (again.message_id, again.delivery_count, again.body) == ("payment:a:1", 1, d.body)
    transport.retry_later(again, 1_000)  # a second hop gets an id of its own
    assert [m.message_id for m in ns.snapshot(QUEUE)["scheduled"]] == ["payment:a:1/r2"]
    transport.close()


def test_extend_renews_the_lock_beyond_the_lock_duration(
    double: Double, fake_clock: FakeClock
) -> None:
    transport, _ = double
    transport.send([out(fake_clock, "a", 0)])
    (d,) = transport.receive(10, 0.01, 30)
    for _ in range(4):  # 100 s with a 30 s lock, renewed every 25 s
        fake_clock.advance(25)
        transport.extend(d, 30)
        assert transport.receive(10, 0.01, 30) == []
    transport.ack([d])
    fake_clock.advance(60)
    assert transport.receive(10, 0.01, 30) == []
    assert transport.stats()["renewals"] == 4 and transport.stats()["completed"] == 1


def test_a_lost_lock_is_never_completed(double: Double, fake_clock: FakeClock) -> None:
    transport, ns = double
    transport.send([out(fake_clock, "a", 0)])
    (d,) = transport.receive(10, 0.01, 30)
    fake_clock.advance(31)  # the handler outlived the lock and nobody renewed it
    (other,) = transport.receive(10, 0.01, 30)  # meanwhile redelivered elsewhere
    transport.extend(d, 30)  # no error: the consumer's heartbeat must not crash the loop
    transport.ack([d])  # no error, and no effect
    assert len(ns.snapshot(QUEUE)["active"]) == 1
    assert transport.stats()["lock_lost"] >= 1
    transport.ack([other])  # the live delivery settles normally
    assert ns.snapshot(QUEUE)["active"] == []


def test_dead_letter_with_reason_and_description(double: Double, fake_clock: FakeClock) -> None:
    transport, ns = double
    ns.client().get_queue_sender(QUEUE).send_messages(ServiceBusMessage(b"{not json"))
    (d,) = transport.receive(10, 0.01, 30)
    assert d.body == b"{not json" and d.message_id  # a foreign message still gets an id
    transport.dead_letter(d, "malformed: body is not JSON: Expecting property name")
    (dead,) = ns.snapshot(QUEUE)["dead"]
    assert dead.dead_letter_reason.startswith("malformed: body is not JSON")  # type: ignore[union-attr]
    assert d.message_id in (dead.dead_letter_description or "")
    assert transport.stats()["dead_lettered"] == 1


def test_ack_is_idempotent_and_retries_only_what_failed(
    double: Double, fake_clock: FakeClock
) -> None:
    transport, ns = double
    transport.send([out(fake_clock, "a", 0), out(fake_clock, "b", 0)])
    deliveries = transport.receive(10, 0.01, 30)
    ns.fail_next("complete", ServiceBusServerBusyError())
    with pytest.raises(TransientTransportError):
        transport.ack(deliveries)  # the first failed, the second was completed
    assert len(ns.snapshot(QUEUE)["active"]) == 1
    transport.ack(deliveries)  # the retry completes the rest and skips what is done
    assert ns.snapshot(QUEUE)["active"] == []
    assert transport.stats()["completed"] == 2


def test_idle_detach_is_survived_and_the_old_receiver_retired(
    double: Double, fake_clock: FakeClock
) -> None:
    transport, ns = double
    transport.send([out(fake_clock, "a", 0), out(fake_clock, "b", 0), out(fake_clock, "c", 0)])
    (a,) = transport.receive(1, 0.5, 30)
    ns.detach_links()  # with a wait long enough to attach again, the SDK copes alone
    (b,) = transport.receive(1, 0.5, 30)
    assert transport.stats().get("reconnects", 0) == 0
    assert b.receipt.link.receiver is a.receipt.link.receiver
    ns.detach_links()  # a consumer's short wait cannot attach: the receiver is replaced
    (c,) = transport.receive(1, 0.0, 30)
    assert transport.stats()["reconnects"] == 1
    old = a.receipt.link.receiver
    assert c.receipt.link.receiver is not old and not old.shutdown  # retired, still open
    transport.ack([a, b])  # fine through the management link while their locks live
    assert old.shutdown  # closed once its last delivery was settled
    transport.send([out(fake_clock, "d", 0)])
    ns.detach_links(wedge=True)  # the SDK gave up on this receiver for good
    (d,) = transport.receive(1, 0.5, 30)
    assert d.message_id == "payment:d:1" and transport.stats()["reconnects"] == 2
    transport.ack([c, d])  # c cannot be settled through a dead handler: lock lost
    assert transport.stats()["lock_lost"] == 1 and transport.stats()["completed"] == 3
    assert [m.message_id for m in ns.snapshot(QUEUE)["active"]] == ["payment:c:1"]
    fake_clock.advance(31)  # it comes back; the store decides what it is worth
    assert [x.message_id for x in transport.receive(10, 0.01, 30)] == ["payment:c:1"]


def test_an_outage_is_an_error_never_an_empty_answer(double: Double, fake_clock: FakeClock) -> None:
    transport, ns = double
    transport.send([out(fake_clock, "a", 0)])
    ns.outage = True
    for _ in range(3):
        with pytest.raises(TransientTransportError) as info:
            transport.receive(10, 0.01, 30)
        assert isinstance(info.value.__cause__, ServiceBusConnectionError)
    ns.outage = False
    assert [d.message_id for d in transport.receive(10, 0.01, 30)] == ["payment:a:1"]


def test_a_partial_send_failure_names_what_was_not_scheduled(
    double: Double, fake_clock: FakeClock
) -> None:
    transport, ns = double
    batch = [out(fake_clock, "a", 10), out(fake_clock, "b", 20), out(fake_clock, "c", 30)]
    ns.fail_next("schedule", OperationTimeoutError(), after=1)
    with pytest.raises(SendError) as info:
        transport.send(batch)
    assert isinstance(info.value, TransientTransportError)  # retried by dtimeout's policy
    assert info.value.failed == ["payment:b:1", "payment:c:1"]
    # a stays scheduled: cancelling it would poison a retry under duplicate detection
    assert [m.message_id for m in ns.snapshot(QUEUE)["scheduled"]] == ["payment:a:1"]
    assert len(transport.send(batch)) == 3  # the caller's retry


def test_configuration_errors_say_what_is_wrong(fake_clock: FakeClock) -> None:
    transport, ns = make_double(fake_clock, queue="other")
    missing = AzureServiceBusTransport(ns.client(), "nope", fake_clock)
    with pytest.raises(ConfigurationError, match="does not exist"):
        missing.send([out(fake_clock, "a", 1)])
    with pytest.raises(ConfigurationError, match="does not exist"):
        missing.receive(1, 0.01, 30)
    ns.deny("Listen")
    with pytest.raises(ConfigurationError, match="not authorized to open receiver"):
        transport.receive(1, 0.01, 30)


def test_ping_opens_both_directions(double: Double) -> None:
    transport, ns = double
    transport.ping()
    assert ns.calls["peek"] == 1 and ns.calls["open_sender"] == 1
    ns.deny("Send")
    with pytest.raises(ConfigurationError, match="not authorized"):
        transport.ping()


def test_close_closes_handlers_and_only_an_owned_client(fake_clock: FakeClock) -> None:
    transport, ns = make_double(fake_clock)
    transport.send([out(fake_clock, "a", 0)])
    transport.receive(1, 0.01, 30)
    transport.close()
    client = transport.client
    assert all(h.shutdown for h in client.handlers)  # type: ignore[attr-defined]
    assert client.closed is False  # type: ignore[attr-defined]
    owned = AzureServiceBusTransport(ns.client(), QUEUE, fake_clock, owns_client=True)
    owned.close()
    owned.close()  # twice is fine
    assert owned.client.closed is True  # type: ignore[attr-defined]


def test_a_service_refusal_is_not_a_broken_link_but_an_sdk_wedge_is(
    double: Double, fake_clock: FakeClock
) -> None:
    transport, ns = double
    ha, hb = transport.send([out(fake_clock, "a", 60), out(fake_clock, "b", 60)])
    refusal = ServiceBusError("The scheduled message with SequenceNumber = 1 is being cancelled.")
    ns.fail_next("cancel", refusal)
    transport.cancel([CancelRef("payment:a:1", ha)])  # answered, not raised; sender kept
    assert [h.shutdown for h in transport.client.handlers] == [False]  # type: ignore[attr-defined]
    wedge = ServiceBusError(message="Handler failed: boom.", error=AttributeError("_session"))
    ns.fail_next("cancel", wedge)
    with pytest.raises(TransientTransportError):
        transport.cancel([CancelRef("payment:b:1", hb)])
    assert [h.shutdown for h in transport.client.handlers] == [True]  # type: ignore[attr-defined]
    transport.cancel([CancelRef("payment:b:1", hb)])  # a fresh sender does it
    assert [m.message_id for m in ns.snapshot(QUEUE)["scheduled"]] == ["payment:a:1"]


def test_one_due_instant_is_cut_to_the_batch_limits(double: Double, fake_clock: FakeClock) -> None:
    transport, ns = double
    caps = transport.capabilities
    due = fake_clock.now_ms() + 1_000
    body = b"x" * (caps.max_send_batch_bytes // 3 + 1)  # three do not fit one request
    messages = [OutgoingMessage(f"payment:b{i}:1", body, due) for i in range(4)]
    messages += [OutgoingMessage(f"payment:s{i}:1", b"{}", due) for i in range(150)]
    handles = transport.send(messages)
    assert len(set(handles)) == 154
    # [b0 b1] (a third would pass the byte limit), [b2 b3 s0..s97] (100), [s98..s149]
    assert ns.calls["schedule"] == 3 and len(ns.snapshot(QUEUE)["scheduled"]) == 154
