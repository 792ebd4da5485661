"""Every Redis key the provider writes, and the record's field names, in one place.

Layout (``P`` is the URL's ``prefix=``, default ``dtimeout``)::

    P:t:{KIND:KEY}        hash   one timeout record (fields v, p); expires at due + retention
    {P:q:N}:due           zset   message id -> due time (ms); shard N of the due index
    {P:q:N}:inflight      zset   message id -> lease deadline (ms) of a received message
    {P:q:N}:body          hash   message id -> encoded message
    {P:q:N}:count         hash   message id -> deliveries so far, only when not implied
                                 (absent: 0 for a waiting message, 1 for a leased one)
    {P:q:N}:lease         hash   message id -> lease token of the current delivery
    {P:q:N}:dead          hash   message id -> JSON {body, reason, at} of a dead letter
    {P:q:N}:memo:TOKEN    string ids one fused receive leased (store_receive.lua), for as long
                                 as their lease: a re-sent call answers again from it

Why these hash tags: a record script touches exactly one record, so the record's identity is its
tag and records spread over the whole cluster. A transport script touches the five keys of one
shard, so the shard is the tag; messages are placed on a shard by a stable hash of their id, so
native cancel finds a message without asking anyone.
"""

from __future__ import annotations

import zlib

# A record is a hash of two fields: ``v``, a JSON array of its values in the order of
# RECORD_FIELDS followed by the last operation (``OPID:ANSWER`` of the last schedule, release or
# abandon, so a re-sent call gets the first answer), and ``p``, the payload's JSON. One field
# instead of one per value because Redis charges per field touched (see _record.lua); operators
# read records with ``dtimeout status``, which spells them out.
F_VALUES = "v"
F_PAYLOAD = "p"
RECORD_FIELDS: tuple[str, ...] = (
    "state",
    "generation",
    "due_at_ms",
    "attempts",
    "lease_owner",
    "lease_expires_ms",
    "reason",
    "cancel_request_id",
    "handle",
    "updated_ms",
    "expires_ms",
    "orphan",
)
# Every time the store writes stays below this: cjson prints numbers with 14 digits.
MAX_MS = 10**14 - 1

DEFAULT_PREFIX = "dtimeout"


def validate_prefix(prefix: str) -> str:
    """Refuse prefixes that would break hash tags or glob patterns."""
    if not prefix or any(c in prefix for c in "{}*?[]\\ \t\r\n"):
        raise ValueError(
            f"prefix {prefix!r} must be non-empty and contain no braces, glob characters or spaces"
        )
    return prefix


def record_key(prefix: str, kind: str, key: str) -> str:
    """The record of ``(kind, key)``; the identity is the hash tag."""
    return f"{prefix}:t:{{{kind}:{key}}}"


def record_pattern(prefix: str) -> str:
    """SCAN pattern matching every record under ``prefix``."""
    return f"{prefix}:t:{{*"


def identity_of(prefix: str, record: str) -> tuple[str, str] | None:
    """``(kind, key)`` back from a record key name (kinds never contain ':')."""
    head = f"{prefix}:t:{{"
    if not record.startswith(head) or not record.endswith("}"):
        return None
    kind, sep, key = record[len(head) : -1].partition(":")
    return (kind, key) if sep and kind and key else None


class ShardKeys:
    """The keys of one shard of the transport; all share the tag ``{P:q:N}``."""

    __slots__ = ("body", "count", "dead", "due", "index", "inflight", "lease", "tag")

    def __init__(self, prefix: str, index: int) -> None:
        self.index = index
        self.tag = f"{{{prefix}:q:{index}}}"
        self.due = f"{self.tag}:due"
        self.inflight = f"{self.tag}:inflight"
        self.body = f"{self.tag}:body"
        self.count = f"{self.tag}:count"
        self.lease = f"{self.tag}:lease"
        self.dead = f"{self.tag}:dead"

    def all(self) -> list[str]:
        """In the order every transport script expects its KEYS."""
        return [self.due, self.inflight, self.body, self.count, self.lease, self.dead]

    def memo(self, token: str) -> str:
        """What a fused receive (store_receive.lua) with call ``token`` remembers."""
        return f"{self.tag}:memo:{token}"

    def fused_keys(self) -> list[str]:
        """What a fused schedule (store_schedule.lua) writes besides the records."""
        return [self.due, self.inflight, self.body, self.count]


def shard_of(message_id: str, shards: int) -> int:
    """Stable shard of a message: the same id always lands on the same shard."""
    if shards <= 1:
        return 0
    return zlib.crc32(message_id.encode("utf-8")) % shards
