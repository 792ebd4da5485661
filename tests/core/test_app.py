"""``Timeouts`` beyond the contract: send failures, retries after lost replies, batches,
native cancel, lifecycle events."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import pytest

from dtimeout import BatchScheduleError, ScheduleItem, Timeouts, hookimpl
from dtimeout.clock import FakeClock
from dtimeout.errors import (
    PayloadTooLargeError,
    SendFailedError,
    TransientStoreError,
    TransientTransportError,
    ValidationError,
)
from dtimeout.interfaces import CancelRef, OutgoingMessage, ScheduleRequest
from dtimeout.model import CancelResult, DueTimeout, TimeoutState
from dtimeout.providers.memory import MemoryStore, MemoryTransport
from dtimeout.retries import RetryPolicy
from dtimeout.testing import CountingTransport, pump

FAST_RETRY = RetryPolicy(attempts=3, initial_wait=0.001, max_wait=0.002)


class FailingTransport(MemoryTransport):
    """Fails ``send`` a given number of times; ``applied`` makes the broker take it anyway."""

    def __init__(self, clock: FakeClock, failures: int, applied: bool = False) -> None:
        super().__init__(clock)
        self.failures = failures
        self.applied = applied
        self.cancelled: list[CancelRef] = []

    def send(self, messages: Sequence[OutgoingMessage]) -> list[str | None]:
        if self.failures:
            self.failures -= 1
            if self.applied:
                super().send(messages)
            raise TransientTransportError("connection reset by peer")
        return super().send(messages)

    def cancel(self, refs: Sequence[CancelRef]) -> None:
        self.cancelled.extend(refs)
        super().cancel(refs)


class LostReplyStore(MemoryStore):
    """Applies the first ``schedule`` and then loses the reply, as a dropped connection does."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.lose_next = True

    def schedule(self, requests: Sequence[ScheduleRequest]) -> Any:
        out = super().schedule(requests)
        if self.lose_next:
            self.lose_next = False
            raise TransientStoreError("reply lost")
        return out


def make(clock: FakeClock, transport: Any = None, store: Any = None) -> Timeouts:
    return Timeouts(
        transport or MemoryTransport(clock),
        store or MemoryStore(clock),
        clock=clock,
        retry=FAST_RETRY,
    )


def test_send_that_keeps_failing_cancels_the_record_and_raises(clock: FakeClock) -> None:
    transport = FailingTransport(clock, failures=10, applied=True)
    t = make(clock, transport)
    with pytest.raises(SendFailedError) as info:
        t.schedule("payment", "o1", after=5)
    assert isinstance(info.value.__cause__, TransientTransportError)
    record = t.status("payment", "o1")
    assert record is not None
    assert (record.state, record.reason) == (TimeoutState.CANCELLED, "send_failed")
    # the broker took a copy anyway: it is dropped at claim, never fired
    fired: list[str] = []
    t.handler("payment")(lambda d: fired.append(d.key))
    clock.advance(6)
    c = t.consumer(wait_seconds=0)
    pump(c)
    assert fired == [] and c.stats.dropped == {"cancelled": 1}


def test_send_that_recovers_within_retries_schedules_normally(clock: FakeClock) -> None:
    t = make(clock, FailingTransport(clock, failures=2))
    record = t.schedule("payment", "o1", after=5)
    assert record.state is TimeoutState.PENDING


def test_lost_store_reply_still_gets_a_message(clock: FakeClock) -> None:
    """The retry of an applied schedule answers EXTENDED; a message must be sent anyway."""
    transport = CountingTransport(MemoryTransport(clock))
    t = make(clock, transport, LostReplyStore(clock))
    record = t.schedule("payment", "o1", after=5)
    assert record.generation == 1
    assert [m.message_id for m in transport.sent] == ["payment:o1:1"]


def test_cancel_retry_after_lost_reply_answers_cancelled(clock: FakeClock) -> None:
    t = make(clock)
    t.schedule("payment", "o1", after=5)
    assert t.cancel("payment", "o1", request_id="req-9") is CancelResult.CANCELLED
    assert t.cancel("payment", "o1", request_id="req-9") is CancelResult.CANCELLED
    assert t.cancel("payment", "o1") is CancelResult.ALREADY_CANCELLED


def test_cancel_and_earlier_reschedule_remove_messages_natively(clock: FakeClock) -> None:
    transport = FailingTransport(clock, failures=0)
    t = make(clock, transport)
    t.schedule("payment", "a", after=60)
    t.schedule("payment", "a", after=5)  # advanced: generation 1's message is superseded
    t.schedule("payment", "b", after=5)
    t.cancel("payment", "b")
    assert [r.message_id for r in transport.cancelled] == ["payment:a:1", "payment:b:1"]
    assert transport.pending_count() == 1  # only payment:a:2 is left


def test_schedule_many_refuses_bad_items_and_schedules_the_rest(clock: FakeClock) -> None:
    t = make(clock)
    big = "x" * (MemoryTransport.capabilities.max_message_bytes + 10)
    items = [ScheduleItem("payment", f"k{i}", after=5, payload={"i": i}) for i in range(25)]
    items[7] = ScheduleItem("payment", "k7", after=5, payload=big)
    with pytest.raises(BatchScheduleError) as info:
        t.schedule_many(items)
    results = info.value.results
    assert isinstance(results[7], PayloadTooLargeError)
    assert "k7" in str(results[7]) and "limit" in str(results[7])
    assert sum(1 for r in results if not isinstance(r, Exception)) == 24
    assert t.status("payment", "k7") is None
    assert len(t.list(state="pending", limit=100)) == 24


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "exactly one"),
        ({"after": 1, "at": "x"}, "exactly one"),
        ({"after": "5s"}, "timedelta or a number"),
        ({"after": True}, "timedelta or a number"),
        ({"at": "2030-01-01"}, "must be a datetime"),
    ],
)
def test_schedule_argument_errors(clock: FakeClock, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        make(clock).schedule("payment", "k", **kwargs)


@pytest.mark.parametrize(("kind", "key"), [("", "k"), ("p", ""), ("a:b", "k"), ("p", "x" * 600)])
def test_identity_errors(clock: FakeClock, kind: str, key: str) -> None:
    with pytest.raises(ValidationError):
        make(clock).schedule(kind, key, after=1)


def test_constructor_validation(clock: FakeClock) -> None:
    with pytest.raises(ValidationError, match="retention"):
        Timeouts(MemoryTransport(clock), MemoryStore(clock), retention=timedelta(0))
    with pytest.raises(ValidationError, match="orphans"):
        Timeouts(MemoryTransport(clock), MemoryStore(clock), orphans="keep")
    with pytest.raises(ValidationError, match="max_attempts"):
        Timeouts(MemoryTransport(clock), MemoryStore(clock), max_attempts=0)


def test_one_handler_per_kind(clock: FakeClock) -> None:
    t = make(clock)
    t.handler("payment")(lambda d: None)
    with pytest.raises(ValidationError, match="already registered"):
        t.handler("payment")(lambda d: None)


def test_lifecycle_events_reach_observers(clock: FakeClock) -> None:
    import pluggy

    from dtimeout import hookspecs

    events: list[tuple[str, Any]] = []

    class Observer:
        @hookimpl
        def dtimeout_timeout_scheduled(self, timeout: Any, result: str) -> None:
            events.append(("scheduled", (timeout.key, result)))

        @hookimpl
        def dtimeout_timeout_cancelled(self, kind: str, key: str, result: CancelResult) -> None:
            events.append(("cancelled", (key, result.value)))

        @hookimpl
        def dtimeout_timeout_fired(
            self, timeout: DueTimeout, lateness_ms: int, duration_ms: int
        ) -> None:
            events.append(("fired", (timeout.key, lateness_ms)))

        @hookimpl
        def dtimeout_timeout_failed(
            self, timeout: DueTimeout, error: BaseException, will_retry: bool
        ) -> None:
            events.append(("failed", (timeout.key, will_retry)))

        @hookimpl
        def dtimeout_message_dropped(self, message_id: str, reason: str) -> None:
            events.append(("dropped", (message_id, reason)))

    pm = pluggy.PluginManager("dtimeout")
    pm.add_hookspecs(hookspecs)
    pm.register(Observer())
    t = Timeouts(MemoryTransport(clock), MemoryStore(clock), clock=clock, plugin_manager=pm)
    failed_once: set[str] = set()

    @t.handler("payment")
    def flaky(d: DueTimeout) -> None:
        if d.key == "bad" and d.key not in failed_once:
            failed_once.add(d.key)
            raise RuntimeError("first try fails")

    t.schedule("payment", "ok", after=1)
    t.schedule("payment", "bad", after=1)
    t.schedule("payment", "gone", after=1)
    t.cancel("payment", "gone")
    clock.advance(2)
    pump(t.consumer(wait_seconds=0))
    assert ("scheduled", ("ok", "created")) in events
    assert ("cancelled", ("gone", "cancelled")) in events
    assert ("fired", ("ok", 1000)) in events
    assert ("failed", ("bad", True)) in events


def test_observer_exceptions_never_change_outcomes(clock: FakeClock) -> None:
    import pluggy

    from dtimeout import hookspecs

    class Broken:
        @hookimpl
        def dtimeout_timeout_scheduled(self, timeout: Any, result: str) -> None:
            raise RuntimeError("observer bug")

    pm = pluggy.PluginManager("dtimeout")
    pm.add_hookspecs(hookspecs)
    pm.register(Broken())
    t = Timeouts(MemoryTransport(clock), MemoryStore(clock), clock=clock, plugin_manager=pm)
    assert t.schedule("payment", "k", after=1).state is TimeoutState.PENDING


def test_handlers_run_concurrently(clock: FakeClock) -> None:
    t = make(clock)
    barrier = threading.Barrier(4, timeout=5)
    ran: list[str] = []

    @t.handler("payment")
    def wait_for_peers(d: DueTimeout) -> None:
        barrier.wait()  # only passes when 4 handlers run at once
        ran.append(d.key)

    t.schedule_many([ScheduleItem("payment", f"k{i}", after=0) for i in range(4)])
    c = t.consumer(concurrency=4, wait_seconds=0)
    pump(c, until=lambda: len(ran) == 4, seconds=10)
    assert sorted(ran) == ["k0", "k1", "k2", "k3"] and c.stats.fired == 4


def test_heartbeat_keeps_a_long_handler_leased() -> None:
    """Real time: a 1.5 s lease and a 3 s handler; the heartbeat renews store and transport
    leases, so no other consumer gets the message and the handler runs once."""
    from dtimeout.clock import SYSTEM_CLOCK

    transport, store = MemoryTransport(SYSTEM_CLOCK), MemoryStore(SYSTEM_CLOCK)
    t = Timeouts(transport, store, lease=timedelta(seconds=1.5), retry=FAST_RETRY)
    runs: list[int] = []

    @t.handler("payment")
    def slow(d: DueTimeout) -> None:
        runs.append(d.attempt)
        time.sleep(3.0)  # two leases long; heartbeats every 0.5 s keep it

    t.schedule("payment", "long", after=0)
    first = t.consumer(concurrency=2, wait_seconds=0.05)
    second = t.consumer(wait_seconds=0.05)
    stop = threading.Event()
    th = threading.Thread(target=lambda: pump(second, until=stop.is_set, seconds=5))
    th.start()
    pump(first, until=lambda: first.stats.fired + second.stats.fired == 1, seconds=8)
    stop.set()
    th.join(6)
    assert runs == [1]
    assert first.stats.received + second.stats.received == 1  # never delivered twice
    record = t.status("payment", "long")
    assert record is not None and record.state is TimeoutState.FIRED


def test_consumer_survives_a_transport_outage(clock: FakeClock) -> None:
    class Flaky(MemoryTransport):
        outage = 4  # more consecutive failures than one retry policy (3 attempts) allows

        def receive(self, *a: Any) -> Any:
            if self.outage:
                self.outage -= 1
                raise TransientTransportError("connection refused")
            return super().receive(*a)

    t = make(clock, Flaky(clock))
    fired: list[str] = []
    t.handler("payment")(lambda d: fired.append(d.key))
    t.schedule("payment", "k", after=0)
    c = t.consumer(wait_seconds=0)
    deadline = time.monotonic() + 60
    c.run(stop_when=lambda: bool(fired) or time.monotonic() > deadline)
    assert fired == ["k"]


def test_stop_finishes_in_flight_work(clock: FakeClock) -> None:
    t = make(clock)
    started, release = threading.Event(), threading.Event()
    done: list[str] = []

    @t.handler("payment")
    def slow(d: DueTimeout) -> None:
        started.set()
        release.wait(5)
        done.append(d.key)

    t.schedule("payment", "k", after=0)
    c = t.consumer(concurrency=2, wait_seconds=0.01)
    th = threading.Thread(target=c.run)
    th.start()
    assert started.wait(5)
    c.stop()
    release.set()
    th.join(5)
    assert not th.is_alive() and done == ["k"]
    record = t.status("payment", "k")
    assert record is not None and record.state is TimeoutState.FIRED


def test_burst_mode_returns_when_idle(clock: FakeClock) -> None:
    stats = make(clock).consumer(wait_seconds=0.01).run(max_idle_seconds=0.1)
    assert stats.received == 0


def test_timeouts_from_configuration_take_the_configured_policy(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DTIMEOUT_TRANSPORT", "memory://")
    monkeypatch.setenv("DTIMEOUT_STORE", "memory://")
    monkeypatch.setenv("DTIMEOUT_RETENTION", "2d")
    monkeypatch.setenv("DTIMEOUT_MAX_ATTEMPTS", "9")
    (tmp_path / "dtimeout.toml").write_text('lease = "45s"\norphans = "drop"\n')
    t = Timeouts()
    assert (t.retention_ms, t.max_attempts, t.lease_ms) == (2 * 86_400_000, 9, 45_000)
    assert t.orphans.value == "drop"
    assert Timeouts(max_attempts=2).max_attempts == 2  # explicit beats configured


def test_a_settlement_outage_keeps_the_job_and_settles_it_later(clock: FakeClock) -> None:
    """complete() failing past the retries must not forget the finished job: the next cycles
    settle it, and the handler is not run a second time."""

    class FlakyComplete(MemoryStore):
        outage = 4  # more consecutive failures than one retry policy (3 attempts) allows

        def complete(self, leases: Any) -> Any:
            if self.outage:
                self.outage -= 1
                raise TransientStoreError("connection reset")
            return super().complete(leases)

    store = FlakyComplete(clock)
    t = make(clock, store=store)
    runs: list[int] = []
    t.handler("payment")(lambda d: runs.append(d.attempt))
    t.schedule("payment", "k", after=0)
    c = t.consumer(wait_seconds=0.01)
    deadline = time.monotonic() + 60
    c.run(stop_when=lambda: c.stats.fired == 1 or time.monotonic() > deadline)
    assert runs == [1] and c.stats.fired == 1
    record = t.status("payment", "k")
    assert record is not None and record.state is TimeoutState.FIRED
    assert t.transport.pending_count() == 0  # type: ignore[attr-defined]


def test_a_partly_failed_send_abandons_only_the_entries_not_taken(clock: FakeClock) -> None:
    class PartlyFailing(MemoryTransport):
        def send(self, messages: Sequence[OutgoingMessage]) -> list[str | None]:
            super().send([m for m in messages if not m.message_id.startswith("payment:bad")])
            error = TransientTransportError("1 entry failed: InternalError")
            error.failed = [
                m.message_id for m in messages if m.message_id.startswith("payment:bad")
            ]  # type: ignore[attr-defined]
            raise error

    t = make(clock, PartlyFailing(clock))
    with pytest.raises(BatchScheduleError) as info:
        t.schedule_many([ScheduleItem("payment", k, after=5) for k in ("ok1", "bad", "ok2")])
    assert [type(r).__name__ for r in info.value.results] == [
        "Timeout",
        "SendFailedError",
        "Timeout",
    ]
    states = {k: t.status("payment", k).state for k in ("ok1", "bad", "ok2")}  # type: ignore[union-attr]
    assert states == {
        "ok1": TimeoutState.PENDING,
        "bad": TimeoutState.CANCELLED,
        "ok2": TimeoutState.PENDING,
    }


def test_retry_policy_does_not_repeat_an_attempt_that_used_the_whole_budget() -> None:
    calls: list[float] = []

    def slow_failure() -> None:
        calls.append(time.monotonic())
        time.sleep(0.2)  # an SDK retrying inside one attempt
        raise TransientStoreError("connection refused")

    policy = RetryPolicy(attempts=5, max_seconds=0.1, initial_wait=0.001)
    with pytest.raises(TransientStoreError):
        policy.call(slow_failure, what="store.get")
    assert len(calls) == 1
    quick = RetryPolicy(attempts=3, max_seconds=30, initial_wait=0.001, max_wait=0.002)
    calls.clear()

    def quick_failure() -> None:
        calls.append(time.monotonic())
        raise TransientStoreError("connection reset")

    with pytest.raises(TransientStoreError):
        quick.call(quick_failure, what="store.get")
    assert len(calls) == 3  # quick failures are retried up to the attempt limit
