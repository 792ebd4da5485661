"""The sender and the receivers: opened on first use, replaced when broken, one lock each.

The SDK gives no thread-safety guarantee for senders and receivers, and the consumer calls the
transport from its loop thread while handler threads finish, so every call on a handle goes
through that handle's lock.

A receiver can break: the service detaches links that sat idle (~10 minutes). The SDK reopens a
detached link inside the next receive — within that receive's wait, so a short wait times the
attach out (``OperationTimeoutError``); and when its retries are spent, or the handler ends up
shut down, the same receiver object keeps failing. :class:`ReceiverLinks` then opens a fresh
receiver (with a full attach budget) and tries the receive once more. The old one is *retired*, not
closed, while deliveries from it are unsettled: closing it would make them impossible to
settle (the SDK refuses settlement on a shut-down handler); it is closed when the last of them
is settled.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from azure.servicebus import ServiceBusReceivedMessage, ServiceBusReceiver, ServiceBusSender

from dtimeout_azure.errors import broken, describe, link_broken, translate

log = logging.getLogger(__name__)

T = TypeVar("T")


def close_quietly(handle: Any, what: str) -> None:
    """Close an SDK handle; a dead link often fails to close, and nothing can be done then."""
    try:
        handle.close()
    except Exception as exc:
        log.debug("closing the %s failed: %s", what, describe(exc))


class SenderHandle:
    """One sender, serialised; dropped after a failure that leaves it unusable."""

    def __init__(self, open_sender: Callable[[], ServiceBusSender], where: str) -> None:
        self._open = open_sender
        self._where = where
        self._sender: ServiceBusSender | None = None
        self._lock = threading.Lock()

    def call(self, what: str, fn: Callable[[ServiceBusSender], T]) -> T:
        """Run ``fn(sender)``; SDK errors come out translated. A broken sender is replaced on
        the next call (the caller's retry policy makes that call)."""
        with self._lock:
            if self._sender is None:
                try:
                    self._sender = self._open()
                except Exception as exc:
                    raise translate(exc, "open sender", self._where) from exc
            sender = self._sender
            try:
                return fn(sender)
            except Exception as exc:
                if not link_broken(exc):
                    raise translate(exc, what, self._where) from exc
                self._sender = None
                close_quietly(sender, "sender")
                raise broken(exc, what, self._where) from exc

    def close(self) -> None:
        with self._lock:
            if self._sender is not None:
                close_quietly(self._sender, "sender")
                self._sender = None


@dataclass(eq=False)
class Link:
    """A receiver and how many of its deliveries are still unsettled."""

    receiver: ServiceBusReceiver
    outstanding: int = 0
    retired: bool = False


@dataclass(eq=False)
class Receipt:
    """``Delivery.receipt`` of this transport: the SDK message and the receiver it came from."""

    link: Link
    message: ServiceBusReceivedMessage
    received_at: float  # time.monotonic() at receive; the renewer's horizon counts from here
    hop: int
    settled: bool = False
    lost: bool = False


class ReceiverLinks:
    """The current receiver, the retired ones, and the lock that serialises calls on them."""

    def __init__(
        self,
        open_receiver: Callable[[], ServiceBusReceiver],
        where: str,
        on_reconnect: Callable[[], None],
    ) -> None:
        self._open = open_receiver
        self._where = where
        self._on_reconnect = on_reconnect
        self._current: Link | None = None
        self._retired: list[Link] = []
        self.lock = threading.RLock()

    def current(self) -> Link:
        """The receiver in use, opened. A new one is opened through the SDK's context-manager
        entry (its own retries, bounded per attempt by ``try_timeout``) rather than by the first
        receive: since azure-servicebus 7.15 a receive's wait also bounds link acquisition, and
        the consumer's short waits would time the attach out."""
        with self.lock:
            if self._current is None:
                receiver: ServiceBusReceiver | None = None
                try:
                    receiver = self._open()
                    receiver.__enter__()
                except Exception as exc:
                    if receiver is not None:
                        close_quietly(receiver, "receiver")
                    raise translate(exc, "open receiver", self._where) from exc
                self._current = Link(receiver)
            return self._current

    def receive(self, count: int, wait: float) -> tuple[Link, list[ServiceBusReceivedMessage]]:
        """Receive on the current receiver; on a broken link, reconnect and try once more.

        Never answers "nothing" for a failure: the second failure is raised (transient when it
        is a connection problem), so the caller backs off and retries instead of spinning."""
        with self.lock:
            link = self.current()
            try:
                return link, link.receiver.receive_messages(
                    max_message_count=count, max_wait_time=wait
                )
            except Exception as exc:
                if not link_broken(exc):
                    raise translate(exc, "receive", self._where) from exc
                log.warning(
                    "receiver on %s is broken (%s); reconnecting", self._where, describe(exc)
                )
                self.replace(link)
            link = self.current()
            try:
                return link, link.receiver.receive_messages(
                    max_message_count=count, max_wait_time=wait
                )
            except Exception as exc:
                if not link_broken(exc):
                    raise translate(exc, "receive", self._where) from exc
                self.replace(link)  # start afresh on the caller's next attempt
                raise broken(exc, "receive (after reconnecting)", self._where) from exc

    def replace(self, link: Link) -> None:
        with self.lock:
            if self._current is link:
                self._current = None
            self._on_reconnect()
            if link.outstanding > 0:
                link.retired = True
                self._retired.append(link)
            else:
                close_quietly(link.receiver, "receiver")

    def settled(self, receipt: Receipt, *, lost: bool = False) -> None:
        """Book a delivery as done; close its receiver if it was retired and this was its last."""
        with self.lock:
            if receipt.settled:
                return
            receipt.settled = True
            receipt.lost = receipt.lost or lost
            link = receipt.link
            link.outstanding -= 1
            if link.retired and link.outstanding <= 0:
                self._retired.remove(link)
                close_quietly(link.receiver, "retired receiver")

    def close(self) -> None:
        with self.lock:
            for link in [*self._retired, *([self._current] if self._current else [])]:
                close_quietly(link.receiver, "receiver")
            self._retired.clear()
            self._current = None
