"""A store and a transport on one Redis: the schedule script enqueues the message itself.

When one process uses a ``RedisStore`` and a ``RedisTransport`` on the same server, database and
prefix (``Timeouts("redis://h", "redis://h")``, the usual set-up), the message a schedule needs
can be written by the schedule script: record and message then appear atomically, in one round
trip, and the application's following ``send`` of exactly that message is answered from memory.
This halves the round trips of a single ``schedule`` and is the only way to get it to one.

The pair is confirmed only by watching: until the transport is asked to send exactly the
messages the store's last schedule called for, nothing is fused. A Redis store used with another
transport (SQS, say) therefore never writes into a Redis queue. Only single-shard queues fuse (a
message's shard depends on its generation, which the script learns as it goes), i.e. standalone
and sentinel with the default ``shards=1``; ``fuse=false`` in the URL turns it off.
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Any

from dtimeout.providers.redis.settings import RedisSettings

if TYPE_CHECKING:
    from dtimeout.providers.redis.store import RedisStore

_STORES: weakref.WeakValueDictionary[tuple[Any, ...], RedisStore] = weakref.WeakValueDictionary()
_LOCK = threading.Lock()
_MEMO_LIMIT = 200_000


def pair_key(settings: RedisSettings) -> tuple[Any, ...] | None:
    """What must be equal for two providers to share one script; None when fusion is off."""
    if not settings.fuse or settings.cluster or settings.shards != 1:
        return None
    return (settings.scheme, settings.hosts, settings.db, settings.username, settings.prefix)


def register_store(store: RedisStore) -> None:
    key = pair_key(store.settings)
    if key is not None:
        with _LOCK:
            _STORES[key] = store


def find_store(settings: RedisSettings) -> RedisStore | None:
    key = pair_key(settings)
    return _STORES.get(key) if key is not None else None


class Memo:
    """Messages a fused schedule already enqueued, until the application sends them."""

    def __init__(self) -> None:
        self._bodies: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def add(self, items: dict[str, bytes]) -> None:
        with self._lock:
            if len(self._bodies) > _MEMO_LIMIT:  # sends that never came: forget, never grow
                self._bodies.clear()
            self._bodies.update(items)

    def take(self, message_id: str, body: bytes) -> bool:
        """True (and forgotten) when exactly this message was enqueued already."""
        with self._lock:
            known = self._bodies.get(message_id)
            if known is None or known != body:
                return False
            del self._bodies[message_id]
            return True
