"""The broker side of the Service Bus double: queues, scheduled state, locks, dead letters.

What the service does, as documented, and what the double therefore does (all time from an
injected clock, so tests advance a ``FakeClock`` instead of sleeping):

* A scheduled message has a sequence number that is valid only while it is scheduled. At its
  scheduled time it is appended to the queue *as if enqueued at that instant* and gets a new
  sequence number ("message sequencing and timestamps"), so cancelling the old number then
  answers "not found".
* PEEK_LOCK: a received message is locked for the queue's LockDuration; renewing extends the lock
  by one LockDuration from now. When a lock expires, or the message is abandoned, its delivery
  count (AMQP: failed previous attempts, 0 on the first delivery) goes up; once it reaches
  MaxDeliveryCount (default 10) the service moves it to the dead-letter sub-queue with reason
  ``MaxDeliveryCountExceeded``.
* Duplicate detection (off by default): a message whose MessageId was seen within the window is
  accepted and silently dropped — for a schedule the service still answers a sequence number.
* The service raises; the SDK maps conditions to its own exception classes. The double raises
  those classes directly where the service would have answered with the condition.
"""

from __future__ import annotations

import itertools
import threading
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from azure.servicebus.exceptions import (
    MessageLockLostError,
    MessageNotFoundError,
    MessageSizeExceededError,
    MessagingEntityNotFoundError,
    ServiceBusAuthorizationError,
    ServiceBusConnectionError,
)

from dtimeout.clock import Clock

DEFAULT_LOCK_SECONDS = 60.0  # a new queue's LockDuration (PT1M)
DEFAULT_MAX_DELIVERY = 10
DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024
MAX_DELIVERY_REASON = "MaxDeliveryCountExceeded"


@dataclass
class Stored:
    """One message as the broker holds it."""

    seq: int
    message_id: str | None
    body: bytes
    properties: dict[str, Any]
    content_type: str | None
    enqueued_ms: int
    scheduled_ms: int | None = None
    failures: int = 0  # AMQP delivery-count
    lock_token: uuid.UUID | None = None
    locked_until_ms: int = 0
    dead_letter_reason: str | None = None
    dead_letter_description: str | None = None

    def locked(self, now_ms: int) -> bool:
        return self.lock_token is not None and self.locked_until_ms > now_ms


@dataclass
class Queue:
    name: str
    lock_ms: int
    max_delivery_count: int
    duplicate_detection: bool
    dedup_window_ms: int
    max_message_bytes: int
    scheduled: dict[int, Stored] = field(default_factory=dict)
    active: dict[int, Stored] = field(default_factory=dict)  # by sequence number, in order
    dead_letters: list[Stored] = field(default_factory=list)
    seen_ids: dict[str, int] = field(default_factory=dict)  # MessageId -> forget at (ms)
    sequence: Any = field(default_factory=lambda: itertools.count(1))


class Broker:
    """All queues of one namespace, and the faults tests inject into it."""

    def __init__(self, clock: Clock, host: str = "dtimeout-test.servicebus.windows.net") -> None:
        self.clock = clock
        self.host = host
        self.queues: dict[str, Queue] = {}
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.denied: set[str] = set()  # "Send" / "Listen"
        self.outage = False  # every operation fails as a dead connection would
        self.calls: Counter[str] = Counter()
        self._faults: dict[str, deque[BaseException | None]] = {}

    # -- set-up and fault injection ------------------------------------------------------------

    def create_queue(
        self,
        name: str,
        *,
        lock_seconds: float = DEFAULT_LOCK_SECONDS,
        max_delivery_count: int = DEFAULT_MAX_DELIVERY,
        duplicate_detection: bool = False,
        dedup_window_seconds: float = 600.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> Queue:
        with self.lock:
            queue = Queue(
                name,
                round(lock_seconds * 1000),
                max_delivery_count,
                duplicate_detection,
                round(dedup_window_seconds * 1000),
                max_message_bytes,
            )
            self.queues[name] = queue
            return queue

    def fail_next(
        self, operation: str, error: BaseException, times: int = 1, *, after: int = 0
    ) -> None:
        """After ``after`` good calls, the next ``times`` calls of ``operation`` raise ``error``
        (what reaches the caller once the SDK's own retries are spent)."""
        with self.lock:
            self._faults.setdefault(operation, deque()).extend([None] * after + [error] * times)

    def deny(self, right: str) -> None:
        """Take a right ("Send" or "Listen") away, as a key or role without it would."""
        with self.lock:
            self.denied.add(right)

    def check(self, operation: str, queue_name: str, right: str) -> Queue:
        """What the service checks before any operation: reachable, authorized, entity exists."""
        with self.lock:
            self.calls[operation] += 1
            if self.outage:
                raise ServiceBusConnectionError(message="Failed to initiate the connection.")
            faults = self._faults.get(operation)
            fault = faults.popleft() if faults else None
            if fault is not None:
                raise fault
            if right in self.denied:
                raise ServiceBusAuthorizationError(
                    message=f"Unauthorized access. '{right}' claim(s) are required to perform "
                    "this operation."
                )
            queue = self.queues.get(queue_name)
            if queue is None:
                raise MessagingEntityNotFoundError(
                    message=f"The messaging entity '{self.host}/{queue_name}' could not be found."
                )
            return queue

    # -- time ------------------------------------------------------------------------------------

    def tick(self, queue: Queue) -> int:
        """Apply what time did since the last call: enqueue due scheduled messages (with new
        sequence numbers), release expired locks. Returns now (ms)."""
        now = self.clock.now_ms()
        due = sorted(
            (m for m in queue.scheduled.values() if (m.scheduled_ms or 0) <= now),
            key=lambda m: (m.scheduled_ms, m.seq),
        )
        for message in due:  # appended in the order their times came
            del queue.scheduled[message.seq]
            message.seq = next(queue.sequence)
            message.enqueued_ms = now
            message.scheduled_ms = None
            queue.active[message.seq] = message
        for message in list(queue.active.values()):
            if message.lock_token is not None and message.locked_until_ms <= now:
                self._failed_delivery(queue, message)
        for message_id in [i for i, until in queue.seen_ids.items() if until <= now]:
            del queue.seen_ids[message_id]
        return now

    def _failed_delivery(self, queue: Queue, message: Stored) -> None:
        message.lock_token = None
        message.locked_until_ms = 0
        message.failures += 1
        if message.failures >= queue.max_delivery_count:
            del queue.active[message.seq]
            message.dead_letter_reason = MAX_DELIVERY_REASON
            message.dead_letter_description = (
                f"Message could not be consumed after {queue.max_delivery_count} delivery attempts."
            )
            queue.dead_letters.append(message)

    # -- operations (called by the SDK-shaped handles, under self.lock) --------------------------

    def accept(
        self, queue: Queue, message: Stored, scheduled_ms: int | None
    ) -> tuple[int, Stored | None]:
        """Store an incoming message; answers its sequence number (dropped duplicates still get
        one, as the service answers) and the stored message (None when dropped)."""
        if len(message.body) > queue.max_message_bytes:
            raise MessageSizeExceededError(
                message=f"The received message (size: {len(message.body)} bytes) exceeds the "
                f"limit ({queue.max_message_bytes} bytes) currently allowed on the link."
            )
        now = self.tick(queue)
        message.seq = next(queue.sequence)
        message.enqueued_ms = now
        if queue.duplicate_detection and message.message_id is not None:
            if message.message_id in queue.seen_ids:
                return message.seq, None
            queue.seen_ids[message.message_id] = now + queue.dedup_window_ms
        if scheduled_ms is not None and scheduled_ms > now:
            message.scheduled_ms = scheduled_ms
            queue.scheduled[message.seq] = message
        else:
            queue.active[message.seq] = message
        self.changed.notify_all()
        return message.seq, message

    def cancel(self, queue: Queue, numbers: list[int]) -> None:
        """All or nothing: any number that is not scheduled fails the request."""
        self.tick(queue)
        missing = [n for n in numbers if n not in queue.scheduled]
        if missing:
            raise MessageNotFoundError(
                message="Messages not found. Missing sequence numbers: "
                + ", ".join(str(n) for n in missing)
            )
        for number in numbers:
            del queue.scheduled[number]

    def lock_available(self, queue: Queue, count: int) -> list[Stored]:
        now = self.tick(queue)
        taken: list[Stored] = []
        for message in queue.active.values():
            if len(taken) >= count:
                break
            if message.lock_token is None:
                message.lock_token = uuid.uuid4()
                message.locked_until_ms = now + queue.lock_ms
                taken.append(message)
        return taken

    def held(self, queue: Queue, seq: int, token: Any) -> Stored:
        """The message under ``token``'s live lock, or MessageLockLostError."""
        now = self.tick(queue)
        message = queue.active.get(seq)
        if message is None or message.lock_token != token or not message.locked(now):
            raise MessageLockLostError(
                message="The lock supplied is invalid. Either the lock expired, or the message "
                "has already been removed from the queue."
            )
        return message

    def complete(self, queue: Queue, seq: int, token: Any) -> None:
        self.held(queue, seq, token)
        del queue.active[seq]

    def abandon(self, queue: Queue, seq: int, token: Any) -> None:
        self._failed_delivery(queue, self.held(queue, seq, token))
        self.changed.notify_all()

    def dead_letter(
        self, queue: Queue, seq: int, token: Any, reason: str | None, description: str | None
    ) -> None:
        message = self.held(queue, seq, token)
        del queue.active[seq]
        message.lock_token = None
        message.dead_letter_reason = reason
        message.dead_letter_description = description
        queue.dead_letters.append(message)

    def renew(self, queue: Queue, seq: int, token: Any) -> int:
        message = self.held(queue, seq, token)
        message.locked_until_ms = self.clock.now_ms() + queue.lock_ms
        return message.locked_until_ms

    # -- inspection for tests --------------------------------------------------------------------

    def snapshot(self, queue_name: str) -> dict[str, list[Stored]]:
        """Scheduled, active (available or locked) and dead-lettered messages, after a tick."""
        with self.lock:
            queue = self.queues[queue_name]
            self.tick(queue)
            return {
                "scheduled": list(queue.scheduled.values()),
                "active": list(queue.active.values()),
                "dead": list(queue.dead_letters),
            }
