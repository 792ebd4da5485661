"""An in-memory double of exactly the azure-servicebus surface the transport uses.

``FakeNamespace(clock).client()`` stands in for ``ServiceBusClient``: ``get_queue_sender`` /
``get_queue_receiver``; senders ``schedule_messages``, ``cancel_scheduled_messages``,
``send_messages``, ``create_message_batch``; receivers ``receive_messages``, ``peek_messages``,
``complete_message``, ``abandon_message``, ``dead_letter_message``, ``renew_message_lock``.
Outgoing messages are the SDK's real ``ServiceBusMessage``; received ones subclass the SDK's
``ServiceBusReceivedMessage`` (so the SDK's own ``AutoLockRenewer`` accepts them) and read time
from the double's clock. The SDK's client-side checks are mirrored in the SDK's order (handler
shut down, wrong type, already settled, lock expired) and the service's answers are raised as
the SDK's own exception classes (see ``sbbroker``). Test ``test_azure_double.py`` pins all of
this to the SDK's documented behaviour.

What it cannot show — AMQP framing, real link credit and prefetch, the service's exact timing
and error texts, partitioned entities — only a live run proves (``docs/providers-azure.md``).
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from azure.servicebus import (
    ServiceBusMessage,
    ServiceBusMessageState,
    ServiceBusReceivedMessage,
    ServiceBusReceiveMode,
)
from azure.servicebus.amqp import AmqpMessageBodyType
from azure.servicebus.exceptions import (
    MessageAlreadySettled,
    MessageLockLostError,
    OperationTimeoutError,
    ServiceBusConnectionError,
)
from sbbroker import Broker, Queue, Stored

from dtimeout.clock import Clock

SHUT_DOWN = (
    "The handler has already been shutdown. Please use ServiceBusClient to create a new instance."
)


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def sdk_timestamp_ms(value: datetime) -> int:
    """How the SDK encodes a schedule time: ``utctimetuple`` — a naive value is read as UTC."""
    return int(calendar.timegm(value.utctimetuple()) * 1000 + value.microsecond / 1000)


def _encode_properties(props: dict[str, Any]) -> dict[bytes, Any]:
    """Received application properties: keys and string values come back as bytes."""
    return {k.encode(): (v.encode() if isinstance(v, str) else v) for k, v in props.items()}


class FakeNamespace(Broker):
    """A Service Bus namespace in memory. ``client()`` gives an SDK-shaped client."""

    def __init__(self, clock: Clock, host: str = "dtimeout-test.servicebus.windows.net") -> None:
        super().__init__(clock, host)
        self.link_open_seconds = 0.1  # real time an attach takes; a shorter receive wait fails
        self.receivers: list[FakeReceiver] = []
        self.schedule_times: list[datetime] = []  # exactly what schedule_messages was given

    def client(self) -> FakeServiceBusClient:
        return FakeServiceBusClient(self)

    def detach_links(self, *, wedge: bool = False) -> None:
        """The service detaches every receiver link (as it does after ~10 idle minutes).

        The SDK reopens the link inside the next receive, within that receive's wait: a wait of
        at least ``link_open_seconds`` notices nothing, a shorter one raises the SDK's
        ``OperationTimeoutError`` ("Timed out waiting for the AMQP link to open."), as 7.15 does.
        ``wedge=True`` models the failure the SDK cannot recover from: the handler stays shut
        down, every receive raises ``ServiceBusConnectionError`` and settling a message through
        it raises the SDK's "handler has already been shutdown" ``ValueError``."""
        with self.lock:
            for receiver in self.receivers:
                receiver.link_open = False
                if wedge:
                    receiver.wedged = True
                    receiver._running = False


class FakeServiceBusClient:
    """``ServiceBusClient``: hands out handlers; connects nothing until they are used."""

    def __init__(self, namespace: FakeNamespace) -> None:
        self.namespace = namespace
        self.fully_qualified_namespace = namespace.host
        self.handlers: list[FakeSender | FakeReceiver] = []
        self.receiver_kwargs: list[dict[str, Any]] = []
        self.closed = False

    def get_queue_sender(self, queue_name: str, **kwargs: Any) -> FakeSender:
        sender = FakeSender(self.namespace, queue_name)
        self.handlers.append(sender)
        return sender

    def get_queue_receiver(
        self,
        queue_name: str,
        *,
        receive_mode: ServiceBusReceiveMode | str = ServiceBusReceiveMode.PEEK_LOCK,
        sub_queue: Any = None,
        prefetch_count: int = 0,
        **kwargs: Any,
    ) -> FakeReceiver:
        if sub_queue is not None or receive_mode != ServiceBusReceiveMode.PEEK_LOCK:
            raise NotImplementedError("the double models PEEK_LOCK on the main queue only")
        self.receiver_kwargs.append(
            {"receive_mode": receive_mode, "prefetch_count": prefetch_count}
        )
        receiver = FakeReceiver(self.namespace, queue_name)
        self.handlers.append(receiver)
        with self.namespace.lock:
            self.namespace.receivers.append(receiver)
        return receiver

    def close(self) -> None:
        for handler in self.handlers:
            handler.close()
        self.closed = True

    def __enter__(self) -> FakeServiceBusClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Handler:
    def __init__(self, namespace: FakeNamespace, queue_name: str, right: str) -> None:
        self.namespace = namespace
        self.queue_name = queue_name
        self.right = right
        self.shutdown = False

    def _check_live(self) -> None:
        if self.shutdown:
            raise ValueError(SHUT_DOWN)

    def _queue(self, operation: str) -> Queue:
        return self.namespace.check(operation, self.queue_name, self.right)

    def close(self) -> None:
        self.shutdown = True


class FakeSender(_Handler):
    def __init__(self, namespace: FakeNamespace, queue_name: str) -> None:
        super().__init__(namespace, queue_name, "Send")

    def _stored(self, message: Any) -> Stored:
        if not isinstance(message, ServiceBusMessage):
            raise ValueError(
                "Scheduling batch messages only supports iterables containing ServiceBusMessage "
                f"Objects. Received instead: {message.__class__.__name__}"
            )
        props = {
            (k.decode() if isinstance(k, bytes) else k): v
            for k, v in (message.application_properties or {}).items()
        }
        body = b"".join(message.body)
        return Stored(0, message.message_id, body, props, message.content_type, 0)

    def schedule_messages(
        self, messages: Any, schedule_time_utc: datetime, *, timeout: float | None = None
    ) -> list[int]:
        self._check_live()
        if timeout is not None and timeout <= 0:
            raise ValueError("The timeout must be greater than 0.")
        batch = [messages] if isinstance(messages, ServiceBusMessage) else list(messages)
        if not batch:
            return []
        stored = [self._stored(m) for m in batch]
        at_ms = sdk_timestamp_ms(schedule_time_utc)
        with self.namespace.lock:
            queue = self._queue("schedule")
            self.namespace.schedule_times.append(schedule_time_utc)
            return [self.namespace.accept(queue, s, at_ms)[0] for s in stored]

    def cancel_scheduled_messages(
        self, sequence_numbers: int | list[int], *, timeout: float | None = None
    ) -> None:
        self._check_live()
        if timeout is not None and timeout <= 0:
            raise ValueError("The timeout must be greater than 0.")
        numbers = (
            [sequence_numbers] if isinstance(sequence_numbers, int) else list(sequence_numbers)
        )
        if not numbers:
            return
        with self.namespace.lock:
            self.namespace.cancel(self._queue("cancel"), numbers)

    def send_messages(self, message: Any, *, timeout: float | None = None) -> None:
        self._check_live()
        batch = [message] if isinstance(message, ServiceBusMessage) else list(message)
        stored = [self._stored(m) for m in batch]
        with self.namespace.lock:
            queue = self._queue("send")
            for s in stored:
                self.namespace.accept(queue, s, None)

    def create_message_batch(self, max_size_in_bytes: int | None = None) -> FakeMessageBatch:
        """Opens the send link (which is what the transport's ``ping`` relies on)."""
        self._check_live()
        with self.namespace.lock:
            queue = self._queue("open_sender")
        return FakeMessageBatch(max_size_in_bytes or queue.max_message_bytes)


class FakeMessageBatch(list[Any]):
    def __init__(self, max_size_in_bytes: int) -> None:
        super().__init__()
        self.max_size_in_bytes = max_size_in_bytes


class FakeReceiver(_Handler):
    def __init__(self, namespace: FakeNamespace, queue_name: str) -> None:
        super().__init__(namespace, queue_name, "Listen")
        self._running = True  # the SDK's flag: False once the handler is shut down
        self.session = None
        self.link_open = False
        self.wedged = False
        self.reopened = 0

    def __enter__(self) -> FakeReceiver:
        """Opens the link with the SDK's retries and no receive wait to respect."""
        self._check_live()
        self.namespace.check("open_receiver", self.queue_name, self.right)
        self.link_open = True
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        super().close()
        self._running = False

    def receive_messages(
        self, max_message_count: int | None = 1, max_wait_time: float | None = None
    ) -> list[FakeReceivedMessage]:
        self._check_live()
        if max_wait_time is not None and max_wait_time <= 0:
            raise ValueError("The max_wait_time must be greater than 0.")
        if max_message_count is not None and max_message_count <= 0:
            raise ValueError("The max_message_count must be greater than 0")
        if self.wedged:
            raise ServiceBusConnectionError(message="Failed to open the receiver link.")
        wait = 60.0 if max_wait_time is None else max_wait_time
        if not self.link_open:  # opened by this receive, within its wait
            if wait < self.namespace.link_open_seconds:
                raise OperationTimeoutError(message="Timed out waiting for the AMQP link to open.")
            self.namespace.check("open_receiver", self.queue_name, self.right)
            self.link_open = True
            self.reopened += 1
        deadline = time.monotonic() + wait
        with self.namespace.lock:
            while True:
                queue = self._queue("receive")
                taken = self.namespace.lock_available(queue, max_message_count or 0)
                remaining = deadline - time.monotonic()
                if taken or remaining <= 0 or not max_message_count:
                    return [FakeReceivedMessage(m, self, queue) for m in taken]
                self.namespace.changed.wait(min(remaining, 0.01))

    def peek_messages(
        self, max_message_count: int = 1, *, sequence_number: int = 0, timeout: float | None = None
    ) -> list[FakeReceivedMessage]:
        self._check_live()
        with self.namespace.lock:
            queue = self._queue("peek")
            self.namespace.tick(queue)
            everything = sorted(
                [*queue.scheduled.values(), *queue.active.values()], key=lambda m: m.seq
            )
            chosen = [m for m in everything if m.seq >= sequence_number][:max_message_count]
            return [FakeReceivedMessage(m, self, queue, peeked=True) for m in chosen]

    # -- settlement, with the SDK's client-side checks first ---------------------------------

    def _check_message_alive(self, message: Any, action: str) -> FakeReceivedMessage:
        self._check_live()
        if not isinstance(message, ServiceBusReceivedMessage):
            raise TypeError("Parameter 'message' must be of type ServiceBusReceivedMessage")
        assert isinstance(message, FakeReceivedMessage)
        if message._is_peeked_message:
            raise ValueError(f"The operation {action} is not supported for peeked messages.")
        if message._settled:
            raise MessageAlreadySettled(action=action)
        if not self._running:
            raise ValueError(
                f"Failed to {action} the message as the handler has already been shutdown."
                "Please use ServiceBusClient to create a new instance."
            )
        return message

    def _settle(self, message: Any, action: str, **details: Any) -> None:
        msg = self._check_message_alive(message, action)
        if msg._lock_expired:
            raise MessageLockLostError(message="The lock on the message lock has expired.")
        with self.namespace.lock:
            queue = self._queue(action)
            getattr(self.namespace, action)(queue, msg._seq, msg._token, **details)
        msg._settled = True

    def complete_message(self, message: ServiceBusReceivedMessage) -> None:
        self._settle(message, "complete")

    def abandon_message(self, message: ServiceBusReceivedMessage) -> None:
        self._settle(message, "abandon")

    def dead_letter_message(
        self,
        message: ServiceBusReceivedMessage,
        reason: str | None = None,
        error_description: str | None = None,
    ) -> None:
        self._settle(message, "dead_letter", reason=reason, description=error_description)

    def renew_message_lock(
        self, message: ServiceBusReceivedMessage, *, timeout: float | None = None
    ) -> datetime:
        msg = self._check_message_alive(message, "renew_message_lock")
        with self.namespace.lock:
            until = self.namespace.renew(self._queue("renew"), msg._seq, msg._token)
        msg._expiry = _utc(until)
        return msg._expiry


class FakeReceivedMessage(ServiceBusReceivedMessage):
    """A received message: a snapshot of the broker's copy plus the lock this delivery holds.

    Subclasses the SDK's class without running its AMQP constructor, so ``isinstance`` checks
    (the receiver's, ``AutoLockRenewer.register``'s) pass; time comes from the double's clock.
    """

    def __init__(
        self, stored: Stored, receiver: FakeReceiver, queue: Queue, *, peeked: bool = False
    ) -> None:  # no super().__init__: there is no AMQP frame behind this message
        self._clock: Clock = receiver.namespace.clock
        self._receiver = receiver
        self._seq = stored.seq
        self._token = None if peeked else stored.lock_token
        self._expiry = None if peeked else _utc(stored.locked_until_ms)
        self._settled = False
        self._is_peeked_message = peeked
        self._is_deferred_message = False
        self._received_timestamp_utc = datetime.now(UTC)  # what the SDK's renewer counts from
        self.auto_renew_error = None
        self._body = stored.body
        self._props = _encode_properties(stored.properties)
        self._message_id = stored.message_id
        self._content_type = stored.content_type
        self._failures = stored.failures
        self._enqueued = _utc(stored.enqueued_ms)
        self._scheduled = None if stored.scheduled_ms is None else _utc(stored.scheduled_ms)
        self._dead_letter = (stored.dead_letter_reason, stored.dead_letter_description)

    def __repr__(self) -> str:
        return f"FakeReceivedMessage(seq={self._seq}, message_id={self._message_id!r})"

    __str__ = __repr__

    @property
    def body(self) -> Iterator[bytes]:  # the SDK yields the AMQP data sections
        return iter([self._body])

    @property
    def body_type(self) -> AmqpMessageBodyType:
        return AmqpMessageBodyType.DATA

    @property
    def message_id(self) -> str | None:  # type: ignore[override]
        return self._message_id

    @property
    def content_type(self) -> str | None:  # type: ignore[override]
        return self._content_type

    @property
    def application_properties(self) -> dict[bytes, Any]:  # type: ignore[override]
        return dict(self._props)

    @property
    def sequence_number(self) -> int:
        return self._seq

    @property
    def delivery_count(self) -> int:
        return self._failures

    @property
    def enqueued_time_utc(self) -> datetime:
        return self._enqueued

    @property
    def scheduled_enqueue_time_utc(self) -> datetime | None:  # type: ignore[override]
        return self._scheduled

    @property
    def state(self) -> ServiceBusMessageState:
        if self._scheduled is not None:
            return ServiceBusMessageState.SCHEDULED
        return ServiceBusMessageState.ACTIVE

    @property
    def dead_letter_reason(self) -> str | None:
        return self._dead_letter[0]

    @property
    def dead_letter_error_description(self) -> str | None:
        return self._dead_letter[1]

    @property
    def lock_token(self) -> Any:
        return None if self._settled else self._token

    @property
    def locked_until_utc(self) -> datetime | None:
        return None if self._settled else self._expiry

    @property
    def _lock_expired(self) -> bool:
        until = self.locked_until_utc
        return until is not None and until <= _utc(self._clock.now_ms())
