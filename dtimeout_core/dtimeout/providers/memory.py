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
from typing import Any, TypeVar
from urllib.parse import urlsplit

from dtimeout.clock import Clock
from dtimeout.errors import ConfigurationError
from dtimeout.hookspecs import hookimpl
from dtimeout.interfaces import (
    CancelRef,
    Delivery,
    OutgoingMessage,
    ProviderInfo,
    Transport,
    TransportCapabilities,
)
from dtimeout.model import Timeout, TimeoutState
from dtimeout.providers.records import RecordStore, RecordTransaction

T = TypeVar("T")
_Key = tuple[str, str]


class _MemoryTransaction:
    """The dict seen under the store's lock; expired records read as absent."""

    def __init__(self, records: dict[_Key, Timeout], now_ms: int) -> None:
        self.records = records
        self.now_ms = now_ms

    def get(self, kind: str, key: str) -> Timeout | None:
        record = self.records.get((kind, key))
        if record is not None and record.expires_ms and record.expires_ms <= self.now_ms:
            del self.records[(kind, key)]
            return None
        return record

    def put(self, record: Timeout | None) -> None:
        if record is not None:
            self.records[record.identity] = record


class MemoryStore(RecordStore):
    """Records in a dict; one lock makes each call one transaction."""

    name = "memory"

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self._records: dict[_Key, Timeout] = {}
        self._lock = threading.Lock()

    def transaction(
        self, op: str, idents: Sequence[tuple[str, str]], work: Callable[[RecordTransaction], T]
    ) -> T:
        with self._lock:
            return work(_MemoryTransaction(self._records, self.clock.now_ms()))

    def get(self, kind: str, key: str) -> Timeout | None:
        return self.transaction("get", [(kind, key)], lambda tx: tx.get(kind, key))

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
