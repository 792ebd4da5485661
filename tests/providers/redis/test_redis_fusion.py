"""Fusion: a store and a transport of one process on one Redis schedule and enqueue in one
script (see dtimeout/providers/redis/fusion.py) — and only when the app really pairs them."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dtimeout.app import ScheduleItem, Timeouts
from dtimeout.clock import Clock, FakeClock
from dtimeout.interfaces import ScheduleRequest
from dtimeout.model import DueTimeout, TimeoutMessage, encode_payload
from dtimeout.providers.memory import MemoryTransport
from dtimeout.providers.redis.plugin import open_store, open_transport
from dtimeout.providers.redis.store import RedisStore, _body_parts
from dtimeout.providers.redis.transport import RedisTransport
from dtimeout.testing import TimeoutsContract

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=200, deadline=None)
@given(
    kind=st.text(min_size=1).filter(lambda k: ":" not in k),
    key=st.text(min_size=1),
    due=st.integers(0, 10**15),
    payload=json_values,
    generation=st.integers(1, 10**6),
)
def test_the_script_builds_the_very_bytes_the_model_encodes(
    kind: str, key: str, due: int, payload: Any, generation: int
) -> None:
    head, tail, payload_json = _body_parts(ScheduleRequest(kind, key, due, payload, 1))
    expected = TimeoutMessage(kind, key, generation, due, payload).encode()
    assert (head + str(generation) + tail).encode("utf-8") == expected
    assert payload_json == encode_payload(payload)


def _pair(url: str, clock: Clock) -> tuple[RedisTransport, RedisStore]:
    return open_transport(url, clock), open_store(url, clock)


def test_paired_providers_fuse_after_the_first_send_and_still_fire(redis_url: str) -> None:
    clock = FakeClock()
    url = f"{redis_url}?prefix=f{uuid.uuid4().hex[:10]}"
    transport, store = _pair(url, clock)
    fired: list[str] = []
    with Timeouts(transport, store, clock=clock) as timeouts:

        @timeouts.handler("k")
        def handle(t: DueTimeout) -> None:
            fired.append(t.key)

        timeouts.schedule("k", "first", after=timedelta(seconds=1))
        assert store.partner is transport and transport.stats()["fused_sends"] == 0
        before = transport.stats()["round_trips"]
        timeouts.schedule("k", "second", after=timedelta(seconds=1))
        timeouts.schedule_many(
            ScheduleItem("k", f"many{i}", after=timedelta(seconds=1)) for i in range(5)
        )
        assert transport.stats()["round_trips"] == before  # sent by the schedule script
        assert transport.stats()["fused_sends"] == 6
        assert transport.counts() == {"due": 7, "inflight": 0}
        clock.advance(2)
        consumer = timeouts.consumer(wait_seconds=0)
        for _ in range(20):
            consumer.run_once()
            if len(fired) == 7:
                break
        consumer.close()
        assert sorted(fired) == sorted(["first", "second", *(f"many{i}" for i in range(5))])


def test_a_redis_store_with_another_transport_never_writes_a_redis_queue(redis_url: str) -> None:
    clock = FakeClock()
    url = f"{redis_url}?prefix=f{uuid.uuid4().hex[:10]}"
    redis_transport, store = _pair(url, clock)  # a Redis transport exists, but is not used
    with Timeouts(MemoryTransport(clock), store, clock=clock) as timeouts:
        for i in range(3):
            timeouts.schedule("k", f"o{i}", after=timedelta(seconds=1))
    assert store.partner is None
    assert redis_transport.counts() == {"due": 0, "inflight": 0}
    redis_transport.close()


def test_fuse_false_keeps_two_round_trips(redis_url: str) -> None:
    clock = FakeClock()
    url = f"{redis_url}?prefix=f{uuid.uuid4().hex[:10]}&fuse=false"
    transport, store = _pair(url, clock)
    with Timeouts(transport, store, clock=clock) as timeouts:
        for i in range(3):
            timeouts.schedule("k", f"o{i}", after=timedelta(seconds=1))
    assert store.partner is None and transport.stats()["fused_sends"] == 0
    assert transport.stats()["round_trips"] == 3


class TestFusedTimeouts(TimeoutsContract):
    """The end-to-end contract with store and transport sharing one prefix (fused)."""

    @pytest.fixture
    def shared_url(self, redis_url: str) -> str:
        return f"{redis_url}?prefix=f{uuid.uuid4().hex[:10]}"

    @pytest.fixture
    def make_store(self, shared_url: str) -> Callable[[Clock], RedisStore]:
        return lambda clock: open_store(shared_url, clock)

    @pytest.fixture
    def make_transport(self, shared_url: str) -> Callable[[Clock], RedisTransport]:
        return lambda clock: open_transport(shared_url, clock)
