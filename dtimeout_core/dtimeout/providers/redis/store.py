"""The Redis store: each transition of ``dtimeout.model`` is one Lua script on one record.

Every batch method sends its items as multi-item script calls — one call per chunk on a
standalone server, one per hash slot on a cluster — all in one pipeline, so a batch of a
thousand schedules costs one round trip, not a thousand. Each item is still its own atomic
transition (the script applies them one after another inside Redis).

Time: with a real clock the scripts read the server's ``TIME``; with a fake one (tests) they get
our ``now`` in ARGV, and a record past its ``expires`` is treated as gone even before Redis
evicts it, so the contract suite can move time without sleeping.

Re-sent calls: redis-py re-sends a command after a dropped connection, and the reply of the first
send may have been lost after Redis applied it. Claims (owner token), completes (owner) and
cancels (request id) are idempotent by the model's rules; schedule, release and abandon carry an
operation id that the record remembers, so a re-send gets the first answer — a schedule that was
CREATED is not answered EXTENDED (which would leave a PENDING record without a message).

Fused schedule (``schedule_and_send``, see fusion.py): given the Redis transport of the same
queue, the schedule script also enqueues each needed message, so record and message are one
atomic write and one round trip. A re-send after a lost reply is answered from the remembered
operation and enqueues nothing more: the first run's message is already there.

Fused consumer steps (``receive_and_claim``, ``complete_and_ack``; same condition): one script
leases due messages and claims their records (store_receive.lua), another completes leases and
removes their messages (store_complete.lua, fused). Redis does the same work as the separate
scripts; the consumer saves decoding each body, building a claim per message and a round trip
per step. A re-sent receive answers from a memo of what its first run leased.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from dtimeout.clock import Clock, is_fake, to_datetime
from dtimeout.errors import ValidationError
from dtimeout.ids import unique_id
from dtimeout.interfaces import (
    CancelOutcome,
    CancelRequest,
    ClaimedDelivery,
    ClaimOutcome,
    ClaimRequest,
    Delivery,
    LeaseRef,
    ReceiveClaimRequest,
    ReceivedClaims,
    ScheduleOutcome,
    ScheduleRequest,
    Store,
    Transport,
)
from dtimeout.model import (
    MESSAGE_VERSION,
    CancelResult,
    ClaimResult,
    DueTimeout,
    ScheduleResult,
    SettleResult,
    Timeout,
    TimeoutState,
    encode_payload,
)
from dtimeout.providers.redis import fusion
from dtimeout.providers.redis import keys as K
from dtimeout.providers.redis.connection import RedisConnection, decode, optional
from dtimeout.providers.redis.keys import ShardKeys
from dtimeout.providers.redis.settings import RedisSettings
from dtimeout.providers.redis.transport import RedisTransport

SCRIPTS = (
    "store_schedule.lua",
    "store_cancel.lua",
    "store_claim.lua",
    "store_renew.lua",
    "store_complete.lua",
    "store_release.lua",
    "store_abandon.lua",
    "store_attach.lua",
    "store_receive.lua",
)
_GET_FIELDS = (K.F_VALUES, K.F_PAYLOAD)
_SCAN_COUNT = 1000


class RedisStore(Store):
    """Timeout records in Redis hashes (``P:t:{KIND:KEY}``), expiring at due + retention."""

    name = "redis"

    def __init__(self, settings: RedisSettings, clock: Clock, *, client: Any = None) -> None:
        super().__init__(clock)
        self.settings = settings
        self.prefix = settings.prefix
        self.conn = RedisConnection(settings, clock, "store", SCRIPTS, client)
        self.fused = 0  # messages enqueued by schedule_and_send (for stats)
        self.fused_claims = 0  # timeouts claimed by receive_and_claim (for stats)

    def _key(self, kind: str, key: str) -> str:
        return K.record_key(self.prefix, kind, key)

    # -- transitions -----------------------------------------------------------------------------

    def schedule(self, requests: Sequence[ScheduleRequest]) -> list[ScheduleOutcome]:
        return self._schedule(requests, None)

    def schedule_and_send(
        self, transport: Transport, requests: Sequence[ScheduleRequest]
    ) -> list[ScheduleOutcome] | None:
        """Schedule and enqueue each needed message in the same script, when ``transport`` is a
        Redis transport on this store's server, database, user and prefix with one shard (see
        fusion.py); None otherwise, and the caller sends as usual.

        Atomic per item: the record and its message are written together or not at all, so a
        PENDING record never lacks its message. An ADVANCED item also removes the superseded
        message (unless a consumer holds it; its claim then finds it stale)."""
        if not isinstance(transport, RedisTransport) or not fusion.can_fuse(
            self.settings, transport.settings
        ):
            return None
        return self._schedule(requests, transport.shards[0])

    def _schedule(
        self, requests: Sequence[ScheduleRequest], queue: ShardKeys | None
    ) -> list[ScheduleOutcome]:
        if not requests:
            return []
        for r in requests:
            if r.due_at_ms + r.retention_ms > K.MAX_MS:
                raise ValidationError(
                    f"timeout {r.kind}/{r.key}: due time plus retention is beyond what the Redis "
                    "store keeps exactly (the year 5138)"
                )
        op = unique_id()
        sent = queue is not None

        def outcome(item: tuple[int, ScheduleRequest], reply: Any) -> ScheduleOutcome:
            request = item[1]
            result = _SCHEDULE_RESULTS[reply[0]]
            if len(reply) == 4:  # a fresh record: generation, updated, expires; the rest known
                timeout = Timeout(
                    request.kind,
                    request.key,
                    TimeoutState.PENDING,
                    int(reply[1]),
                    request.due_at_ms,
                    request.payload,
                    0,
                    None,
                    0,
                    None,
                    None,
                    None,
                    int(reply[2]),
                    int(reply[3]),
                    False,
                )
                return ScheduleOutcome(result, timeout, None, sent)
            payload = _UNSET if result is ScheduleResult.REFUSED else request.payload
            timeout = _record(request.kind, request.key, reply, payload)
            previous = optional(reply[14]) if result is ScheduleResult.ADVANCED else None
            return ScheduleOutcome(result, timeout, previous, sent and result.needs_message)

        # Items travel with their index in the call: the script's operation id of item i is
        # OP.i, unique in the call however the batch is cut into script calls.
        out: list[ScheduleOutcome] = self.conn.batched(
            "store_schedule.lua",
            list(enumerate(requests)),
            lambda item: self._key(item[1].kind, item[1].key),
            _plain_args if queue is None else _fused_args,
            [op, "1" if sent else ""],
            extra_keys=queue.fused_keys() if queue is not None else [],
            convert=outcome,
        )
        if sent:
            self.fused += sum(1 for o in out if o.sent)
        return out

    def attach_handles(self, items: Sequence[tuple[str, str, int, str]]) -> None:
        if not items:
            return
        self.conn.batched(
            "store_attach.lua",
            [(self._key(kind, key), generation, handle) for kind, key, generation, handle in items],
            lambda item: item[0],
            lambda item: (item[1], item[2]),
            [],
        )

    def cancel(self, requests: Sequence[CancelRequest]) -> list[CancelOutcome]:
        return self._cancel(requests, None)

    def cancel_and_withdraw(
        self, transport: Transport, requests: Sequence[CancelRequest]
    ) -> list[CancelOutcome] | None:
        """Cancel and remove each cancelled timeout's waiting message in the same script, when
        ``transport`` shares this store's queue (as for :meth:`schedule_and_send`); None
        otherwise. One round trip instead of a cancel and a native cancel."""
        if not isinstance(transport, RedisTransport) or not fusion.can_fuse(
            self.settings, transport.settings
        ):
            return None
        return self._cancel(requests, transport.shards[0])

    def _cancel(
        self, requests: Sequence[CancelRequest], queue: ShardKeys | None
    ) -> list[CancelOutcome]:
        if not requests:
            return []
        replies = self.conn.batched(
            "store_cancel.lua",
            requests,
            lambda r: self._key(r.kind, r.key),
            (lambda r: r.request_id)
            if queue is None
            else (lambda r: (r.request_id, f"{r.kind}:{r.key}:")),
            [] if queue is None else ["1"],
            extra_keys=[] if queue is None else [queue.due, queue.body, queue.count],
        )
        out: list[CancelOutcome] = []
        for reply in replies:
            generation = optional(reply[1])
            out.append(
                CancelOutcome(
                    CancelResult(decode(reply[0])),
                    int(generation) if generation is not None else None,
                    optional(reply[2]),
                )
            )
        return out

    def claim(self, requests: Sequence[ClaimRequest]) -> list[ClaimOutcome]:
        if not requests:
            return []
        out: list[Any] = self._claim(requests, with_payload=False)
        orphans = [i for i, o in enumerate(out) if not isinstance(o, ClaimOutcome)]
        if orphans:  # no record: claim those again, with the payload the orphan fires with
            again = self._claim([requests[i] for i in orphans], with_payload=True)
            for index, outcome in zip(orphans, again, strict=True):
                out[index] = outcome
        return out

    def _claim(self, requests: Sequence[ClaimRequest], *, with_payload: bool) -> list[Any]:
        """ClaimOutcomes, or the script's {'orphan'} where it asked for the payload."""
        return self.conn.batched(
            "store_claim.lua",
            requests,
            lambda r: self._key(r.message.kind, r.message.key),
            lambda r: (
                r.message.generation,
                r.message.due_at_ms,
                _payload_json(r.message.payload) if with_payload else "",
                r.owner,
                r.lease_ms,
                r.max_attempts,
                r.orphan_policy.value,
                r.retention_ms,
            ),
            [],
            convert=_claim_outcome,
        )

    def renew(self, leases: Sequence[LeaseRef], lease_ms: int) -> list[bool]:
        if not leases:
            return []
        replies = self.conn.batched(
            "store_renew.lua",
            leases,
            lambda lease: self._key(lease.kind, lease.key),
            lambda lease: (lease.generation, lease.owner),
            [lease_ms],
        )
        return [bool(int(r)) for r in replies]

    def complete(self, leases: Sequence[LeaseRef]) -> list[SettleResult]:
        if not leases:
            return []
        replies = self.conn.batched(
            "store_complete.lua",
            leases,
            lambda lease: self._key(lease.kind, lease.key),
            lambda lease: (lease.generation, lease.owner),
            [],
        )
        return [SettleResult(decode(r)) for r in replies]

    def release(
        self,
        lease: LeaseRef,
        *,
        backoff_ms: int,
        max_attempts: int,
        error: str,
        retention_ms: int,
    ) -> tuple[SettleResult, Timeout | None]:
        reply = self.conn.run(
            "store_release.lua",
            [self._key(lease.kind, lease.key)],
            [
                self.conn.now_arg(),
                lease.generation,
                lease.owner,
                backoff_ms,
                max_attempts,
                error,
                retention_ms,
                unique_id(),
            ],
        )
        answer = json.loads(reply)
        result = SettleResult(answer[0])
        if len(answer) == 1:
            return result, None
        return result, _record(lease.kind, lease.key, answer, _UNSET)

    def abandon(
        self, kind: str, key: str, generation: int, state: TimeoutState, reason: str
    ) -> SettleResult:
        if state not in (TimeoutState.CANCELLED, TimeoutState.DEAD):
            raise ValidationError("abandon moves a timeout to CANCELLED or DEAD only")
        reply = self.conn.run(
            "store_abandon.lua",
            [self._key(kind, key)],
            [self.conn.now_arg(), generation, state.value, reason, unique_id()],
        )
        return SettleResult(decode(reply))

    # -- fused consumer steps --------------------------------------------------------------------

    def _fused_queue(self, transport: Transport) -> ShardKeys | None:
        """The queue's only shard when this store's scripts may write ``transport``'s queue."""
        if isinstance(transport, RedisTransport) and fusion.can_fuse(
            self.settings, transport.settings
        ):
            return transport.shards[0]
        return None

    def receive_and_claim(
        self, transport: Transport, request: ReceiveClaimRequest
    ) -> ReceivedClaims | None:
        """Receive and claim in one script (store_receive.lua), when ``transport`` is the Redis
        transport of this store's queue with one shard (see fusion.py); None otherwise.

        Waits like ``RedisTransport.receive``: when nothing is due, sleeps until the earliest
        due time (at most the transport's ``poll_interval``) and asks again, up to
        ``wait_seconds``. Every poll of the call carries ``request.call_id``, so a re-sent
        poll whose reply was lost answers again from the first run's memo and leases nothing
        more (and re-claims with the same owners: the same attempts, never a second fire)."""
        shard = self._fused_queue(transport)
        if shard is None:
            return None
        assert isinstance(transport, RedisTransport)
        keys = [*shard.all(), shard.memo(request.call_id)]
        common = [
            # the transport's own receive limit: the script unpacks one id per message
            min(max(1, request.max_messages), transport.capabilities.max_receive_batch),
            max(1, request.lease_ms),
            request.call_id,
            request.owner_prefix,
            request.max_attempts,
            request.orphan_policy.value,
            request.retention_ms,
            _json_text(sorted(request.kinds)),
            K.record_key(self.prefix, "", "")[:-2],  # 'P:t:{'
            f'{{"v":{MESSAGE_VERSION},"kind":',
        ]
        deadline = time.monotonic() + max(0.0, request.wait_seconds)
        while True:
            raw = self.conn.run("store_receive.lua", keys, [self.conn.now_arg(), *common])
            # bodies handed back unclaimed may not be UTF-8: surrogateescape keeps their bytes
            reply = json.loads(raw.decode("utf-8", "surrogateescape"))
            if len(reply) > 2:
                return self._received(reply, request)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return ReceivedClaims()
            pause = min(remaining, transport.settings.poll_interval)
            next_due, server_now = int(reply[1]), int(reply[0])
            if next_due >= 0 and not is_fake(self.clock):
                pause = min(pause, max(0.001, (next_due - server_now) / 1000))
            time.sleep(pause)  # real time even on a fake clock: the test moves that one

    def _received(self, reply: list[Any], request: ReceiveClaimRequest) -> ReceivedClaims:
        """The script's items as the consumer's objects; this runs once per fired timeout, so
        it builds only what the handler and the settlement need (the record is not rebuilt)
        and decodes all payloads in one call."""
        out = ReceivedClaims()
        claimed, settled = out.claimed, out.settled
        claims: list[list[Any]] = []
        for item in reply[2:]:
            tag = item[0]
            if tag == "c":
                claims.append(item)
            elif tag == "p":
                _, mid, body, count, token = item
                out.deliveries.append(
                    Delivery(mid, body.encode("utf-8", "surrogateescape"), (0, token), count)
                )
            else:
                settled.append(
                    (item[1], _CLAIM_RESULTS[item[2]] if tag != "x" else ClaimResult.DEAD, item[2])
                )
        prefix, cut = request.owner_prefix, len(request.call_id) + 1
        payloads = _payloads([item[8] for item in claims])
        for item, payload in zip(claims, payloads, strict=True):
            _, mid, token, count, generation, due_ms, attempts, orphan, _ = item
            kind, _, rest = mid.partition(":")
            key = rest[: rest.rindex(":")]
            claimed.append(
                ClaimedDelivery(
                    Delivery(mid, b"", (0, token), count),
                    LeaseRef(kind, key, generation, prefix + token[cut:]),
                    DueTimeout(kind, key, payload, to_datetime(due_ms), generation, attempts),
                    orphan == "1",
                )
            )
        self.fused_claims += len(claimed)
        return out

    def complete_and_ack(
        self, transport: Transport, items: Sequence[tuple[LeaseRef, Delivery]]
    ) -> list[SettleResult] | None:
        """Complete each lease and remove the message of each completed one in one script
        (store_complete.lua, fused), when ``transport`` is the Redis transport of this store's
        queue (see fusion.py); None otherwise. A re-send answers 'completed' again."""
        shard = self._fused_queue(transport)
        if shard is None:
            return None
        if not items:
            return []
        replies = self.conn.batched(
            "store_complete.lua",
            items,
            lambda item: self._key(item[0].kind, item[0].key),
            lambda item: (
                item[0].generation,
                item[0].owner,
                item[1].message_id,
                item[1].receipt[1],
            ),
            ["1"],
            extra_keys=shard.all(),
        )
        return [_SETTLE_RESULTS[r] for r in replies]

    # -- reading ---------------------------------------------------------------------------------

    def get(self, kind: str, key: str) -> Timeout | None:
        with self.conn.errors("get"):
            self.conn.tally(1)
            values = self.conn.client.hmget(self._key(kind, key), _GET_FIELDS)
        return self._from_fields(kind, key, values)

    def _from_fields(self, kind: str, key: str, values: Sequence[Any]) -> Timeout | None:
        raw, payload = values
        if raw is None:
            return None
        fields = json.loads(raw)[: len(K.RECORD_FIELDS)]
        timeout = _record(kind, key, ["", *fields, payload], _UNSET)
        if is_fake(self.clock) and timeout.expires_ms and timeout.expires_ms <= self.clock.now_ms():
            return None  # gone by our (fake) clock; Redis evicts it on its own clock
        return timeout

    def list(
        self, *, state: TimeoutState | None = None, kind: str | None = None, limit: int = 100
    ) -> list[Timeout]:
        """Scans every record under the prefix (on every cluster primary): an operator's tool,
        linear in the number of records, never on the hot path."""
        rows: list[Timeout] = []
        pattern = K.record_pattern(self.prefix)
        if kind is not None:
            escaped = "".join("\\" + c if c in "*?[]\\" else c for c in kind)
            pattern = K.record_key(self.prefix, escaped, "*")
        with self.conn.errors("list"):
            client = self.conn.client
            names = [decode(n) for n in client.scan_iter(match=pattern, count=_SCAN_COUNT)]
            for start in range(0, len(names), _SCAN_COUNT):
                chunk = names[start : start + _SCAN_COUNT]
                pipe = client.pipeline(transaction=False)
                for name in chunk:
                    pipe.hmget(name, _GET_FIELDS)
                self.conn.tally(len(chunk))
                for name, values in zip(chunk, pipe.execute(), strict=True):
                    identity = K.identity_of(self.prefix, name)
                    if identity is None:
                        continue
                    timeout = self._from_fields(identity[0], identity[1], values)
                    if timeout is not None and (state is None or timeout.state is state):
                        rows.append(timeout)
        rows.sort(key=lambda r: (r.due_at_ms, r.kind, r.key))
        return rows[:limit]

    # -- housekeeping ----------------------------------------------------------------------------

    def ping(self) -> None:
        self.conn.ping()

    def close(self) -> None:
        self.conn.close()

    def stats(self) -> dict[str, int]:
        return {
            **self.conn.stats(),
            "fused_messages": self.fused,
            "fused_claims": self.fused_claims,
        }


class _Unset:
    pass


_UNSET: Any = _Unset()


def _claim_outcome(request: ClaimRequest, reply: Sequence[Any]) -> ClaimOutcome | Sequence[Any]:
    if reply[0] == "orphan":
        return reply
    result = _CLAIM_RESULTS[reply[0]]
    if len(reply) == 1:
        return ClaimOutcome(result, None)
    message = request.message
    return ClaimOutcome(result, _record(message.kind, message.key, reply, _UNSET))


def _fused_args(item: tuple[int, ScheduleRequest]) -> tuple[int, str, int, int, str, str]:
    index, request = item
    return (
        request.due_at_ms,
        request.payload_json or _payload_json(request.payload),
        request.retention_ms,
        index,
        f"{request.kind}:{request.key}:",
        fusion.body_head(request.kind, request.key),
    )


def _plain_args(item: tuple[int, ScheduleRequest]) -> tuple[int, str, int, int]:
    index, request = item
    payload = request.payload_json or _payload_json(request.payload)
    return (request.due_at_ms, payload, request.retention_ms, index)


# ``encode_payload`` builds a JSONEncoder per call (json.dumps with options); one, reused, writes
# the same text for a fraction of the cost on the hottest path.
_PAYLOAD_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _payload_json(payload: Any) -> str:
    try:
        return _PAYLOAD_ENCODER.encode(payload)
    except (TypeError, ValueError):
        return encode_payload(payload)  # raises the model's ValidationError, same words


_NEEDS_MESSAGE = frozenset(r.value for r in ScheduleResult if r.needs_message)
_SCHEDULE_RESULTS = {r.value: r for r in ScheduleResult}
_CLAIM_RESULTS = {r.value: r for r in ClaimResult}
_SETTLE_RESULTS = {r.value: r for r in SettleResult}


def _payloads(texts: list[str]) -> list[Any]:
    """Payload JSON texts decoded in one call (a call per payload cost more than building the
    rest of the job). Every text is one JSON value our encoder wrote, so the joined array has
    exactly one element per text; anything else is decoded one by one, which raises on the
    text that is not JSON, as decoding a record does."""
    if not texts:
        return []
    try:
        values = json.loads(f"[{','.join(texts)}]")
        if isinstance(values, list) and len(values) == len(texts):
            return values
    except ValueError:
        pass
    return [json.loads(text) for text in texts]


def _json_text(values: Sequence[Any]) -> str:
    return json.dumps(values, ensure_ascii=False, separators=(",", ":"))


def _record(kind: str, key: str, reply: Sequence[Any], payload: Any) -> Timeout:
    """A :class:`Timeout` from a script reply (answer, the fields of ``keys.RECORD_FIELDS``,
    payload JSON). ``payload`` given by the caller wins over the reply's (it is the same value,
    and not sending it back saves bytes on the hottest path)."""
    if payload is _UNSET:
        raw = reply[13]
        payload = json.loads(raw) if raw else None
    # Values come from cjson: text is str ('' for None), numbers are ints. Positional, in the
    # order of Timeout's fields: this runs once per timeout on every hot path.
    return Timeout(
        kind,
        key,
        _STATES[reply[1]],
        int(reply[2]),
        int(reply[3]),
        payload,
        int(reply[4]),
        reply[5] or None,
        int(reply[6]),
        reply[7] or None,
        reply[8] or None,
        reply[9] or None,
        int(reply[10]),
        int(reply[11]),
        reply[12] == "1",
    )


_STATES = {state.value: state for state in TimeoutState}
