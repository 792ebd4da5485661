"""The ``sqlite`` store: timeout records in one table of the shared SQLite file.

Every call is one ``BEGIN IMMEDIATE`` transaction (``transaction`` below) in which the shared
``RecordStore`` reads the rows it needs, asks the pure ``dtimeout.model.decide_*`` function what
to do, and writes the answer — so the rules live in the model alone and a write can never
interleave with another process's read of the same row.
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
from typing import Any, TypeVar

from dtimeout.clock import Clock
from dtimeout.errors import ProviderError, StoreError, TransientStoreError
from dtimeout.model import Timeout, TimeoutState, encode_payload
from dtimeout.providers.records import RecordStore, RecordTransaction
from dtimeout.providers.sqlite_db import SqliteDatabase, SqliteSettings

log = logging.getLogger(__name__)

T = TypeVar("T")

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


class SqliteStore(RecordStore):
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

    def transaction(
        self, op: str, idents: Sequence[tuple[str, str]], work: Callable[[RecordTransaction], T]
    ) -> T:
        def run(conn: sqlite3.Connection) -> T:
            batch = _Batch(conn, self.clock.now_ms())
            if len(idents) > 1:
                batch.prefetch(idents)
            answer = work(batch)
            batch.flush()
            return answer

        result: T = self.db.write(op, run)
        return result

    def after_write(self, op: str) -> None:
        self._maybe_purge()

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
