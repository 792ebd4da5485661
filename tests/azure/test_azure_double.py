"""The SDK double, pinned to the SDK's real code and the service's documented behaviour.

If one of these fails after an SDK upgrade, the double (and maybe the transport) must follow.
Sources: the SDK's own signatures and encoder (imported here, not paraphrased), its docstrings
(cancel raises when the message was already enqueued; delivery_count counts previous attempts;
received application properties come back as bytes), and the service documentation (a scheduled
message gets a new sequence number when it is enqueued; MaxDeliveryCount dead-letters).
"""

from __future__ import annotations

import inspect
from datetime import UTC, datetime, timedelta, timezone

import pytest
from azure.servicebus import (
    ServiceBusClient,
    ServiceBusMessage,
    ServiceBusMessageState,
    ServiceBusReceiver,
    ServiceBusSender,
)
from azure.servicebus._pyamqp._encode import encode_timestamp
from azure.servicebus.exceptions import (
    MessageAlreadySettled,
    MessageLockLostError,
    MessageNotFoundError,
    MessagingEntityNotFoundError,
    OperationTimeoutError,
    ServiceBusAuthorizationError,
    ServiceBusConnectionError,
    ServiceBusError,
)
from sbbroker import MAX_DELIVERY_REASON
from sbdouble import FakeNamespace, FakeReceiver, FakeSender, FakeServiceBusClient, sdk_timestamp_ms

from dtimeout.clock import FakeClock, to_datetime

Q = "q"


@pytest.fixture
def ns(fake_clock: FakeClock) -> FakeNamespace:
    namespace = FakeNamespace(fake_clock)
    namespace.create_queue(Q, lock_seconds=10, max_delivery_count=3)
    return namespace


def _open(client: FakeServiceBusClient) -> FakeReceiver:
    """A receiver with its link attached, as ``with client.get_queue_receiver(...)`` gives."""
    return client.get_queue_receiver(Q).__enter__()


def _msg(text: str, message_id: str | None = None, **props: object) -> ServiceBusMessage:
    return ServiceBusMessage(
        text.encode(), message_id=message_id, application_properties=props or None
    )


@pytest.mark.parametrize(
    ("double", "sdk", "methods"),
    [
        (FakeServiceBusClient, ServiceBusClient, ["get_queue_sender", "get_queue_receiver"]),
        (
            FakeSender,
            ServiceBusSender,
            [
                "schedule_messages",
                "cancel_scheduled_messages",
                "send_messages",
                "create_message_batch",
            ],
        ),
        (
            FakeReceiver,
            ServiceBusReceiver,
            [
                "receive_messages",
                "peek_messages",
                "complete_message",
                "abandon_message",
                "dead_letter_message",
                "renew_message_lock",
            ],
        ),
    ],
)
def test_signatures_match_the_sdk(double: type, sdk: type, methods: list[str]) -> None:
    """Every parameter the double takes, the SDK takes under the same name and kind."""
    for name in methods:
        ours = inspect.signature(getattr(double, name)).parameters
        theirs = inspect.signature(getattr(sdk, name)).parameters
        for param in ours.values():
            if param.kind is inspect.Parameter.VAR_KEYWORD:
                continue
            assert param.name in theirs, f"{double.__name__}.{name}({param.name}) not in the SDK"
            assert theirs[param.name].kind == param.kind, f"{name}({param.name}) differs in kind"


def test_naive_schedule_time_is_read_as_utc_like_the_sdk_encoder() -> None:
    """The SDK's AMQP encoder uses utctimetuple(): a naive time is taken as UTC, silently."""
    aware = datetime(2030, 1, 1, 12, 0, 0, 250_000, tzinfo=UTC)
    naive = aware.replace(tzinfo=None)
    for value in (aware, naive, aware.astimezone(timezone(timedelta(hours=2)))):
        encoded = bytearray()
        encode_timestamp(encoded, value, with_constructor=False)
        assert sdk_timestamp_ms(value) == int.from_bytes(encoded, "big", signed=True)
    assert sdk_timestamp_ms(naive) == sdk_timestamp_ms(aware)


def test_scheduled_message_is_enqueued_at_its_time_with_a_new_sequence_number(
    ns: FakeNamespace, fake_clock: FakeClock
) -> None:
    client = ns.client()
    sender, receiver = client.get_queue_sender(Q), _open(client)
    at = to_datetime(fake_clock.now_ms() + 5_000)
    (seq,) = sender.schedule_messages([_msg("a", "id-a")], at)
    peeked = receiver.peek_messages(5)
    assert [(m.sequence_number, m.state) for m in peeked] == [
        (seq, ServiceBusMessageState.SCHEDULED)
    ]
    assert receiver.receive_messages(5, max_wait_time=0.01) == []
    fake_clock.advance(5)
    (got,) = receiver.receive_messages(5, max_wait_time=0.01)
    assert got.message_id == "id-a" and b"".join(got.body) == b"a"
    assert got.sequence_number != seq  # "assigned a new SequenceNumber" when enqueued
    assert got.enqueued_time_utc == at


def test_cancel_before_enqueue_removes_after_enqueue_raises_not_found(
    ns: FakeNamespace, fake_clock: FakeClock
) -> None:
    sender = ns.client().get_queue_sender(Q)
    at = to_datetime(fake_clock.now_ms() + 5_000)
    first, second = sender.schedule_messages([_msg("a"), _msg("b")], at)
    sender.cancel_scheduled_messages(first)
    assert [m.seq for m in ns.snapshot(Q)["scheduled"]] == [second]
    fake_clock.advance(5)
    with pytest.raises(MessageNotFoundError) as info:
        sender.cancel_scheduled_messages([second])
    # documented as ServiceBusError ("already cancelled or enqueued"): the transport relies on that
    assert isinstance(info.value, ServiceBusError)
    assert len(ns.snapshot(Q)["active"]) == 1


def test_peek_lock_delivery_count_and_lock_expiry(ns: FakeNamespace, fake_clock: FakeClock) -> None:
    client = ns.client()
    client.get_queue_sender(Q).send_messages(_msg("a"))
    r1, r2 = _open(client), _open(client)
    (m1,) = r1.receive_messages(5, max_wait_time=0.01)
    assert m1.delivery_count == 0  # AMQP: previous failed attempts
    assert m1.locked_until_utc == to_datetime(fake_clock.now_ms() + 10_000)
    assert r2.receive_messages(5, max_wait_time=0.01) == []  # locked
    fake_clock.advance(10)
    (m2,) = r2.receive_messages(5, max_wait_time=0.01)
    assert m2.delivery_count == 1
    with pytest.raises(MessageLockLostError):  # the SDK checks locked_until before the wire
        r1.complete_message(m1)
    r2.complete_message(m2)
    with pytest.raises(MessageAlreadySettled):
        r2.complete_message(m2)
    assert isinstance(MessageAlreadySettled(action="complete"), ValueError)
    assert ns.snapshot(Q)["active"] == []


def test_renew_extends_the_lock_from_now_and_fails_once_lost(
    ns: FakeNamespace, fake_clock: FakeClock
) -> None:
    client = ns.client()
    client.get_queue_sender(Q).send_messages(_msg("a"))
    receiver = _open(client)
    (m,) = receiver.receive_messages(1, max_wait_time=0.01)
    fake_clock.advance(8)
    until = receiver.renew_message_lock(m)
    assert until == m.locked_until_utc == to_datetime(fake_clock.now_ms() + 10_000)
    fake_clock.advance(8)  # 16 s after receipt: alive only thanks to the renewal
    assert _open(client).receive_messages(1, max_wait_time=0.01) == []
    fake_clock.advance(3)
    with pytest.raises(MessageLockLostError):
        receiver.renew_message_lock(m)


def test_abandon_counts_and_max_delivery_count_dead_letters(
    ns: FakeNamespace, fake_clock: FakeClock
) -> None:
    client = ns.client()
    client.get_queue_sender(Q).send_messages(_msg("a", "id-a"))
    receiver = _open(client)
    counts = []
    for _ in range(3):
        (m,) = receiver.receive_messages(1, max_wait_time=0.01)
        counts.append(m.delivery_count)
        receiver.abandon_message(m)  # redelivered at once: abandon cannot delay
    assert counts == [0, 1, 2]
    assert receiver.receive_messages(1, max_wait_time=0.01) == []
    (dead,) = ns.snapshot(Q)["dead"]
    assert dead.dead_letter_reason == MAX_DELIVERY_REASON and dead.message_id == "id-a"


def test_dead_letter_keeps_reason_and_description(ns: FakeNamespace) -> None:
    client = ns.client()
    client.get_queue_sender(Q).send_messages(_msg("a"))
    receiver = _open(client)
    (m,) = receiver.receive_messages(1, max_wait_time=0.01)
    receiver.dead_letter_message(m, reason="malformed", error_description="body is not JSON")
    (dead,) = ns.snapshot(Q)["dead"]
    assert (dead.dead_letter_reason, dead.dead_letter_description) == (
        "malformed",
        "body is not JSON",
    )


def test_received_properties_come_back_as_bytes(ns: FakeNamespace) -> None:
    client = ns.client()
    client.get_queue_sender(Q).send_messages(_msg("a", **{"dtimeout-id": "k:1", "n": 3}))
    (m,) = _open(client).receive_messages(1, max_wait_time=0.01)
    assert m.application_properties == {b"dtimeout-id": b"k:1", b"n": 3}


def test_sdk_argument_checks_are_mirrored(ns: FakeNamespace) -> None:
    client = ns.client()
    sender, receiver = client.get_queue_sender(Q), _open(client)
    with pytest.raises(ValueError, match="max_wait_time"):
        receiver.receive_messages(1, max_wait_time=0)
    with pytest.raises(ValueError, match="ServiceBusMessage"):
        sender.schedule_messages(["not a message"], datetime.now(UTC))
    assert sender.schedule_messages([], datetime.now(UTC)) == []
    with pytest.raises(TypeError, match="ServiceBusReceivedMessage"):
        receiver.complete_message(_msg("x"))  # type: ignore[arg-type]
    sender.send_messages(_msg("a"))
    (peeked,) = receiver.peek_messages(1)
    with pytest.raises(ValueError, match="peeked"):
        receiver.complete_message(peeked)
    receiver.close()
    with pytest.raises(ValueError, match="shutdown"):
        receiver.receive_messages(1, max_wait_time=0.01)


def test_service_errors_are_the_sdks_classes(ns: FakeNamespace) -> None:
    client = ns.client()
    with pytest.raises(MessagingEntityNotFoundError):
        client.get_queue_sender("nope").send_messages(_msg("a"))
    ns.deny("Listen")
    with pytest.raises(ServiceBusAuthorizationError):
        client.get_queue_receiver(Q).__enter__()  # the attach is refused
    client.get_queue_sender(Q).send_messages(_msg("a"))  # Send is still allowed


def test_duplicate_detection_drops_a_resend_but_still_answers_a_number(
    fake_clock: FakeClock,
) -> None:
    ns = FakeNamespace(fake_clock)
    ns.create_queue(Q, duplicate_detection=True, dedup_window_seconds=60)
    sender = ns.client().get_queue_sender(Q)
    at = to_datetime(fake_clock.now_ms() + 1_000)
    (a,) = sender.schedule_messages([_msg("a", "same")], at)
    (b,) = sender.schedule_messages([_msg("a", "same")], at)
    assert a != b and [m.seq for m in ns.snapshot(Q)["scheduled"]] == [a]
    fake_clock.advance(61)
    sender.schedule_messages([_msg("a", "same")], to_datetime(fake_clock.now_ms() + 1_000))
    assert len(ns.snapshot(Q)["scheduled"]) == 1  # window passed: accepted again
    assert len(ns.snapshot(Q)["active"]) == 1


def test_receive_attaches_within_its_wait_and_a_detach_needs_a_new_attach(
    ns: FakeNamespace,
) -> None:
    """Since 7.15 a receive's wait also bounds the link attach (``_receive`` opens the link with
    the wait as its budget). Pinned here against the SDK's source, as well as in the double."""
    source = inspect.getsource(ServiceBusReceiver._receive)
    assert "self._open(get_attempt_timeout(wait_time" in source, "the SDK changed: revisit"
    client = ns.client()
    client.get_queue_sender(Q).send_messages([_msg("a"), _msg("b"), _msg("c")])
    receiver = client.get_queue_receiver(Q)
    with pytest.raises(OperationTimeoutError, match="link to open"):
        receiver.receive_messages(1, max_wait_time=0.01)  # too short to attach
    (a,) = receiver.receive_messages(1, max_wait_time=0.5)  # attaches, then receives
    ns.detach_links()  # idle detach: the next receive must attach again
    with pytest.raises(OperationTimeoutError):
        receiver.receive_messages(1, max_wait_time=0.01)
    (b,) = receiver.receive_messages(1, max_wait_time=0.5)
    assert receiver.reopened == 2
    receiver.complete_message(a)  # settles by lock token through the management link
    ns.detach_links(wedge=True)  # a receiver the SDK cannot recover
    with pytest.raises(ServiceBusConnectionError):
        receiver.receive_messages(1, max_wait_time=0.5)
    with pytest.raises(ValueError, match="shutdown"):
        receiver.complete_message(b)


def test_receive_waits_in_real_time_but_not_for_what_is_there(ns: FakeNamespace) -> None:
    client = ns.client()
    receiver = _open(client)
    assert receiver.receive_messages(1, max_wait_time=0.05) == []
    client.get_queue_sender(Q).send_messages(_msg("a"))
    assert len(receiver.receive_messages(5, max_wait_time=30)) == 1  # returns at once


def test_scheduled_messages_time_out_of_order_are_enqueued_in_time_order(
    ns: FakeNamespace, fake_clock: FakeClock
) -> None:
    sender = ns.client().get_queue_sender(Q)
    now = fake_clock.now_ms()
    sender.schedule_messages([_msg("late")], to_datetime(now + 3_000))
    sender.schedule_messages([_msg("early")], to_datetime(now + 1_000))
    fake_clock.advance(3)  # both due at once: appended in the order of their times
    got = _open(ns.client()).receive_messages(5, max_wait_time=0.01)
    assert [b"".join(m.body) for m in got] == [b"early", b"late"]
