"""The SQS transport: timeouts as delayed messages on a standard SQS queue (boto3).

How each :class:`~dtimeout.interfaces.Transport` operation maps onto SQS, and why:

* **start** — ``GetQueueUrl`` once (when a name was given) and ``GetQueueAttributes``: FIFO
  queues are refused (they allow no per-message delay), the redrive policy gives the DLQ and
  ``maxReceiveCount``, ``MaximumMessageSize`` gives the size capabilities.
* **send** — ``SendMessageBatch`` with ≤ 10 entries and ≤ the queue's byte limit per call;
  ``DelaySeconds`` (0-900) from ``due_at``; the due time also travels as a message attribute.
  The per-entry ``Failed`` list of a 200 answer is checked and only failed entries re-sent, a
  bounded number of rounds.
* **receive** — long polling, up to 10 messages. A message whose carried due time is still
  ahead (a delay longer than 900 s) is a *hop*: re-sent with the remainder (capped at 900 s)
  and the original deleted. Hops are counted in ``stats()``, never returned, and, being new
  messages, never count toward the redrive policy's ``maxReceiveCount``.
* **ack** — ``DeleteMessageBatch``; partial failures are checked and retried.
* **extend** — ``ChangeMessageVisibility`` (the consumer's heartbeat for long handlers).
* **retry_later** — ``ChangeMessageVisibility`` when the queue has no redrive policy and the
  delay fits a native delay (1 request). Otherwise re-send + delete, because a visibility change
  keeps ``ApproximateReceiveCount``: a timeout that was merely pushed back (claim answered
  NOT_DUE) or released for a retry would otherwise be moved to the DLQ by SQS itself after
  ``maxReceiveCount`` receipts, behind the store's back. The store's ``max_attempts`` decides
  when a timeout is dead, not SQS.
* **dead_letter** — sent to ``dlq=`` or the redrive DLQ with the reason as a message
  attribute, then deleted; with no DLQ at all, logged at ERROR and deleted (a poison message
  must not circle forever).

Retries: see ``dtimeout_sqs.client``. Every HTTP request is counted through the client's
``before-send`` event and reported by :meth:`SqsTransport.stats`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from botocore.exceptions import BotoCoreError, ClientError

from dtimeout.clock import Clock
from dtimeout.errors import ConfigurationError, DtimeoutError, TransientTransportError
from dtimeout.errors import TransportError as _TransportError
from dtimeout.interfaces import Delivery, OutgoingMessage, Transport, TransportCapabilities
from dtimeout_sqs import wire
from dtimeout_sqs.client import make_client
from dtimeout_sqs.errors import SqsMessageTooLargeError, translate
from dtimeout_sqs.settings import MAX_NATIVE_DELAY_SECONDS, MAX_WAIT_SECONDS, SqsSettings

if TYPE_CHECKING:
    from mypy_boto3_sqs.client import SQSClient
    from mypy_boto3_sqs.type_defs import MessageTypeDef

log = logging.getLogger(__name__)
T = TypeVar("T")

SEND_ROUNDS = 3  # SendMessageBatch / DeleteMessageBatch rounds for entries that failed


class SqsTransport(Transport):
    """A dtimeout transport on one standard SQS queue.

    ``client`` injects a prebuilt boto3 SQS client (tests; the caller keeps ownership and
    closes it). ``max_native_delay_seconds`` is a TEST-ONLY override of SQS's 900 s delay cap
    (also ``?test_max_delay=`` in the URL): it makes long-delay bridging observable in seconds.
    """

    name = "sqs"

    def __init__(
        self,
        settings: SqsSettings,
        clock: Clock,
        *,
        client: SQSClient | None = None,
        max_native_delay_seconds: int | None = None,
    ) -> None:
        super().__init__(clock)
        self.settings = settings
        self._queue = settings.display_name
        cap = max_native_delay_seconds or settings.test_max_delay_seconds
        self._delay_cap = MAX_NATIVE_DELAY_SECONDS if cap is None else cap
        wire.delay_seconds(0, 0, self._delay_cap)  # validates the cap
        self._owns_client = client is None
        self._client: SQSClient = client if client is not None else make_client(settings)
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._client.meta.events.register("before-send.sqs", self._count_request)
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    # ---------------------------------------------------------------------------------- start

    def _start(self) -> None:
        if self.settings.queue_url is not None:
            self.queue_url = self.settings.queue_url
        else:
            name = self._queue
            self.queue_url = self._call(
                "GetQueueUrl", lambda: self._client.get_queue_url(QueueName=name)
            )["QueueUrl"]
        url = self.queue_url
        attrs = self._call(
            "GetQueueAttributes",
            lambda: self._client.get_queue_attributes(QueueUrl=url, AttributeNames=["All"]),
        ).get("Attributes", {})
        if attrs.get("FifoQueue") == "true" or url.endswith(".fifo"):
            raise ConfigurationError(
                f"sqs: queue {self._queue!r} is a FIFO queue; FIFO queues allow no per-message "
                "delay, which timeouts need — use a standard queue (the store de-duplicates)"
            )
        self.max_message_bytes = int(attrs.get("MaximumMessageSize", "262144"))
        self.visibility_timeout = int(attrs.get("VisibilityTimeout", "30"))
        self.max_receive_count: int | None = None
        redrive_dlq: str | None = None
        if "RedrivePolicy" in attrs:
            policy = json.loads(attrs["RedrivePolicy"])
            self.max_receive_count = int(policy["maxReceiveCount"])
            redrive_dlq = self._queue_url_from_arn(str(policy["deadLetterTargetArn"]))
        self.dlq_url = self._explicit_dlq() if self.settings.dlq is not None else redrive_dlq
        if self.dlq_url is None:
            log.warning(
                "sqs: queue %r has no redrive policy and no dlq= was given: dead-lettered "
                "messages will be logged and deleted",
                self._queue,
            )
        self.capabilities = TransportCapabilities(
            max_delay_ms=self._delay_cap * 1000,
            max_message_bytes=self.max_message_bytes - wire.ATTRIBUTE_HEADROOM,
            max_send_batch=wire.MAX_BATCH_ENTRIES,
            max_send_batch_bytes=self.max_message_bytes,
            max_receive_batch=wire.MAX_BATCH_ENTRIES,
            native_cancel=False,
        )

    def _queue_url_from_arn(self, arn: str) -> str:
        # arn:aws:sqs:REGION:ACCOUNT:NAME
        parts = arn.split(":")
        if len(parts) != 6:
            raise ConfigurationError(f"sqs: queue {self._queue!r} has a malformed redrive policy")
        account, name = parts[4], parts[5]
        return self._call(
            "GetQueueUrl",
            lambda: self._client.get_queue_url(QueueName=name, QueueOwnerAWSAccountId=account),
        )["QueueUrl"]

    def _explicit_dlq(self) -> str:
        dlq = self.settings.dlq
        assert dlq is not None
        if dlq.startswith(("https://", "http://")):
            dlq_url = dlq
        else:
            dlq_url = self._call("GetQueueUrl", lambda: self._client.get_queue_url(QueueName=dlq))[
                "QueueUrl"
            ]
        if dlq_url == self.queue_url:
            raise ConfigurationError("sqs: dlq= names the queue itself")
        attrs = self._call(
            "GetQueueAttributes",
            lambda: self._client.get_queue_attributes(
                QueueUrl=dlq_url, AttributeNames=["FifoQueue"]
            ),
        ).get("Attributes", {})
        if attrs.get("FifoQueue") == "true":
            raise ConfigurationError("sqs: the dlq= queue is a FIFO queue; use a standard queue")
        return dlq_url

    # ----------------------------------------------------------------------------------- send

    def send(self, messages: Sequence[OutgoingMessage]) -> list[str | None]:
        now = self.clock.now_ms()
        entries: list[wire.Entry] = []
        refused: list[wire.Entry] = []
        for index, m in enumerate(messages):
            entry = self._entry(f"m{index}", m.message_id, m.body, m.due_at_ms, now)
            (refused if entry.size > self.max_message_bytes else entries).append(entry)
        self._send_entries(self.queue_url, entries, raise_failures=True)
        if refused:
            names = ", ".join(f"{e.message_id!r} ({e.size} bytes)" for e in refused[:3])
            more = f" and {len(refused) - 3} more" if len(refused) > 3 else ""
            raise SqsMessageTooLargeError(
                f"sqs: {names}{more} over queue {self._queue!r}'s limit of "
                f"{self.max_message_bytes} bytes (MaximumMessageSize); not sent",
                [e.message_id for e in refused],
            )
        return [None] * len(messages)

    def _entry(
        self, entry_id: str, message_id: str, body: bytes, due_at_ms: int, now: int
    ) -> wire.Entry:
        text, is_b64 = wire.encode_body(body)
        attrs = wire.our_attributes(message_id, due_at_ms, is_b64)
        delay = wire.delay_seconds(due_at_ms, now, self._delay_cap)
        return wire.Entry(entry_id, message_id, text, attrs, delay, wire.message_size(text, attrs))

    def _send_entries(
        self, queue_url: str, entries: Sequence[wire.Entry], *, raise_failures: bool
    ) -> list[wire.Entry]:
        """Send in batches; re-send only the entries the server reported failed, bounded rounds.

        Returns the entries finally not accepted (or raises, when ``raise_failures``). A request
        that fails as a whole raises at once, its ``failed`` listing every entry not accepted.
        """
        by_id = {e.entry_id: e for e in entries}
        accepted: set[str] = set()
        errors: dict[str, tuple[str, bool]] = {}  # entry id -> (code, transient)
        pending = list(entries)
        for round_no in range(SEND_ROUNDS):
            if not pending:
                break
            if round_no:
                self._count("send_entry_retries", len(pending))
                self._backoff(round_no)
            retry: list[wire.Entry] = []
            for batch in wire.batches(pending, self.max_message_bytes):
                request = partial(
                    self._client.send_message_batch,
                    QueueUrl=queue_url,
                    Entries=[e.request() for e in batch],
                )
                try:
                    answer = self._call("SendMessageBatch", request)
                except _TransportError as exc:
                    exc.failed = [  # type: ignore[attr-defined]
                        e.message_id for e in entries if e.entry_id not in accepted
                    ]
                    raise
                accepted.update(ok["Id"] for ok in answer.get("Successful", []))
                for failed in answer.get("Failed", []):
                    transient = not failed.get("SenderFault")
                    errors[failed["Id"]] = (f"{failed.get('Code', '?')}", transient)
                    if transient:
                        retry.append(by_id[failed["Id"]])
            pending = retry
        left = [e for e in entries if e.entry_id not in accepted]
        if left and raise_failures:
            problems = [errors.get(e.entry_id, ("no answer", True)) for e in left]
            shown = "; ".join(
                f"{e.message_id!r}: {code}" for e, (code, _) in zip(left, problems, strict=True)
            )
            cls = TransientTransportError if all(t for _, t in problems) else _TransportError
            error = cls(
                f"sqs: {len(left)} of {len(entries)} messages not accepted by queue "
                f"{self._queue!r} after {SEND_ROUNDS} rounds: {shown[:500]}"
            )
            error.failed = [e.message_id for e in left]  # type: ignore[attr-defined]
            raise error
        return left

    # -------------------------------------------------------------------------------- receive

    def receive(
        self, max_messages: int, wait_seconds: float, lease_seconds: float
    ) -> list[Delivery]:
        if max_messages <= 0:
            return []
        if self.settings.wait_seconds is not None:
            wait = self.settings.wait_seconds
        else:
            wait = wire.whole_seconds(wait_seconds, MAX_WAIT_SECONDS)
        visibility = wire.whole_seconds(lease_seconds)
        url = self.queue_url
        answer = self._call(
            "ReceiveMessage",
            lambda: self._client.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=min(max_messages, wire.MAX_BATCH_ENTRIES),
                WaitTimeSeconds=wait,
                VisibilityTimeout=visibility,
                MessageAttributeNames=["All"],
                MessageSystemAttributeNames=["ApproximateReceiveCount"],
            ),
        )
        now = self.clock.now_ms()
        deliveries: list[Delivery] = []
        early: list[tuple[MessageTypeDef, int]] = []
        for message in answer.get("Messages", []):
            due = wire.due_at_of(message.get("MessageAttributes", {}))
            if due is not None and due > now:
                early.append((message, due))
            else:
                deliveries.append(self._delivery(message, due))
        if early:
            self._hop(early, now)
        return deliveries

    def _delivery(self, message: MessageTypeDef, due: int | None) -> Delivery:
        attrs = message.get("MessageAttributes", {})
        sqs_id = message.get("MessageId", "")
        text = message.get("Body", "")
        try:
            body = wire.decode_body(text, attrs)
        except DtimeoutError:
            body = text.encode("utf-8")  # the consumer finds it malformed and dead-letters it
        count = message.get("Attributes", {}).get("ApproximateReceiveCount", "1")
        return Delivery(
            message_id=wire.message_id_of(attrs) or sqs_id,
            body=body,
            receipt=message["ReceiptHandle"],
            delivery_count=int(count),
            extra={"sqs_message_id": sqs_id, "due_at_ms": due, "attributes": attrs},
        )

    def _hop(self, early: list[tuple[MessageTypeDef, int]], now: int) -> None:
        """Re-send not-yet-due messages for the remainder, then delete the originals.

        A failure here never fails the receive: an original that was not re-sent stays and
        reappears after its visibility timeout, to hop then.
        """
        entries = []
        receipts: dict[str, str] = {}
        for index, (message, due) in enumerate(early):
            attrs = wire.resendable_attributes(message.get("MessageAttributes", {}))
            body = message.get("Body", "")
            entry_id = f"h{index}"
            receipts[entry_id] = message["ReceiptHandle"]
            entries.append(
                wire.Entry(
                    entry_id=entry_id,
                    message_id=wire.message_id_of(attrs) or "?",
                    body=body,
                    attributes=attrs,
                    delay=wire.delay_seconds(due, now, self._delay_cap),
                    size=wire.message_size(body, attrs),
                )
            )
        try:
            not_sent = self._send_entries(self.queue_url, entries, raise_failures=False)
            moved = [(e.entry_id, receipts[e.entry_id]) for e in entries if e not in not_sent]
            self._count("hops", len(moved))
            self._delete(moved)
        except ConfigurationError:
            raise
        except _TransportError as exc:
            log.warning(
                "sqs: bridging %d long-delay messages failed, will retry: %s", len(entries), exc
            )

    # --------------------------------------------------------------------------------- settle

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        self._delete([(f"a{i}", str(d.receipt)) for i, d in enumerate(deliveries)])

    def _delete(self, receipts: Sequence[tuple[str, str]]) -> None:
        """``DeleteMessageBatch`` in tens; failed entries retried (bounded rounds), then raised.

        ``receipts`` are ``(entry id, receipt handle)`` pairs with ids unique in the call.
        """
        handles = dict(receipts)
        errors: dict[str, tuple[str, bool]] = {}  # entry id -> (code, transient)
        pending = list(receipts)
        for round_no in range(SEND_ROUNDS):
            if not pending:
                break
            if round_no:
                self._backoff(round_no)
            retry: list[tuple[str, str]] = []
            for batch in wire.chunks(pending):
                request = partial(
                    self._client.delete_message_batch,
                    QueueUrl=self.queue_url,
                    Entries=[{"Id": i, "ReceiptHandle": r} for i, r in batch],
                )
                answer = self._call("DeleteMessageBatch", request)
                for ok in answer.get("Successful", []):
                    errors.pop(ok["Id"], None)
                for failed in answer.get("Failed", []):
                    transient = not failed.get("SenderFault")
                    errors[failed["Id"]] = (str(failed.get("Code", "?")), transient)
                    if transient:
                        retry.append((failed["Id"], handles[failed["Id"]]))
            pending = retry
        if errors:
            self._count("delete_failures", len(errors))
            codes = ", ".join(sorted({code for code, _ in errors.values()}))
            transient = all(t for _, t in errors.values())
            cls = TransientTransportError if transient else _TransportError
            raise cls(
                f"sqs: {len(errors)} of {len(receipts)} deletes failed on queue "
                f"{self._queue!r}: {codes}"
            )

    def extend(self, delivery: Delivery, lease_seconds: float) -> None:
        self._change_visibility(delivery, wire.whole_seconds(lease_seconds))
        self._count("extends")

    def retry_later(self, delivery: Delivery, delay_ms: int) -> None:
        delay_ms = max(delay_ms, 0)
        if self.max_receive_count is None and delay_ms <= self._delay_cap * 1000:
            # No redrive policy: the receive count harms nobody, one request does it.
            self._change_visibility(delivery, wire.whole_seconds(delay_ms / 1000))
            self._count("retries_by_visibility")
            return
        self._resend(delivery, due_at_ms=self.clock.now_ms() + delay_ms)
        self._count("retries_by_resend")

    def _resend(self, delivery: Delivery, *, due_at_ms: int) -> None:
        """A fresh copy due at ``due_at_ms`` (receive count starts over), then the original
        deleted. A crash between the two leaves a duplicate, which the store drops."""
        now = self.clock.now_ms()
        entry = self._entry("r0", delivery.message_id, delivery.body, due_at_ms, now)
        self._send_entries(self.queue_url, [entry], raise_failures=True)
        self._delete([("r0", str(delivery.receipt))])

    def _change_visibility(self, delivery: Delivery, seconds: int) -> None:
        url, receipt = self.queue_url, str(delivery.receipt)
        self._call(
            "ChangeMessageVisibility",
            lambda: self._client.change_message_visibility(
                QueueUrl=url, ReceiptHandle=receipt, VisibilityTimeout=seconds
            ),
        )

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        if self.dlq_url is None:
            log.error(
                "sqs: no dead-letter queue for %r; deleting message %s: %s",
                self._queue,
                delivery.message_id,
                reason,
            )
            self._delete([("d0", str(delivery.receipt))])
            self._count("dead_letter_discarded")
            return
        text, is_b64 = wire.encode_body(delivery.body)
        attrs = wire.resendable_attributes(delivery.extra.get("attributes", {}))
        attrs.update(wire.our_attributes(delivery.message_id, self.clock.now_ms(), is_b64))
        attrs[wire.ATTR_REASON] = {
            "DataType": "String",
            "StringValue": wire.sqs_text(reason or "unspecified", wire.REASON_LIMIT),
        }
        attrs[wire.ATTR_SOURCE] = {"DataType": "String", "StringValue": self._queue}
        request = partial(
            self._client.send_message,
            QueueUrl=self.dlq_url,
            MessageBody=text,
            MessageAttributes=attrs,
            DelaySeconds=0,
        )
        self._call("SendMessage", request)
        self._delete([("d0", str(delivery.receipt))])
        self._count("dead_lettered")

    # ------------------------------------------------------------------------------ plumbing

    def ping(self) -> None:
        url = self.queue_url
        self._call(
            "GetQueueAttributes",
            lambda: self._client.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"]),
        )

    def close(self) -> None:
        self._client.meta.events.unregister("before-send.sqs", self._count_request)
        if self._owns_client:
            self._client.close()

    def stats(self) -> dict[str, int]:
        """``requests`` (every HTTP request, retries included), ``requests.<Operation>``, and
        ``hops``, ``retries_by_visibility``/``retries_by_resend``, ``extends``,
        ``dead_lettered``, ``dead_letter_discarded``, ``send_entry_retries``,
        ``delete_failures`` when they happened."""
        with self._lock:
            return dict(self._counts)

    def _count_request(self, event_name: str = "", **_: Any) -> None:
        operation = event_name.rsplit(".", 1)[-1]
        with self._lock:
            self._counts["requests"] += 1
            self._counts[f"requests.{operation}"] += 1

    def _count(self, name: str, n: int = 1) -> None:
        if n:
            with self._lock:
                self._counts[name] += n

    def _call(self, operation: str, call: Callable[[], T]) -> T:
        try:
            return call()
        except (BotoCoreError, ClientError) as exc:
            raise translate(exc, operation=operation, queue=self._queue) from exc

    @staticmethod
    def _backoff(round_no: int) -> None:
        # Real time on purpose: this waits for a real server, whatever clock the caller uses.
        time.sleep(min(0.05 * 2**round_no, 1.0))
