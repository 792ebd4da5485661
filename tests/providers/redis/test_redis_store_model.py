"""The Lua scripts answer exactly as ``dtimeout.model``: random operation sequences run against
the Redis store and the memory store (which calls the pure ``decide_*`` functions) side by side,
on one fake clock, and every answer and every record must be equal.

This is what "the scripts mirror the rules line for line" means in practice: a wrong comparison
or a forgotten field reset in a script shows up here as a minimal failing sequence.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dtimeout.clock import FakeClock
from dtimeout.interfaces import CancelRequest, ClaimRequest, LeaseRef, ScheduleRequest
from dtimeout.model import OrphanPolicy, TimeoutMessage, TimeoutState
from dtimeout.providers.memory import MemoryStore
from dtimeout.providers.redis.plugin import open_store

KIND = "k"
KEYS = ("a", "b")  # every key the operations use
OWNERS = ("o1", "o2")
REQUEST_IDS = ("r1", "r2")
# Retention long in real time: Redis expires keys on its own clock, which a fake clock outruns.
RETENTION = (60_000, 3_600_000)
# Mostly the current generation: that is where the interesting transitions are.
GEN = st.sampled_from([0, 0, 0, 0, -1])

payloads = st.one_of(
    st.none(), st.integers(-5, 5), st.dictionaries(st.sampled_from("xy"), st.integers())
)

KEY = st.sampled_from(["a", "a", "a", "b"])  # mostly one key, so transitions pile up on it
SCHEDULE = st.tuples(
    st.just("schedule"),
    KEY,
    st.sampled_from([-1_000, 0, 0, 500, 2_500]),
    payloads,
    st.sampled_from(RETENTION),
)
CLAIM = st.tuples(
    st.just("claim"),
    KEY,
    st.sampled_from([0, 0, 0, 1, -1]),
    st.sampled_from(OWNERS),
    st.integers(1, 3),
    st.sampled_from(list(OrphanPolicy)),
    st.sampled_from(RETENTION),
)
ADVANCE = st.tuples(st.just("advance"), st.sampled_from([0.5, 1, 3, 3, 61, 4_000]))
COMPLETE = st.tuples(st.just("complete"), KEY, GEN, st.sampled_from(OWNERS))
RELEASE = st.tuples(
    st.just("release"), KEY, GEN, st.sampled_from(OWNERS), st.integers(0, 3_000), st.integers(1, 3)
)

# Weighted by repetition (one_of would merge duplicates; sampled_from keeps them): schedules,
# claims and time moving are what most paths need.
operation = st.sampled_from(
    [
        SCHEDULE,
        SCHEDULE,
        CLAIM,
        CLAIM,
        CLAIM,
        ADVANCE,
        ADVANCE,
        COMPLETE,
        RELEASE,
        st.tuples(st.just("cancel"), KEY, st.sampled_from(REQUEST_IDS)),
        st.tuples(st.just("renew"), KEY, GEN, st.sampled_from(OWNERS)),
        st.tuples(
            st.just("abandon"),
            KEY,
            GEN,
            st.sampled_from([TimeoutState.CANCELLED, TimeoutState.DEAD]),
        ),
        st.tuples(st.just("attach"), KEY, GEN, st.text("hx", min_size=1, max_size=3)),
    ]
).flatmap(lambda strategy: strategy)


@pytest.fixture
def redis_base(redis_url: str) -> Iterator[str]:
    yield redis_url


def _generation(store: MemoryStore, key: str, delta: int) -> int:
    record = store.get(KIND, key)
    return max(1, (record.generation if record else 1) + delta)


def _apply(store: Any, op: tuple[Any, ...], clock: FakeClock, reference: MemoryStore) -> Any:
    """Run one operation; generations are chosen relative to the reference's record so both
    stores get the same arguments."""
    name, key = op[0], op[1] if len(op) > 1 else None
    now = clock.now_ms()
    if name == "schedule":
        _, _, offset, payload, retention = op
        return store.schedule([ScheduleRequest(KIND, key, now + offset, payload, retention)])
    if name == "cancel":
        return store.cancel([CancelRequest(KIND, key, op[2])])
    if name == "claim":
        _, _, delta, owner, max_attempts, policy, retention = op
        gen = _generation(reference, key, delta)
        message = TimeoutMessage(KIND, key, gen, now - 10, {"from": "message"})
        return store.claim([ClaimRequest(message, owner, 2_000, max_attempts, policy, retention)])
    if name == "renew":
        return store.renew([LeaseRef(KIND, key, _generation(reference, key, op[2]), op[3])], 2_000)
    if name == "complete":
        return store.complete([LeaseRef(KIND, key, _generation(reference, key, op[2]), op[3])])
    if name == "release":
        _, _, delta, owner, backoff, max_attempts = op
        lease = LeaseRef(KIND, key, _generation(reference, key, delta), owner)
        return store.release(
            lease, backoff_ms=backoff, max_attempts=max_attempts, error="boom", retention_ms=60_000
        )
    if name == "abandon":
        return store.abandon(KIND, key, _generation(reference, key, op[2]), op[3], "gone")
    if name == "attach":
        store.attach_handles([(KIND, key, _generation(reference, key, op[2]), op[3])])
        return None
    raise AssertionError(name)


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(ops=st.lists(operation, min_size=4, max_size=30))
# Paths too long for chance to find often, always checked: a lease that expires on the last
# attempt dies; a failed handler is released, re-claimed, and dies; a re-sent claim wins again.
@example(
    ops=[
        ("schedule", "a", 0, None, 60_000),
        ("claim", "a", 0, "o1", 1, OrphanPolicy.FIRE, 60_000),
        ("advance", 3),
        ("claim", "a", 0, "o2", 1, OrphanPolicy.FIRE, 60_000),
        ("claim", "a", 0, "o2", 2, OrphanPolicy.FIRE, 60_000),
    ]
)
@example(
    ops=[
        ("schedule", "a", -1_000, {"x": 1}, 60_000),
        ("claim", "a", 0, "o1", 2, OrphanPolicy.FIRE, 60_000),
        ("claim", "a", 0, "o1", 2, OrphanPolicy.FIRE, 60_000),
        ("release", "a", 0, "o1", 500, 2),
        ("advance", 1),
        ("claim", "a", 0, "o2", 2, OrphanPolicy.FIRE, 60_000),
        ("release", "a", 0, "o2", 500, 2),
        ("cancel", "a", "r1"),
    ]
)
def test_scripts_answer_like_the_model(redis_base: str, ops: list[tuple[Any, ...]]) -> None:
    clock = FakeClock()
    reference = MemoryStore(clock)
    store = open_store(f"{redis_base}?prefix=m{uuid.uuid4().hex[:12]}", clock)
    try:
        for op in ops:
            if op[0] == "advance":
                clock.advance(op[1])
                continue
            # Arguments are computed from the reference before either store changes.
            got = _apply(store, op, clock, reference)
            want = _apply(reference, op, clock, reference)
            assert got == want, op
            for key in KEYS:
                assert store.get(KIND, key) == reference.get(KIND, key), (op, key)
        assert store.list() == reference.list()
        for state in TimeoutState:
            assert store.list(state=state) == reference.list(state=state)
    finally:
        store.close()
