"""``memory://`` — an in-process store and transport, for tests and single-process tools.

Both follow the contract exactly (the rules come from ``dtimeout.model``), so the contract suite
runs against them like against any server. ``memory://NAME`` returns the same instance for the
same name within one process, so a producer and a consumer built separately can meet;
plain ``memory://`` is a fresh, private instance on every open.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from dtimeout.clock import Clock
from dtimeout.errors import ConfigurationError
from dtimeout.hookspecs import hookimpl
from dtimeout.interfaces import (
    CancelOutcome,
    CancelRef,
    CancelRequest,
    ClaimOutcome,
    ClaimRequest,
    Delivery,
    LeaseRef,
    OutgoingMessage,
    ProviderInfo,
    ScheduleOutcome,
    ScheduleRequest,
    Store,
    Transport,
    TransportCapabilities,
)
from dtimeout.model import (
    ScheduleResult,
    SettleResult,
    Timeout,
    TimeoutState,
    decide_abandon,
    decide_attach_handle,
    decide_cancel,
    decide_claim,
    decide_complete,
    decide_release,
    decide_renew,
    decide_schedule,
)

_Key = tuple[str, str]


class MemoryStore(Store):
    """Records in a dict behind one lock; every transition is a ``decide_*`` call under it."""

    name = "memory"

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self._records: dict[_Key, Timeout] = {}
        self._lock = threading.Lock()

    def _current(self, key: _Key, now_ms: int) -> Timeout | None:
        record = self._records.get(key)
        if record is not None and record.expires_ms and record.expires_ms <= now_ms:
            del self._records[key]
            return None
        return record

    def _apply(self, key: _Key, new: Timeout | None) -> None:
        if new is not None:
            self._records[key] = new

    def schedule(self, requests: Sequence[ScheduleRequest]) -> list[ScheduleOutcome]:
        out: list[ScheduleOutcome] = []
        with self._lock:
            now = self.clock.now_ms()
            for r in requests:
                key = (r.kind, r.key)
                current = self._current(key, now)
                new, result = decide_schedule(
                    current,
                    kind=r.kind,
                    key=r.key,
                    due_at_ms=r.due_at_ms,
                    payload=r.payload,
                    now_ms=now,
                    retention_ms=r.retention_ms,
                )
                if result is not ScheduleResult.REFUSED:
                    self._apply(key, new)
                previous = current.handle if current and result is ScheduleResult.ADVANCED else None
                out.append(ScheduleOutcome(result, new, previous))
        return out

    def attach_handles(self, items: Sequence[tuple[str, str, int, str]]) -> None:
        with self._lock:
            now = self.clock.now_ms()
            for kind, key, generation, handle in items:
                current = self._current((kind, key), now)
                self._apply(
                    (kind, key), decide_attach_handle(current, generation=generation, handle=handle)
                )

    def cancel(self, requests: Sequence[CancelRequest]) -> list[CancelOutcome]:
        out: list[CancelOutcome] = []
        with self._lock:
            now = self.clock.now_ms()
            for r in requests:
                current = self._current((r.kind, r.key), now)
                new, result = decide_cancel(current, request_id=r.request_id, now_ms=now)
                self._apply((r.kind, r.key), new)
                out.append(
                    CancelOutcome(
                        result,
                        current.generation if current else None,
                        current.handle if current else None,
                    )
                )
        return out

    def claim(self, requests: Sequence[ClaimRequest]) -> list[ClaimOutcome]:
        out: list[ClaimOutcome] = []
        with self._lock:
            now = self.clock.now_ms()
            for r in requests:
                key = (r.message.kind, r.message.key)
                current = self._current(key, now)
                new, result = decide_claim(
                    current,
                    message=r.message,
                    owner=r.owner,
                    lease_ms=r.lease_ms,
                    max_attempts=r.max_attempts,
                    orphan_policy=r.orphan_policy,
                    now_ms=now,
                    retention_ms=r.retention_ms,
                )
                self._apply(key, new)
                out.append(ClaimOutcome(result, new if new is not None else current))
        return out

    def renew(self, leases: Sequence[LeaseRef], lease_ms: int) -> list[bool]:
        return self._each(
            leases,
            lambda cur, lease, now: decide_renew(
                cur, generation=lease.generation, owner=lease.owner, lease_ms=lease_ms, now_ms=now
            ),
        )

    def complete(self, leases: Sequence[LeaseRef]) -> list[SettleResult]:
        return self._each(
            leases,
            lambda cur, lease, now: decide_complete(
                cur, generation=lease.generation, owner=lease.owner, now_ms=now
            ),
        )

    def _each(
        self,
        leases: Sequence[LeaseRef],
        decide: Callable[[Timeout | None, LeaseRef, int], tuple[Timeout | None, Any]],
    ) -> list[Any]:
        out: list[Any] = []
        with self._lock:
            now = self.clock.now_ms()
            for lease in leases:
                key = (lease.kind, lease.key)
                new, answer = decide(self._current(key, now), lease, now)
                self._apply(key, new)
                out.append(answer)
        return out

    def release(
        self,
        lease: LeaseRef,
        *,
        backoff_ms: int,
        max_attempts: int,
        error: str,
        retention_ms: int,
    ) -> tuple[SettleResult, Timeout | None]:
        with self._lock:
            now = self.clock.now_ms()
            key = (lease.kind, lease.key)
            current = self._current(key, now)
            new, result = decide_release(
                current,
                generation=lease.generation,
                owner=lease.owner,
                backoff_ms=backoff_ms,
                max_attempts=max_attempts,
                error=error,
                now_ms=now,
                retention_ms=retention_ms,
            )
            self._apply(key, new)
            return result, new if new is not None else current

    def abandon(
        self, kind: str, key: str, generation: int, state: TimeoutState, reason: str
    ) -> SettleResult:
        with self._lock:
            now = self.clock.now_ms()
            new, result = decide_abandon(
                self._current((kind, key), now),
                generation=generation,
                state=state,
                reason=reason,
                now_ms=now,
            )
            self._apply((kind, key), new)
            return result

    def get(self, kind: str, key: str) -> Timeout | None:
        with self._lock:
            return self._current((kind, key), self.clock.now_ms())

    def list(
        self, *, state: TimeoutState | None = None, kind: str | None = None, limit: int = 100
    ) -> list[Timeout]:
        with self._lock:
            now = self.clock.now_ms()
            rows = [
                r
                for r in self._records.values()
                if (not r.expires_ms or r.expires_ms > now)
                and (state is None or r.state is state)
                and (kind is None or r.kind == kind)
            ]
        rows.sort(key=lambda r: (r.due_at_ms, r.kind, r.key))
        return rows[:limit]

    def purge_expired(self) -> int:
        with self._lock:
            now = self.clock.now_ms()
            expired = [k for k, r in self._records.items() if r.expires_ms and r.expires_ms <= now]
            for k in expired:
                del self._records[k]
            return len(expired)


@dataclass
class _Message:
    message_id: str
    body: bytes
    visible_at_ms: int
    lease_token: int = 0  # 0 = not leased; bumps on every lease so stale receipts are ignored
    delivery_count: int = 0


class MemoryTransport(Transport):
    """Messages in a dict plus a heap of (visible_at, seq, id); a lease is a later visible_at."""

    name = "memory"
    capabilities = TransportCapabilities(
        max_delay_ms=None,
        max_message_bytes=1024 * 1024,
        max_send_batch=1000,
        max_send_batch_bytes=None,
        max_receive_batch=1000,
        native_cancel=True,
        shared_across_processes=False,
    )

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self._messages: dict[str, _Message] = {}
        self._heap: list[tuple[int, int, str]] = []
        self._seq = itertools.count()
        self._tokens = itertools.count(1)
        self.dead_letters: list[tuple[str, bytes, str]] = []
        self._cond = threading.Condition()

    def _push(self, message: _Message) -> None:
        heapq.heappush(self._heap, (message.visible_at_ms, next(self._seq), message.message_id))

    def send(self, messages: Sequence[OutgoingMessage]) -> list[str | None]:
        with self._cond:
            for m in messages:
                # Same id again (a re-send after a lost reply) replaces, never duplicates.
                msg = _Message(m.message_id, m.body, m.due_at_ms)
                self._messages[m.message_id] = msg
                self._push(msg)
            self._cond.notify_all()
        return [None] * len(messages)

    def _take_due(self, max_messages: int, lease_ms: int) -> list[Delivery]:
        now = self.clock.now_ms()
        out: list[Delivery] = []
        while self._heap and len(out) < max_messages and self._heap[0][0] <= now:
            visible_at, _, mid = heapq.heappop(self._heap)
            msg = self._messages.get(mid)
            if msg is None or msg.visible_at_ms != visible_at:
                continue  # acked, cancelled, or moved since this heap entry was made
            msg.lease_token = next(self._tokens)
            msg.delivery_count += 1
            msg.visible_at_ms = now + lease_ms
            self._push(msg)
            out.append(Delivery(mid, msg.body, msg.lease_token, msg.delivery_count))
        return out

    def receive(
        self, max_messages: int, wait_seconds: float, lease_seconds: float
    ) -> list[Delivery]:
        deadline = time.monotonic() + max(0.0, wait_seconds)
        lease_ms = round(lease_seconds * 1000)
        with self._cond:
            while True:
                got = self._take_due(max_messages, lease_ms)
                remaining = deadline - time.monotonic()
                if got or remaining <= 0:
                    return got
                self._cond.wait(min(remaining, 0.05))

    def _leased(self, delivery: Delivery) -> _Message | None:
        msg = self._messages.get(delivery.message_id)
        if msg is None or msg.lease_token != delivery.receipt:
            return None  # a stale delivery must not touch a message leased again since
        return msg

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        with self._cond:
            for d in deliveries:
                if self._leased(d) is not None:
                    del self._messages[d.message_id]

    def retry_later(self, delivery: Delivery, delay_ms: int) -> None:
        with self._cond:
            msg = self._leased(delivery)
            if msg is not None:
                msg.lease_token = 0
                msg.visible_at_ms = self.clock.now_ms() + max(0, delay_ms)
                self._push(msg)
                self._cond.notify_all()

    def extend(self, delivery: Delivery, lease_seconds: float) -> None:
        with self._cond:
            msg = self._leased(delivery)
            if msg is not None:
                msg.visible_at_ms = self.clock.now_ms() + round(lease_seconds * 1000)
                self._push(msg)

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        with self._cond:
            if self._leased(delivery) is not None:
                msg = self._messages.pop(delivery.message_id)
                self.dead_letters.append((msg.message_id, msg.body, reason))

    def cancel(self, refs: Sequence[CancelRef]) -> None:
        with self._cond:
            for ref in refs:
                self._messages.pop(ref.message_id, None)

    def pending_count(self) -> int:
        """Messages not yet acknowledged (scheduled, due or leased)."""
        with self._cond:
            return len(self._messages)


# ------------------------------------------------------------------------------------------------
# Registration
# ------------------------------------------------------------------------------------------------

_named_lock = threading.Lock()
_named: dict[tuple[str, str], Any] = {}


def _name_of(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme != "memory":
        raise ConfigurationError(f"not a memory URL: {url!r}")
    return (parts.netloc + parts.path).strip("/")


def _shared(role: str, url: str, clock: Clock, make: Callable[[Clock], Any]) -> Any:
    name = _name_of(url)
    if not name:
        return make(clock)
    with _named_lock:
        found = _named.get((role, name))
        if found is None:
            found = _named[(role, name)] = make(clock)
        return found


def open_store(url: str, clock: Clock) -> MemoryStore:
    store: MemoryStore = _shared("store", url, clock, MemoryStore)
    return store


def open_transport(url: str, clock: Clock) -> MemoryTransport:
    transport: MemoryTransport = _shared("transport", url, clock, MemoryTransport)
    return transport


@hookimpl
def dtimeout_register_transports(register: Callable[[ProviderInfo], None]) -> None:
    register(
        ProviderInfo(
            scheme="memory",
            name="memory",
            factory=open_transport,
            description="in-process queue (one process; tests and tools)",
        )
    )


@hookimpl
def dtimeout_register_stores(register: Callable[[ProviderInfo], None]) -> None:
    register(
        ProviderInfo(
            scheme="memory",
            name="memory",
            factory=open_store,
            description="in-process records (one process; tests and tools)",
        )
    )
