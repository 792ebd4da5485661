"""Fused schedule: when may a Redis store enqueue the message itself, and the message's bytes.

``Store.schedule_and_send(transport, requests)`` (dtimeout/interfaces.py) is the explicit
capability behind this: the application hands the store its transport, and a ``RedisStore``
answers it only when that transport is a ``RedisTransport`` whose queue the schedule script can
reach — same server(s), database, user and key prefix, and a single-shard due index. Then one
script writes the record and the message (record and message appear together, one round trip
per batch). In every other case the store answers None and the application does its usual
``schedule`` then ``send``.

Why only one shard: a message's shard is a hash of its id, and the id carries the generation,
which only the script learns; with several shards the script would need every shard's keys
(and, on a cluster, they live in other slots than the record, so no script may touch both).
Standalone and sentinel default to ``shards=1``; ``fuse=false`` on either URL turns it off.

Pure functions only: no registry, no state shared between instances.
"""

from __future__ import annotations

from dtimeout.interfaces import ScheduleRequest
from dtimeout.model import TimeoutMessage
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


def body_parts(request: ScheduleRequest) -> tuple[str, str, str]:
    """The encoded message around its generation, so the script can finish it: ``head +
    str(generation) + tail`` is byte for byte ``TimeoutMessage(...).encode()``; third, the
    payload's JSON as it appears in the body (one encoding serves the record and the message).

    The generation is the only number the script prints (``%.0f``, exact to 2**53); the due time
    and the payload are printed here by Python's ``json``, exactly as the model prints them."""
    body = TimeoutMessage(request.kind, request.key, 0, request.due_at_ms, request.payload)
    text = body.encode().decode("utf-8")
    # Keys come first and are JSON strings (quotes escaped), so the marker cannot occur earlier.
    head, _, tail = text.partition('"generation":0,')
    payload = tail[len(f'"due_at":{request.due_at_ms},"payload":') : -1]
    return head + '"generation":', "," + tail, payload
