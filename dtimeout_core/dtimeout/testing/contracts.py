"""Store and transport contracts: each transition and each transport verb, one provider at a time.

These talk to the provider directly (no consumer) so a failure points at one operation. The
expected answers are the pure rules of ``dtimeout.model``; every store must give the same.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from dtimeout.clock import SYSTEM_CLOCK, Clock, FakeClock
from dtimeout.interfaces import (
    CancelRef,
    CancelRequest,
    ClaimRequest,
    LeaseRef,
    OutgoingMessage,
    ScheduleRequest,
    Store,
    Transport,
)
from dtimeout.model import (
    DEFAULT_RETENTION_MS,
    CancelResult,
    ClaimResult,
    OrphanPolicy,
    ScheduleResult,
    SettleResult,
    TimeoutMessage,
    TimeoutState,
)

KIND = "payment"
LEASE_MS = 30_000
DAY_MS = 24 * 3600 * 1000


class _ClockMixin:
    """Fake time unless the provider needs real time; ``wait(s)`` moves whichever it is."""

    real_time = False

    @pytest.fixture
    def clock(self) -> Clock:
        return SYSTEM_CLOCK if self.real_time else FakeClock()

    def wait(self, clock: Clock, seconds: float) -> None:
        if isinstance(clock, FakeClock):
            clock.advance(seconds)
        else:
            time.sleep(seconds)


class StoreContract(_ClockMixin):
    """Every store transition, answered exactly as ``dtimeout.model`` rules."""

    @pytest.fixture
    def store(self, make_store: Callable[[Clock], Store], clock: Clock) -> Iterator[Store]:
        store = make_store(clock)
        yield store
        store.close()

    # -- helpers ---------------------------------------------------------------------------------

    def schedule(self, store: Store, key: str, due_in_ms: int, payload: object = None):  # type: ignore[no-untyped-def]
        req = ScheduleRequest(
            KIND, key, store.clock.now_ms() + due_in_ms, payload, DEFAULT_RETENTION_MS
        )
        return store.schedule([req])[0]

    def claim(  # type: ignore[no-untyped-def]
        self,
        store: Store,
        key: str,
        generation: int,
        owner: str,
        *,
        max_attempts: int = 5,
        orphans: OrphanPolicy = OrphanPolicy.FIRE,
        due_at_ms: int = 0,
        lease_ms: int = LEASE_MS,
    ):
        msg = TimeoutMessage(KIND, key, generation, due_at_ms, {"from": "message"})
        req = ClaimRequest(msg, owner, lease_ms, max_attempts, orphans, DEFAULT_RETENTION_MS)
        return store.claim([req])[0]

    # -- schedule --------------------------------------------------------------------------------

    def test_schedule_creates_pending_generation_one(self, store: Store) -> None:
        out = self.schedule(store, "k", 5_000, {"order": 42})
        assert out.result is ScheduleResult.CREATED
        record = store.get(KIND, "k")
        assert record is not None
        assert (record.state, record.generation, record.attempts) == (TimeoutState.PENDING, 1, 0)
        assert record.payload == {"order": 42}
        assert record.due_at_ms == out.timeout.due_at_ms

    def test_reschedule_later_is_one_write_same_generation(self, store: Store) -> None:
        first = self.schedule(store, "k", 5_000)
        later = self.schedule(store, "k", 60_000, {"v": 2})
        assert later.result is ScheduleResult.EXTENDED
        assert not later.result.needs_message
        record = store.get(KIND, "k")
        assert record is not None
        assert record.generation == first.timeout.generation
        assert record.due_at_ms == later.timeout.due_at_ms
        assert record.payload == {"v": 2}

    def test_reschedule_earlier_takes_new_generation(self, store: Store) -> None:
        self.schedule(store, "k", 60_000)
        store.attach_handles([(KIND, "k", 1, "handle-1")])
        earlier = self.schedule(store, "k", 5_000)
        assert earlier.result is ScheduleResult.ADVANCED
        assert earlier.timeout.generation == 2
        assert earlier.previous_handle == "handle-1"
        record = store.get(KIND, "k")
        assert record is not None and record.generation == 2 and record.handle is None

    def test_schedule_while_firing_is_refused_and_writes_nothing(self, store: Store) -> None:
        out = self.schedule(store, "k", 0)
        assert self.claim(store, "k", out.timeout.generation, "c1").result is ClaimResult.CLAIMED
        refused = self.schedule(store, "k", 10_000, {"new": True})
        assert refused.result is ScheduleResult.REFUSED
        record = store.get(KIND, "k")
        assert record is not None
        assert record.state is TimeoutState.FIRING and record.payload is None

    def test_schedule_after_end_starts_next_generation(self, store: Store) -> None:
        self.schedule(store, "k", 5_000)
        store.cancel([CancelRequest(KIND, "k", "r1")])
        again = self.schedule(store, "k", 5_000)
        assert again.result is ScheduleResult.CREATED
        assert again.timeout.generation == 2 and again.timeout.state is TimeoutState.PENDING

    def test_retention_outlives_even_a_long_delay(self, store: Store) -> None:
        out = self.schedule(store, "k", 30 * DAY_MS)
        record = store.get(KIND, "k")
        assert record is not None
        assert record.expires_ms >= out.timeout.due_at_ms + DEFAULT_RETENTION_MS

    # -- cancel ----------------------------------------------------------------------------------

    def test_cancel_pending_then_resent_request_answers_cancelled(self, store: Store) -> None:
        self.schedule(store, "k", 5_000)
        first = store.cancel([CancelRequest(KIND, "k", "req-1")])[0]
        assert first.result is CancelResult.CANCELLED and first.generation == 1
        # a lost reply re-sent with the same request id gets the first answer
        assert store.cancel([CancelRequest(KIND, "k", "req-1")])[0].result is (
            CancelResult.CANCELLED
        )
        other = store.cancel([CancelRequest(KIND, "k", "req-2")])[0]
        assert other.result is CancelResult.ALREADY_CANCELLED
        record = store.get(KIND, "k")
        assert record is not None and record.state is TimeoutState.CANCELLED

    def test_cancel_unknown_answers_not_found_and_leaves_no_marker(self, store: Store) -> None:
        assert store.cancel([CancelRequest(KIND, "o1", "r")])[0].result is CancelResult.NOT_FOUND
        assert store.get(KIND, "o1") is None
        assert self.schedule(store, "o1", 1_000).result is ScheduleResult.CREATED

    def test_cancel_firing_or_fired_is_too_late(self, store: Store) -> None:
        self.schedule(store, "k", 0)
        self.claim(store, "k", 1, "c1")
        assert store.cancel([CancelRequest(KIND, "k", "r1")])[0].result is CancelResult.TOO_LATE
        assert store.complete([LeaseRef(KIND, "k", 1, "c1")]) == [SettleResult.COMPLETED]
        assert store.cancel([CancelRequest(KIND, "k", "r2")])[0].result is CancelResult.TOO_LATE

    def test_cancel_returns_the_native_handle(self, store: Store) -> None:
        self.schedule(store, "k", 5_000)
        store.attach_handles([(KIND, "k", 1, "seq-77")])
        out = store.cancel([CancelRequest(KIND, "k", "r")])[0]
        assert out.handle == "seq-77"

    def test_batches_answer_in_order(self, store: Store) -> None:
        now = store.clock.now_ms()
        reqs = [
            ScheduleRequest(KIND, f"b{i}", now + 1000, i, DEFAULT_RETENTION_MS) for i in range(30)
        ]
        assert [o.result for o in store.schedule(reqs)] == [ScheduleResult.CREATED] * 30
        cancels = [CancelRequest(KIND, f"b{i}", f"r{i}") for i in range(0, 30, 2)]
        cancels.append(CancelRequest(KIND, "never", "rx"))
        answers = [o.result for o in store.cancel(cancels)]
        assert answers == [CancelResult.CANCELLED] * 15 + [CancelResult.NOT_FOUND]
        pending = store.list(state=TimeoutState.PENDING, kind=KIND, limit=100)
        assert sorted(t.key for t in pending) == sorted(f"b{i}" for i in range(1, 30, 2))

    # -- claim -----------------------------------------------------------------------------------

    def test_claim_before_due_is_not_due(self, store: Store) -> None:
        self.schedule(store, "k", 5_000)
        out = self.claim(store, "k", 1, "c1")
        assert out.result is ClaimResult.NOT_DUE
        assert out.timeout is not None and out.timeout.due_at_ms > store.clock.now_ms()
        record = store.get(KIND, "k")
        assert record is not None and record.state is TimeoutState.PENDING

    def test_claim_when_due_leases_and_resend_wins_again(self, store: Store, clock: Clock) -> None:
        self.schedule(store, "k", 0, {"p": 1})
        first = self.claim(store, "k", 1, "c1")
        assert first.result is ClaimResult.CLAIMED
        assert first.timeout.attempts == 1 and first.timeout.payload == {"p": 1}
        assert first.timeout.lease_owner == "c1"
        again = self.claim(store, "k", 1, "c1")  # the same token re-sent after a lost reply
        assert again.result is ClaimResult.CLAIMED and again.timeout.attempts == 1
        assert self.claim(store, "k", 1, "c2").result is ClaimResult.BUSY

    def test_expired_lease_is_claimed_again_with_attempts_plus_one(
        self, store: Store, clock: Clock
    ) -> None:
        self.schedule(store, "k", 0)
        self.claim(store, "k", 1, "c1", lease_ms=1_000)
        self.wait(clock, 1.2)
        out = self.claim(store, "k", 1, "c2")
        assert out.result is ClaimResult.CLAIMED and out.timeout.attempts == 2
        assert out.timeout.lease_owner == "c2"
        # the first owner lost the lease: its complete is refused
        assert store.complete([LeaseRef(KIND, "k", 1, "c1")]) == [SettleResult.LOST]

    def test_expired_lease_after_last_attempt_dies(self, store: Store, clock: Clock) -> None:
        self.schedule(store, "k", 0)
        self.claim(store, "k", 1, "c1", lease_ms=1_000, max_attempts=1)
        self.wait(clock, 1.2)
        out = self.claim(store, "k", 1, "c2", max_attempts=1)
        assert out.result is ClaimResult.DEAD
        record = store.get(KIND, "k")
        assert record is not None and record.state is TimeoutState.DEAD

    def test_stale_cancelled_fired_and_dead_are_dropped(self, store: Store) -> None:
        self.schedule(store, "k", 60_000)
        self.schedule(store, "k", 0)  # advanced: generation 2
        assert self.claim(store, "k", 1, "c1").result is ClaimResult.STALE
        self.schedule(store, "c", 0)
        store.cancel([CancelRequest(KIND, "c", "r")])
        assert self.claim(store, "c", 1, "c1").result is ClaimResult.CANCELLED
        assert self.claim(store, "k", 2, "c1").result is ClaimResult.CLAIMED
        store.complete([LeaseRef(KIND, "k", 2, "c1")])
        assert self.claim(store, "k", 2, "c2").result is ClaimResult.FIRED

    def test_orphan_policy(self, store: Store) -> None:
        now = store.clock.now_ms()
        dropped = self.claim(store, "gone", 3, "c1", orphans=OrphanPolicy.DROP, due_at_ms=now)
        assert dropped.result is ClaimResult.MISSING
        assert store.get(KIND, "gone") is None
        adopted = self.claim(store, "gone", 3, "c1", orphans=OrphanPolicy.FIRE, due_at_ms=now)
        assert adopted.result is ClaimResult.CLAIMED
        assert adopted.timeout.orphan and adopted.timeout.payload == {"from": "message"}
        assert adopted.timeout.generation == 3 and adopted.timeout.attempts == 1
        assert self.claim(store, "gone", 3, "c2").result is ClaimResult.BUSY

    # -- settle ----------------------------------------------------------------------------------

    def test_complete_only_by_owner_and_idempotent(self, store: Store) -> None:
        self.schedule(store, "k", 0)
        self.claim(store, "k", 1, "c1")
        assert store.complete([LeaseRef(KIND, "k", 1, "intruder")]) == [SettleResult.LOST]
        assert store.complete([LeaseRef(KIND, "k", 1, "c1")]) == [SettleResult.COMPLETED]
        assert store.complete([LeaseRef(KIND, "k", 1, "c1")]) == [SettleResult.COMPLETED]
        record = store.get(KIND, "k")
        assert record is not None and record.state is TimeoutState.FIRED

    def test_release_backs_off_then_dies_after_max_attempts(
        self, store: Store, clock: Clock
    ) -> None:
        self.schedule(store, "k", 0)
        self.claim(store, "k", 1, "c1", max_attempts=2)
        result, record = store.release(
            LeaseRef(KIND, "k", 1, "c1"),
            backoff_ms=1_000,
            max_attempts=2,
            error="boom",
            retention_ms=DEFAULT_RETENTION_MS,
        )
        assert result is SettleResult.RELEASED
        assert record is not None and record.state is TimeoutState.PENDING
        assert record.due_at_ms >= store.clock.now_ms() + 900 and record.reason == "boom"
        assert self.claim(store, "k", 1, "c2", max_attempts=2).result is ClaimResult.NOT_DUE
        self.wait(clock, 1.1)
        second = self.claim(store, "k", 1, "c2", max_attempts=2)
        assert second.result is ClaimResult.CLAIMED and second.timeout.attempts == 2
        result, record = store.release(
            LeaseRef(KIND, "k", 1, "c2"),
            backoff_ms=1_000,
            max_attempts=2,
            error="boom again",
            retention_ms=DEFAULT_RETENTION_MS,
        )
        assert result is SettleResult.DEAD
        assert record is not None and record.state is TimeoutState.DEAD
        assert record.reason == "boom again"
        assert store.cancel([CancelRequest(KIND, "k", "r")])[0].result is CancelResult.TOO_LATE

    def test_release_by_non_owner_is_lost(self, store: Store) -> None:
        self.schedule(store, "k", 0)
        self.claim(store, "k", 1, "c1")
        result, _ = store.release(
            LeaseRef(KIND, "k", 1, "c2"),
            backoff_ms=10,
            max_attempts=5,
            error="x",
            retention_ms=DEFAULT_RETENTION_MS,
        )
        assert result is SettleResult.LOST

    def test_renew_extends_only_the_owners_lease(self, store: Store, clock: Clock) -> None:
        self.schedule(store, "k", 0)
        self.claim(store, "k", 1, "c1", lease_ms=1_000)
        assert store.renew([LeaseRef(KIND, "k", 1, "c1"), LeaseRef(KIND, "k", 1, "x")], 5_000) == [
            True,
            False,
        ]
        self.wait(clock, 1.5)  # past the first lease, within the renewed one
        assert self.claim(store, "k", 1, "c2").result is ClaimResult.BUSY

    def test_abandon_moves_only_that_pending_generation(self, store: Store) -> None:
        self.schedule(store, "k", 5_000)
        assert store.abandon(KIND, "k", 7, TimeoutState.CANCELLED, "send_failed") is (
            SettleResult.LOST
        )
        assert store.abandon(KIND, "k", 1, TimeoutState.CANCELLED, "send_failed") is (
            SettleResult.ABANDONED
        )
        record = store.get(KIND, "k")
        assert record is not None
        assert record.state is TimeoutState.CANCELLED and record.reason == "send_failed"
        # a message that landed anyway is dropped at claim
        assert self.claim(store, "k", 1, "c1").result is ClaimResult.CANCELLED

    def test_list_filters_by_state_and_orders_by_due(self, store: Store) -> None:
        self.schedule(store, "late", 9_000)
        self.schedule(store, "early", 1_000)
        self.schedule(store, "gone", 5_000)
        store.cancel([CancelRequest(KIND, "gone", "r")])
        pending = store.list(state=TimeoutState.PENDING, kind=KIND)
        assert [t.key for t in pending] == ["early", "late"]
        assert [t.key for t in store.list(state=TimeoutState.CANCELLED)] == ["gone"]
        assert len(store.list(limit=2)) == 2


class TransportContract(_ClockMixin):
    """Every transport verb: due-time delivery, leases, settle, dead letters, native cancel."""

    lease_seconds = 2.0

    @pytest.fixture
    def transport(
        self, make_transport: Callable[[Clock], Transport], clock: Clock
    ) -> Iterator[Transport]:
        transport = make_transport(clock)
        yield transport
        transport.close()

    def message(self, clock: Clock, key: str, due_in_s: float) -> OutgoingMessage:
        due = clock.now_ms() + round(due_in_s * 1000)
        body = TimeoutMessage(KIND, key, 1, due, {"k": key}).encode()
        return OutgoingMessage(f"{KIND}:{key}:1", body, due)

    def receive_all(
        self, transport: Transport, max_messages: int = 10, wait: float = 0.0
    ) -> list[str]:
        return [d.message_id for d in transport.receive(max_messages, wait, self.lease_seconds)]

    def test_nothing_before_due_then_delivered(self, transport: Transport, clock: Clock) -> None:
        transport.send([self.message(clock, "a", 2.0)])
        assert transport.receive(10, 0.2 if self.real_time else 0.0, self.lease_seconds) == []
        self.wait(clock, 2.2)
        got = transport.receive(10, 2.0, self.lease_seconds)
        assert [d.message_id for d in got] == [f"{KIND}:a:1"]
        assert TimeoutMessage.decode(got[0].body).payload == {"k": "a"}
        assert got[0].delivery_count >= 1

    def test_a_leased_message_is_invisible_until_the_lease_ends(
        self, transport: Transport, clock: Clock
    ) -> None:
        transport.send([self.message(clock, "a", 0)])
        first = transport.receive(10, 2.0, self.lease_seconds)
        assert len(first) == 1
        assert transport.receive(10, 0.0, self.lease_seconds) == []
        self.wait(clock, self.lease_seconds + 0.5)
        again = transport.receive(10, 2.0, self.lease_seconds)
        assert [d.message_id for d in again] == [first[0].message_id]
        assert again[0].delivery_count >= 2

    def test_ack_removes_for_good(self, transport: Transport, clock: Clock) -> None:
        transport.send([self.message(clock, "a", 0)])
        got = transport.receive(10, 2.0, self.lease_seconds)
        transport.ack(got)
        self.wait(clock, self.lease_seconds + 0.5)
        assert transport.receive(10, 0.2 if self.real_time else 0.0, self.lease_seconds) == []

    def test_retry_later_redelivers_after_the_delay(
        self, transport: Transport, clock: Clock
    ) -> None:
        transport.send([self.message(clock, "a", 0)])
        (delivery,) = transport.receive(10, 2.0, self.lease_seconds)
        transport.retry_later(delivery, 1_000)
        assert transport.receive(10, 0.0, self.lease_seconds) == []
        self.wait(clock, 1.3)
        assert self.receive_all(transport, wait=2.0) == [delivery.message_id]

    def test_extend_keeps_a_delivery_invisible(self, transport: Transport, clock: Clock) -> None:
        transport.send([self.message(clock, "a", 0)])
        (delivery,) = transport.receive(10, 2.0, self.lease_seconds)
        self.wait(clock, self.lease_seconds * 0.6)
        transport.extend(delivery, self.lease_seconds * 2)
        self.wait(clock, self.lease_seconds * 0.6)  # past the first lease
        assert transport.receive(10, 0.0, self.lease_seconds) == []
        transport.ack([delivery])

    def test_dead_letter_takes_it_out_of_the_queue(
        self, transport: Transport, clock: Clock
    ) -> None:
        transport.send([self.message(clock, "a", 0)])
        (delivery,) = transport.receive(10, 2.0, self.lease_seconds)
        transport.dead_letter(delivery, "malformed: test")
        self.wait(clock, self.lease_seconds + 0.5)
        assert transport.receive(10, 0.2 if self.real_time else 0.0, self.lease_seconds) == []

    def test_batches_respect_max_messages(self, transport: Transport, clock: Clock) -> None:
        n = min(25, transport.capabilities.max_send_batch * 3)
        messages = [self.message(clock, f"m{i}", 0) for i in range(n)]
        for start in range(0, n, transport.capabilities.max_send_batch):
            transport.send(messages[start : start + transport.capabilities.max_send_batch])
        seen: set[str] = set()
        for _ in range(50):
            got = transport.receive(5, 1.0, self.lease_seconds * 5)
            assert len(got) <= 5
            seen.update(d.message_id for d in got)
            transport.ack(got)
            if len(seen) == n:
                break
        assert seen == {m.message_id for m in messages}

    def test_native_cancel_removes_a_scheduled_message(
        self, transport: Transport, clock: Clock
    ) -> None:
        if not transport.capabilities.native_cancel:
            # Best effort by contract: without it, the store drops the message at claim.
            transport.cancel([CancelRef(f"{KIND}:a:1", None)])
            return
        handles = transport.send([self.message(clock, "a", 1.0), self.message(clock, "b", 1.0)])
        transport.cancel([CancelRef(f"{KIND}:a:1", handles[0])])
        self.wait(clock, 1.3)
        assert self.receive_all(transport, wait=2.0) == [f"{KIND}:b:1"]
