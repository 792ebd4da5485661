"""Child-process bodies for the sqlite multi-process tests (importable by ``spawn`` children).

Each worker reports through a JSON file it writes at the end, and waits on a start event so
that all children race at once rather than one after another as they finish importing.
"""

from __future__ import annotations

import json
import os
import random
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

from dtimeout.clock import SYSTEM_CLOCK
from dtimeout.interfaces import CancelRef, CancelRequest, OutgoingMessage, ScheduleRequest
from dtimeout.model import TimeoutMessage
from dtimeout.providers import sqlite_transport
from dtimeout.providers.sqlite_store import SqliteStore
from dtimeout.providers.sqlite_transport import SqliteTransport

KIND = "race"


def receiver(
    url: str, report: str, lease_s: float, returning: bool, ready: Event, go: Event
) -> None:
    """Receive and ack until the queue stays empty; write the ids received. ``returning``
    False forces the select-then-update lease used on SQLite older than 3.35."""
    sqlite_transport.HAS_RETURNING = returning
    transport = SqliteTransport.from_url(url, SYSTEM_CLOCK)
    ready.set()
    go.wait(30)
    got: list[tuple[str, int]] = []
    errors: list[str] = []
    empty = 0
    for _ in range(10_000):  # bounded; ends far sooner, when the queue is drained
        try:
            batch = transport.receive(50, 0.2, lease_s)
        except Exception as exc:  # reported to the parent, which fails the test
            errors.append(f"{type(exc).__name__}: {exc}")
            break
        if not batch:
            empty += 1
            if empty >= 3:
                break
            continue
        empty = 0
        got.extend((d.message_id, d.delivery_count) for d in batch)
        transport.ack(batch)
    Path(report).write_text(json.dumps({"got": got, "errors": errors, **transport.stats()}))
    transport.close()


def crasher(url: str, lease_s: float, received: str) -> None:
    """Take one message and die without acking it (a consumer killed mid-handler)."""
    transport = SqliteTransport.from_url(url, SYSTEM_CLOCK)
    batch = transport.receive(1, 10.0, lease_s)
    Path(received).write_text(json.dumps([d.message_id for d in batch]))
    os._exit(1)


def hammer(url: str, seed: int, ops: int, keys: int, report: str, ready: Event, go: Event) -> None:
    """Schedule and cancel random shared keys one call at a time (the contended path)."""
    store = SqliteStore.from_url(url, SYSTEM_CLOCK)
    transport = SqliteTransport.from_url(url, SYSTEM_CLOCK)
    rng = random.Random(seed)
    results: list[tuple[str, str, str]] = []
    errors: list[str] = []
    ready.set()
    go.wait(30)
    for i in range(ops):
        key = f"k{rng.randrange(keys)}"
        try:
            if rng.random() < 0.5:
                due = SYSTEM_CLOCK.now_ms() + rng.randint(60_000, 120_000)
                (out,) = store.schedule([ScheduleRequest(KIND, key, due, {"i": i}, 3_600_000)])
                results.append((key, "schedule", out.result.value))
                if out.result.needs_message:
                    t = out.timeout
                    msg = TimeoutMessage(KIND, key, t.generation, t.due_at_ms, t.payload)
                    transport.send([OutgoingMessage(msg.message_id, msg.encode(), t.due_at_ms)])
            else:
                (ans,) = store.cancel([CancelRequest(KIND, key, f"{seed}-{i}")])
                results.append((key, "cancel", ans.result.value))
                if ans.result.value == "cancelled" and ans.generation is not None:
                    transport.cancel([CancelRef(f"{KIND}:{key}:{ans.generation}", None)])
        except Exception as exc:  # reported to the parent, which fails the test
            errors.append(f"{type(exc).__name__}: {exc}")
    stats: dict[str, Any] = {
        "store_lock_retries": store.stats()["lock_retries"],
        "transport_lock_retries": transport.stats()["lock_retries"],
    }
    Path(report).write_text(json.dumps({"results": results, "errors": errors, **stats}))
    store.close()
    transport.close()
