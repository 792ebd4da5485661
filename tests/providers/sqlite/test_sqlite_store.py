"""The sqlite store beyond the shared contract: batches, expiry, files, locks, threads."""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dtimeout.clock import FakeClock
from dtimeout.errors import (
    ConfigurationError,
    StoreError,
    TransientStoreError,
    ValidationError,
)
from dtimeout.interfaces import CancelRequest, ClaimRequest, ScheduleRequest
from dtimeout.model import (
    CancelResult,
    ClaimResult,
    OrphanPolicy,
    ScheduleResult,
    TimeoutMessage,
    TimeoutState,
)
from dtimeout.providers.sqlite_store import TABLE, SqliteStore

KIND = "payment"
DAY_MS = 24 * 3600 * 1000


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "store.db"


@pytest.fixture
def store(path: Path, clock: FakeClock) -> Iterator[SqliteStore]:
    store = SqliteStore.from_url(f"sqlite:///{path}", clock)
    yield store
    store.close()


def req(
    clock: FakeClock, key: str, in_ms: int, payload: object = None, keep_ms: int = DAY_MS
) -> ScheduleRequest:
    return ScheduleRequest(KIND, key, clock.now_ms() + in_ms, payload, keep_ms)


def raw_count(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute(f"SELECT COUNT(*) FROM {TABLE}").fetchone()[0])


def claim_req(key: str, generation: int, owner: str) -> ClaimRequest:
    msg = TimeoutMessage(KIND, key, generation, 0, None)
    return ClaimRequest(msg, owner, 30_000, 5, OrphanPolicy.FIRE, DAY_MS)


# -- batches -------------------------------------------------------------------------------------


def test_a_batch_naming_one_identity_twice_applies_the_rules_in_order(
    store: SqliteStore, clock: FakeClock
) -> None:
    outs = store.schedule([req(clock, "k", 5_000), req(clock, "k", 1_000), req(clock, "k", 9_000)])
    assert [o.result for o in outs] == [
        ScheduleResult.CREATED,
        ScheduleResult.ADVANCED,
        ScheduleResult.EXTENDED,
    ]
    assert [o.timeout.generation for o in outs] == [1, 2, 2]
    cancels = store.cancel([CancelRequest(KIND, "k", "a"), CancelRequest(KIND, "k", "b")])
    assert [c.result for c in cancels] == [CancelResult.CANCELLED, CancelResult.ALREADY_CANCELLED]
    record = store.get(KIND, "k")
    assert record is not None
    assert (record.state, record.generation, record.due_at_ms) == (
        TimeoutState.CANCELLED,
        2,
        outs[2].timeout.due_at_ms,
    )


def test_a_batch_commits_whole_or_not_at_all(store: SqliteStore, clock: FakeClock) -> None:
    good = req(clock, "good", 1_000, {"ok": True})
    bad = req(clock, "bad", 1_000, {"not json": object()})
    with pytest.raises(ValidationError, match="not JSON-serialisable"):
        store.schedule([good, bad])
    assert store.get(KIND, "good") is None
    assert store.schedule([good])[0].result is ScheduleResult.CREATED


def test_records_survive_reopening_and_keep_every_field(
    path: Path, store: SqliteStore, clock: FakeClock
) -> None:
    store.schedule([req(clock, "clé-✓", 0, {"emoji": "⏰", "n": [1, 2.5, None]})])
    store.attach_handles([(KIND, "clé-✓", 1, "h-1")])
    clock.advance(1)
    assert store.claim([claim_req("clé-✓", 1, "owner-1")])[0].result is ClaimResult.CLAIMED
    before = store.get(KIND, "clé-✓")
    store.close()
    again = SqliteStore.from_url(f"sqlite:///{path}", clock)
    try:
        assert again.get(KIND, "clé-✓") == before
        assert before is not None and before.handle == "h-1" and before.lease_owner == "owner-1"
        assert before.payload == {"emoji": "⏰", "n": [1, 2.5, None]}
    finally:
        again.close()


def test_list_orders_by_due_and_honours_limit_and_kind(
    store: SqliteStore, clock: FakeClock
) -> None:
    now = clock.now_ms()
    store.schedule(
        [ScheduleRequest(KIND, f"k{i}", now + (10 - i) * 1000, None, DAY_MS) for i in range(10)]
        + [ScheduleRequest("other", "x", now, None, DAY_MS)]
    )
    keys = [t.key for t in store.list(kind=KIND, limit=4)]
    assert keys == ["k9", "k8", "k7", "k6"]
    assert [t.kind for t in store.list(limit=1)] == ["other"]
    assert store.list(limit=0) == []


def test_large_batches_over_several_kinds_read_every_row_right(
    store: SqliteStore, clock: FakeClock
) -> None:
    now = clock.now_ms()
    short = [ScheduleRequest("a", f"k{i}", now, None, 1_000) for i in range(600)]
    long = [ScheduleRequest("b", f"k{i}", now, {"i": i}, DAY_MS) for i in range(600)]
    store.schedule(short + long)
    clock.advance(5)  # every "a" record has expired, no "b" record has
    asks = [CancelRequest(kind, f"k{i}", "r") for i in range(605) for kind in ("a", "b")]
    answers = {(r.kind, r.key): o.result for r, o in zip(asks, store.cancel(asks), strict=True)}
    assert all(answers[("a", f"k{i}")] is CancelResult.NOT_FOUND for i in range(605))
    assert all(answers[("b", f"k{i}")] is CancelResult.CANCELLED for i in range(600))
    assert all(answers[("b", f"k{i}")] is CancelResult.NOT_FOUND for i in range(600, 605))


# -- expiry --------------------------------------------------------------------------------------


def test_expired_records_are_absent_before_any_purge(
    path: Path, store: SqliteStore, clock: FakeClock
) -> None:
    store.schedule([req(clock, "k", 0, keep_ms=1_000)])
    clock.advance(2)
    assert raw_count(path) == 1  # still on disk …
    assert store.get(KIND, "k") is None  # … but gone for every operation
    assert store.list() == []
    assert store.cancel([CancelRequest(KIND, "k", "r")])[0].result is CancelResult.NOT_FOUND
    again = store.schedule([req(clock, "k", 1_000)])[0]
    assert again.result is ScheduleResult.CREATED and again.timeout.generation == 1


def test_purge_expired_deletes_only_expired_rows_in_chunks(
    path: Path, store: SqliteStore, clock: FakeClock
) -> None:
    n = 12_000  # more than one purge chunk
    store.schedule([req(clock, f"old{i}", 0, keep_ms=1_000) for i in range(n)])
    store.schedule([req(clock, "young", 0, keep_ms=DAY_MS)])
    clock.advance(5)
    assert store.purge_expired() == n
    assert raw_count(path) == 1
    assert store.purge_expired() == 0
    assert store.get(KIND, "young") is not None


def test_schedule_and_claim_purge_opportunistically(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "p.db"
    store = SqliteStore.from_url(f"sqlite:///{path}?purge_interval=0", clock)
    try:
        store.schedule([req(clock, "old", 0, keep_ms=1_000)])
        clock.advance(5)
        store.schedule([req(clock, "new", 0)])
        assert raw_count(path) == 1
        assert store.stats()["purged"] == 1
    finally:
        store.close()


def test_a_failed_opportunistic_purge_does_not_fail_the_schedule(
    tmp_path: Path,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = SqliteStore.from_url(f"sqlite:///{tmp_path}/p.db?purge_interval=0", clock)

    def broken() -> int:
        raise TransientStoreError("locked for the test")

    monkeypatch.setattr(store, "_purge_chunk", broken)
    try:
        with caplog.at_level(logging.WARNING):
            out = store.schedule([req(clock, "k", 0)])
        assert out[0].result is ScheduleResult.CREATED
        assert store.get(KIND, "k") is not None
        assert "purging expired records failed" in caplog.text
    finally:
        store.close()


# -- files, locks and errors ---------------------------------------------------------------------


def test_a_lock_held_by_another_connection_is_waited_out(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "locked.db"
    store = SqliteStore.from_url(f"sqlite:///{path}?busy_timeout=20&lock_retries=40", clock)
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    releaser = threading.Timer(0.3, other.execute, args=("COMMIT",))
    releaser.start()
    try:
        assert store.schedule([req(clock, "k", 0)])[0].result is ScheduleResult.CREATED
        assert store.stats()["lock_retries"] > 0
    finally:
        releaser.join()
        other.close()
        store.close()


def test_a_lock_that_never_ends_is_a_transient_error_and_leaves_no_transaction(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / "locked.db"
    store = SqliteStore.from_url(f"sqlite:///{path}?busy_timeout=10&lock_retries=2", clock)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(TransientStoreError, match="stayed locked after 2 retries") as info:
            store.schedule([req(clock, "k", 0)])
        assert info.value.transient
        assert isinstance(info.value.__cause__, sqlite3.OperationalError)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert store.schedule([req(clock, "k", 0)])[0].result is ScheduleResult.CREATED
    store.close()


def test_other_sqlite_errors_become_permanent_store_errors(
    path: Path, store: SqliteStore, clock: FakeClock
) -> None:
    with sqlite3.connect(path) as other:
        other.execute(f"DROP TABLE {TABLE}")
    with pytest.raises(StoreError, match="no such table") as info:
        store.get(KIND, "k")
    assert not info.value.transient
    assert isinstance(info.value.__cause__, sqlite3.OperationalError)


def test_a_file_from_a_newer_dtimeout_is_refused(path: Path, clock: FakeClock) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(ConfigurationError, match="newer dtimeout"):
        SqliteStore.from_url(f"sqlite:///{path}", clock)


def test_the_file_uses_wal(path: Path, store: SqliteStore) -> None:
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_closed_store_says_so(store: SqliteStore) -> None:
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.get(KIND, "k")


# -- threads -------------------------------------------------------------------------------------


def test_threads_share_one_store_and_each_key_is_claimed_once(
    store: SqliteStore, clock: FakeClock
) -> None:
    keys = [f"t{i}" for i in range(200)]
    store.schedule([req(clock, k, 0) for k in keys])
    clock.advance(1)
    results: dict[str, list[ClaimResult]] = {k: [] for k in keys}
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(owner: str) -> None:
        try:
            for key in keys:
                out = store.claim([claim_req(key, 1, owner)])[0]
                with lock:
                    results[key].append(out.result)
        except BaseException as exc:  # reported below, never swallowed
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    for key in keys:
        assert results[key].count(ClaimResult.CLAIMED) == 1, (key, results[key])
        assert results[key].count(ClaimResult.BUSY) == 5
