"""The SQLite file shared by the ``sqlite`` store and transport: URL settings, connections, retry.

Why it is built this way:

* **WAL journal.** Readers never block the writer and the writer never blocks readers, so
  consumers polling for due messages do not slow producers down.
* **``BEGIN IMMEDIATE`` for every write.** The write lock is taken up front. A deferred
  transaction that reads and then writes can fail with ``SQLITE_BUSY_SNAPSHOT`` when another
  process committed in between, which no busy timeout can fix; an immediate one waits its turn
  in the busy handler instead.
* **busy_timeout plus a bounded retry with jittered backoff.** The busy handler covers ordinary
  waits; the retry covers the cases SQLite reports as busy without waiting (WAL recovery, the
  journal-mode switch while many processes open a fresh file at once). Only a lock that
  survives every retry reaches the caller, as a ``Transient*Error`` the consumer's retry policy
  knows.
* **``synchronous=NORMAL``.** Under WAL this never corrupts the file and survives a crash of any
  process; a power loss may lose the last transactions before the WAL is synced. That is the
  usual trade for an embedded queue (fsync on every commit costs an order of magnitude in
  throughput). ``?synchronous=full`` restores fsync-per-commit.
* **One connection per thread.** ``sqlite3`` connections must not be used by two threads at
  once; consumers run worker threads. A connection held by a thread that ended is closed when
  its thread-local holder is collected. A forked child opens its own connections.
* **Directories: one level, like ``mkdir`` without ``-p``.** The file's own directory is created
  when its parent exists — the default ``./.dtimeout/dtimeout.db`` and ``sqlite:///data/t.db``
  work in a fresh checkout — but a missing tree above it (``sqlite:////nonexistent/x/t.db``) is a
  ``ConfigurationError`` naming the path: it is almost always a typo or an unmounted volume, and
  silently building it would put the database somewhere nobody looks.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import parse_qsl, urlsplit

from dtimeout.errors import ConfigurationError, ProviderError

log = logging.getLogger(__name__)

T = TypeVar("T")

SCHEME = "sqlite"
DEFAULT_URL = "sqlite:///./.dtimeout/dtimeout.db"
SCHEMA_VERSION = 1
MIN_SQLITE = (3, 24, 0)  # INSERT … ON CONFLICT DO UPDATE
_SYNCHRONOUS = ("off", "normal", "full", "extra")
# SQLITE_BUSY and SQLITE_LOCKED (primary result codes; extended codes carry them in the low byte).
_BUSY_CODES = (5, 6)


@dataclass(frozen=True, slots=True)
class SqliteSettings:
    """Typed settings of a ``sqlite://`` URL.

    ``sqlite:///relative/path.db`` is relative to the working directory, ``sqlite:////abs.db``
    absolute (the SQLAlchemy convention). Options, all times in milliseconds like SQLite's own
    ``busy_timeout``: ``busy_timeout`` (5000), ``lock_retries`` (10), ``synchronous``
    (off|normal|full|extra, default normal), ``poll_interval`` (how often an idle ``receive``
    looks again, 50) and ``purge_interval`` (how often a store forgets expired records, 60000).
    """

    path: Path
    busy_timeout_ms: int = 5000
    lock_retries: int = 10
    synchronous: str = "normal"
    poll_interval_ms: int = 50
    purge_interval_ms: int = 60_000

    @classmethod
    def from_url(cls, url: str) -> SqliteSettings:
        """Parse ``url``; raise :class:`ConfigurationError` naming what is wrong."""
        parts = urlsplit(url)
        if parts.scheme != SCHEME:
            raise ConfigurationError(f"not a sqlite URL: {url!r} (expected sqlite:///path.db)")
        if parts.netloc:
            raise ConfigurationError(
                f"sqlite URL {url!r} names a host {parts.netloc!r}; use sqlite:///relative.db "
                "or sqlite:////absolute/path.db"
            )
        if parts.fragment:
            raise ConfigurationError(f"sqlite URL {url!r} has a fragment; remove '#...'")
        raw = parts.path[1:] if parts.path.startswith("/") else parts.path
        if not raw or raw.endswith("/"):
            raise ConfigurationError(
                f"sqlite URL {url!r} has no file name; expected sqlite:///relative/path.db "
                "or sqlite:////absolute/path.db"
            )
        if raw == ":memory:" or raw.startswith("file:"):
            raise ConfigurationError(
                f"sqlite URL {url!r}: only files are supported (several connections and "
                "processes share it); use memory:// for an in-process provider"
            )
        options: dict[str, str] = {}
        for name, value in parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False):
            if name in options:
                raise ConfigurationError(f"sqlite URL option {name!r} is given twice")
            options[name] = value
        known = ("busy_timeout", "lock_retries", "synchronous", "poll_interval", "purge_interval")
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ConfigurationError(
                f"unknown sqlite URL option {unknown[0]!r} (known: {', '.join(known)})"
            )
        synchronous = options.get("synchronous", "normal").lower()
        if synchronous not in _SYNCHRONOUS:
            raise ConfigurationError(
                f"sqlite URL option synchronous must be one of {', '.join(_SYNCHRONOUS)}, "
                f"got {options['synchronous']!r}"
            )
        return cls(
            path=Path(raw).expanduser(),
            busy_timeout_ms=_int_option(options, "busy_timeout", 5000, minimum=0),
            lock_retries=_int_option(options, "lock_retries", 10, minimum=0),
            synchronous=synchronous,
            poll_interval_ms=_int_option(options, "poll_interval", 50, minimum=1),
            purge_interval_ms=_int_option(options, "purge_interval", 60_000, minimum=0),
        )


def _int_option(options: dict[str, str], name: str, default: int, *, minimum: int) -> int:
    if name not in options:
        return default
    value = options[name]
    try:
        number = int(value)
    except ValueError:
        number = minimum - 1
    if number < minimum:
        raise ConfigurationError(
            f"sqlite URL option {name} must be an integer >= {minimum}, got {value!r}"
        )
    return number


def is_busy(exc: sqlite3.Error) -> bool:
    """True for "database is locked" / "database table is locked" / busy errors."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return (code & 0xFF) in _BUSY_CODES
    text = str(exc).lower()
    return "locked" in text or "busy" in text


class _Holder:
    """Owns one thread's connection; weakly referenced so a finished thread's one is freed."""

    __slots__ = ("__weakref__", "conn", "pid")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.pid = os.getpid()

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.conn.close()


class SqliteDatabase:
    """Thread-local connections to one file, and ``read``/``write`` with the retry policy.

    ``role`` ("store" or "transport") names the caller in error messages; ``error`` and
    ``transient_error`` are the provider error classes raised for it. ``schema`` is run once,
    in one immediate transaction, the first time this object connects.
    """

    def __init__(
        self,
        settings: SqliteSettings,
        *,
        role: str,
        error: type[ProviderError],
        transient_error: type[ProviderError],
        schema: Sequence[str],
    ) -> None:
        self.settings = settings
        self.path = settings.path.absolute()
        self.role = role
        self._error = error
        self._transient = transient_error
        self._schema = tuple(schema)
        self._local = threading.local()
        self._holders: weakref.WeakSet[_Holder] = weakref.WeakSet()
        self._lock = threading.Lock()  # holders and counters
        self._open_lock = threading.Lock()  # first-time preparation of the file
        self._ready = False
        self._closed = False
        self.transactions = 0
        self.reads = 0
        self.lock_retries = 0

    # -- connections ---------------------------------------------------------------------------

    def connection(self) -> sqlite3.Connection:
        """This thread's connection, opened (and the file prepared) on first use."""
        if self._closed:
            raise self._error(f"sqlite {self.role} on {self.path} is closed")
        holder: _Holder | None = getattr(self._local, "holder", None)
        if holder is None or holder.pid != os.getpid():
            holder = _Holder(self._connect())
            self._local.holder = holder
            with self._lock:
                self._holders.add(holder)
        return holder.conn

    def _connect(self) -> sqlite3.Connection:
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise ConfigurationError(
                f"the sqlite provider needs SQLite {'.'.join(map(str, MIN_SQLITE))} or newer "
                f"(upserts); this Python uses {sqlite3.sqlite_version}"
            )
        directory = self.path.parent
        if not directory.is_dir():
            # Like ``mkdir`` without ``-p``: the file's own directory is made when its parent
            # exists (so ./.dtimeout/ and ./data/ appear on first use), deeper trees are not. A
            # URL pointing into a missing tree is a typo or an unmounted volume far more often
            # than a wish for new directories.
            if not directory.parent.exists():
                raise ConfigurationError(
                    f"cannot create sqlite file {self.path}: its directory {directory} does not "
                    f"exist, nor does {directory.parent} (only the file's own directory is "
                    "created; create the others first)"
                )
            try:
                directory.mkdir(exist_ok=True)
            except OSError as exc:
                raise ConfigurationError(
                    f"cannot create the directory for sqlite file {self.path}: {exc.strerror}"
                ) from exc
        try:
            conn = sqlite3.connect(
                str(self.path),
                timeout=self.settings.busy_timeout_ms / 1000,
                isolation_level=None,  # autocommit; we issue BEGIN IMMEDIATE / COMMIT ourselves
                check_same_thread=False,  # only ``close`` crosses threads
                cached_statements=256,
            )
            conn.execute(f"PRAGMA busy_timeout = {self.settings.busy_timeout_ms}")
            conn.execute(f"PRAGMA synchronous = {self.settings.synchronous.upper()}")
        except sqlite3.Error as exc:
            raise ConfigurationError(f"cannot open sqlite file {self.path}: {exc}") from exc
        if not self._ready:
            with self._open_lock:
                if not self._ready:
                    self._prepare(conn)
                    self._ready = True
        return conn

    def _prepare(self, conn: sqlite3.Connection) -> None:
        """Switch the file to WAL and create this role's tables (idempotent, retried)."""

        def wal(c: sqlite3.Connection) -> str:
            return str(c.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower()

        def schema(c: sqlite3.Connection) -> None:
            version = int(c.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise ConfigurationError(
                    f"sqlite file {self.path} was written by a newer dtimeout "
                    f"(schema {version}, this one knows {SCHEMA_VERSION})"
                )
            for statement in self._schema:
                c.execute(statement)
            if version < SCHEMA_VERSION:
                c.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

        try:
            mode = self._attempts("open", lambda: wal(conn))
            if mode != "wal":
                raise ConfigurationError(
                    f"sqlite file {self.path} cannot use WAL journaling (got {mode!r}); "
                    "put it on a local filesystem"
                )
            self._attempts("open", lambda: self._in_transaction(conn, schema))
        except ProviderError as exc:
            conn.close()
            if exc.transient:
                raise
            raise ConfigurationError(f"cannot prepare sqlite file {self.path}: {exc}") from exc
        except BaseException:
            conn.close()
            raise

    def close(self) -> None:
        """Close every thread's connection; later use raises the role's error."""
        self._closed = True
        with self._lock:
            holders = list(self._holders)
            self._holders.clear()
        for holder in holders:
            holder.close()

    # -- transactions --------------------------------------------------------------------------

    def write(self, op: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in one ``BEGIN IMMEDIATE`` transaction, retried when the file is locked.

        ``fn`` must be safe to run again: on a lock error everything it did is rolled back.
        """
        return self._attempts(op, lambda: self._in_transaction(self.connection(), fn))

    def read(self, op: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` outside an explicit transaction (a WAL snapshot per statement)."""
        result = self._attempts(op, lambda: fn(self.connection()))
        with self._lock:
            self.reads += 1
        return result

    def stats(self) -> dict[str, int]:
        """Requests made to the file: ``round_trips`` = committed transactions + reads."""
        return {
            "round_trips": self.transactions + self.reads,
            "transactions": self.transactions,
            "reads": self.reads,
            "lock_retries": self.lock_retries,
        }

    def _in_transaction(self, conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
        with self._lock:
            self.transactions += 1
        return result

    def _attempts(self, op: str, call: Callable[[], T]) -> T:
        """Call, retrying busy/locked errors with jittered exponential backoff; translate."""
        delay = 0.005
        last: sqlite3.Error | None = None
        for attempt in range(self.settings.lock_retries + 1):
            try:
                return call()
            except sqlite3.Error as exc:
                if not is_busy(exc):
                    raise self._error(
                        f"sqlite {self.role} {op} failed on {self.path}: {exc}"
                    ) from exc
                last = exc
            if attempt < self.settings.lock_retries:
                with self._lock:
                    self.lock_retries += 1
                time.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, 0.5)
        log.warning("sqlite %s %s: still locked after %d retries", self.role, op, attempt)
        raise self._transient(
            f"sqlite {self.role} {op}: {self.path} stayed locked after "
            f"{self.settings.lock_retries} retries ({last})"
        ) from last
