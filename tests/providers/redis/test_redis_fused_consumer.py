"""Fused consumer steps: ``RedisStore.receive_and_claim`` (store_receive.lua) and
``complete_and_ack`` (store_complete.lua, fused), and the consumer that uses them.

The main check is a comparison: every claim outcome is set up twice, on a queue whose store
fuses and on one that does not (``fuse=false``), a consumer runs one cycle and drains on each,
and the records, the queue (due, in flight, bodies, delivery counts, leases, dead letters), the
handler calls and the consumer's stats must come out the same, up to lease tokens and owners.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from redis_proxy import DroppingProxy

from dtimeout.app import Timeouts
from dtimeout.clock import SYSTEM_CLOCK, FakeClock
from dtimeout.errors import TransientStoreError
from dtimeout.interfaces import (
    CancelRequest,
    ClaimRequest,
    LeaseRef,
    OutgoingMessage,
    ReceiveClaimRequest,
    ScheduleRequest,
)
from dtimeout.model import (
    ClaimResult,
    DueTimeout,
    OrphanPolicy,
    SettleResult,
    TimeoutMessage,
    TimeoutState,
)
from dtimeout.providers.memory import MemoryTransport
from dtimeout.providers.redis import keys as K
from dtimeout.providers.redis.plugin import open_store, open_transport
from dtimeout.retries import RetryPolicy
from dtimeout.testing.servers import RedisServer

DAY = 24 * 3600 * 1000
KIND = "k"


class Side:
    """One queue (store + transport on one prefix), fused or not, on its own fake clock."""

    def __init__(self, base_url: str, *, fused: bool) -> None:
        self.prefix = f"x{uuid.uuid4().hex[:10]}"
        url = f"{base_url}?prefix={self.prefix}" + ("" if fused else "&fuse=false")
        self.clock = FakeClock()
        self.transport = open_transport(url, self.clock)
        self.store = open_store(url, self.clock)
        self.fired: list[DueTimeout] = []

    def timeouts(self, **kw: Any) -> Timeouts:
        t = Timeouts(self.transport, self.store, clock=self.clock, lease=timedelta(seconds=5), **kw)
        t.handler(KIND)(self.fired.append)
        return t

    def claim(self, key: str, owner: str, lease_ms: int = 5000, generation: int = 1) -> None:
        record = self.store.get(KIND, key)
        assert record is not None
        message = TimeoutMessage(KIND, key, generation, record.due_at_ms)
        request = ClaimRequest(message, owner, lease_ms, 5, OrphanPolicy.FIRE, DAY)
        assert self.store.claim([request])[0].result is ClaimResult.CLAIMED

    def send_raw(self, message_id: str, body: bytes, after_ms: int = 0) -> None:
        self.transport.send([OutgoingMessage(message_id, body, self.clock.now_ms() + after_ms)])

    def replace_body(self, key: str, tail: bytes) -> None:
        """Overwrite the queued body of KIND KEY generation 1: our head up to the payload (due
        as the record has it), then ``tail`` in place of the payload and closing brace."""
        record = self.store.get(KIND, key)
        assert record is not None
        head = f'{{"v":1,"kind":"{KIND}","key":"{key}","generation":1,"due_at":{record.due_at_ms},'
        body = head.encode() + b'"payload":' + tail
        self.store.conn.client.hset(self.transport.shards[0].body, f"{KIND}:{key}:1", body)

    def state(self) -> dict[str, Any]:
        """Records and queue, with what differs by construction (tokens, owners, operation
        ids, the fused path's memo) masked."""
        client = self.store.conn.client
        records: dict[str, Any] = {}
        for name in client.scan_iter(match=K.record_pattern(self.prefix)):
            values = json.loads(client.hget(name, K.F_VALUES))
            values[4] = "OWNER" if values[4] else ""
            values[12] = values[12].partition(":")[2]  # OPID:ANSWER -> ANSWER
            identity = K.identity_of(self.prefix, name.decode())
            records[str(identity)] = (values, client.hget(name, K.F_PAYLOAD))
        shard = self.transport.shards[0]

        def zset(key: str) -> dict[str, float]:
            return {m.decode(): s for m, s in client.zrange(key, 0, -1, withscores=True)}

        def hash_(key: str) -> dict[str, bytes]:
            return {k.decode(): v for k, v in client.hgetall(key).items()}

        return {
            "records": records,
            "due": zset(shard.due),
            "inflight": zset(shard.inflight),
            "bodies": hash_(shard.body),
            "counts": hash_(shard.count),
            "leases": sorted(hash_(shard.lease)),
            "dead": {
                k: json.loads(v.decode("utf-8", "surrogateescape"))
                for k, v in hash_(shard.dead).items()
            },
        }

    def close(self) -> None:
        self.transport.close()
        self.store.close()


# -- the scenarios: each leaves one message due (or about to be) in a given record state --------


def _claimed(side: Side, t: Timeouts) -> None:
    t.schedule(KIND, "a", after=timedelta(seconds=1), payload={"n": [1, "é"]})
    side.clock.advance(2)


def _not_due(side: Side, t: Timeouts) -> None:
    t.schedule(KIND, "a", after=timedelta(seconds=1))
    t.schedule(KIND, "a", after=timedelta(seconds=60))  # extended: the old message stays
    side.clock.advance(2)


def _busy(side: Side, t: Timeouts) -> None:
    t.schedule(KIND, "a", after=timedelta(seconds=1))
    side.clock.advance(2)
    side.claim("a", "someone-else")  # FIRING under a live lease; the message still queued


def _stale(side: Side, t: Timeouts) -> None:
    t.schedule(KIND, "a", after=timedelta(seconds=2))
    due = side.clock.now_ms() + 1000
    side.store.schedule(
        [ScheduleRequest(kind=KIND, key="a", due_at_ms=due, payload=None, retention_ms=DAY)]
    )  # gen 2, no message for it
    side.clock.advance(3)


def _cancelled(side: Side, t: Timeouts) -> None:
    t.schedule(KIND, "a", after=timedelta(seconds=1))
    side.store.cancel([CancelRequest(KIND, "a", "r1")])  # the message stays (no native cancel)
    side.clock.advance(2)


def _fired(side: Side, t: Timeouts) -> None:
    t.schedule(KIND, "a", after=timedelta(seconds=1))
    side.clock.advance(2)
    side.claim("a", "earlier")
    assert side.store.complete([LeaseRef(KIND, "a", 1, "earlier")]) == [SettleResult.COMPLETED]


def _dead(side: Side, t: Timeouts) -> None:
    t.schedule(KIND, "a", after=timedelta(seconds=1))
    side.store.abandon(KIND, "a", 1, TimeoutState.DEAD, "given up")
    side.clock.advance(2)


def _last_attempt_expired(side: Side, t: Timeouts) -> None:
    t.schedule(KIND, "a", after=timedelta(seconds=1))
    side.clock.advance(2)
    side.claim("a", "crashed", lease_ms=1000)  # attempt 1 of 1, never settled
    side.clock.advance(2)


def _orphan(side: Side, t: Timeouts) -> None:
    body = TimeoutMessage(KIND, "gone", 3, side.clock.now_ms(), {"p": 1.5}).encode()
    side.send_raw(f"{KIND}:gone:3", body)


def _malformed(side: Side, t: Timeouts) -> None:
    side.send_raw(f"{KIND}:bad:1", b'{"v":1,"kind":"k","key":"bad","generation":1,"due_at":x}')


def _payload_malformed(side: Side, t: Timeouts) -> None:
    """A record that claims, but a body that is ours up to the payload and no JSON after it."""
    t.schedule(KIND, "a", after=timedelta(seconds=1), payload={"n": 1})
    side.replace_body("a", b"{nope}}")
    side.clock.advance(2)


def _stale_payload_malformed(side: Side, t: Timeouts) -> None:
    """A stale message whose body is ours up to a broken payload: dead either way."""
    _stale(side, t)
    side.replace_body("a", b"[}")  # closed like ours, so only the payload check stops it


def _payload_differs(side: Side, t: Timeouts) -> None:
    """A body whose payload is JSON but not the record's: the usual path decides."""
    t.schedule(KIND, "a", after=timedelta(seconds=1), payload={"n": 1})
    side.replace_body("a", b'{"n":2}}')
    side.clock.advance(2)


def _not_ours(side: Side, t: Timeouts) -> None:
    side.send_raw("whatever", b"\xff\xfenot json")


def _unknown_kind(side: Side, t: Timeouts) -> None:
    t.schedule("nobody", "a", after=timedelta(seconds=1))
    side.clock.advance(2)


def _odd_identity(side: Side, t: Timeouts) -> None:
    t.schedule(KIND, 'q"uote\\d\nnl:é', after=timedelta(seconds=1), payload="odd")
    side.clock.advance(2)


def _redelivered(side: Side, t: Timeouts) -> None:
    t.schedule(KIND, "a", after=timedelta(seconds=1))
    side.clock.advance(2)
    assert len(side.transport.receive(10, 0, 1.0)) == 1  # a consumer that vanished
    side.clock.advance(2)


def _redelivered_not_due(side: Side, t: Timeouts) -> None:
    t.schedule(KIND, "a", after=timedelta(seconds=1))
    side.clock.advance(2)
    assert len(side.transport.receive(10, 0, 1.0)) == 1
    t.schedule(KIND, "a", after=timedelta(seconds=60))  # extended while its message was out
    side.clock.advance(2)


def _mixed(side: Side, t: Timeouts) -> None:
    """Many outcomes in one batch, in one script call."""
    for i in range(5):
        t.schedule(KIND, f"m{i}", after=timedelta(seconds=1), payload=i)
    t.schedule(KIND, "later", after=timedelta(seconds=1))
    t.schedule(KIND, "later", after=timedelta(seconds=90))
    t.schedule(KIND, "gone", after=timedelta(seconds=1))
    side.store.cancel([CancelRequest(KIND, "gone", "r")])
    t.schedule("nobody", "x", after=timedelta(seconds=1))
    side.clock.advance(2)
    _orphan(side, t)


SCENARIOS: dict[str, tuple[Callable[[Side, Timeouts], None], dict[str, Any]]] = {
    "claimed": (_claimed, {}),
    "not_due": (_not_due, {}),
    "busy": (_busy, {}),
    "stale": (_stale, {}),
    "cancelled": (_cancelled, {}),
    "fired": (_fired, {}),
    "dead": (_dead, {}),
    "last_attempt_expired": (_last_attempt_expired, {"max_attempts": 1}),
    "missing": (_orphan, {"orphans": "drop"}),
    "orphan_fires": (_orphan, {"orphans": "fire"}),
    "malformed": (_malformed, {}),
    "not_ours": (_not_ours, {}),
    "payload_malformed": (_payload_malformed, {}),
    "payload_differs": (_payload_differs, {}),
    "stale_payload_malformed": (_stale_payload_malformed, {}),
    "unknown_kind": (_unknown_kind, {}),
    "odd_identity": (_odd_identity, {}),
    "redelivered": (_redelivered, {}),
    "redelivered_not_due": (_redelivered_not_due, {}),
    "mixed": (_mixed, {}),
}


@pytest.fixture
def sides(redis_url: str) -> Iterator[tuple[Side, Side]]:
    fused, plain = Side(redis_url, fused=True), Side(redis_url, fused=False)
    yield fused, plain
    fused.close()
    plain.close()


def _one_cycle(side: Side, scenario: str) -> tuple[dict[str, Any], list[Any]]:
    setup, options = SCENARIOS[scenario]
    timeouts = side.timeouts(**options)
    setup(side, timeouts)
    consumer = timeouts.consumer(concurrency=2, wait_seconds=0.0)
    consumer.run_once()
    consumer.close()  # drains: finished handlers are settled
    fired = [(d.kind, d.key, d.payload, d.generation, d.attempt) for d in side.fired]
    return consumer.stats.as_dict(), fired


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_fused_consumer_steps_leave_what_the_usual_path_leaves(
    sides: tuple[Side, Side], scenario: str
) -> None:
    fused, plain = sides
    fused_claims = fused.store.stats()["fused_claims"]
    fused_result = _one_cycle(fused, scenario)
    plain_result = _one_cycle(plain, scenario)
    assert plain.store.stats()["fused_claims"] == 0
    assert fused_result == plain_result
    assert fused.state() == plain.state()
    if scenario in ("claimed", "redelivered", "mixed"):
        assert fused.store.stats()["fused_claims"] > fused_claims  # the fused path was taken


def _request(call: str, n: int = 100, **kw: Any) -> ReceiveClaimRequest:
    values: dict[str, Any] = {
        "max_messages": n,
        "wait_seconds": 0.0,
        "lease_ms": 5000,
        "call_id": call,
        "owner_prefix": "me:",
        "max_attempts": 5,
        "orphan_policy": OrphanPolicy.FIRE,
        "retention_ms": DAY,
        "kinds": frozenset([KIND]),
    }
    values.update(kw)
    return ReceiveClaimRequest(**values)


def test_a_store_that_cannot_fuse_answers_none(sides: tuple[Side, Side]) -> None:
    fused, plain = sides
    assert plain.store.receive_and_claim(plain.transport, _request("c")) is None
    assert plain.store.complete_and_ack(plain.transport, []) is None
    other = MemoryTransport(fused.clock)
    assert fused.store.receive_and_claim(other, _request("c")) is None
    assert fused.store.complete_and_ack(other, []) is None
    # another queue of the same server does not fuse either
    assert fused.store.receive_and_claim(plain.transport, _request("c")) is None


def test_a_receive_with_the_same_call_id_answers_again_and_leases_nothing_more(
    sides: tuple[Side, Side],
) -> None:
    side, _ = sides
    t = side.timeouts()
    for i in range(3):
        t.schedule(KIND, f"r{i}", after=timedelta(seconds=1))
    side.clock.advance(2)
    first = side.store.receive_and_claim(side.transport, _request("same", n=2))
    assert first is not None and len(first.claimed) == 2
    again = side.store.receive_and_claim(side.transport, _request("same", n=2))
    assert again == first  # same messages, same owners, same attempt
    assert side.transport.counts() == {"due": 1, "inflight": 2}
    for c in first.claimed:
        record = side.store.get(KIND, c.lease.key)
        assert record is not None and (record.attempts, record.lease_owner) == (1, c.lease.owner)
    other = side.store.receive_and_claim(side.transport, _request("another", n=2))
    assert other is not None and [c.lease.key for c in other.claimed] == ["r2"]


def test_complete_and_ack(sides: tuple[Side, Side]) -> None:
    side, _ = sides
    t = side.timeouts()
    for i in range(4):
        t.schedule(KIND, f"s{i}", after=timedelta(seconds=1))
    side.clock.advance(2)
    got = side.store.receive_and_claim(side.transport, _request("c1"))
    assert got is not None
    c0, c1, c2, c3 = sorted(got.claimed, key=lambda c: c.lease.key)
    client, shard = side.transport.conn.client, side.transport.shards[0]
    client.hset(shard.lease, c2.delivery.message_id, "someone-else:1")  # re-leased meanwhile
    wrong = LeaseRef(KIND, "s3", 1, "not-the-owner")
    items = [(c0.lease, c0.delivery), (c1.lease, c1.delivery), (c2.lease, c2.delivery)]
    answers = side.store.complete_and_ack(side.transport, [*items, (wrong, c3.delivery)])
    assert answers == [SettleResult.COMPLETED] * 3 + [SettleResult.LOST]
    # completed and acked; the re-leased message stays (its holder settles it); a lost lease
    # is not acked
    assert sorted(client.zrange(shard.inflight, 0, -1)) == [b"k:s2:1", b"k:s3:1"]
    assert sorted(client.hkeys(shard.body)) == [b"k:s2:1", b"k:s3:1"]
    for key in ("s0", "s1", "s2"):
        record = side.store.get(KIND, key)
        assert record is not None and record.state is TimeoutState.FIRED
    record = side.store.get(KIND, "s3")
    assert record is not None and record.state is TimeoutState.FIRING
    # a re-sent call answers as the first did and removes nothing more
    assert side.store.complete_and_ack(side.transport, items) == [SettleResult.COMPLETED] * 3
    assert sorted(client.hkeys(shard.body)) == [b"k:s2:1", b"k:s3:1"]


def test_a_lost_reply_is_answered_again_on_the_re_send(redis_server: RedisServer) -> None:
    """redis-py re-sends a call whose reply was lost; the re-send of a fused receive answers
    from the first run's memo: the same claims, no second lease, no second attempt."""
    proxy = DroppingProxy(redis_server.port)
    url = f"redis://127.0.0.1:{proxy.port}/0?prefix=f{uuid.uuid4().hex[:10]}"
    transport, store = open_transport(url, SYSTEM_CLOCK), open_store(url, SYSTEM_CLOCK)
    try:
        fired: list[DueTimeout] = []
        with Timeouts(transport, store) as timeouts:
            timeouts.handler(KIND)(fired.append)
            # nothing due yet: the server loads the script
            assert store.receive_and_claim(transport, _request("warm")) is not None
            timeouts.schedule_many([{"kind": KIND, "key": f"l{i}", "after": 0} for i in range(5)])
            proxy.arm(store.conn.script("store_receive.lua").sha.encode())
            got = store.receive_and_claim(transport, _request("lost", n=10))
            assert proxy.dropped == 1
            assert got is not None and sorted(c.lease.key for c in got.claimed) == [
                f"l{i}" for i in range(5)
            ]
            assert transport.counts() == {"due": 0, "inflight": 5}
            for c in got.claimed:
                record = store.get(KIND, c.lease.key)
                assert record is not None and (record.attempts, record.lease_owner) == (
                    1,
                    c.lease.owner,
                )
            answers = store.complete_and_ack(
                transport, [(c.lease, c.delivery) for c in got.claimed]
            )
            assert answers == [SettleResult.COMPLETED] * 5
            assert transport.counts() == {"due": 0, "inflight": 0}
    finally:
        transport.close()
        store.close()
        proxy.close()


def test_a_failed_settlement_keeps_the_jobs_and_is_tried_again(
    sides: tuple[Side, Side], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Settlements after the first run on the settler thread; one that fails past the retries
    leaves its jobs on the books (in flight, leases held) and the loop tries again."""
    side, _ = sides
    t = side.timeouts(retry=RetryPolicy(attempts=1))  # give up at once: the loop keeps them
    consumer = t.consumer(concurrency=2, wait_seconds=0.0)
    real = side.store.complete_and_ack
    failures = [0]

    def flaky(transport: Any, items: Any) -> Any:
        if failures[0] < 1 and any(lease.key.startswith("b") for lease, _ in items):
            failures[0] += 1
            raise TransientStoreError("store down for a moment")
        return real(transport, items)

    monkeypatch.setattr(side.store, "complete_and_ack", flaky)
    try:
        t.schedule(KIND, "a0", after=timedelta(seconds=0))
        for _ in range(50):  # the first batch, settled inline, starts the settler
            consumer.run_once()
            if consumer.in_flight == 0 and side.fired:
                break
        assert consumer._settler is not None
        t.schedule_many([{"kind": KIND, "key": f"b{i}", "after": 0} for i in range(3)])
        errors = 0
        for _ in range(200):
            try:
                consumer.run_once()
            except TransientStoreError:
                errors += 1
                assert consumer.in_flight == 3  # still on the books
            if len(side.fired) == 4 and consumer.in_flight == 0:
                break
        assert errors == 1 and failures[0] == 1
        assert consumer.in_flight == 0 and consumer.stats.fired == 4
    finally:
        consumer.close()
    assert sorted(d.key for d in side.fired) == ["a0", "b0", "b1", "b2"]
    assert side.transport.counts() == {"due": 0, "inflight": 0}


def test_a_receive_asking_for_more_than_the_transport_allows_gets_its_limit(
    sides: tuple[Side, Side],
) -> None:
    """The script unpacks one id per message (Lua's stack holds a few thousand), so the ask is
    held to the transport's own receive limit instead of failing."""
    fused, _ = sides
    limit = fused.transport.capabilities.max_receive_batch
    timeouts = fused.timeouts()
    timeouts.schedule_many(
        [{"kind": KIND, "key": f"many{i}", "after": 0} for i in range(limit + 500)]
    )
    got = fused.store.receive_and_claim(fused.transport, _request("big", n=10 * limit))
    assert got is not None
    assert len(got.claimed) == limit
