"""The SQS transport against moto's server over HTTP: start-up, send, receive, settle, DLQ.

Requests are observed (and, where a test needs a server failure, altered) at the botocore event
boundary of an injected client, so the transport's own code runs unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse, HTTPHeaders
from sqs_support import REGION, Drain, MakeQueue, OpenTransport, Queue

from dtimeout.clock import SYSTEM_CLOCK
from dtimeout.errors import ConfigurationError, TransientTransportError, TransportError
from dtimeout.interfaces import Delivery, OutgoingMessage
from dtimeout.model import TimeoutMessage
from dtimeout_sqs import wire
from dtimeout_sqs.errors import SqsMessageTooLargeError
from dtimeout_sqs.settings import parse_url
from dtimeout_sqs.testing import MotoServer, free_port
from dtimeout_sqs.transport import SEND_ROUNDS, SqsTransport

if TYPE_CHECKING:
    from mypy_boto3_sqs.client import SQSClient


class Recorder:
    """Every request's parameters, by operation, as botocore is about to serialise them."""

    def __init__(self, client: SQSClient) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        client.meta.events.register("before-parameter-build.sqs", self._record)

    def _record(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        self.calls.append((model.name, {k: v for k, v in params.items()}))

    def of(self, operation: str) -> list[dict[str, Any]]:
        return [p for name, p in self.calls if name == operation]

    def delays(self) -> list[int]:
        out = [e["DelaySeconds"] for p in self.of("SendMessageBatch") for e in p["Entries"]]
        return out + [p["DelaySeconds"] for p in self.of("SendMessage") if "DelaySeconds" in p]


class FailEntries:
    """Makes the server report entries of ``SendMessageBatch`` as failed, ``times`` times.

    Matching entries are taken out of the request before it is sent (the server never sees
    them) and put into the answer's ``Failed`` list, as SQS does for a per-entry failure in a
    200 response.
    """

    def __init__(
        self, client: SQSClient, marker: str, *, sender_fault: bool = False, times: int = 1
    ) -> None:
        self.marker, self.sender_fault, self.times = marker, sender_fault, times
        self.stripped: list[dict[str, Any]] = []
        self.injected: list[str] = []  # entry ids reported failed, over all calls
        self.all_stripped = False
        client.meta.events.register(
            "before-parameter-build.sqs.SendMessageBatch", self._strip, unique_id="fail-strip"
        )
        client.meta.events.register(
            "before-call.sqs.SendMessageBatch",
            self._answer_empty,  # type: ignore[arg-type]  # a response short-circuits the call
            unique_id="fail-empty",
        )
        client.meta.events.register(
            "after-call.sqs.SendMessageBatch", self._report, unique_id="fail-report"
        )

    def _strip(self, params: dict[str, Any], **_: Any) -> None:
        self.stripped = []
        if self.times <= 0:
            return
        entries = params["Entries"]
        self.stripped = [e for e in entries if self.marker in e["MessageBody"]]
        if self.stripped:
            self.times -= 1
            self.injected.extend(e["Id"] for e in self.stripped)
            params["Entries"] = [e for e in entries if self.marker not in e["MessageBody"]]
            self.all_stripped = not params["Entries"]

    def _answer_empty(self, **_: Any) -> tuple[AWSResponse, dict[str, Any]] | None:
        # Every entry was taken out: SQS refuses an empty batch, so answer as the server would
        # have for the original request (all entries failed) without sending anything.
        if self.stripped and self.all_stripped:
            return AWSResponse("http://injected", 200, HTTPHeaders(), None), {"Successful": []}
        return None

    def _report(self, parsed: dict[str, Any], **_: Any) -> None:
        for entry in self.stripped:
            parsed.setdefault("Failed", []).append(
                {
                    "Id": entry["Id"],
                    "SenderFault": self.sender_fault,
                    "Code": "InvalidParameterValue" if self.sender_fault else "InternalError",
                    "Message": "injected by the test",
                }
            )


@pytest.fixture
def client(moto_server: MotoServer) -> Iterator[SQSClient]:
    c = boto3.client("sqs", endpoint_url=moto_server.endpoint_url, region_name=REGION)
    yield c
    c.close()


def msg(key: str, due_in_s: float, payload: Any = None) -> OutgoingMessage:
    due = SYSTEM_CLOCK.now_ms() + round(due_in_s * 1000)
    body = TimeoutMessage("k", key, 1, due, payload).encode()
    return OutgoingMessage(f"k:{key}:1", body, due)


def receive_until(transport: SqsTransport, count: int, *, seconds: float = 8.0) -> list[Delivery]:
    got: list[Delivery] = []
    deadline = time.monotonic() + seconds
    while len(got) < count and time.monotonic() < deadline:
        got.extend(transport.receive(10, 1, 30))
    return got


# -- start -------------------------------------------------------------------------------------


def test_start_looks_the_queue_up_once_and_reads_its_attributes(
    make_queue: MakeQueue, open_transport: OpenTransport
) -> None:
    q = make_queue(max_size=1024)
    t = open_transport(q)
    assert t.queue_url == q.url
    caps = t.capabilities
    assert (caps.max_send_batch, caps.max_receive_batch, caps.native_cancel) == (10, 10, False)
    assert caps.max_delay_ms == 900_000
    assert caps.max_message_bytes == 1024 - wire.ATTRIBUTE_HEADROOM
    assert caps.max_send_batch_bytes == 1024
    t.send([msg("a", 0)])
    t.ack(receive_until(t, 1))
    stats = t.stats()
    assert stats["requests.GetQueueUrl"] == 1
    assert stats["requests.GetQueueAttributes"] == 1


def test_a_full_queue_url_needs_no_lookup(queue: Queue, moto_server: MotoServer) -> None:
    t = SqsTransport(parse_url(f"sqs://{queue.url}?region={REGION}"), SYSTEM_CLOCK)
    try:
        assert t.queue_url == queue.url
        assert "requests.GetQueueUrl" not in t.stats()
    finally:
        t.close()


def test_a_missing_queue_is_a_one_line_configuration_error(moto_server: MotoServer) -> None:
    url = f"sqs://no-such-queue?endpoint_url={moto_server.endpoint_url}&region={REGION}"
    with pytest.raises(ConfigurationError, match="does not exist") as info:
        SqsTransport(parse_url(url), SYSTEM_CLOCK)
    assert "\n" not in str(info.value)
    assert "no-such-queue" in str(info.value)


def test_fifo_queues_are_refused_at_start_with_the_reason(make_queue: MakeQueue) -> None:
    q = make_queue(fifo=True)
    url = q.sqs_url()
    with pytest.raises(ConfigurationError) as info:
        SqsTransport(parse_url(url), SYSTEM_CLOCK)
    message = str(info.value)
    assert "FIFO" in message and "per-message delay" in message and q.name in message
    assert "\n" not in message


def test_an_unreachable_endpoint_is_transient() -> None:
    url = f"sqs://q?endpoint_url=http://127.0.0.1:{free_port()}&region={REGION}"
    with pytest.raises(TransientTransportError, match="connection failed"):
        SqsTransport(parse_url(url), SYSTEM_CLOCK)


# -- send ---------------------------------------------------------------------------------------


def test_delay_seconds_reaching_the_server_stay_within_0_and_900(
    queue: Queue, client: SQSClient, open_transport: OpenTransport, sqs_admin: SQSClient
) -> None:
    rec = Recorder(client)
    t = open_transport(queue, client=client)
    offsets = [-5.0, 0.0, 0.4, 899.5, 900.0, 20 * 60.0, 7 * 86400.0]
    t.send([msg(f"m{i}", s) for i, s in enumerate(offsets)])  # 20 min and 7 days accepted
    assert rec.delays() == [0, 0, 1, 900, 900, 900, 900]
    attrs = sqs_admin.get_queue_attributes(
        QueueUrl=queue.url, AttributeNames=["ApproximateNumberOfMessagesDelayed"]
    )["Attributes"]
    assert int(attrs["ApproximateNumberOfMessagesDelayed"]) >= 5


def test_an_oversize_message_is_refused_by_name_and_the_rest_sent(
    make_queue: MakeQueue, client: SQSClient, open_transport: OpenTransport
) -> None:
    q = make_queue(max_size=1024)
    rec = Recorder(client)
    t = open_transport(q, client=client)
    messages = [msg(f"ok{i}", 0, {"pad": "x" * 200}) for i in range(24)]
    messages.insert(7, msg("big", 0, {"pad": "x" * 1100}))
    with pytest.raises(SqsMessageTooLargeError) as info:
        t.send(messages)
    assert "'k:big:1'" in str(info.value) and "1024 bytes" in str(info.value)
    assert info.value.failed == ["k:big:1"]
    batches = rec.of("SendMessageBatch")
    for params in batches:  # our own limits: ≤ 10 entries and ≤ the queue's bytes per call
        entries = params["Entries"]
        assert len(entries) <= 10
        assert (
            sum(wire.message_size(e["MessageBody"], e["MessageAttributes"]) for e in entries)
            <= 1024
        )
    sent_ids = [
        e["MessageAttributes"][wire.ATTR_ID]["StringValue"] for p in batches for e in p["Entries"]
    ]
    assert sorted(sent_ids) == sorted(m.message_id for m in messages if "big" not in m.message_id)
    got = receive_until(t, 24)
    assert sorted(d.message_id for d in got) == sorted(sent_ids)


def test_only_the_entry_the_server_reported_failed_is_sent_again(
    queue: Queue, client: SQSClient, open_transport: OpenTransport, drain: Drain
) -> None:
    rec = Recorder(client)
    fail = FailEntries(client, '"key":"m3"')
    t = open_transport(queue, client=client)
    t.send([msg(f"m{i}", 0) for i in range(5)])
    first, second = rec.of("SendMessageBatch")  # exactly two requests
    assert len(fail.injected) == 1
    assert len(first["Entries"]) == 4  # what the server saw the first time
    assert [e["Id"] for e in second["Entries"]] == fail.injected
    assert '"key":"m3"' in second["Entries"][0]["MessageBody"]
    assert t.stats()["send_entry_retries"] == 1
    ids = [m["MessageAttributes"][wire.ATTR_ID]["StringValue"] for m in drain(queue.url)]
    assert sorted(ids) == [f"k:m{i}:1" for i in range(5)]  # each exactly once


def test_a_sender_fault_entry_is_not_retried_and_reported(
    queue: Queue, client: SQSClient, open_transport: OpenTransport
) -> None:
    rec = Recorder(client)
    FailEntries(client, '"key":"m1"', sender_fault=True)
    t = open_transport(queue, client=client)
    with pytest.raises(TransportError) as info:
        t.send([msg(f"m{i}", 0) for i in range(3)])
    assert not info.value.transient
    assert info.value.failed == ["k:m1:1"]  # type: ignore[attr-defined]
    assert len(rec.of("SendMessageBatch")) == 1


def test_an_entry_failing_every_round_gives_up_bounded_and_transient(
    queue: Queue, client: SQSClient, open_transport: OpenTransport
) -> None:
    rec = Recorder(client)
    FailEntries(client, '"key":"m0"', times=99)
    t = open_transport(queue, client=client)
    with pytest.raises(TransientTransportError, match="InternalError") as info:
        t.send([msg("m0", 0), msg("m1", 0)])
    assert info.value.failed == ["k:m0:1"]  # type: ignore[attr-defined]
    assert len(rec.of("SendMessageBatch")) == SEND_ROUNDS


def test_bodies_that_are_not_sqs_text_round_trip(
    queue: Queue, open_transport: OpenTransport
) -> None:
    t = open_transport(queue)
    body = b"\xff\x00binary\xfe"
    t.send([OutgoingMessage("k:bin:1", body, 0)])
    (got,) = receive_until(t, 1)
    assert (got.message_id, got.body) == ("k:bin:1", body)


# -- receive ------------------------------------------------------------------------------------


def test_receive_long_polls_for_at_most_ten(
    queue: Queue, client: SQSClient, open_transport: OpenTransport
) -> None:
    rec = Recorder(client)
    t = open_transport(queue, client=client)
    t.send([msg(f"m{i}", 0) for i in range(12)])
    assert len(t.receive(50, 60.0, 30)) == 10
    (params,) = rec.of("ReceiveMessage")
    assert (params["MaxNumberOfMessages"], params["WaitTimeSeconds"]) == (10, 20)
    assert params["VisibilityTimeout"] == 30
    fixed = open_transport(queue, client=client, wait=0)
    assert len(fixed.receive(10, 5.0, 30)) == 2
    assert rec.of("ReceiveMessage")[-1]["WaitTimeSeconds"] == 0


def test_a_long_delay_hops_until_due_then_arrives_once(
    make_queue: MakeQueue, client: SQSClient, open_transport: OpenTransport, drain: Drain
) -> None:
    # maxReceiveCount=1: were a hop to keep the receive count, SQS would dead-letter it.
    q = make_queue(redrive=1)
    rec = Recorder(client)
    t = open_transport(q, client=client, max_native_delay_seconds=1)
    sent = msg("long", 3.2)
    t.send([sent])
    got = receive_until(t, 1, seconds=10)
    arrived = SYSTEM_CLOCK.now_ms()
    assert [d.message_id for d in got] == ["k:long:1"]
    assert arrived >= sent.due_at_ms
    assert got[0].delivery_count == 1
    assert got[0].body == sent.body
    stats = t.stats()
    assert stats["hops"] >= 2
    assert max(rec.delays()) <= 1
    t.ack(got)
    assert drain(q.url, rounds=1, wait=0) == []
    assert q.dlq_url is not None and drain(q.dlq_url, rounds=1, wait=0) == []


# -- settle -------------------------------------------------------------------------------------


def test_ack_checks_partial_failures(
    queue: Queue, client: SQSClient, open_transport: OpenTransport, drain: Drain
) -> None:
    rec = Recorder(client)
    t = open_transport(queue, client=client)
    t.send([msg("a", 0)])
    (good,) = receive_until(t, 1)
    bogus = Delivery("k:x:1", b"", receipt="not-a-receipt-handle")
    with pytest.raises(TransportError, match=r"1 of 2 deletes failed.*ReceiptHandleIsInvalid"):
        t.ack([good, bogus])
    assert len(rec.of("DeleteMessageBatch")) == 1  # a sender fault is not retried
    assert drain(queue.url, rounds=1, wait=0) == []  # the good one was deleted


def test_retry_later_without_redrive_changes_visibility(
    queue: Queue, open_transport: OpenTransport
) -> None:
    t = open_transport(queue)
    t.send([msg("a", 0)])
    (first,) = receive_until(t, 1)
    t.retry_later(first, 1000)
    assert t.stats()["retries_by_visibility"] == 1
    assert t.receive(10, 0, 30) == []
    (again,) = receive_until(t, 1)
    assert again.message_id == first.message_id
    assert again.delivery_count == 2  # the same message, received twice


def test_retry_later_with_redrive_resends_so_sqs_never_counts_it_dead(
    make_queue: MakeQueue, open_transport: OpenTransport, drain: Drain
) -> None:
    q = make_queue(redrive=1)  # a second receipt of one message would move it to the DLQ
    t = open_transport(q)
    t.send([msg("a", 0)])
    delivery = receive_until(t, 1)[0]
    for _ in range(2):
        t.retry_later(delivery, 1000)
        assert t.receive(10, 0, 30) == []
        (delivery,) = receive_until(t, 1)
        assert (delivery.message_id, delivery.delivery_count) == ("k:a:1", 1)
    assert t.stats()["retries_by_resend"] == 2
    assert "requests.ChangeMessageVisibility" not in t.stats()
    t.ack([delivery])
    assert q.dlq_url is not None and drain(q.dlq_url, rounds=1, wait=0) == []


def test_retry_later_beyond_the_native_maximum_is_bridged(
    queue: Queue, open_transport: OpenTransport
) -> None:
    t = open_transport(queue, max_native_delay_seconds=1)
    t.send([msg("a", 0)])
    (delivery,) = receive_until(t, 1)
    asked = SYSTEM_CLOCK.now_ms()
    t.retry_later(delivery, 2500)
    (again,) = receive_until(t, 1, seconds=10)
    assert SYSTEM_CLOCK.now_ms() - asked >= 2500
    assert again.message_id == "k:a:1"
    assert t.stats()["retries_by_resend"] == 1 and t.stats()["hops"] >= 1


def test_extend_keeps_the_message_invisible(queue: Queue, open_transport: OpenTransport) -> None:
    t = open_transport(queue)
    t.send([msg("a", 0)])
    (delivery,) = t.receive(10, 2, 1)
    t.extend(delivery, 4)
    time.sleep(1.5)  # past the first lease
    assert t.receive(10, 0, 30) == []
    assert t.stats()["requests.ChangeMessageVisibility"] == 1
    t.ack([delivery])


def test_dead_letter_goes_to_the_redrive_dlq_with_the_reason(
    make_queue: MakeQueue, open_transport: OpenTransport, drain: Drain
) -> None:
    q = make_queue(redrive=5)
    t = open_transport(q)
    t.send([msg("a", 0)])
    (delivery,) = receive_until(t, 1)
    t.dead_letter(delivery, "malformed: body is not JSON")
    assert q.dlq_url is not None
    (dead,) = drain(q.dlq_url)
    attrs = dead["MessageAttributes"]
    assert attrs[wire.ATTR_REASON]["StringValue"] == "malformed: body is not JSON"
    assert attrs[wire.ATTR_SOURCE]["StringValue"] == q.name
    assert attrs[wire.ATTR_ID]["StringValue"] == "k:a:1"
    assert dead["Body"].encode() == delivery.body
    assert drain(q.url, rounds=1, wait=0) == []
    assert t.stats()["dead_lettered"] == 1


def test_an_explicit_dlq_wins_over_the_redrive_policy(
    make_queue: MakeQueue, open_transport: OpenTransport, drain: Drain
) -> None:
    q = make_queue(redrive=5)
    other = make_queue()
    t = open_transport(q, dlq=other.name)
    assert t.dlq_url == other.url
    t.send([msg("a", 0)])
    t.dead_letter(receive_until(t, 1)[0], "why")
    assert [m["MessageAttributes"][wire.ATTR_REASON]["StringValue"] for m in drain(other.url)] == [
        "why"
    ]


def test_without_any_dlq_a_dead_letter_is_logged_and_deleted(
    queue: Queue, open_transport: OpenTransport, drain: Drain, caplog: pytest.LogCaptureFixture
) -> None:
    t = open_transport(queue)
    assert t.dlq_url is None
    t.send([msg("a", 0)])
    t.dead_letter(receive_until(t, 1)[0], "no handler for kind 'k'")
    assert t.stats()["dead_letter_discarded"] == 1
    assert "no handler for kind 'k'" in caplog.text
    time.sleep(1.2)
    assert drain(queue.url, rounds=1, wait=0) == []


def test_an_explicit_dlq_that_does_not_exist_is_refused(
    queue: Queue, open_transport: OpenTransport
) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        open_transport(queue, dlq="no-such-dlq")


# -- accounting and plumbing --------------------------------------------------------------------


def test_every_http_request_is_counted_by_operation(
    queue: Queue, client: SQSClient, open_transport: OpenTransport
) -> None:
    seen: list[str] = []
    client.meta.events.register("before-send.sqs", lambda **kw: seen.append(kw["event_name"]))
    t = open_transport(queue, client=client)
    t.send([msg(f"m{i}", 0) for i in range(15)])
    t.ack(receive_until(t, 15))
    t.ping()
    stats = t.stats()
    by_op = {k.split(".", 1)[1]: v for k, v in stats.items() if k.startswith("requests.")}
    assert stats["requests"] == sum(by_op.values()) == len(seen)
    assert by_op["SendMessageBatch"] == 2
    assert by_op["DeleteMessageBatch"] == by_op["ReceiveMessage"]


def test_ping_reports_a_queue_deleted_under_us(
    queue: Queue, open_transport: OpenTransport, sqs_admin: SQSClient
) -> None:
    t = open_transport(queue)
    t.ping()
    sqs_admin.delete_queue(QueueUrl=queue.url)
    with pytest.raises(ConfigurationError, match="does not exist"):
        t.ping()
