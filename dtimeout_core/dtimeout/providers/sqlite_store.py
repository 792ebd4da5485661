"""The ``sqlite`` store: timeout records in one table of the shared SQLite file.

Every call is one ``BEGIN IMMEDIATE`` transaction that reads the rows it needs, asks the pure
``dtimeout.model.decide_*`` function what to do, and writes the answer — so the rules live in
the model alone and a write can never interleave with another process's read of the same row.
A batch is one transaction too: each item still follows the rules in order (a batch that names
one identity twice sees its own first write), and the whole batch commits or rolls back
together, which is both much faster and safer (a caller retrying a failed batch never finds
half of it applied).

Records past ``expires_ms`` are treated as absent by every operation, exactly as if they had
been deleted; ``purge_expired`` only reclaims their space, and runs opportunistically from
``schedule`` and ``claim`` at most every ``purge_interval`` milliseconds.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from dtimeout.clock import Clock
from dtimeout.errors import ProviderError, StoreError, TransientStoreError
from dtimeout.interfaces import (
    CancelOutcome,
    CancelRequest,
    ClaimOutcome,
    ClaimRequest,
    LeaseRef,
    ScheduleOutcome,
    ScheduleRequest,
    Store,
)
from dtimeout.model import (
    ScheduleResult,
    SettleResult,
    Timeout,
    TimeoutState,
    decide_abandon,
    decide_attach_handle,
    decide_cancel,
    decide_claim,
    decide_complete,
    decide_release,
    decide_renew,
    decide_schedule,
    encode_payload,
)
from dtimeout.providers.sqlite_db import SqliteDatabase, SqliteSettings

log = logging.getLogger(__name__)

TABLE = "dtimeout_timeouts"
_COLUMNS = (
    "kind",
    "key",
    "state",
    "generation",
    "due_at_ms",
    "payload",
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
_COLS = ", ".join(_COLUMNS)

SCHEMA = (
    f"""CREATE TABLE IF NOT EXISTS {TABLE} (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        key TEXT NOT NULL,
        state TEXT NOT NULL,
        generation INTEGER NOT NULL,
        due_at_ms INTEGER NOT NULL,
        payload TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        lease_owner TEXT,
        lease_expires_ms INTEGER NOT NULL,
        reason TEXT,
        cancel_request_id TEXT,
        handle TEXT,
        updated_ms INTEGER NOT NULL,
        expires_ms INTEGER NOT NULL,
        orphan INTEGER NOT NULL,
        UNIQUE (kind, key)
    )""",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_due ON {TABLE} (due_at_ms)",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_state_due ON {TABLE} (state, due_at_ms)",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_expires ON {TABLE} (expires_ms)",
)

_SELECT_ONE = f"SELECT {_COLS} FROM {TABLE} WHERE kind = ? AND key = ?"
_UPSERT = (
    f"INSERT INTO {TABLE} ({_COLS}) VALUES ({', '.join('?' * len(_COLUMNS))}) "
    "ON CONFLICT (kind, key) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS[2:])
)
_PREFETCH_CHUNK = 500  # keys per IN (...) query; far below SQLite's variable limit
_PURGE_CHUNK = 5000
_PURGE = (
    f"DELETE FROM {TABLE} WHERE id IN "
    f"(SELECT id FROM {TABLE} WHERE expires_ms <= ? ORDER BY expires_ms LIMIT {_PURGE_CHUNK})"
)


def _to_row(t: Timeout) -> tuple[Any, ...]:
    return (
        t.kind,
        t.key,
        t.state.value,
        t.generation,
        t.due_at_ms,
        encode_payload(t.payload),
        t.attempts,
        t.lease_owner,
        t.lease_expires_ms,
        t.reason,
        t.cancel_request_id,
        t.handle,
        t.updated_ms,
        t.expires_ms,
        int(t.orphan),
    )


def _from_row(row: Sequence[Any]) -> Timeout:
    return Timeout(
        kind=row[0],
        key=row[1],
        state=TimeoutState(row[2]),
        generation=row[3],
        due_at_ms=row[4],
        payload=json.loads(row[5]),
        attempts=row[6],
        lease_owner=row[7],
        lease_expires_ms=row[8],
        reason=row[9],
        cancel_request_id=row[10],
        handle=row[11],
        updated_ms=row[12],
        expires_ms=row[13],
        orphan=bool(row[14]),
    )


class _Batch:
    """The rows one transaction touches: read once, decided in order, written in one go."""

    def __init__(self, conn: sqlite3.Connection, now_ms: int) -> None:
        self.conn = conn
        self.now_ms = now_ms
        self._seen: dict[tuple[str, str], Timeout | None] = {}
        self._dirty: dict[tuple[str, str], Timeout] = {}

    def _live(self, row: Sequence[Any] | None) -> Timeout | None:
        record = None if row is None else _from_row(row)
        if record is not None and record.expires_ms <= self.now_ms:
            return None  # expired: absent, whether or not it was purged yet
        return record

    def prefetch(self, idents: Iterable[tuple[str, str]]) -> None:
        """Read many rows with a few ``IN`` queries instead of one query per item."""
        by_kind: dict[str, dict[str, None]] = {}
        for kind, key in idents:
            if (kind, key) not in self._seen:
                by_kind.setdefault(kind, {})[key] = None
        for kind, unique in by_kind.items():
            keys = list(unique)
            for start in range(0, len(keys), _PREFETCH_CHUNK):
                chunk = keys[start : start + _PREFETCH_CHUNK]
                marks = ", ".join("?" * len(chunk))
                sql = f"SELECT {_COLS} FROM {TABLE} WHERE kind = ? AND key IN ({marks})"
                found = {row[1]: row for row in self.conn.execute(sql, (kind, *chunk))}
                for key in chunk:
                    self._seen[(kind, key)] = self._live(found.get(key))

    def get(self, kind: str, key: str) -> Timeout | None:
        ident = (kind, key)
        if ident not in self._seen:
            self._seen[ident] = self._live(self.conn.execute(_SELECT_ONE, ident).fetchone())
        return self._seen[ident]

    def put(self, record: Timeout | None) -> None:
        if record is not None:
            self._seen[record.identity] = record
            self._dirty[record.identity] = record

    def flush(self) -> None:
        if self._dirty:
            self.conn.executemany(_UPSERT, [_to_row(t) for t in self._dirty.values()])


class SqliteStore(Store):
    """Timeout records in ``dtimeout_timeouts`` of an SQLite file (see the module docstring)."""

    name = "sqlite"

    def __init__(self, settings: SqliteSettings, clock: Clock) -> None:
        super().__init__(clock)
        self.settings = settings
        self.db = SqliteDatabase(
            settings,
            role="store",
            error=StoreError,
            transient_error=TransientStoreError,
            schema=SCHEMA,
        )
        self._purge_lock = threading.Lock()
        self._last_purge = time.monotonic()
        self.purged = 0

    @classmethod
    def from_url(cls, url: str, clock: Clock) -> SqliteStore:
        store = cls(SqliteSettings.from_url(url), clock)
        store.db.connection()  # open now, so a bad path fails at start-up, not mid-run
        return store

    def _batch(
        self,
        op: str,
        fn: Callable[[_Batch], list[Any]],
        idents: Sequence[tuple[str, str]] = (),
    ) -> list[Any]:
        def run(conn: sqlite3.Connection) -> list[Any]:
            batch = _Batch(conn, self.clock.now_ms())
            if len(idents) > 1:
                batch.prefetch(idents)
            answers = fn(batch)
            batch.flush()
            return answers

        return self.db.write(op, run)

    # -- transitions ---------------------------------------------------------------------------

    def schedule(self, requests: Sequence[ScheduleRequest]) -> list[ScheduleOutcome]:
        if not requests:
            return []

        def each(b: _Batch) -> list[ScheduleOutcome]:
            out = []
            for r in requests:
                current = b.get(r.kind, r.key)
                record, result = decide_schedule(
                    current,
                    kind=r.kind,
                    key=r.key,
                    due_at_ms=r.due_at_ms,
                    payload=r.payload,
                    now_ms=b.now_ms,
                    retention_ms=r.retention_ms,
                )
                previous = None
                if result is not ScheduleResult.REFUSED:
                    b.put(record)
                    if result is ScheduleResult.ADVANCED and current is not None:
                        previous = current.handle
                out.append(ScheduleOutcome(result, record, previous_handle=previous))
            return out

        outcomes: list[ScheduleOutcome] = self._batch(
            "schedule", each, [(r.kind, r.key) for r in requests]
        )
        self._maybe_purge()
        return outcomes

    def attach_handles(self, items: Sequence[tuple[str, str, int, str]]) -> None:
        if not items:
            return

        def each(b: _Batch) -> list[None]:
            for kind, key, generation, handle in items:
                b.put(decide_attach_handle(b.get(kind, key), generation=generation, handle=handle))
            return []

        self._batch("attach_handles", each, [(i[0], i[1]) for i in items])

    def cancel(self, requests: Sequence[CancelRequest]) -> list[CancelOutcome]:
        if not requests:
            return []

        def each(b: _Batch) -> list[CancelOutcome]:
            out = []
            for r in requests:
                current = b.get(r.kind, r.key)
                record, result = decide_cancel(current, request_id=r.request_id, now_ms=b.now_ms)
                b.put(record)
                after = record or current
                out.append(
                    CancelOutcome(
                        result,
                        generation=None if after is None else after.generation,
                        handle=None if after is None else after.handle,
                    )
                )
            return out

        return self._batch("cancel", each, [(r.kind, r.key) for r in requests])

    def claim(self, requests: Sequence[ClaimRequest]) -> list[ClaimOutcome]:
        if not requests:
            return []

        def each(b: _Batch) -> list[ClaimOutcome]:
            out = []
            for r in requests:
                current = b.get(r.message.kind, r.message.key)
                record, result = decide_claim(
                    current,
                    message=r.message,
                    owner=r.owner,
                    lease_ms=r.lease_ms,
                    max_attempts=r.max_attempts,
                    orphan_policy=r.orphan_policy,
                    now_ms=b.now_ms,
                    retention_ms=r.retention_ms,
                )
                b.put(record)
                out.append(ClaimOutcome(result, record or current))
            return out

        outcomes: list[ClaimOutcome] = self._batch(
            "claim", each, [(r.message.kind, r.message.key) for r in requests]
        )
        self._maybe_purge()
        return outcomes

    def renew(self, leases: Sequence[LeaseRef], lease_ms: int) -> list[bool]:
        if not leases:
            return []

        def each(b: _Batch) -> list[bool]:
            out = []
            for lease in leases:
                record, held = decide_renew(
                    b.get(lease.kind, lease.key),
                    generation=lease.generation,
                    owner=lease.owner,
                    lease_ms=lease_ms,
                    now_ms=b.now_ms,
                )
                b.put(record)
                out.append(held)
            return out

        return self._batch("renew", each, [(x.kind, x.key) for x in leases])

    def complete(self, leases: Sequence[LeaseRef]) -> list[SettleResult]:
        if not leases:
            return []

        def each(b: _Batch) -> list[SettleResult]:
            out = []
            for lease in leases:
                record, result = decide_complete(
                    b.get(lease.kind, lease.key),
                    generation=lease.generation,
                    owner=lease.owner,
                    now_ms=b.now_ms,
                )
                b.put(record)
                out.append(result)
            return out

        return self._batch("complete", each, [(x.kind, x.key) for x in leases])

    def release(
        self,
        lease: LeaseRef,
        *,
        backoff_ms: int,
        max_attempts: int,
        error: str,
        retention_ms: int,
    ) -> tuple[SettleResult, Timeout | None]:
        def one(b: _Batch) -> list[tuple[SettleResult, Timeout | None]]:
            current = b.get(lease.kind, lease.key)
            record, result = decide_release(
                current,
                generation=lease.generation,
                owner=lease.owner,
                backoff_ms=backoff_ms,
                max_attempts=max_attempts,
                error=error,
                now_ms=b.now_ms,
                retention_ms=retention_ms,
            )
            b.put(record)
            return [(result, record or current)]

        answer: tuple[SettleResult, Timeout | None] = self._batch("release", one)[0]
        return answer

    def abandon(
        self, kind: str, key: str, generation: int, state: TimeoutState, reason: str
    ) -> SettleResult:
        def one(b: _Batch) -> list[SettleResult]:
            record, result = decide_abandon(
                b.get(kind, key), generation=generation, state=state, reason=reason, now_ms=b.now_ms
            )
            b.put(record)
            return [result]

        answer: SettleResult = self._batch("abandon", one)[0]
        return answer

    # -- reads ---------------------------------------------------------------------------------

    def get(self, kind: str, key: str) -> Timeout | None:
        now = self.clock.now_ms()
        rows = self.db.read("get", lambda c: c.execute(_SELECT_ONE, (kind, key)).fetchall())
        if not rows:
            return None
        record = _from_row(rows[0])
        return None if record.expires_ms <= now else record

    def list(
        self, *, state: TimeoutState | None = None, kind: str | None = None, limit: int = 100
    ) -> list[Timeout]:
        where = ["expires_ms > ?"]
        params: list[Any] = [self.clock.now_ms()]
        if state is not None:
            where.append("state = ?")
            params.append(TimeoutState(state).value)
        if kind is not None:
            where.append("kind = ?")
            params.append(kind)
        params.append(max(0, limit))
        sql = (
            f"SELECT {_COLS} FROM {TABLE} WHERE {' AND '.join(where)} "
            "ORDER BY due_at_ms, kind, key LIMIT ?"
        )
        rows = self.db.read("list", lambda c: c.execute(sql, params).fetchall())
        return [_from_row(row) for row in rows]

    # -- housekeeping --------------------------------------------------------------------------

    def purge_expired(self) -> int:
        """Delete every record past its ``expires_ms``, in chunks so no transaction is long."""
        total = 0
        while True:
            deleted = self._purge_chunk()
            total += deleted
            if deleted < _PURGE_CHUNK:
                return total

    def _purge_chunk(self) -> int:
        now = self.clock.now_ms()
        deleted: int = self.db.write("purge", lambda c: c.execute(_PURGE, (now,)).rowcount)
        self.purged += deleted
        return deleted

    def _maybe_purge(self) -> None:
        """One purge chunk at most every ``purge_interval`` (real time), from one thread."""
        interval = self.settings.purge_interval_ms / 1000
        if time.monotonic() - self._last_purge < interval:
            return
        if not self._purge_lock.acquire(blocking=False):
            return
        try:
            self._last_purge = time.monotonic()
            self._purge_chunk()
        except ProviderError as exc:
            # The caller's own transaction has committed; a failed clean-up must not turn its
            # success into an error (a retry would then re-apply it). Try again next interval.
            log.warning("sqlite store: purging expired records failed: %s", exc)
        finally:
            self._purge_lock.release()

    def ping(self) -> None:
        self.db.read("ping", lambda c: c.execute(f"SELECT 1 FROM {TABLE} LIMIT 1").fetchall())

    def close(self) -> None:
        self.db.close()

    def stats(self) -> dict[str, int]:
        return {**self.db.stats(), "purged": self.purged}
