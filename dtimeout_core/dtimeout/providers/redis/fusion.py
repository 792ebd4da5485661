"""Fused schedule: when may a Redis store enqueue the message itself, and the message's bytes.

``Store.schedule_and_send(transport, requests)`` (dtimeout/interfaces.py) is the explicit
capability behind this: the application hands the store its transport, and a ``RedisStore``
answers it only when that transport is a ``RedisTransport`` whose queue the schedule script can
reach — same server(s), database, user and key prefix, and a single-shard due index. Then one
script writes the record and the message (record and message appear together, one round trip
per batch). In every other case the store answers None and the application does its usual
``schedule`` then ``send``. The consumer's fused steps (``Store.receive_and_claim`` and
``complete_and_ack``) are offered under the same condition; otherwise it receives, claims,
completes and acks separately.

Why only one shard: a message's shard is a hash of its id, and the id carries the generation,
which only the script learns; with several shards the script would need every shard's keys
(and, on a cluster, they live in other slots than the record, so no script may touch both).
Standalone and sentinel default to ``shards=1``; ``fuse=false`` on either URL turns it off.

Pure functions only: no registry, no state shared between instances.
"""

from __future__ import annotations

import json
import json.encoder
from collections.abc import Callable

from dtimeout.model import MESSAGE_VERSION
from dtimeout.providers.redis.settings import RedisSettings


def target(settings: RedisSettings) -> tuple[object, ...]:
    """What names one queue: the server(s), database, user and key prefix."""
    return (
        settings.scheme,
        settings.hosts,
        settings.master,
        settings.db,
        settings.username,
        settings.prefix,
    )


def can_fuse(store: RedisSettings, transport: RedisSettings) -> bool:
    """True when a schedule script of ``store`` may write the messages of ``transport``."""
    return (
        store.fuse
        and transport.fuse
        and not store.cluster
        and transport.shards == 1
        and target(store) == target(transport)
    )


def body_head(kind: str, key: str) -> str:
    """The start of a message's body, up to its generation. The script completes it as
    ``head + generation + ',"due_at":' + due + ',"payload":' + payload + '}'``, byte for byte
    ``TimeoutMessage(...).encode()`` (a property test holds it to that): the script prints only
    integers (``%.0f``, exact below 2**53), Python prints the strings and the payload."""
    return f'{{"v":{MESSAGE_VERSION},"kind":{_string(kind)},"key":{_string(key)},"generation":'


def message_tail(due_at_ms: int, payload_json: str) -> str:
    """What the script appends after the generation (for tests and documentation)."""
    return f',"due_at":{due_at_ms},"payload":{payload_json}}}'


# JSON string literal as ``json.dumps(s, ensure_ascii=False)`` writes it, without building an
# encoder per call (the C function when available).
_string: Callable[[str], str] = json.encoder.encode_basestring
