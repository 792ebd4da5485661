"""The pure transition rules: every reachable transition is in the table, and the invariants
that make cancel truthful hold for any sequence of operations (property-based)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dtimeout.errors import MalformedMessageError
from dtimeout.model import (
    CancelResult,
    ClaimResult,
    OrphanPolicy,
    ScheduleResult,
    SettleResult,
    Timeout,
    TimeoutMessage,
    TimeoutState,
    decide_cancel,
    decide_claim,
    decide_complete,
    decide_release,
    decide_schedule,
    expiry,
    transition_allowed,
)

RET = 1_000_000

ops = st.lists(
    st.tuples(
        st.sampled_from(["schedule", "cancel", "claim", "complete", "release", "tick"]),
        st.integers(0, 3),  # owner index / generation offset
        st.integers(-2_000, 5_000),  # due offset or time step
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_any_sequence_respects_the_state_machine_and_cancel_truth(
    sequence: list[tuple[str, int, int]],
) -> None:
    now = 10_000
    record: Timeout | None = None
    cancelled_gens: set[int] = set()
    fired_gens: list[int] = []
    for op, n, x in sequence:
        before = record.state if record else None
        new: Timeout | None = None
        if op == "tick":
            now += abs(x)
            continue
        if op == "schedule":
            new, sres = decide_schedule(
                record,
                kind="k",
                key="x",
                due_at_ms=now + x,
                payload=None,
                now_ms=now,
                retention_ms=RET,
            )
            if sres is ScheduleResult.REFUSED:
                assert before is TimeoutState.FIRING
                new = None
        elif op == "cancel":
            new, answer = decide_cancel(record, request_id=f"r{n}", now_ms=now)
            if answer is CancelResult.CANCELLED and record is not None:
                cancelled_gens.add(record.generation)
        elif op == "claim" and record is not None:
            msg = TimeoutMessage("k", "x", record.generation - (n == 3), 0)
            new, cres = decide_claim(
                record,
                message=msg,
                owner=f"o{n % 2}",
                lease_ms=1_000,
                max_attempts=3,
                orphan_policy=OrphanPolicy.FIRE,
                now_ms=now,
                retention_ms=RET,
            )
            if cres is ClaimResult.CLAIMED:
                assert record.due_at_ms <= now or record.state is TimeoutState.FIRING
        elif op == "complete" and record is not None:
            new, done = decide_complete(
                record, generation=record.generation, owner=f"o{n % 2}", now_ms=now
            )
            if done is SettleResult.COMPLETED and new is not None:
                fired_gens.append(record.generation)
        elif op == "release" and record is not None:
            new, _ = decide_release(
                record,
                generation=record.generation,
                owner=f"o{n % 2}",
                backoff_ms=100,
                max_attempts=3,
                error="e",
                now_ms=now,
                retention_ms=RET,
            )
        if new is not None:
            assert transition_allowed(before, new.state), (before, new.state, op)
            assert new.expires_ms >= new.due_at_ms  # retention always outlives the delay
            if record is not None:
                assert new.generation >= record.generation
            record = new
    # a generation whose cancel answered "cancelled" never completes
    assert not cancelled_gens & set(fired_gens)
    # at most one completion per generation
    assert len(fired_gens) == len(set(fired_gens))


def test_expiry_is_measured_from_due_not_from_scheduling() -> None:
    thirty_days = 30 * 86_400_000
    assert expiry(thirty_days, 0, RET) == thirty_days + RET
    assert expiry(0, 5_000, RET) == 5_000 + RET


def test_message_round_trip() -> None:
    m = TimeoutMessage("payment", "order-42", 3, 1_700_000_000_123, {"ü": [1, 2]})
    assert TimeoutMessage.decode(m.encode()) == m
    assert m.message_id == "payment:order-42:3"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{nope", "not JSON"),
        (b"[1]", "not a JSON object"),
        (b'{"v": 9}', "version"),
        (b'{"v": 1, "key": "k", "generation": 1, "due_at": 1}', "kind"),
        (b'{"v": 1, "kind": "p", "generation": 1, "due_at": 1}', "key"),
        (b'{"v": 1, "kind": "p", "key": "k", "generation": 0, "due_at": 1}', "generation"),
        (b'{"v": 1, "kind": "p", "key": "k", "generation": 1, "due_at": "x"}', "due_at"),
        (b"\xff\xfe", "not JSON"),
    ],
)
def test_malformed_messages_say_why(body: bytes, reason: str) -> None:
    with pytest.raises(MalformedMessageError, match=reason):
        TimeoutMessage.decode(body)


def test_cancel_answers_for_each_state() -> None:
    base: dict[str, Any] = {"kind": "k", "key": "x", "generation": 1, "due_at_ms": 0}
    answers = {
        state: decide_cancel(Timeout(state=state, **base), request_id="r", now_ms=1)[1]
        for state in TimeoutState
    }
    assert answers == {
        TimeoutState.PENDING: CancelResult.CANCELLED,
        TimeoutState.FIRING: CancelResult.TOO_LATE,
        TimeoutState.FIRED: CancelResult.TOO_LATE,
        TimeoutState.CANCELLED: CancelResult.ALREADY_CANCELLED,
        TimeoutState.DEAD: CancelResult.TOO_LATE,
    }
