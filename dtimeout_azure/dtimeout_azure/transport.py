"""The Azure Service Bus transport: native scheduling, native cancel, PEEK_LOCK receiving.

How each verb maps onto the SDK, and why:

* ``send`` → ``ServiceBusSender.schedule_messages``. One call takes one enqueue time, so a batch
  is grouped by due instant (``schedule_many`` with one delay is one call). The time handed to
  the SDK is an aware UTC datetime — the SDK would silently read a naive one as UTC, so naive
  values are refused before they get there. ``message_id`` is our ``kind:key:generation``: a
  queue with duplicate detection drops a re-send of the same generation. The returned sequence
  numbers are the native-cancel handles the store keeps with each record.
* ``cancel`` → ``cancel_scheduled_messages``, best effort. A message that was already enqueued
  (its scheduled sequence number is gone) makes the service answer "not found": not an error
  for us — the store answered the caller already, and the delivered message is dropped at claim.
* ``receive`` → ``receive_messages`` in PEEK_LOCK mode. A receiver whose link the service
  detached (idle links are closed after ~10 minutes) or that the SDK gave up on is replaced and
  the receive is tried once more; if that fails too the caller gets a transient error — the
  loop never ends silently and never mistakes an outage for "nothing due".
* ``ack`` → ``complete_message``. A lost lock (``MessageLockLostError``) is logged, never
  retried as a complete: the message comes back and the store decides what it is worth.
* ``retry_later`` → schedule a copy at the new time, then complete the original. ``abandon``
  cannot delay (the message is redelivered at once, a hot loop for a timeout that is not due
  yet) and it increments the delivery count, so the broker would dead-letter a busy timeout
  after ``MaxDeliveryCount`` behind the store's back. The copy keeps the logical id in an
  application property and gets a message id of its own (``…/r<hop>``): reusing the original id
  would make duplicate detection swallow it. Copy first, complete second: a crash in between
  leaves a duplicate (dropped at claim), never a loss. The copy's sequence number is not the
  one the store holds, so cancelling it later is answered by the store alone.
* ``extend`` → ``renew_message_lock`` now, plus the SDK's ``AutoLockRenewer`` for the rest of the
  lease. The queue's LockDuration is fixed per queue (5 s to 5 min) and knows nothing of our
  lease; the renewer keeps locks alive between the consumer's heartbeats, and — registered at
  receive — for messages that wait in a batch or run under a one-thread consumer that does not
  heartbeat. We never hand-write a renew loop: the SDK's does the timing.
* ``dead_letter`` → ``dead_letter_message`` with a reason and a description.

Senders and receivers are not thread-safe (the SDK documents no guarantee), so each is used
under its own lock; only the SDK's own renewer calls the receiver from its threads, as designed.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from azure.servicebus import (
    AutoLockRenewer,
    ServiceBusClient,
    ServiceBusMessage,
    ServiceBusReceivedMessage,
    ServiceBusReceiveMode,
    ServiceBusReceiver,
    ServiceBusSender,
)
from azure.servicebus.exceptions import MessageAlreadySettled, MessageLockLostError, ServiceBusError

from dtimeout.clock import Clock, to_datetime
from dtimeout.errors import PayloadTooLargeError, TransportError
from dtimeout.interfaces import (
    CancelRef,
    Delivery,
    OutgoingMessage,
    Transport,
    TransportCapabilities,
)
from dtimeout_azure.errors import SendError, describe, is_configuration, translate
from dtimeout_azure.handles import Link, Receipt, ReceiverLinks, SenderHandle, close_quietly
from dtimeout_azure.settings import DEFAULT_MAX_MESSAGE_BYTES, AzureSettings
from dtimeout_azure.wire import (
    HOP_PROPERTY,
    ID_PROPERTY,
    aware_utc,
    body_bytes,
    outgoing,
    str_properties,
)

log = logging.getLogger(__name__)

MAX_SEND_BATCH = 100
MAX_RECEIVE_BATCH = 100
MIN_WAIT_SECONDS = 0.05  # the SDK refuses max_wait_time <= 0
CANCEL_BATCH = 100
MAX_REASON = 256
MAX_DESCRIPTION = 4096
# A broker lock within a second of the lease covers it: renewing for that second would only
# stretch the lock by a whole LockDuration past the lease.
LOCK_SLACK_SECONDS = 1.0

T = TypeVar("T")


class AzureServiceBusTransport(Transport):
    """Delayed messages as scheduled Service Bus messages on one queue."""

    name = "azure-servicebus"

    def __init__(
        self,
        client: ServiceBusClient,
        queue: str,
        clock: Clock,
        *,
        lock_renewer: AutoLockRenewer | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        owns_client: bool = False,
        where: str | None = None,
    ) -> None:
        """``client`` may be prebuilt (tests pass an SDK-shaped double); it is closed by
        :meth:`close` only when ``owns_client``. ``lock_renewer`` is the SDK's renewer (None
        disables background renewal: locks then last the queue's LockDuration, renewed only by
        :meth:`extend`)."""
        super().__init__(clock)
        self.client = client
        self.queue = queue
        self.where = where or f"{getattr(client, 'fully_qualified_namespace', '?')}/{queue}"
        self.capabilities = TransportCapabilities(
            max_delay_ms=None,  # scheduled enqueue time has no practical upper bound
            max_message_bytes=max_message_bytes,
            max_send_batch=MAX_SEND_BATCH,
            # The whole schedule request must fit one management message; leave room for the
            # per-message headers (ids, properties) on top of the bodies.
            max_send_batch_bytes=max_message_bytes * 3 // 4,
            max_receive_batch=MAX_RECEIVE_BATCH,
            native_cancel=True,
        )
        self._renewer = lock_renewer
        self._owns_client = owns_client
        self._sender = SenderHandle(lambda: client.get_queue_sender(queue), self.where)
        self._links = ReceiverLinks(
            lambda: client.get_queue_receiver(
                queue, receive_mode=ServiceBusReceiveMode.PEEK_LOCK, prefetch_count=0
            ),
            self.where,
            on_reconnect=lambda: self._count("reconnects"),
        )
        self._counts: Counter[str] = Counter()
        self._counts_lock = threading.Lock()
        self._closed = False

    @classmethod
    def from_settings(cls, settings: AzureSettings, clock: Clock) -> AzureServiceBusTransport:
        """Build the client (and the renewer) from parsed settings; used by the plugin."""
        from dtimeout_azure.client import build_client, build_lock_renewer

        return cls(
            build_client(settings),
            settings.queue,
            clock,
            lock_renewer=build_lock_renewer(settings),
            max_message_bytes=settings.max_message_bytes,
            owns_client=True,
            where=f"{settings.namespace}/{settings.queue}",
        )

    # -- handles ---------------------------------------------------------------------------------

    def _count(self, name: str, n: int = 1) -> None:
        with self._counts_lock:
            self._counts[name] += n

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run an SDK call, translating what it raises."""
        try:
            return fn()
        except Exception as exc:
            raise translate(exc, what, self.where) from exc

    # -- send / cancel ---------------------------------------------------------------------------

    def send(self, messages: Sequence[OutgoingMessage]) -> list[str | None]:
        for m in messages:
            if len(m.body) > self.capabilities.max_message_bytes:
                raise PayloadTooLargeError(
                    f"message {m.message_id} is {len(m.body)} bytes; the limit is "
                    f"{self.capabilities.max_message_bytes}"
                )
        handles: list[str | None] = [None] * len(messages)
        pending = self._schedule_groups(messages)
        for position, (due_ms, indexes) in enumerate(pending):
            when = aware_utc(to_datetime(due_ms))
            batch = [outgoing(messages[i].message_id, messages[i].body) for i in indexes]
            try:
                numbers = self._sender.call("schedule messages", _schedule(batch, when))
            except TransportError as exc:
                failed = [messages[i].message_id for _, idx in pending[position:] for i in idx]
                raise SendError.make(
                    f"{exc} ({len(failed)} of {len(messages)} message(s) not scheduled)",
                    failed=failed,
                    transient=exc.transient,
                ) from exc
            if len(numbers) != len(indexes):
                raise SendError(
                    f"azure-servicebus: schedule returned {len(numbers)} sequence numbers for "
                    f"{len(indexes)} messages",
                    failed=[messages[i].message_id for i in indexes],
                    transient=False,
                )
            for i, number in zip(indexes, numbers, strict=True):
                handles[i] = str(number)
            self._count("schedule_calls")
            self._count("scheduled", len(indexes))
        return handles

    def _schedule_groups(self, messages: Sequence[OutgoingMessage]) -> list[tuple[int, list[int]]]:
        """Indexes grouped by due instant (one ``schedule_messages`` call takes one time), each
        group cut to the batch limits so one call's request stays within the service's size."""
        by_due: dict[int, list[int]] = {}
        for index, m in enumerate(messages):
            by_due.setdefault(m.due_at_ms, []).append(index)
        caps = self.capabilities
        limit = caps.max_send_batch_bytes or caps.max_message_bytes
        groups: list[tuple[int, list[int]]] = []
        for due_ms, indexes in by_due.items():
            current: list[int] = []
            size = 0
            for i in indexes:
                body = len(messages[i].body)
                if current and (len(current) >= caps.max_send_batch or size + body > limit):
                    groups.append((due_ms, current))
                    current, size = [], 0
                current.append(i)
                size += body
            groups.append((due_ms, current))
        return groups

    def cancel(self, refs: Sequence[CancelRef]) -> None:
        numbers: list[int] = []
        for ref in refs:
            if ref.handle is None:
                continue  # nothing scheduled natively under a known number: the store decides
            try:
                numbers.append(int(ref.handle))
            except ValueError:
                log.warning("ignoring native-cancel handle %r of %s", ref.handle, ref.message_id)
        for start in range(0, len(numbers), CANCEL_BATCH):
            chunk = numbers[start : start + CANCEL_BATCH]
            if self._cancel_quietly(chunk) or len(chunk) == 1:
                continue
            # Some number in the chunk was not scheduled any more: the others one by one.
            for number in chunk:
                self._cancel_quietly([number])

    def _cancel_quietly(self, numbers: list[int]) -> bool:
        """True when the service cancelled ``numbers``; False when it answered that one of them
        is not scheduled (enqueued already, cancelled already, never known) — not an error:
        the store has answered the caller and drops such a message at claim. Transient and
        configuration failures are raised."""
        try:
            self._sender.call("cancel scheduled messages", _cancel_scheduled(numbers))
        except TransportError as exc:
            cause = exc.__cause__
            if exc.transient or cause is None or is_configuration(cause):
                raise
            log.debug("native cancel of %s not applied: %s", numbers, describe(cause))
            if len(numbers) == 1:
                self._count("cancel_not_scheduled")
            return False
        self._count("cancelled_natively", len(numbers))
        return True

    # -- receive ---------------------------------------------------------------------------------

    def receive(
        self, max_messages: int, wait_seconds: float, lease_seconds: float
    ) -> list[Delivery]:
        count = max(1, min(max_messages, self.capabilities.max_receive_batch))
        wait = max(wait_seconds, MIN_WAIT_SECONDS)
        with self._links.lock:
            link, messages = self._links.receive(count, wait)
            deliveries = [self._delivery(link, m) for m in messages]
        for delivery in deliveries:
            self._keep_locked(delivery.receipt, lease_seconds)
        return deliveries

    def _delivery(self, link: Link, message: ServiceBusReceivedMessage) -> Delivery:
        props = str_properties(message.application_properties)
        logical = props.get(ID_PROPERTY) or message.message_id or f"seq:{message.sequence_number}"
        try:
            hop = int(props.get(HOP_PROPERTY, "0"))
        except ValueError:
            hop = 0
        link.outstanding += 1
        receipt = Receipt(link, message, time.monotonic(), hop)
        return Delivery(
            message_id=logical,
            body=body_bytes(message),
            receipt=receipt,
            # The SDK reports AMQP's count of *previous* attempts (0 on the first delivery).
            delivery_count=(message.delivery_count or 0) + 1,
            extra={"sequence_number": message.sequence_number, "hop": hop},
        )

    def _keep_locked(self, receipt: Receipt, lease_seconds: float) -> None:
        """Register with the SDK's renewer when the queue's lock is shorter than the lease."""
        if self._renewer is None or receipt.settled:
            return
        until = receipt.message.locked_until_utc
        remaining = (until - datetime.now(UTC)).total_seconds() if until else 0.0
        if lease_seconds <= remaining + LOCK_SLACK_SECONDS:
            return  # the broker's lock already covers the lease: nothing to renew
        horizon = (time.monotonic() - receipt.received_at) + lease_seconds
        try:
            self._renewer.register(
                receipt.link.receiver,
                receipt.message,
                max_lock_renewal_duration=horizon,
                on_lock_renew_failure=functools.partial(self._renewal_failed, receipt),
            )
        except (ServiceBusError, ValueError, TypeError) as exc:
            log.warning("could not register %s for lock renewal: %s", self.where, describe(exc))

    def _renewal_failed(self, receipt: Receipt, _renewable: Any, error: Exception | None) -> None:
        """Called by the SDK's renewer thread when a lock was lost despite renewal."""
        receipt.lost = True
        self._count("lock_lost")
        log.info("lock lost on %s: %s", self.where, describe(error) if error else "expired")

    # -- settle ----------------------------------------------------------------------------------

    def _receipt(self, delivery: Delivery) -> Receipt:
        receipt = delivery.receipt
        if not isinstance(receipt, Receipt):
            raise TransportError(f"delivery {delivery.message_id} is not from {self.name}")
        return receipt

    def _settle(self, receipt: Receipt, what: str, fn: Callable[[ServiceBusReceiver], Any]) -> bool:
        """Run a settlement; True when it took effect. A lost lock, an already settled message
        or a receiver that is gone answer False (logged): never an error for the consumer."""
        if receipt.settled:
            return False
        try:
            with self._links.lock:
                fn(receipt.link.receiver)
        except MessageAlreadySettled:
            self._links.settled(receipt)
            return False
        except (MessageLockLostError, ValueError) as exc:
            self._links.settled(receipt, lost=True)
            self._count("lock_lost")
            log.info(
                "%s of %s skipped, lock lost (%s): redelivery and the store decide",
                what,
                receipt.message.message_id,
                describe(exc),
            )
            return False
        except Exception as exc:
            raise translate(exc, what, self.where) from exc
        self._links.settled(receipt)
        return True

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        first_error: Exception | None = None
        for delivery in deliveries:
            receipt = self._receipt(delivery)
            try:
                if self._settle(receipt, "complete", _complete(receipt.message)):
                    self._count("completed")
            except TransportError as exc:  # try the others; the caller retries the rest
                first_error = first_error or exc
        if first_error is not None:
            raise first_error

    def retry_later(self, delivery: Delivery, delay_ms: int) -> None:
        receipt = self._receipt(delivery)
        if receipt.settled:
            return
        copy_id = f"{delivery.message_id}/r{receipt.hop + 1}"
        copy = outgoing(delivery.message_id, delivery.body, wire_id=copy_id, hop=receipt.hop + 1)
        when = aware_utc(to_datetime(self.clock.now_ms() + max(0, delay_ms)))
        self._sender.call("schedule a retry copy", _schedule([copy], when))
        self._count("copies")
        self._settle(receipt, "complete after copying", _complete(receipt.message))

    def extend(self, delivery: Delivery, lease_seconds: float) -> None:
        receipt = self._receipt(delivery)
        if receipt.settled or receipt.lost:
            return
        try:
            with self._links.lock:
                receipt.link.receiver.renew_message_lock(receipt.message)
        except (MessageLockLostError, ValueError) as exc:  # MessageAlreadySettled is a ValueError
            receipt.lost = True
            self._count("lock_lost")
            log.info("cannot extend the lock of %s: %s", delivery.message_id, describe(exc))
            return
        except Exception as exc:
            raise translate(exc, "renew lock", self.where) from exc
        self._count("renewals")
        self._keep_locked(receipt, lease_seconds)

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        receipt = self._receipt(delivery)
        short = " ".join(reason.split())[:MAX_REASON] or "dead-lettered by dtimeout"
        description = f"dtimeout dead-lettered {delivery.message_id}: {reason}"[:MAX_DESCRIPTION]
        if self._settle(
            receipt,
            "dead-letter",
            lambda r: r.dead_letter_message(
                receipt.message, reason=short, error_description=description
            ),
        ):
            self._count("dead_lettered")

    # -- housekeeping ----------------------------------------------------------------------------

    def ping(self) -> None:
        """Open both directions: a peek proves Listen rights, a batch opens the send link."""
        with self._links.lock:
            link = self._links.current()
            self._call("peek", lambda: link.receiver.peek_messages(max_message_count=1))
        self._sender.call("open the send link", lambda s: s.create_message_batch())

    def stats(self) -> dict[str, int]:
        with self._counts_lock:
            return dict(self._counts)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._renewer is not None:
            try:
                self._renewer.close()
            except Exception as exc:  # closing must not mask what the caller is doing
                log.debug("closing the lock renewer failed: %s", describe(exc))
        self._links.close()
        self._sender.close()
        if self._owns_client:
            close_quietly(self.client, "client")


# ------------------------------------------------------------------------------------------------
# SDK calls as values (bound by parameters, not by loop variables)
# ------------------------------------------------------------------------------------------------


def _schedule(
    messages: list[ServiceBusMessage], when: datetime
) -> Callable[[ServiceBusSender], list[int]]:
    return lambda sender: sender.schedule_messages(messages, when)


def _cancel_scheduled(numbers: list[int]) -> Callable[[ServiceBusSender], None]:
    return lambda sender: sender.cancel_scheduled_messages(numbers)


def _complete(message: ServiceBusReceivedMessage) -> Callable[[ServiceBusReceiver], None]:
    return lambda receiver: receiver.complete_message(message)
