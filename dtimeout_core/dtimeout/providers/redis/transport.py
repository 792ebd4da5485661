"""The Redis transport: a delayed queue made of due-time sorted sets.

A message is a body in a hash and its id in the shard's ``due`` zset, scored by due time.
``receive`` is one script per shard that moves up to N due ids into the ``inflight`` zset
(scored by lease deadline) and returns them with a lease token; an expired lease makes the
message due again for the next receive. Nothing with a due time after the server's now is ever
handed out, and nothing not yet due is held in this process: when nothing is due the script tells
us the earliest due time and we sleep until then (at most ``poll_interval``, so a message
scheduled meanwhile for an earlier time is not missed by much).

Sharding: on a cluster one zset would put every message of the system on one node, so the due
index is split into ``shards`` zsets with distinct hash tags (default 16 there, 1 standalone); a
message's shard is a stable hash of its id. A receive asks every shard in one pipeline for its
fair share (the shard that gets the remainder rotates), then hands the unfilled part of the batch
to the shards that had more. No shard is starved, and a batch never exceeds what was asked.

Messages may also be written by a ``RedisStore`` on the same queue: its ``schedule_and_send``
(fusion.py) enqueues them in the schedule script, exactly as ``send`` would, and the application
then does not call ``send`` for them. This class knows nothing of it and keeps no state for it.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from typing import Any

from dtimeout.clock import Clock, is_fake
from dtimeout.ids import unique_id
from dtimeout.interfaces import (
    CancelRef,
    Delivery,
    OutgoingMessage,
    Transport,
    TransportCapabilities,
)
from dtimeout.providers.redis.connection import CHUNK, RedisConnection, decode
from dtimeout.providers.redis.keys import ShardKeys, shard_of
from dtimeout.providers.redis.settings import RedisSettings

SCRIPTS = (
    "queue_send.lua",
    "queue_receive.lua",
    "queue_ack.lua",
    "queue_retry.lua",
    "queue_extend.lua",
    "queue_dead.lua",
    "queue_cancel.lua",
)
_Call = tuple[str, list[str], list[Any]]


class RedisTransport(Transport):
    """Delayed messages in Redis sorted sets; native cancel removes a scheduled message."""

    name = "redis"
    capabilities = TransportCapabilities(
        max_delay_ms=None,
        max_message_bytes=1024 * 1024,
        max_send_batch=1000,
        max_send_batch_bytes=None,
        max_receive_batch=1000,
        native_cancel=True,
    )

    def __init__(self, settings: RedisSettings, clock: Clock, *, client: Any = None) -> None:
        super().__init__(clock)
        self.settings = settings
        self.shards = [ShardKeys(settings.prefix, i) for i in range(settings.shards)]
        self.conn = RedisConnection(settings, clock, "transport", SCRIPTS, client)
        self._cursor = 0
        self.polls = 0

    def _shard(self, message_id: str) -> ShardKeys:
        return self.shards[shard_of(message_id, len(self.shards))]

    # -- sending ---------------------------------------------------------------------------------

    def send(self, messages: Sequence[OutgoingMessage]) -> list[str | None]:
        by_shard: dict[int, list[OutgoingMessage]] = {}
        for m in messages:
            by_shard.setdefault(self._shard(m.message_id).index, []).append(m)
        calls: list[_Call] = []
        for index, group in by_shard.items():
            for start in range(0, len(group), CHUNK):
                args: list[Any] = [self.conn.now_arg()]
                for m in group[start : start + CHUNK]:
                    args.extend((m.message_id, m.due_at_ms, m.body))
                calls.append(("queue_send.lua", self.shards[index].all(), args))
        if calls:
            self.conn.run_many(calls)
        return [None] * len(messages)  # ids are enough to cancel natively

    # -- receiving -------------------------------------------------------------------------------

    def receive(
        self, max_messages: int, wait_seconds: float, lease_seconds: float
    ) -> list[Delivery]:
        lease_ms = max(1, round(lease_seconds * 1000))
        deadline = time.monotonic() + max(0.0, wait_seconds)
        while True:
            deliveries, next_due, server_now = self._poll(max(1, max_messages), lease_ms)
            if deliveries:
                return deliveries
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            pause = min(remaining, self.settings.poll_interval)
            if next_due >= 0 and not is_fake(self.clock):
                pause = min(pause, max(0.001, (next_due - server_now) / 1000))
            time.sleep(pause)  # real time even on a fake clock: the test moves that one

    def _poll(self, wanted: int, lease_ms: int) -> tuple[list[Delivery], int, int]:
        """One pass over the shards; returns deliveries, the earliest next due time, now."""
        self.polls += 1
        token = unique_id()
        count = len(self.shards)
        start = self._cursor % count
        self._cursor += wanted % count or 1  # the next call's extra shares go to the next shards
        order = [(start + i) % count for i in range(count)]
        quotas = {
            s: wanted // count + (1 if i < wanted % count else 0) for i, s in enumerate(order)
        }
        replies = self.conn.run_many(
            [self._receive_call(s, quotas[s], lease_ms, f"{token}:{s}") for s in order]
        )
        deliveries: list[Delivery] = []
        next_due, now = -1, 0
        hungry: list[int] = []  # shards that may have more due right now
        for shard, reply in zip(order, map(_parse, replies), strict=True):
            now = int(reply[0])
            got = self._deliveries(shard, reply)
            deliveries.extend(got)
            shard_next = int(reply[1])
            if got and len(got) >= quotas[shard]:
                hungry.append(shard)
            elif not got and 0 <= shard_next <= now:
                hungry.append(shard)  # asked for nothing (peek) but has due messages
            if shard_next >= 0 and (next_due < 0 or shard_next < next_due):
                next_due = shard_next
        need = wanted - len(deliveries)
        if need > 0 and hungry and count > 1:
            share = math.ceil(need / len(hungry))
            calls: list[_Call] = []
            asked: list[tuple[int, int]] = []
            for shard in hungry:
                take = min(share, need - sum(q for _, q in asked))
                if take <= 0:
                    break
                asked.append((shard, take))
                calls.append(self._receive_call(shard, take, lease_ms, f"{token}:{shard}b"))
            for (shard, _), reply in zip(asked, self.conn.run_many(calls), strict=True):
                deliveries.extend(self._deliveries(shard, _parse(reply)))
        return deliveries, next_due, now

    def _receive_call(self, shard: int, quota: int, lease_ms: int, token: str) -> _Call:
        args = [self.conn.now_arg(), quota, lease_ms, token]
        return ("queue_receive.lua", self.shards[shard].all(), args)

    def _deliveries(self, shard: int, reply: Sequence[Any]) -> list[Delivery]:
        return [
            Delivery(
                message_id=reply[i],
                body=reply[i + 1].encode("utf-8", "surrogateescape"),
                receipt=(shard, reply[i + 3]),
                delivery_count=reply[i + 2],
            )
            for i in range(2, len(reply), 4)
        ]

    # -- settling --------------------------------------------------------------------------------

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        by_shard: dict[int, list[Any]] = {}
        for d in deliveries:
            shard, token = d.receipt
            by_shard.setdefault(shard, []).extend((d.message_id, token))
        calls: list[_Call] = []
        for shard, pairs in by_shard.items():
            for start in range(0, len(pairs), 2 * CHUNK):
                args = [self.conn.now_arg(), _json(pairs[start : start + 2 * CHUNK])]
                calls.append(("queue_ack.lua", self.shards[shard].all(), args))
        self.conn.run_many(calls)

    def _one(self, script: str, delivery: Delivery, *extra: Any) -> int:
        shard, token = delivery.receipt
        args = [self.conn.now_arg(), delivery.message_id, token, *extra]
        return int(self.conn.run(script, self.shards[shard].all(), args))

    def retry_later(self, delivery: Delivery, delay_ms: int) -> None:
        self._one("queue_retry.lua", delivery, max(0, int(delay_ms)))

    def extend(self, delivery: Delivery, lease_seconds: float) -> None:
        self._one("queue_extend.lua", delivery, max(1, round(lease_seconds * 1000)))

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        self._one("queue_dead.lua", delivery, reason)

    def cancel(self, refs: Sequence[CancelRef]) -> None:
        by_shard: dict[int, list[str]] = {}
        for ref in refs:
            by_shard.setdefault(self._shard(ref.message_id).index, []).append(ref.message_id)
        calls: list[_Call] = []
        for shard, ids in by_shard.items():
            for start in range(0, len(ids), CHUNK):
                args = [self.conn.now_arg(), _json(ids[start : start + CHUNK])]
                calls.append(("queue_cancel.lua", self.shards[shard].all(), args))
        self.conn.run_many(calls)

    # -- inspection ------------------------------------------------------------------------------

    def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        """Dead letters (id, body, reason, at, deliveries), for operators and tests."""
        out: list[dict[str, Any]] = []
        with self.conn.errors("dead_letters"):
            for shard in self.shards:
                for mid, raw in self.conn.client.hgetall(shard.dead).items():
                    entry = json.loads(decode(raw))
                    out.append({"id": decode(mid), **entry})
        out.sort(key=lambda e: e.get("at", 0))
        return out[:limit]

    def counts(self) -> dict[str, int]:
        """How many messages wait (``due``) and are leased (``inflight``), over all shards."""
        due = inflight = 0
        with self.conn.errors("counts"):
            for shard in self.shards:
                due += int(self.conn.client.zcard(shard.due))
                inflight += int(self.conn.client.zcard(shard.inflight))
        return {"due": due, "inflight": inflight}

    def ping(self) -> None:
        self.conn.ping()

    def close(self) -> None:
        self.conn.close()

    def stats(self) -> dict[str, int]:
        return {**self.conn.stats(), "polls": self.polls}


def _parse(reply: Any) -> list[Any]:
    """A receive script's JSON reply. Bodies are bytes to us and may not be UTF-8 (a transport
    carries what it is given): surrogateescape gives back exactly the bytes that were sent."""
    text = reply if isinstance(reply, str) else reply.decode("utf-8", "surrogateescape")
    parsed: list[Any] = json.loads(text)
    return parsed


def _json(items: Sequence[Any]) -> str:
    """Many ids (and tokens) as one script argument: redis-py encodes each argument in Python."""
    return json.dumps(items, ensure_ascii=False, separators=(",", ":"))
