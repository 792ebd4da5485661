"""Small tools the contract suite uses: counting wrappers, and a bounded pump for consumers."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from dtimeout.consumer import Consumer
from dtimeout.interfaces import (
    CancelOutcome,
    CancelRequest,
    Delivery,
    LeaseRef,
    OutgoingMessage,
    ReceiveClaimRequest,
    ReceivedClaims,
    ScheduleOutcome,
    ScheduleRequest,
    Store,
    Transport,
)
from dtimeout.model import SettleResult, TimeoutMessage


class CountingTransport(Transport):
    """Wraps a transport and counts calls and messages sent, to prove "no new message"."""

    def __init__(self, inner: Transport) -> None:
        super().__init__(inner.clock)
        self.inner = inner
        self.capabilities = inner.capabilities
        self.name = inner.name
        self.calls: Counter[str] = Counter()
        self.sent: list[OutgoingMessage] = []

    def send(self, messages: Sequence[OutgoingMessage]) -> list[str | None]:
        self.calls["send"] += 1
        self.sent.extend(messages)
        return self.inner.send(messages)

    def receive(self, max_messages: int, wait_seconds: float, lease_seconds: float) -> Any:
        self.calls["receive"] += 1
        return self.inner.receive(max_messages, wait_seconds, lease_seconds)

    def __getattr__(self, name: str) -> Any:
        # Everything else straight through, counted.
        attr = getattr(self.inner, name)
        if callable(attr):

            def counted(*args: Any, **kwargs: Any) -> Any:
                self.calls[name] += 1
                return attr(*args, **kwargs)

            return counted
        return attr

    def ack(self, deliveries: Any) -> None:
        self.calls["ack"] += 1
        self.inner.ack(deliveries)

    def retry_later(self, delivery: Any, delay_ms: int) -> None:
        self.calls["retry_later"] += 1
        self.inner.retry_later(delivery, delay_ms)

    def extend(self, delivery: Any, lease_seconds: float) -> None:
        self.calls["extend"] += 1
        self.inner.extend(delivery, lease_seconds)

    def dead_letter(self, delivery: Any, reason: str) -> None:
        self.calls["dead_letter"] += 1
        self.inner.dead_letter(delivery, reason)

    def cancel(self, refs: Any) -> None:
        self.calls["cancel"] += 1
        self.inner.cancel(refs)

    def close(self) -> None:
        self.inner.close()

    def stats(self) -> dict[str, int]:
        return self.inner.stats()


class CountingStore(Store):
    """Wraps a store and counts calls and items per operation, to prove "one store write"."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner.clock)
        self.inner = inner
        self.name = inner.name
        self.calls: Counter[str] = Counter()
        self.items: Counter[str] = Counter()

    def _count(self, op: str, n: int = 1) -> None:
        self.calls[op] += 1
        self.items[op] += n

    def schedule(self, requests: Any) -> Any:
        self._count("schedule", len(requests))
        return self.inner.schedule(requests)

    def schedule_and_send(
        self, transport: Transport, requests: Sequence[ScheduleRequest]
    ) -> list[ScheduleOutcome] | None:
        """Forwards the fused schedule with the wrapped transport unwrapped (the inner store
        fuses only with its own kind of transport), counting its items as schedule writes and
        every message it enqueued as sent on the ``CountingTransport``, as if the app had sent
        it: "no new message" checks then mean the same on both paths."""
        outcomes = self.inner.schedule_and_send(_unwrap(transport), requests)
        if outcomes is None:
            return None
        self._count("schedule", len(requests))
        if isinstance(transport, CountingTransport):
            for o in outcomes:
                if o.sent:
                    t = o.timeout
                    body = TimeoutMessage(t.kind, t.key, t.generation, t.due_at_ms, t.payload)
                    transport.sent.append(
                        OutgoingMessage(t.idempotency_key, body.encode(), t.due_at_ms)
                    )
        return outcomes

    def receive_and_claim(
        self, transport: Transport, request: ReceiveClaimRequest
    ) -> ReceivedClaims | None:
        """Forwards the fused receive → claim, counted as a receive on the ``CountingTransport``
        and as a claim of the messages it claimed here."""
        got = self.inner.receive_and_claim(_unwrap(transport), request)
        if got is None:
            return None
        if isinstance(transport, CountingTransport):
            transport.calls["receive"] += 1
        self._count("claim", got.received - len(got.deliveries))
        return got

    def complete_and_ack(
        self, transport: Transport, items: Sequence[tuple[LeaseRef, Delivery]]
    ) -> list[SettleResult] | None:
        """Forwards the fused complete → ack, counted as both."""
        answers = self.inner.complete_and_ack(_unwrap(transport), items)
        if answers is None:
            return None
        self._count("complete", len(items))
        if isinstance(transport, CountingTransport):
            transport.calls["ack"] += 1
        return answers

    def attach_handles(self, items: Any) -> None:
        self._count("attach_handles", len(items))
        self.inner.attach_handles(items)

    def cancel(self, requests: Any) -> Any:
        self._count("cancel", len(requests))
        return self.inner.cancel(requests)

    def cancel_and_withdraw(
        self, transport: Transport, requests: Sequence[CancelRequest]
    ) -> list[CancelOutcome] | None:
        """Forwards the fused cancel with the wrapped transport unwrapped, counted as a cancel
        (the native cancel it replaces is not counted on the ``CountingTransport``)."""
        outcomes = self.inner.cancel_and_withdraw(_unwrap(transport), requests)
        if outcomes is not None:
            self._count("cancel", len(requests))
        return outcomes

    def claim(self, requests: Any) -> Any:
        self._count("claim", len(requests))
        return self.inner.claim(requests)

    def renew(self, leases: Any, lease_ms: int) -> Any:
        self._count("renew", len(leases))
        return self.inner.renew(leases, lease_ms)

    def complete(self, leases: Any) -> Any:
        self._count("complete", len(leases))
        return self.inner.complete(leases)

    def release(self, lease: Any, **kwargs: Any) -> Any:
        self._count("release")
        return self.inner.release(lease, **kwargs)

    def abandon(self, *args: Any) -> Any:
        self._count("abandon")
        return self.inner.abandon(*args)

    def get(self, kind: str, key: str) -> Any:
        return self.inner.get(kind, key)

    def list(self, **kwargs: Any) -> Any:
        return self.inner.list(**kwargs)

    def purge_expired(self) -> int:
        return self.inner.purge_expired()

    def close(self) -> None:
        self.inner.close()

    def stats(self) -> dict[str, int]:
        return self.inner.stats()


def _unwrap(transport: Transport) -> Transport:
    return transport.inner if isinstance(transport, CountingTransport) else transport


def pump(
    consumer: Consumer,
    *,
    until: Callable[[], bool] | None = None,
    seconds: float = 10.0,
    max_cycles: int = 100_000,
) -> int:
    """Run ``consumer.run_once()`` until ``until()`` holds, or — without ``until`` — until a
    cycle finds nothing; bounded by ``seconds`` of real time and ``max_cycles``. Returns the
    number of messages handled. Never advances a fake clock."""
    deadline = time.monotonic() + seconds
    total = 0
    for _ in range(max_cycles):
        n = consumer.run_once()
        total += n
        if until is not None:
            if until():
                break
        elif n == 0 and not consumer.in_flight:
            break
        if time.monotonic() >= deadline:
            break
    consumer.drain()
    return total
