"""The ``sqlite`` transport: delayed messages in a table of the shared SQLite file.

A message is a row with the time it becomes visible. ``receive`` leases due rows with one
``UPDATE … RETURNING`` inside ``BEGIN IMMEDIATE``: the write lock serialises consumers, so two
of them never hold the same message, and the lease is just "invisible until ``visible_at_ms``"
plus a fresh lease token. A consumer that dies simply lets its lease run out and the message is
visible again — no reaper process is needed.

Every operation on a delivery (``ack``, ``retry_later``, ``extend``, ``dead_letter``) applies
only while the delivery's lease token is still the row's token. A stale delivery — one whose
lease ran out and whose message another consumer has since received — therefore changes
nothing: its ``ack`` does not delete the re-leased message, its ``retry_later`` does not hide
it. The store decides the outcome for the timeout anyway; the message follows its live lease.

Idle consumers poll with a cheap read (readers never take the write lock under WAL) and short
real-time sleeps bounded by ``wait_seconds``; they never sleep on ``self.clock``.
"""

from __future__ import annotations

import logging
import sqlite3
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from dtimeout.clock import Clock, is_fake
from dtimeout.errors import PayloadTooLargeError, TransientTransportError, TransportError
from dtimeout.errors import ValidationError as _ValidationError
from dtimeout.interfaces import (
    CancelRef,
    Delivery,
    OutgoingMessage,
    Transport,
    TransportCapabilities,
)
from dtimeout.providers.sqlite_db import SqliteDatabase, SqliteSettings

log = logging.getLogger(__name__)

MESSAGES = "dtimeout_messages"
DEAD_LETTERS = "dtimeout_dead_letters"

SCHEMA = (
    f"""CREATE TABLE IF NOT EXISTS {MESSAGES} (
        id INTEGER PRIMARY KEY,
        message_id TEXT NOT NULL UNIQUE,
        body BLOB NOT NULL,
        due_at_ms INTEGER NOT NULL,
        visible_at_ms INTEGER NOT NULL,
        lease_token TEXT,
        delivery_count INTEGER NOT NULL DEFAULT 0,
        sent_ms INTEGER NOT NULL
    )""",
    f"CREATE INDEX IF NOT EXISTS {MESSAGES}_visible ON {MESSAGES} (visible_at_ms, id)",
    f"""CREATE TABLE IF NOT EXISTS {DEAD_LETTERS} (
        id INTEGER PRIMARY KEY,
        message_id TEXT NOT NULL,
        body BLOB NOT NULL,
        reason TEXT NOT NULL,
        delivery_count INTEGER NOT NULL,
        dead_at_ms INTEGER NOT NULL
    )""",
)

# A re-send of an id already queued replaces its body and due time unless a consumer holds it
# right now (then the holder's outcome decides); it never creates a second row.
_SEND = (
    f"INSERT INTO {MESSAGES} (message_id, body, due_at_ms, visible_at_ms, sent_ms) "
    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (message_id) DO UPDATE SET body = excluded.body, "
    "due_at_ms = excluded.due_at_ms, visible_at_ms = excluded.visible_at_ms "
    f"WHERE {MESSAGES}.lease_token IS NULL"
)
_LEASE = (
    f"UPDATE {MESSAGES} SET lease_token = ?, visible_at_ms = ?, "
    "delivery_count = delivery_count + 1 WHERE id IN "
    f"(SELECT id FROM {MESSAGES} WHERE visible_at_ms <= ? ORDER BY visible_at_ms, id LIMIT ?) "
    "RETURNING message_id, body, delivery_count, due_at_ms"
)
# ``RETURNING`` arrived in SQLite 3.35 (2021); older libraries (some LTS distributions' system
# Python) select then update instead. Both run inside BEGIN IMMEDIATE, holding the write lock,
# so no other consumer can lease the same rows in between either way.
HAS_RETURNING = sqlite3.sqlite_version_info >= (3, 35, 0)
_DUE = (
    f"SELECT id, message_id, body, delivery_count + 1, due_at_ms FROM {MESSAGES} "
    "WHERE visible_at_ms <= ? ORDER BY visible_at_ms, id LIMIT ?"
)
_LEASE_ONE = (
    f"UPDATE {MESSAGES} SET lease_token = ?, visible_at_ms = ?, "
    "delivery_count = delivery_count + 1 WHERE id = ?"
)
_NEXT_VISIBLE = f"SELECT MIN(visible_at_ms) FROM {MESSAGES}"
_ACK = f"DELETE FROM {MESSAGES} WHERE message_id = ? AND lease_token = ?"
_RETRY = (
    f"UPDATE {MESSAGES} SET visible_at_ms = ?, lease_token = NULL "
    "WHERE message_id = ? AND lease_token = ?"
)
_EXTEND = f"UPDATE {MESSAGES} SET visible_at_ms = ? WHERE message_id = ? AND lease_token = ?"
_TO_DLQ = (
    f"INSERT INTO {DEAD_LETTERS} (message_id, body, reason, delivery_count, dead_at_ms) "
    f"SELECT message_id, body, ?, delivery_count, ? FROM {MESSAGES} "
    "WHERE message_id = ? AND lease_token = ?"
)
_CANCEL = f"DELETE FROM {MESSAGES} WHERE message_id = ?"

CAPABILITIES = TransportCapabilities(
    max_delay_ms=None,  # a row waits as long as it must; nothing to bridge
    max_message_bytes=1024 * 1024,
    max_send_batch=500,
    max_send_batch_bytes=None,
    max_receive_batch=500,
    native_cancel=True,
    shared_across_processes=True,
)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message an operator should look at, and why it was set aside."""

    message_id: str
    body: bytes
    reason: str
    delivery_count: int
    dead_at_ms: int


class SqliteTransport(Transport):
    """Delayed messages in ``dtimeout_messages`` of an SQLite file (see the module docstring).

    ``delivery_count`` counts hand-outs, including re-queues for a not-yet-due remainder; SQLite
    never dead-letters by count on its own, so that costs nothing.
    """

    name = "sqlite"
    capabilities = CAPABILITIES

    def __init__(self, settings: SqliteSettings, clock: Clock) -> None:
        super().__init__(clock)
        self.settings = settings
        self.db = SqliteDatabase(
            settings,
            role="transport",
            error=TransportError,
            transient_error=TransientTransportError,
            schema=SCHEMA,
        )
        self.polls = 0

    @classmethod
    def from_url(cls, url: str, clock: Clock) -> SqliteTransport:
        transport = cls(SqliteSettings.from_url(url), clock)
        transport.db.connection()  # open now, so a bad path fails at start-up, not mid-run
        return transport

    # -- producing -----------------------------------------------------------------------------

    def send(self, messages: Sequence[OutgoingMessage]) -> list[str | None]:
        if not messages:
            return []
        cap = self.capabilities
        if len(messages) > cap.max_send_batch:
            raise _ValidationError(
                f"sqlite transport sends at most {cap.max_send_batch} messages per call, "
                f"got {len(messages)}"
            )
        for m in messages:
            if len(m.body) > cap.max_message_bytes:
                raise PayloadTooLargeError(
                    f"message {m.message_id} is {len(m.body)} bytes; the sqlite transport "
                    f"accepts at most {cap.max_message_bytes}"
                )
        now = self.clock.now_ms()
        rows = [(m.message_id, bytes(m.body), m.due_at_ms, m.due_at_ms, now) for m in messages]
        self.db.write("send", lambda c: c.executemany(_SEND, rows))
        # Message ids are enough to cancel natively: no handle to remember in the store.
        return [None] * len(messages)

    def cancel(self, refs: Sequence[CancelRef]) -> None:
        """Delete the messages, leased or not: the store already answered ``cancelled``, so a
        delivery in flight will be dropped at claim whatever happens to its row."""
        if refs:
            ids = [(r.message_id,) for r in refs]
            self.db.write("cancel", lambda c: c.executemany(_CANCEL, ids))

    # -- consuming -----------------------------------------------------------------------------

    def receive(
        self, max_messages: int, wait_seconds: float, lease_seconds: float
    ) -> list[Delivery]:
        count = min(max_messages, self.capabilities.max_receive_batch)
        if count <= 0:
            return []
        lease_ms = max(1, round(lease_seconds * 1000))
        deadline = time.monotonic() + max(0.0, wait_seconds)
        poll = self.settings.poll_interval_ms / 1000
        while True:
            now = self.clock.now_ms()
            self.polls += 1
            next_visible = self.db.read("receive", lambda c: c.execute(_NEXT_VISIBLE).fetchone()[0])
            if next_visible is not None and next_visible <= now:
                deliveries = self._lease(count, lease_ms)
                if deliveries:
                    return deliveries
                # Another consumer was faster: look again at once, while time remains.
                if time.monotonic() < deadline:
                    continue
                return []
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            pause = poll
            if next_visible is not None and not is_fake(self.clock):
                # Wake when the next message is due rather than up to a poll interval late.
                pause = min(pause, max(0.001, (next_visible - now) / 1000))
            time.sleep(min(pause, remaining))

    def _lease(self, count: int, lease_ms: int) -> list[Delivery]:
        token = uuid.uuid4().hex

        def lease(c: sqlite3.Connection) -> list[tuple[str, bytes, int, int]]:
            now = self.clock.now_ms()
            if HAS_RETURNING:
                return c.execute(_LEASE, (token, now + lease_ms, now, count)).fetchall()
            due = c.execute(_DUE, (now, count)).fetchall()
            c.executemany(_LEASE_ONE, [(token, now + lease_ms, row[0]) for row in due])
            return [(mid, body, n, due_at) for _, mid, body, n, due_at in due]

        rows = self.db.write("receive", lease)
        rows.sort(key=lambda r: (r[3], r[0]))
        return [
            Delivery(
                message_id=message_id,
                body=bytes(body),
                receipt=token,
                delivery_count=delivery_count,
                extra={"due_at_ms": due_at_ms},
            )
            for message_id, body, delivery_count, due_at_ms in rows
        ]

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Delete each message, only while the delivery's lease token is the row's (see the
        module docstring: a stale delivery must not delete a message someone else holds)."""
        if deliveries:
            rows = [(d.message_id, d.receipt) for d in deliveries]
            self.db.write("ack", lambda c: c.executemany(_ACK, rows))

    def retry_later(self, delivery: Delivery, delay_ms: int) -> None:
        def retry(c: sqlite3.Connection) -> None:
            visible = self.clock.now_ms() + max(0, delay_ms)
            c.execute(_RETRY, (visible, delivery.message_id, delivery.receipt))

        self.db.write("retry_later", retry)

    def extend(self, delivery: Delivery, lease_seconds: float) -> None:
        """Push the lease out; a delivery whose lease was already lost is left as it is (the
        store's ``renew`` tells its caller the truth)."""

        def extend(c: sqlite3.Connection) -> int:
            visible = self.clock.now_ms() + max(1, round(lease_seconds * 1000))
            return c.execute(_EXTEND, (visible, delivery.message_id, delivery.receipt)).rowcount

        if self.db.write("extend", extend) == 0:
            log.debug("sqlite transport: extend of %s found no live lease", delivery.message_id)

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        def move(c: sqlite3.Connection) -> None:
            key = (delivery.message_id, delivery.receipt)
            c.execute(_TO_DLQ, (reason, self.clock.now_ms(), *key))
            c.execute(_ACK, key)

        self.db.write("dead_letter", move)

    # -- inspection ----------------------------------------------------------------------------

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The most recent dead letters, oldest first."""
        sql = (
            "SELECT message_id, body, reason, delivery_count, dead_at_ms FROM "
            f"(SELECT * FROM {DEAD_LETTERS} ORDER BY id DESC LIMIT ?) ORDER BY id"
        )
        rows = self.db.read("dead_letters", lambda c: c.execute(sql, (max(0, limit),)).fetchall())
        return [DeadLetter(r[0], bytes(r[1]), r[2], r[3], r[4]) for r in rows]

    def depth(self) -> dict[str, int]:
        """Messages waiting (not yet visible), ready, leased right now, and dead letters."""
        now = self.clock.now_ms()
        sql = (
            "SELECT "
            "COALESCE(SUM(lease_token IS NULL AND visible_at_ms > ?), 0), "
            "COALESCE(SUM(visible_at_ms <= ?), 0), "
            "COALESCE(SUM(lease_token IS NOT NULL AND visible_at_ms > ?), 0), "
            f"(SELECT COUNT(*) FROM {DEAD_LETTERS}) FROM {MESSAGES}"
        )
        row = self.db.read("depth", lambda c: c.execute(sql, (now, now, now)).fetchone())
        return {"scheduled": row[0], "ready": row[1], "leased": row[2], "dead": row[3]}

    def ping(self) -> None:
        self.db.read("ping", lambda c: c.execute(_NEXT_VISIBLE).fetchall())

    def close(self) -> None:
        self.db.close()

    def stats(self) -> dict[str, int]:
        return {**self.db.stats(), "polls": self.polls}
