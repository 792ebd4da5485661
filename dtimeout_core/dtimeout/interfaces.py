"""The two provider roles: :class:`Store` (keeps states) and :class:`Transport` (moves messages).

A provider implements one or both. Both ABCs are batch-first — every call takes and returns a
sequence in the same order — because round trips dominate cost on every real broker; a provider
whose server has no batch form loops inside its method. Each item of a store batch is its own
atomic transition (one Lua script, one SQL transaction); the batch as a whole is not atomic.

Constructors of concrete providers accept a prebuilt SDK client so tests can inject one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from dtimeout.clock import Clock
from dtimeout.model import (
    CancelResult,
    ClaimResult,
    DueTimeout,
    OrphanPolicy,
    ScheduleResult,
    SettleResult,
    Timeout,
    TimeoutMessage,
    TimeoutState,
)

# --------------------------------------------------------------------------------------------
# Store
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScheduleRequest:
    kind: str
    key: str
    due_at_ms: int
    payload: Any
    retention_ms: int
    # The payload as compact JSON when the caller already encoded it (``Timeouts`` does, to
    # validate it): a store that writes JSON can reuse the text instead of encoding it again.
    payload_json: str | None = None


@dataclass(frozen=True, slots=True)
class ScheduleOutcome:
    result: ScheduleResult
    timeout: Timeout  # the record as written
    previous_handle: str | None = None  # ADVANCED: the superseded message's native handle
    sent: bool = False  # the message this result needs was enqueued by the same atomic step


@dataclass(frozen=True, slots=True)
class CancelRequest:
    kind: str
    key: str
    request_id: str  # the same id on a re-send gets the first answer


@dataclass(frozen=True, slots=True)
class CancelOutcome:
    result: CancelResult
    generation: int | None = None  # of the record (when there is one)
    handle: str | None = None  # native-cancel handle of the cancelled message, if known


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    message: TimeoutMessage
    owner: str  # lease token; the same token on a re-send wins the same claim again
    lease_ms: int
    max_attempts: int
    orphan_policy: OrphanPolicy
    retention_ms: int


@dataclass(frozen=True, slots=True)
class ClaimOutcome:
    result: ClaimResult
    timeout: Timeout | None = None  # the record after the claim (CLAIMED, NOT_DUE, BUSY, …)


@dataclass(frozen=True, slots=True)
class LeaseRef:
    """Names a lease: the generation a consumer claimed and its owner token."""

    kind: str
    key: str
    generation: int
    owner: str


@dataclass(frozen=True, slots=True)
class ReceiveClaimRequest:
    """What ``Store.receive_and_claim`` receives and claims: the transport's receive arguments
    and the claim's (see :class:`ClaimRequest`), for a whole batch."""

    max_messages: int
    wait_seconds: float
    lease_ms: int  # of the message and of the record alike
    call_id: str  # the same id on a re-send answers as the first call did
    owner_prefix: str  # the claim of the call's i-th message is owned by f"{owner_prefix}{i}"
    max_attempts: int
    orphan_policy: OrphanPolicy
    retention_ms: int
    kinds: frozenset[str]  # kinds with a handler; messages of others come back unclaimed


class ClaimedDelivery(NamedTuple):
    """A message received and claimed in one step: the handler may run now. (A named tuple:
    one is built per fired timeout, and a frozen dataclass costs three times as much.)"""

    delivery: Delivery  # its ``body`` may be empty: the record, not the message, is what fires
    lease: LeaseRef
    due: DueTimeout
    orphan: bool = False


@dataclass(slots=True)
class ReceivedClaims:
    """The answer of ``Store.receive_and_claim``; empty lists are the normal "nothing due"."""

    claimed: list[ClaimedDelivery] = field(default_factory=list)
    # received and leased, not claimed: for the consumer's usual path (decode, claim, route)
    deliveries: list[Delivery] = field(default_factory=list)
    # (message id, what the claim found, reason) of messages the store already settled:
    # dropped (acked), re-queued (NOT_DUE, BUSY) or dead-lettered (DEAD, with the reason)
    settled: list[tuple[str, ClaimResult, str]] = field(default_factory=list)

    @property
    def received(self) -> int:
        return len(self.claimed) + len(self.deliveries) + len(self.settled)


class Store(ABC):
    """Keeps each timeout's record and applies the transitions of ``dtimeout.model`` atomically.

    ``clock`` supplies "now". A store whose server has a clock of its own (Redis ``TIME``) uses
    the server's time when ``clock`` is real, and the given clock when it is fake (tests).
    """

    name: str = "store"

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    @abstractmethod
    def schedule(self, requests: Sequence[ScheduleRequest]) -> list[ScheduleOutcome]:
        """Apply ``decide_schedule`` to each; a FIRING item answers REFUSED and writes nothing."""

    def schedule_and_send(
        self, transport: Transport, requests: Sequence[ScheduleRequest]
    ) -> list[ScheduleOutcome] | None:
        """Optional fast path: ``schedule`` and enqueue each needed message on ``transport`` in
        one atomic step, answering with ``sent=True`` on those outcomes.

        Only a store that shares a server with ``transport`` can do this (a Redis store and a
        Redis transport on one database and prefix: one script writes the record and the
        message, so neither exists without the other, in one round trip). Return None when this
        store cannot do it for this transport; the caller then calls :meth:`schedule` and
        ``transport.send`` as usual.
        """
        return None

    def receive_and_claim(
        self, transport: Transport, request: ReceiveClaimRequest
    ) -> ReceivedClaims | None:
        """Optional fast path: ``transport.receive`` and ``claim`` of what it received, in one
        step. Messages whose claim drops, re-queues or dead-letters them are settled on the
        transport by the same step (``settled``); what the store cannot decide alone (a body it
        does not recognise byte for byte, a kind without handler, an orphan to fire) comes back
        leased and unclaimed in ``deliveries``.

        Only a store that shares a server with ``transport`` can do this (see
        :meth:`schedule_and_send`). Return None when this store cannot do it for this
        transport; the caller then receives and claims as usual."""
        return None

    def complete_and_ack(
        self, transport: Transport, items: Sequence[tuple[LeaseRef, Delivery]]
    ) -> list[SettleResult] | None:
        """Optional fast path: ``complete`` each lease and ``transport.ack`` the delivery of each
        one COMPLETED, in one step. None when this store cannot do it for this transport."""
        return None

    @abstractmethod
    def attach_handles(self, items: Sequence[tuple[str, str, int, str]]) -> None:
        """Remember ``(kind, key, generation, handle)`` native-cancel handles (best effort)."""

    @abstractmethod
    def cancel(self, requests: Sequence[CancelRequest]) -> list[CancelOutcome]:
        """Apply ``decide_cancel`` to each."""

    def cancel_and_withdraw(
        self, transport: Transport, requests: Sequence[CancelRequest]
    ) -> list[CancelOutcome] | None:
        """Optional fast path: :meth:`cancel`, and remove the waiting message of each timeout
        answered CANCELLED from ``transport`` in the same atomic step (what
        ``transport.cancel`` would do natively).

        Like :meth:`schedule_and_send`, only for a store that shares a server with
        ``transport``. Return None when this store cannot do it for this transport; the caller
        then calls :meth:`cancel` and the transport's native cancel as usual.
        """
        return None

    @abstractmethod
    def claim(self, requests: Sequence[ClaimRequest]) -> list[ClaimOutcome]:
        """Apply ``decide_claim`` to each."""

    @abstractmethod
    def renew(self, leases: Sequence[LeaseRef], lease_ms: int) -> list[bool]:
        """Apply ``decide_renew`` to each: True while the caller still holds the lease."""

    @abstractmethod
    def complete(self, leases: Sequence[LeaseRef]) -> list[SettleResult]:
        """Apply ``decide_complete`` to each."""

    @abstractmethod
    def release(
        self,
        lease: LeaseRef,
        *,
        backoff_ms: int,
        max_attempts: int,
        error: str,
        retention_ms: int,
    ) -> tuple[SettleResult, Timeout | None]:
        """Apply ``decide_release``; returns the answer and the record after it."""

    @abstractmethod
    def abandon(
        self, kind: str, key: str, generation: int, state: TimeoutState, reason: str
    ) -> SettleResult:
        """Apply ``decide_abandon``."""

    @abstractmethod
    def get(self, kind: str, key: str) -> Timeout | None:
        """The record, or None when there is none (never scheduled, or expired)."""

    @abstractmethod
    def list(
        self, *, state: TimeoutState | None = None, kind: str | None = None, limit: int = 100
    ) -> list[Timeout]:
        """Records, optionally filtered, ordered by due time, at most ``limit``."""

    def purge_expired(self) -> int:
        """Forget records past their ``expires_ms``; returns how many. Stores with native
        expiry (Redis) return 0."""
        return 0

    def ping(self) -> None:  # noqa: B027 - optional hook with a sensible default
        """Raise a ``ProviderError`` when the store cannot be reached (``dtimeout check``)."""

    def close(self) -> None:  # noqa: B027
        """Release connections."""

    def stats(self) -> dict[str, int]:
        """Counters worth reporting (round trips made…)."""
        return {}


# --------------------------------------------------------------------------------------------
# Transport
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TransportCapabilities:
    """What a transport can do; dtimeout validates against these before talking to a broker."""

    max_delay_ms: int | None  # longest native delay; longer ones are bridged by re-enqueueing
    max_message_bytes: int
    max_send_batch: int  # messages per send call
    max_send_batch_bytes: int | None  # bytes per send call, when the broker limits it
    max_receive_batch: int
    native_cancel: bool  # ``cancel`` really removes a scheduled message
    shared_across_processes: bool = True  # False only for ``memory://``


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    message_id: str  # ``kind:key:generation``: stable, usable for broker de-duplication
    body: bytes
    due_at_ms: int


@dataclass(slots=True)
class Delivery:
    """A received message, leased to this consumer until acked, retried or dead-lettered."""

    message_id: str
    body: bytes
    receipt: Any  # transport-private: receipt handle, lock token, lease token…
    delivery_count: int = 1
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CancelRef:
    message_id: str
    handle: str | None  # from ``send`` (Azure sequence number); None when ids suffice


class Transport(ABC):
    """Moves delayed messages. Never hands out a message before its due time, and never holds
    a not-yet-due message in memory waiting for it (the classic source of duplicate fires)."""

    name: str = "transport"
    capabilities: TransportCapabilities

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    @abstractmethod
    def send(self, messages: Sequence[OutgoingMessage]) -> list[str | None]:
        """Enqueue each to become visible at its ``due_at_ms``; returns native handles (or None)
        in the same order. Raises ``TransportError`` when any message was not accepted; the
        error's ``failed`` attribute, when present, lists the ids that failed."""

    @abstractmethod
    def receive(
        self, max_messages: int, wait_seconds: float, lease_seconds: float
    ) -> list[Delivery]:
        """Up to ``max_messages`` due messages, each leased (invisible to others) for
        ``lease_seconds``; waits up to ``wait_seconds`` when none is due. An empty list is the
        normal "nothing due" answer.

        "Due" is judged by ``self.clock`` (or the server's clock when ours is real); the wait is
        real time (never ``clock.sleep``: on a fake clock that would move time forward)."""

    @abstractmethod
    def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Remove delivered messages for good."""

    @abstractmethod
    def retry_later(self, delivery: Delivery, delay_ms: int) -> None:
        """Make the message visible again after ``delay_ms`` (longer than the native maximum is
        bridged) without counting it as a failed delivery where the broker allows."""

    @abstractmethod
    def extend(self, delivery: Delivery, lease_seconds: float) -> None:
        """Keep a delivery leased for another ``lease_seconds`` (a long handler's heartbeat)."""

    @abstractmethod
    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move the message where operators look for dead ones, with the reason."""

    def cancel(self, refs: Sequence[CancelRef]) -> None:  # noqa: B027
        """Remove scheduled messages natively, best effort (only when
        ``capabilities.native_cancel``). The store has already decided; this saves a delivery."""

    def ping(self) -> None:  # noqa: B027
        """Raise a ``ProviderError`` when the transport cannot be reached (``dtimeout check``)."""

    def close(self) -> None:  # noqa: B027
        """Release connections."""

    def stats(self) -> dict[str, int]:
        """Counters worth reporting (requests made, bridging hops…)."""
        return {}


# --------------------------------------------------------------------------------------------
# Registration (what plugins hand to ``register``)
# --------------------------------------------------------------------------------------------


TransportFactory = Callable[[str, Clock], Transport]
StoreFactory = Callable[[str, Clock], Store]


@dataclass(frozen=True, slots=True)
class ProviderInfo:
    """One URL scheme a plugin serves in one role.

    ``factory(url, clock)`` builds the live object; it is called only when the scheme is used,
    so SDK imports belong inside it. ``transient_errors`` lists exception types of the provider's
    SDK that the consumer's retry policy treats as transient (the provider's own
    ``ProviderError(transient=True)`` always are).
    """

    scheme: str
    name: str
    factory: Callable[[str, Clock], Any]
    description: str = ""
    plugin: str = ""  # filled by the registry: the plugin that registered it
    distribution: str | None = None  # filled by the registry
    version: str | None = None  # filled by the registry
    transient_errors: tuple[type[BaseException], ...] = ()
