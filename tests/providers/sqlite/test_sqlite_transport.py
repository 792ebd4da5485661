"""The sqlite transport beyond the shared contract: lease tokens, re-sends, dead letters, waits."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dtimeout.clock import FakeClock
from dtimeout.errors import PayloadTooLargeError, TransportError, ValidationError
from dtimeout.interfaces import CancelRef, OutgoingMessage
from dtimeout.model import TimeoutMessage
from dtimeout.providers import sqlite_transport
from dtimeout.providers.sqlite_store import SqliteStore
from dtimeout.providers.sqlite_transport import MESSAGES, SqliteTransport

KIND = "payment"
LEASE_S = 10.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "queue.db"


@pytest.fixture
def transport(path: Path, clock: FakeClock) -> Iterator[SqliteTransport]:
    transport = SqliteTransport.from_url(f"sqlite:///{path}", clock)
    yield transport
    transport.close()


@pytest.fixture(params=["returning", "select-then-update"])
def lease_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test over both ways ``receive`` leases rows (``RETURNING`` needs SQLite 3.35)."""
    if request.param == "returning" and not sqlite_transport.HAS_RETURNING:
        pytest.fail(f"this Python's SQLite {sqlite3.sqlite_version} lacks RETURNING")
    monkeypatch.setattr(sqlite_transport, "HAS_RETURNING", request.param == "returning")
    return str(request.param)


def message(clock: FakeClock, key: str, in_ms: int, generation: int = 1) -> OutgoingMessage:
    due = clock.now_ms() + in_ms
    body = TimeoutMessage(KIND, key, generation, due, {"key": key}).encode()
    return OutgoingMessage(f"{KIND}:{key}:{generation}", body, due)


def rows(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute(f"SELECT COUNT(*) FROM {MESSAGES}").fetchone()[0])


def test_capabilities_declare_no_delay_limit_and_native_cancel(
    transport: SqliteTransport,
) -> None:
    cap = transport.capabilities
    assert cap.max_delay_ms is None and cap.native_cancel and cap.shared_across_processes
    assert cap.max_message_bytes == 1024 * 1024
    assert cap.max_send_batch >= 100 and cap.max_receive_batch >= 100


def test_due_messages_come_oldest_due_first_up_to_max(
    transport: SqliteTransport, clock: FakeClock, lease_path: str
) -> None:
    transport.send([message(clock, f"m{i}", 1_000 - i * 10) for i in range(20)])
    assert transport.send([]) == []
    clock.advance(2)
    got = transport.receive(5, 0, LEASE_S)
    assert [d.message_id for d in got] == [f"{KIND}:m{i}:1" for i in range(19, 14, -1)]
    assert all(d.delivery_count == 1 for d in got)
    assert got[0].extra["due_at_ms"] < got[-1].extra["due_at_ms"]
    assert transport.receive(0, 0, LEASE_S) == []


def test_a_resend_of_the_same_id_never_duplicates(
    path: Path, transport: SqliteTransport, clock: FakeClock
) -> None:
    first = message(clock, "a", 5_000)
    transport.send([first])
    moved = message(clock, "a", 1_000)  # same id, re-sent (e.g. after a lost reply)
    transport.send([moved])
    assert rows(path) == 1
    clock.advance(1.5)
    (delivery,) = transport.receive(10, 0, LEASE_S)
    # while leased, another re-send does not make it visible to a second consumer
    transport.send([moved])
    assert transport.receive(10, 0, LEASE_S) == []
    assert rows(path) == 1
    transport.ack([delivery])
    assert rows(path) == 0


def test_a_stale_delivery_cannot_ack_retry_extend_or_dead_letter_a_re_leased_message(
    path: Path, transport: SqliteTransport, clock: FakeClock, lease_path: str
) -> None:
    transport.send([message(clock, "a", 0)])
    (stale,) = transport.receive(1, 0, 1.0)
    clock.advance(2)  # the first consumer's lease ran out
    (live,) = transport.receive(1, 0, LEASE_S)
    assert live.message_id == stale.message_id and live.receipt != stale.receipt
    assert live.delivery_count == 2
    transport.ack([stale])
    transport.retry_later(stale, 0)
    transport.extend(stale, 0.001)
    transport.dead_letter(stale, "stale")
    assert rows(path) == 1
    assert transport.dead_letters() == []
    assert transport.receive(1, 0, LEASE_S) == []  # still leased to the live delivery
    transport.ack([live])
    assert rows(path) == 0


def test_retry_later_counts_hand_outs_and_hides_until_the_delay(
    transport: SqliteTransport, clock: FakeClock, lease_path: str
) -> None:
    transport.send([message(clock, "a", 0)])
    (d1,) = transport.receive(1, 0, LEASE_S)
    transport.retry_later(d1, 3_000)
    clock.advance(2.9)
    assert transport.receive(1, 0, LEASE_S) == []
    clock.advance(0.2)
    (d2,) = transport.receive(1, 0, LEASE_S)
    assert d2.delivery_count == 2
    assert transport.depth() == {"scheduled": 0, "ready": 0, "leased": 1, "dead": 0}


def test_dead_letter_keeps_body_reason_and_count(
    transport: SqliteTransport, clock: FakeClock
) -> None:
    sent = message(clock, "a", 0)
    transport.send([sent])
    (delivery,) = transport.receive(1, 0, LEASE_S)
    transport.dead_letter(delivery, "malformed: field 'kind' is missing")
    (dead,) = transport.dead_letters()
    assert (dead.message_id, dead.body, dead.delivery_count) == (sent.message_id, sent.body, 1)
    assert dead.reason == "malformed: field 'kind' is missing"
    assert dead.dead_at_ms == clock.now_ms()
    assert transport.depth()["dead"] == 1


def test_native_cancel_deletes_waiting_and_leased_messages(
    path: Path, transport: SqliteTransport, clock: FakeClock
) -> None:
    transport.send([message(clock, "waiting", 5_000), message(clock, "due", 0)])
    (leased,) = transport.receive(1, 0, LEASE_S)
    ids = [f"{KIND}:waiting:1", leased.message_id, f"{KIND}:never:1"]
    transport.cancel([CancelRef(i, None) for i in ids])
    assert rows(path) == 0
    transport.ack([leased])  # acking a cancelled delivery is harmless
    transport.retry_later(leased, 0)  # and does not bring it back
    clock.advance(10)
    assert transport.receive(10, 0, LEASE_S) == []


def test_limits_are_checked_before_anything_is_written(
    path: Path, transport: SqliteTransport, clock: FakeClock
) -> None:
    big = OutgoingMessage("x:big:1", b"x" * (1024 * 1024 + 1), clock.now_ms())
    with pytest.raises(PayloadTooLargeError, match="1048577 bytes"):
        transport.send([message(clock, "ok", 0), big])
    too_many = [message(clock, f"m{i}", 0) for i in range(501)]
    with pytest.raises(ValidationError, match="at most 500 messages"):
        transport.send(too_many)
    assert rows(path) == 0


def test_receive_never_moves_a_fake_clock_and_wakes_for_a_message_sent_meanwhile(
    transport: SqliteTransport, clock: FakeClock
) -> None:
    before = clock.now_ms()
    assert transport.receive(10, 0.05, LEASE_S) == []
    assert clock.now_ms() == before
    sender = threading.Timer(0.2, transport.send, args=([message(clock, "late", 0)],))
    sender.start()
    try:
        got = transport.receive(10, 30.0, LEASE_S)  # returns as soon as it arrives
    finally:
        sender.join()
    assert [d.message_id for d in got] == [f"{KIND}:late:1"]
    assert clock.now_ms() == before


def test_store_and_transport_share_one_file(path: Path, clock: FakeClock) -> None:
    url = f"sqlite:///{path}"
    store = SqliteStore.from_url(url, clock)
    transport = SqliteTransport.from_url(url, clock)
    try:
        with sqlite3.connect(path) as conn:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        assert {"dtimeout_timeouts", "dtimeout_messages", "dtimeout_dead_letters"} <= tables
        transport.ping()
        store.ping()
    finally:
        store.close()
        transport.close()


def test_a_closed_transport_says_so(transport: SqliteTransport) -> None:
    transport.close()
    with pytest.raises(TransportError, match="closed"):
        transport.receive(1, 0, LEASE_S)
