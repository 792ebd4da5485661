"""Fused schedule: ``RedisStore.schedule_and_send`` writes record and message in one script when
it is handed the Redis transport of the same queue, and answers None (the app sends) otherwise.
See dtimeout/providers/redis/fusion.py."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from fused_env import FusedEnv
from hypothesis import given, settings
from hypothesis import strategies as st
from redis_proxy import DroppingProxy

from dtimeout.app import ScheduleItem, Timeouts
from dtimeout.clock import SYSTEM_CLOCK, Clock, FakeClock
from dtimeout.interfaces import ClaimRequest, OutgoingMessage, ScheduleRequest
from dtimeout.model import (
    CancelResult,
    ClaimResult,
    DueTimeout,
    OrphanPolicy,
    ScheduleResult,
    TimeoutMessage,
    TimeoutState,
    encode_payload,
)
from dtimeout.providers.memory import MemoryTransport
from dtimeout.providers.redis import keys as K
from dtimeout.providers.redis.fusion import body_head, can_fuse, message_tail
from dtimeout.providers.redis.plugin import open_store, open_transport
from dtimeout.providers.redis.settings import parse_url
from dtimeout.providers.redis.store import RedisStore, _fused_args
from dtimeout.providers.redis.transport import RedisTransport
from dtimeout.testing import TimeoutsContract
from dtimeout.testing.helpers import CountingTransport
from dtimeout.testing.servers import RedisServer

DAY = 24 * 3600 * 1000

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
    """What Python sends (head, payload JSON) and what the script adds around them (the
    generation, message_tail) make exactly the model's message."""
    payload_json = _fused_args((0, ScheduleRequest(kind, key, due, payload, 1)))[1]
    assert payload_json == encode_payload(payload)
    body = body_head(kind, key) + str(generation) + message_tail(due, payload_json)
    assert body.encode("utf-8") == TimeoutMessage(kind, key, generation, due, payload).encode()


@pytest.mark.parametrize(
    ("store_url", "transport_url", "fuses"),
    [
        ("redis://h:1/0?prefix=a", "redis://h:1/0?prefix=a", True),
        ("redis+sentinel://s:1?master=m&prefix=a", "redis+sentinel://s:1?master=m&prefix=a", True),
        ("redis://h:1/0?prefix=a", "redis://h:1/0?prefix=b", False),  # another queue
        ("redis://h:1/0", "redis://h:1/1", False),  # another database
        ("redis://h:1/0", "redis://h:2/0", False),  # another server
        ("redis://u@h:1/0", "redis://v@h:1/0", False),  # another user may see other keys
        ("redis+sentinel://s:1?master=m", "redis+sentinel://s:1?master=n", False),
        ("redis://h:1/0", "redis://h:1/0?shards=4", False),  # the shard depends on the id
        ("redis+cluster://h:1", "redis+cluster://h:1", False),  # record and queue: other slots
        ("redis://h:1/0?fuse=false", "redis://h:1/0", False),
        ("redis://h:1/0", "redis://h:1/0?fuse=false", False),
    ],
)
def test_which_pairs_fuse(store_url: str, transport_url: str, fuses: bool) -> None:
    assert can_fuse(parse_url(store_url), parse_url(transport_url)) is fuses


@pytest.fixture
def shared_url(redis_url: str) -> str:
    return f"{redis_url}?prefix=f{uuid.uuid4().hex[:10]}"


@pytest.fixture
def pair(shared_url: str) -> Iterator[tuple[RedisTransport, RedisStore, FakeClock]]:
    clock = FakeClock()
    transport, store = open_transport(shared_url, clock), open_store(shared_url, clock)
    yield transport, store, clock
    transport.close()
    store.close()


def _count_sends(monkeypatch: pytest.MonkeyPatch, transport: RedisTransport) -> list[int]:
    """Counts ``transport.send`` calls the application makes (one entry per call)."""
    calls: list[int] = []
    real = transport.send

    def send(messages: list[OutgoingMessage]) -> list[str | None]:
        calls.append(len(messages))
        return real(messages)

    monkeypatch.setattr(transport, "send", send)
    return calls


def _queued(transport: RedisTransport) -> dict[str, tuple[int, TimeoutMessage]]:
    """Every waiting message: id -> (due score, decoded body)."""
    client, shard = transport.conn.client, transport.shards[0]
    out: dict[str, tuple[int, TimeoutMessage]] = {}
    for raw_id, score in client.zrange(shard.due, 0, -1, withscores=True):
        message_id = raw_id.decode()
        body = client.hget(shard.body, message_id)
        out[message_id] = (int(score), TimeoutMessage.decode(body))
    assert client.hlen(shard.body) == len(out) + client.zcard(shard.inflight)
    return out


def _fire_all(timeouts: Timeouts, fired: list[DueTimeout], expected: int) -> None:
    consumer = timeouts.consumer(wait_seconds=0)
    try:
        for _ in range(20):
            consumer.run_once()
            if len(fired) >= expected:
                break
        consumer.run_once()  # nothing more must come
    finally:
        consumer.close()


def test_a_same_server_pair_schedules_with_one_store_call_and_no_send(
    pair: tuple[RedisTransport, RedisStore, FakeClock], monkeypatch: pytest.MonkeyPatch
) -> None:
    transport, store, clock = pair
    sends = _count_sends(monkeypatch, transport)
    fired: list[DueTimeout] = []
    with Timeouts(transport, store, clock=clock) as timeouts:
        timeouts.handler("k")(fired.append)
        timeouts.schedule("k", "warm", after=timedelta(hours=1))  # the server loads the script
        store_trips, transport_trips = (
            store.stats()["round_trips"],
            transport.stats()["round_trips"],
        )
        t = timeouts.schedule("k", "one", after=timedelta(seconds=1), payload={"n": 1})
        assert store.stats()["round_trips"] == store_trips + 1
        timeouts.schedule_many(
            ScheduleItem("k", f"many{i}", after=timedelta(seconds=1)) for i in range(5)
        )
        assert store.stats()["round_trips"] == store_trips + 2  # a batch: one more call
        assert transport.stats()["round_trips"] == transport_trips
        assert sends == []
        assert store.stats()["fused_messages"] == 7
        # record and message both there, the message exactly what the model encodes
        assert store.get("k", "one") == t
        queued = _queued(transport)
        assert sorted(queued) == sorted(
            ["k:one:1", "k:warm:1", *(f"k:many{i}:1" for i in range(5))]
        )
        assert queued["k:one:1"] == (
            t.due_at_ms,
            TimeoutMessage("k", "one", 1, t.due_at_ms, {"n": 1}),
        )
        body = transport.conn.client.hget(transport.shards[0].body, "k:one:1")
        assert body == TimeoutMessage("k", "one", 1, t.due_at_ms, {"n": 1}).encode()
        clock.advance(2)
        _fire_all(timeouts, fired, 6)
    assert sorted(d.key for d in fired) == sorted(["one", *(f"many{i}" for i in range(5))])
    assert {d.key: d.payload for d in fired}["one"] == {"n": 1}


@pytest.mark.parametrize("wrap", ["memory", "counting"])
def test_a_redis_store_with_another_transport_falls_back_to_send(
    pair: tuple[RedisTransport, RedisStore, FakeClock], wrap: str
) -> None:
    redis_transport, store, clock = pair
    transport = MemoryTransport(clock) if wrap == "memory" else CountingTransport(redis_transport)
    assert store.schedule_and_send(transport, []) is None
    with Timeouts(transport, store, clock=clock) as timeouts:
        for i in range(3):
            timeouts.schedule("k", f"o{i}", after=timedelta(seconds=1))
    assert store.stats()["fused_messages"] == 0
    if isinstance(transport, CountingTransport):
        assert transport.calls["send"] == 3  # the app sent each one, through the wrapper
        assert sorted(_queued(redis_transport)) == ["k:o0:1", "k:o1:1", "k:o2:1"]
    else:
        assert _queued(redis_transport) == {}  # a Redis queue nobody uses stays untouched


def test_fuse_false_falls_back_to_schedule_then_send(
    shared_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    url = f"{shared_url}&fuse=false"
    transport, store = open_transport(url, clock), open_store(url, clock)
    sends = _count_sends(monkeypatch, transport)
    with Timeouts(transport, store, clock=clock) as timeouts:
        timeouts.schedule("k", "o0", after=timedelta(seconds=1))  # the server loads the scripts
        trips = transport.stats()["round_trips"]
        for i in (1, 2):
            timeouts.schedule("k", f"o{i}", after=timedelta(seconds=1))
    assert store.schedule_and_send(transport, [ScheduleRequest("k", "x", 1, None, DAY)]) is None
    assert sends == [1, 1, 1]
    assert transport.stats()["round_trips"] == trips + 2
    assert sorted(_queued(transport)) == ["k:o0:1", "k:o1:1", "k:o2:1"]
    assert store.stats()["fused_messages"] == 0


def test_a_fused_advance_enqueues_the_new_generation_and_removes_the_old(
    pair: tuple[RedisTransport, RedisStore, FakeClock], monkeypatch: pytest.MonkeyPatch
) -> None:
    transport, store, clock = pair
    sends = _count_sends(monkeypatch, transport)
    # The app's best-effort native cancel of the superseded message does nothing here: the
    # schedule script alone must remove it.
    cancelled: list[str] = []
    monkeypatch.setattr(
        transport, "cancel", lambda refs: cancelled.extend(r.message_id for r in refs)
    )
    fired: list[DueTimeout] = []
    with Timeouts(transport, store, clock=clock) as timeouts:
        timeouts.handler("k")(fired.append)
        first = timeouts.schedule("k", "a", after=timedelta(seconds=60), payload="late")
        later = timeouts.schedule("k", "a", after=timedelta(seconds=90), payload="later")
        assert later.generation == 1  # extended: one write, the old message stays
        assert list(_queued(transport)) == ["k:a:1"]
        second = timeouts.schedule("k", "a", after=timedelta(seconds=5), payload="soon")
        assert second.generation == 2 and second.due_at_ms < first.due_at_ms
        queued = _queued(transport)
        assert list(queued) == ["k:a:2"]  # generation 1's message is gone, not just stale
        assert queued["k:a:2"] == (
            second.due_at_ms,
            TimeoutMessage("k", "a", 2, second.due_at_ms, "soon"),
        )
        assert sends == [] and cancelled == ["k:a:1"]
        clock.advance(6)
        _fire_all(timeouts, fired, 1)
    assert [(d.key, d.generation, d.payload) for d in fired] == [("a", 2, "soon")]


def test_large_generations_and_far_due_times_make_a_message_the_model_decodes(
    pair: tuple[RedisTransport, RedisStore, FakeClock],
) -> None:
    """The script prints the generation; cjson keeps 14 significant digits, so the highest
    generation a record holds exactly is 10**14 - 1. A record one below it is continued."""
    transport, store, clock = pair
    due = 99_999_999_999_000 - DAY  # 14 digits, the last the store accepts with a day's retention
    generation = 10**14 - 2
    record = store._key("k", "big")
    values = ["fired", generation, due, 1, "", 0, "", "", "", clock.now_ms(), due + DAY, "", ""]
    store.conn.client.hset(record, K.F_VALUES, json.dumps(values))
    store.conn.client.hset(record, K.F_PAYLOAD, "null")
    outcome = store.schedule_and_send(
        transport,
        [
            ScheduleRequest("k", "big", due, {"x": [1.5, "é"]}, DAY),
            ScheduleRequest("k", "now", clock.now_ms(), None, DAY),
        ],
    )
    assert outcome is not None
    assert [(o.result, o.sent) for o in outcome] == [(ScheduleResult.CREATED, True)] * 2
    assert outcome[0].timeout.generation == 10**14 - 1
    queued = _queued(transport)
    assert queued[f"k:big:{10**14 - 1}"] == (
        due,
        TimeoutMessage("k", "big", 10**14 - 1, due, {"x": [1.5, "é"]}),
    )
    now = clock.now_ms()
    assert queued["k:now:1"] == (now, TimeoutMessage("k", "now", 1, now, None))
    assert store.get("k", "big") == outcome[0].timeout


def test_a_refused_or_extended_fused_schedule_enqueues_nothing(
    pair: tuple[RedisTransport, RedisStore, FakeClock],
) -> None:
    transport, store, clock = pair
    due = clock.now_ms() + 1000
    created = store.schedule_and_send(transport, [ScheduleRequest("k", "r", due, None, DAY)])
    assert created is not None and created[0].sent
    again = store.schedule_and_send(transport, [ScheduleRequest("k", "r", due + 5, None, DAY)])
    assert again is not None
    assert (again[0].result, again[0].sent) == (ScheduleResult.EXTENDED, False)
    assert list(_queued(transport)) == ["k:r:1"]
    assert _queued(transport)["k:r:1"][0] == due  # the old message re-queues itself when due


def test_one_identity_twice_in_a_batch_cut_into_several_calls(
    pair: tuple[RedisTransport, RedisStore, FakeClock],
) -> None:
    """A batch goes down as several script calls (connection.py, _stream); each item keeps an
    operation id of its own, so the second schedule of an identity is never taken for a
    re-send of the first."""
    transport, store, clock = pair
    now = clock.now_ms()
    requests = [ScheduleRequest("k", f"f{i}", now + 60_000, None, DAY) for i in range(200)]
    requests[0] = ScheduleRequest("k", "same", now + 10_000, None, DAY)
    requests[64] = ScheduleRequest("k", "same", now + 5_000, None, DAY)  # 2nd call, 1st item
    commands = store.stats()["commands"]
    out = store.schedule_and_send(transport, requests)
    assert out is not None and store.stats()["commands"] - commands > 1
    assert (out[0].result, out[0].timeout.generation) == (ScheduleResult.CREATED, 1)
    assert (out[64].result, out[64].timeout.generation) == (ScheduleResult.ADVANCED, 2)
    queued = _queued(transport)
    assert len(queued) == 199 and "k:same:1" not in queued
    assert queued["k:same:2"][0] == now + 5_000


def test_a_re_sent_fused_schedule_after_a_lost_reply_leaves_one_message(
    redis_server: RedisServer,
) -> None:
    proxy = DroppingProxy(redis_server.port)
    url = f"redis://127.0.0.1:{proxy.port}/0?prefix=f{uuid.uuid4().hex[:10]}"
    transport, store = open_transport(url, SYSTEM_CLOCK), open_store(url, SYSTEM_CLOCK)
    sha = store.conn.script("store_schedule.lua").sha.encode()
    try:
        # The store's own answer: redis-py re-sends the call, which answers as the first did
        # (created and sent; not extended, which would ask the app to send again).
        due = SYSTEM_CLOCK.now_ms() + 3_600_000
        proxy.arm(sha)
        outcome = store.schedule_and_send(transport, [ScheduleRequest("k", "s", due, 7, DAY)])
        assert proxy.dropped == 1  # Redis applied the first call; its reply never came
        assert outcome is not None
        assert [(o.result, o.sent, o.timeout.generation) for o in outcome] == [
            (ScheduleResult.CREATED, True, 1)
        ]
        # The same through the application.
        with Timeouts(transport, store) as timeouts:
            proxy.arm(sha)
            t = timeouts.schedule("k", "lost", after=timedelta(hours=1), payload=[1])
            assert proxy.dropped == 2
            assert (t.state, t.generation) == (TimeoutState.PENDING, 1)
            assert store.get("k", "lost") == t
        queued = _queued(transport)
        assert queued == {
            "k:s:1": (due, TimeoutMessage("k", "s", 1, due, 7)),
            "k:lost:1": (t.due_at_ms, TimeoutMessage("k", "lost", 1, t.due_at_ms, [1])),
        }
    finally:
        transport.close()
        store.close()
        proxy.close()


def test_a_same_server_pair_cancels_and_withdraws_the_message_in_one_call(
    pair: tuple[RedisTransport, RedisStore, FakeClock], monkeypatch: pytest.MonkeyPatch
) -> None:
    transport, store, clock = pair
    native: list[int] = []
    monkeypatch.setattr(transport, "cancel", lambda refs: native.append(len(refs)))
    fired: list[DueTimeout] = []
    with Timeouts(transport, store, clock=clock) as timeouts:
        timeouts.handler("k")(fired.append)
        for key in ("a", "b", "keep"):
            timeouts.schedule("k", key, after=timedelta(seconds=1))
        timeouts.cancel("k", "warm")  # loads the script
        trips = store.stats()["round_trips"], transport.stats()["round_trips"]
        assert timeouts.cancel("k", "a", request_id="r1") is CancelResult.CANCELLED
        assert (store.stats()["round_trips"], transport.stats()["round_trips"]) == (
            trips[0] + 1,
            trips[1],
        )
        assert timeouts.cancel_many([("k", "b"), ("k", "nope")]) == [
            CancelResult.CANCELLED,
            CancelResult.NOT_FOUND,
        ]
        assert native == []  # the store's script withdrew the messages
        assert sorted(_queued(transport)) == ["k:keep:1"]
        # a re-sent cancel answers as the first did and removes nothing more
        assert timeouts.cancel("k", "a", request_id="r1") is CancelResult.CANCELLED
        assert timeouts.cancel("k", "a") is CancelResult.ALREADY_CANCELLED
        assert sorted(_queued(transport)) == ["k:keep:1"]
        # not_found left no marker: the key schedules afresh
        assert timeouts.schedule("k", "nope", after=timedelta(seconds=1)).generation == 1
        clock.advance(2)
        _fire_all(timeouts, fired, 2)
    assert sorted(d.key for d in fired) == ["keep", "nope"]


def test_a_fused_cancel_leaves_a_held_message_to_its_consumer(
    pair: tuple[RedisTransport, RedisStore, FakeClock],
) -> None:
    """A message a consumer holds is not withdrawn: the claim decides (here: dropped, since
    the record was cancelled), so nothing the consumer holds disappears under it."""
    transport, store, clock = pair
    with Timeouts(transport, store, clock=clock) as timeouts:
        timeouts.schedule("k", "held", after=timedelta(seconds=1))
        clock.advance(2)
        (delivery,) = transport.receive(10, 0, 30)
        assert timeouts.cancel("k", "held") is CancelResult.CANCELLED
        assert transport.counts() == {"due": 0, "inflight": 1}
        claim = store.claim(
            [
                ClaimRequest(
                    TimeoutMessage.decode(delivery.body),
                    "owner",
                    30_000,
                    3,
                    OrphanPolicy.FIRE,
                    DAY,
                )
            ]
        )[0]
        assert claim.result is ClaimResult.CANCELLED
        transport.ack([delivery])
        assert transport.counts() == {"due": 0, "inflight": 0}


def test_a_store_that_cannot_fuse_cancels_then_cancels_natively(
    pair: tuple[RedisTransport, RedisStore, FakeClock],
) -> None:
    transport, store, clock = pair
    counting = CountingTransport(transport)
    assert store.cancel_and_withdraw(counting, []) is None
    with Timeouts(counting, store, clock=clock) as timeouts:
        timeouts.schedule("k", "x", after=timedelta(seconds=1))
        assert timeouts.cancel("k", "x") is CancelResult.CANCELLED
    assert counting.calls["cancel"] == 1
    assert _queued(transport) == {}


def test_a_re_sent_fused_cancel_after_a_lost_reply_answers_cancelled(
    redis_server: RedisServer,
) -> None:
    proxy = DroppingProxy(redis_server.port)
    url = f"redis://127.0.0.1:{proxy.port}/0?prefix=f{uuid.uuid4().hex[:10]}"
    transport, store = open_transport(url, SYSTEM_CLOCK), open_store(url, SYSTEM_CLOCK)
    try:
        with Timeouts(transport, store) as timeouts:
            timeouts.schedule("k", "c", after=timedelta(hours=1))
            timeouts.cancel("k", "warm")
            proxy.arm(store.conn.script("store_cancel.lua").sha.encode())
            assert timeouts.cancel("k", "c") is CancelResult.CANCELLED
            assert proxy.dropped == 1  # Redis applied the first call; its reply never came
        assert _queued(transport) == {}
    finally:
        transport.close()
        store.close()
        proxy.close()


class TestFusedTimeouts(FusedEnv, TimeoutsContract):
    """The end-to-end contract with store and transport sharing one URL, through the fused
    schedule (standalone; test_redis_contract.py runs it over TLS too)."""

    @pytest.fixture
    def make_store(self, shared_url: str) -> Callable[[Clock], RedisStore]:
        return lambda clock: open_store(shared_url, clock)

    @pytest.fixture
    def make_transport(self, shared_url: str) -> Callable[[Clock], RedisTransport]:
        return lambda clock: open_transport(shared_url, clock)
