"""The timeout domain: states, records, messages and the transition rules, with no I/O.

Every store implements the same rules. ``memory`` and ``sqlite`` call the ``decide_*`` functions
below inside their lock or transaction, so the rules exist once in Python; the Redis Lua scripts
mirror them line for line and the provider contract suite holds all of them to the same answers.

Each ``decide_*`` function takes the current record (``None`` when there is none) and returns
the new record (``None`` = leave as is) plus the answer for the caller. Times are epoch ms.

State machine (DESIGN §2)::

    (none) --schedule--> PENDING --claim--> FIRING --complete--> FIRED
                           |  ^               |  |
                   cancel  |  +-- release ----+  +-- lease expired: claimable again
                           v                  attempts >= max --> DEAD
                       CANCELLED
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from dtimeout.clock import to_datetime
from dtimeout.errors import MalformedMessageError, ValidationError

MESSAGE_VERSION = 1
DEFAULT_RETENTION_MS = 7 * 24 * 3600 * 1000
DEFAULT_MAX_ATTEMPTS = 5


class TimeoutState(StrEnum):
    """Where a timeout is in its life. Kept by the store, which alone decides."""

    PENDING = "pending"
    FIRING = "firing"
    FIRED = "fired"
    CANCELLED = "cancelled"
    DEAD = "dead"

    @property
    def ended(self) -> bool:
        return self in (TimeoutState.FIRED, TimeoutState.CANCELLED, TimeoutState.DEAD)


# The allowed transitions, for documentation and for the tests that check every store against it.
TRANSITIONS: Mapping[TimeoutState | None, frozenset[TimeoutState]] = {
    None: frozenset({TimeoutState.PENDING}),
    TimeoutState.PENDING: frozenset(
        {TimeoutState.PENDING, TimeoutState.FIRING, TimeoutState.CANCELLED, TimeoutState.DEAD}
    ),
    TimeoutState.FIRING: frozenset(
        {TimeoutState.FIRING, TimeoutState.FIRED, TimeoutState.PENDING, TimeoutState.DEAD}
    ),
    TimeoutState.FIRED: frozenset({TimeoutState.PENDING}),
    TimeoutState.CANCELLED: frozenset({TimeoutState.PENDING}),
    TimeoutState.DEAD: frozenset({TimeoutState.PENDING}),
}


def transition_allowed(before: TimeoutState | None, after: TimeoutState) -> bool:
    """True when the state machine allows ``before`` → ``after``."""
    return after in TRANSITIONS[before]


class CancelResult(StrEnum):
    """What ``cancel`` answers. Exactly one of cancel and fire wins, always."""

    CANCELLED = "cancelled"
    TOO_LATE = "too_late"
    NOT_FOUND = "not_found"
    ALREADY_CANCELLED = "already_cancelled"


class ScheduleResult(StrEnum):
    """What a schedule did to the record, and so whether a message must be sent."""

    CREATED = "created"  # new generation: send a message
    ADVANCED = "advanced"  # PENDING moved earlier: new generation, send a message
    EXTENDED = "extended"  # PENDING moved later (or same time): one write, no message
    REFUSED = "refused"  # FIRING right now: nothing written

    @property
    def needs_message(self) -> bool:
        return self in (ScheduleResult.CREATED, ScheduleResult.ADVANCED)


class ClaimResult(StrEnum):
    """What a claim found. Only CLAIMED runs the handler."""

    CLAIMED = "claimed"
    NOT_DUE = "not_due"  # PENDING but due later: re-queue for the remainder
    BUSY = "busy"  # FIRING under another consumer's live lease: leave alone
    STALE = "stale"  # the message's generation is not the record's
    CANCELLED = "cancelled"
    FIRED = "fired"
    DEAD = "dead"
    MISSING = "missing"  # no record (expired, wiped) and the orphan policy is "drop"

    @property
    def drops_message(self) -> bool:
        """The message is acknowledged and dropped (counted by this reason)."""
        return self in (
            ClaimResult.STALE,
            ClaimResult.CANCELLED,
            ClaimResult.FIRED,
            ClaimResult.MISSING,
        )


class SettleResult(StrEnum):
    """Answer of complete, release and abandon."""

    COMPLETED = "completed"
    RELEASED = "released"  # back to PENDING with a backoff
    DEAD = "dead"  # attempts exhausted
    ABANDONED = "abandoned"
    LOST = "lost"  # the caller does not hold the lease (any more): do nothing


class OrphanPolicy(StrEnum):
    """What a consumer does with a message whose record is missing."""

    FIRE = "fire"
    DROP = "drop"


@dataclass(frozen=True, slots=True)
class Timeout:
    """A timeout's record as the store keeps it. ``payload`` is JSON-compatible data."""

    kind: str
    key: str
    state: TimeoutState
    generation: int
    due_at_ms: int
    payload: Any = None
    attempts: int = 0
    lease_owner: str | None = None
    lease_expires_ms: int = 0
    reason: str | None = None  # why it was cancelled / died (last handler error)
    cancel_request_id: str | None = None
    handle: str | None = None  # transport's native-cancel handle for this generation's message
    updated_ms: int = 0
    expires_ms: int = 0  # the store may forget the record after this instant
    orphan: bool = False  # fired from a message whose record had expired

    @property
    def due_at(self) -> datetime:
        return to_datetime(self.due_at_ms)

    @property
    def identity(self) -> tuple[str, str]:
        return (self.kind, self.key)

    @property
    def idempotency_key(self) -> str:
        return idempotency_key(self.kind, self.key, self.generation)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly view used by ``dtimeout status --json`` and ``list``."""
        return {
            "kind": self.kind,
            "key": self.key,
            "state": self.state.value,
            "generation": self.generation,
            "due_at": self.due_at.isoformat(timespec="milliseconds"),
            "attempts": self.attempts,
            "reason": self.reason,
            "payload": self.payload,
        }


@dataclass(frozen=True, slots=True)
class DueTimeout:
    """What a handler receives: the timeout that is firing now."""

    kind: str
    key: str
    payload: Any
    due_at: datetime
    generation: int
    attempt: int  # 1 on the first run

    @property
    def idempotency_key(self) -> str:
        """Stable across re-runs of this generation (``kind:key:generation``)."""
        return idempotency_key(self.kind, self.key, self.generation)


def idempotency_key(kind: str, key: str, generation: int) -> str:
    return f"{kind}:{key}:{generation}"


# --------------------------------------------------------------------------------------------
# Messages on the transport
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TimeoutMessage:
    """The body a transport carries. Its payload copy is used only to fire an orphan."""

    kind: str
    key: str
    generation: int
    due_at_ms: int
    payload: Any = None

    @property
    def message_id(self) -> str:
        return idempotency_key(self.kind, self.key, self.generation)

    def encode(self) -> bytes:
        return message_body(
            self.kind, self.key, self.generation, self.due_at_ms, encode_payload(self.payload)
        )

    @classmethod
    def decode(cls, body: bytes | str) -> TimeoutMessage:
        """Parse a body; raise :class:`MalformedMessageError` saying why when it is not ours."""
        try:
            data = json.loads(body.decode("utf-8") if isinstance(body, bytes) else body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise MalformedMessageError(f"body is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise MalformedMessageError("body is not a JSON object")
        if data.get("v") != MESSAGE_VERSION:
            raise MalformedMessageError(f"unsupported message version {data.get('v')!r}")
        kind, key, gen, due = (data.get(f) for f in ("kind", "key", "generation", "due_at"))
        if not isinstance(kind, str) or not kind:
            raise MalformedMessageError("field 'kind' is missing or not a string")
        if not isinstance(key, str) or not key:
            raise MalformedMessageError("field 'key' is missing or not a string")
        if not isinstance(gen, int) or isinstance(gen, bool) or gen < 1:
            raise MalformedMessageError("field 'generation' is missing or not a positive integer")
        if not isinstance(due, int) or isinstance(due, bool) or due < 0:
            raise MalformedMessageError("field 'due_at' is missing or not epoch milliseconds")
        return cls(kind, key, gen, due, data.get("payload"))


def message_body(kind: str, key: str, generation: int, due_at_ms: int, payload_json: str) -> bytes:
    """The wire form of a message around an already-encoded payload (encoded once per schedule:
    the size check and the send share it)."""
    kind_json = _encode_string(kind)
    key_json = _encode_string(key)
    return (
        f'{{"v":{MESSAGE_VERSION},"kind":{kind_json},"key":{key_json},'
        f'"generation":{generation},"due_at":{due_at_ms},"payload":{payload_json}}}'
    ).encode()


def validate_identity(kind: str, key: str) -> None:
    """Refuse identities that cannot be stored or routed."""
    for name, value in (("kind", kind), ("key", key)):
        if not isinstance(value, str) or not value:
            raise ValidationError(f"{name} must be a non-empty string")
        if len(value) > 512:
            raise ValidationError(f"{name} is longer than 512 characters")
    if ":" in kind:
        raise ValidationError(f"kind {kind!r} must not contain ':'")


# Built once: ``json.dumps`` with non-default options builds a new encoder on every call.
_PAYLOAD_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_encode_string = json.JSONEncoder(ensure_ascii=False).encode


def encode_payload(payload: Any) -> str:
    """The payload as compact JSON; refuse what JSON cannot carry."""
    try:
        return _PAYLOAD_ENCODER.encode(payload)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"payload is not JSON-serialisable: {exc}") from exc


# --------------------------------------------------------------------------------------------
# Transition rules (pure)
# --------------------------------------------------------------------------------------------


def expiry(due_at_ms: int, now_ms: int, retention_ms: int) -> int:
    """When a record may be forgotten: retention after the later of due and now.

    Measured from due (not from scheduling), so it always outlives the delay, however long.
    """
    return max(due_at_ms, now_ms) + retention_ms


def decide_schedule(
    current: Timeout | None,
    *,
    kind: str,
    key: str,
    due_at_ms: int,
    payload: Any,
    now_ms: int,
    retention_ms: int,
) -> tuple[Timeout, ScheduleResult]:
    """Schedule or reschedule ``(kind, key)``.

    PENDING and later (or equal) → one write, no message (the old message re-queues itself when
    it arrives early). PENDING and earlier → new generation and message (the old one goes stale).
    FIRING → REFUSED, nothing written (the API raises ``InvalidTransitionError``). Nothing or
    ended → a fresh generation. When the result is REFUSED the returned record is ``current``
    and must not be written.
    """
    exp = expiry(due_at_ms, now_ms, retention_ms)
    if current is not None and current.state is TimeoutState.FIRING:
        return current, ScheduleResult.REFUSED
    if current is not None and current.state is TimeoutState.PENDING:
        if due_at_ms >= current.due_at_ms:
            updated = replace(
                current,
                due_at_ms=due_at_ms,
                payload=payload,
                updated_ms=now_ms,
                expires_ms=max(current.expires_ms, exp),
            )
            return updated, ScheduleResult.EXTENDED
        advanced = replace(
            current,
            generation=current.generation + 1,
            due_at_ms=due_at_ms,
            payload=payload,
            attempts=0,
            lease_owner=None,
            lease_expires_ms=0,
            reason=None,
            handle=None,
            updated_ms=now_ms,
            expires_ms=max(current.expires_ms, exp),
        )
        return advanced, ScheduleResult.ADVANCED
    generation = (current.generation if current is not None else 0) + 1
    fresh = Timeout(
        kind=kind,
        key=key,
        state=TimeoutState.PENDING,
        generation=generation,
        due_at_ms=due_at_ms,
        payload=payload,
        updated_ms=now_ms,
        expires_ms=exp,
    )
    return fresh, ScheduleResult.CREATED


def decide_cancel(
    current: Timeout | None, *, request_id: str, now_ms: int
) -> tuple[Timeout | None, CancelResult]:
    """Cancel: PENDING → CANCELLED. A re-sent request (same id) answers ``cancelled`` again.

    A missing record answers ``not_found`` and writes nothing (no marker blocks a later
    schedule of that key).
    """
    if current is None:
        return None, CancelResult.NOT_FOUND
    if current.state is TimeoutState.PENDING:
        return (
            replace(
                current,
                state=TimeoutState.CANCELLED,
                reason="cancelled",
                cancel_request_id=request_id,
                updated_ms=now_ms,
            ),
            CancelResult.CANCELLED,
        )
    if current.state is TimeoutState.CANCELLED:
        if current.cancel_request_id == request_id:
            return None, CancelResult.CANCELLED
        return None, CancelResult.ALREADY_CANCELLED
    if current.state in (TimeoutState.FIRING, TimeoutState.FIRED):
        return None, CancelResult.TOO_LATE
    # DEAD: the handler ran and failed for good; nothing to cancel any more.
    return None, CancelResult.TOO_LATE


def decide_claim(
    current: Timeout | None,
    *,
    message: TimeoutMessage,
    owner: str,
    lease_ms: int,
    max_attempts: int,
    orphan_policy: OrphanPolicy,
    now_ms: int,
    retention_ms: int,
) -> tuple[Timeout | None, ClaimResult]:
    """Claim on delivery: decide whether this consumer runs the handler now.

    A re-sent claim with the same ``owner`` token is won again with the same attempt number.
    A FIRING record whose lease expired is claimed again with attempts+1, or dies when the
    attempts are used up (a message that keeps killing its consumer must not loop forever).
    """
    if current is None:
        if orphan_policy is OrphanPolicy.DROP:
            return None, ClaimResult.MISSING
        adopted = Timeout(
            kind=message.kind,
            key=message.key,
            state=TimeoutState.FIRING,
            generation=message.generation,
            due_at_ms=message.due_at_ms,
            payload=message.payload,
            attempts=1,
            lease_owner=owner,
            lease_expires_ms=now_ms + lease_ms,
            updated_ms=now_ms,
            expires_ms=expiry(message.due_at_ms, now_ms, retention_ms),
            orphan=True,
        )
        return adopted, ClaimResult.CLAIMED
    if current.generation != message.generation:
        return None, ClaimResult.STALE
    state = current.state
    if state is TimeoutState.CANCELLED:
        return None, ClaimResult.CANCELLED
    if state is TimeoutState.FIRED:
        return None, ClaimResult.FIRED
    if state is TimeoutState.DEAD:
        return None, ClaimResult.DEAD
    if state is TimeoutState.PENDING:
        if current.due_at_ms > now_ms:
            return None, ClaimResult.NOT_DUE
        return _lease(current, owner, lease_ms, now_ms, retention_ms), ClaimResult.CLAIMED
    # FIRING
    if current.lease_owner == owner:
        return None, ClaimResult.CLAIMED  # a re-sent claim: same answer, same attempt
    if current.lease_expires_ms > now_ms:
        return None, ClaimResult.BUSY
    if current.attempts >= max_attempts:
        dead = replace(
            current,
            state=TimeoutState.DEAD,
            reason=current.reason or "lease expired after the last attempt",
            lease_owner=None,
            lease_expires_ms=0,
            updated_ms=now_ms,
        )
        return dead, ClaimResult.DEAD
    return _lease(current, owner, lease_ms, now_ms, retention_ms), ClaimResult.CLAIMED


def _lease(current: Timeout, owner: str, lease_ms: int, now_ms: int, retention_ms: int) -> Timeout:
    return replace(
        current,
        state=TimeoutState.FIRING,
        attempts=current.attempts + 1,
        lease_owner=owner,
        lease_expires_ms=now_ms + lease_ms,
        updated_ms=now_ms,
        expires_ms=max(current.expires_ms, expiry(current.due_at_ms, now_ms, retention_ms)),
    )


def decide_renew(
    current: Timeout | None, *, generation: int, owner: str, lease_ms: int, now_ms: int
) -> tuple[Timeout | None, bool]:
    """Extend a live lease held by ``owner`` (heartbeat for long handlers)."""
    if not _holds(current, generation, owner):
        return None, False
    assert current is not None
    return replace(current, lease_expires_ms=now_ms + lease_ms, updated_ms=now_ms), True


def decide_complete(
    current: Timeout | None, *, generation: int, owner: str, now_ms: int
) -> tuple[Timeout | None, SettleResult]:
    """FIRING → FIRED, only by the lease owner. A re-sent complete answers ``completed``."""
    if (
        current is not None
        and current.generation == generation
        and current.state is TimeoutState.FIRED
        and current.lease_owner == owner
    ):
        return None, SettleResult.COMPLETED
    if not _holds(current, generation, owner):
        return None, SettleResult.LOST
    assert current is not None
    # The owner is kept on FIRED so that a re-sent complete can be recognised.
    return (
        replace(current, state=TimeoutState.FIRED, lease_expires_ms=0, updated_ms=now_ms),
        SettleResult.COMPLETED,
    )


def decide_release(
    current: Timeout | None,
    *,
    generation: int,
    owner: str,
    backoff_ms: int,
    max_attempts: int,
    error: str,
    now_ms: int,
    retention_ms: int,
) -> tuple[Timeout | None, SettleResult]:
    """The handler failed: FIRING → PENDING due after ``backoff_ms``, or → DEAD when spent."""
    if not _holds(current, generation, owner):
        return None, SettleResult.LOST
    assert current is not None
    if current.attempts >= max_attempts:
        return (
            replace(
                current,
                state=TimeoutState.DEAD,
                reason=error,
                lease_owner=None,
                lease_expires_ms=0,
                updated_ms=now_ms,
            ),
            SettleResult.DEAD,
        )
    due = now_ms + backoff_ms
    return (
        replace(
            current,
            state=TimeoutState.PENDING,
            due_at_ms=due,
            reason=error,
            lease_owner=None,
            lease_expires_ms=0,
            updated_ms=now_ms,
            expires_ms=max(current.expires_ms, expiry(due, now_ms, retention_ms)),
        ),
        SettleResult.RELEASED,
    )


def decide_abandon(
    current: Timeout | None,
    *,
    generation: int,
    state: TimeoutState,
    reason: str,
    now_ms: int,
) -> tuple[Timeout | None, SettleResult]:
    """PENDING of ``generation`` → CANCELLED (``send_failed``) or DEAD (undeliverable).

    Used when the message could not be sent, and when a delivered message can never be handled
    (no handler for its kind). Any other state or generation is left alone.
    """
    if state not in (TimeoutState.CANCELLED, TimeoutState.DEAD):
        raise ValueError("abandon moves a timeout to CANCELLED or DEAD only")
    if (
        current is None
        or current.generation != generation
        or current.state is not TimeoutState.PENDING
    ):
        return None, SettleResult.LOST
    return (
        replace(current, state=state, reason=reason, updated_ms=now_ms),
        SettleResult.ABANDONED,
    )


def decide_attach_handle(
    current: Timeout | None, *, generation: int, handle: str
) -> Timeout | None:
    """Remember the transport's native-cancel handle for the current generation's message."""
    if current is None or current.generation != generation:
        return None
    return replace(current, handle=handle)


def _holds(current: Timeout | None, generation: int, owner: str) -> bool:
    return (
        current is not None
        and current.generation == generation
        and current.state is TimeoutState.FIRING
        and current.lease_owner == owner
    )
