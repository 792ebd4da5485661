"""End-to-end contract: ``Timeouts`` + ``Consumer`` over one transport and one store.

The behaviours users rely on, each its own test: fire after due and never before, cancel wins or
tells the truth, reschedules fire once at the new time, sliding timeouts cost no messages,
duplicates and stale messages are dropped, leases expire into re-claims, failures back off and
die, orphans follow the policy, bad input is refused before anything is written.
"""

from __future__ import annotations

import functools
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dtimeout.app import Timeouts
from dtimeout.clock import Clock, FakeClock
from dtimeout.consumer import Consumer
from dtimeout.errors import InvalidTransitionError, PayloadTooLargeError, ValidationError
from dtimeout.interfaces import ClaimRequest, OutgoingMessage, Store, Transport
from dtimeout.model import CancelResult, DueTimeout, OrphanPolicy, TimeoutMessage, TimeoutState
from dtimeout.testing.contracts import KIND, _ClockMixin
from dtimeout.testing.helpers import CountingStore, CountingTransport, pump


class Recorder:
    """A handler that records every call (thread-safe) and can be told to fail."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.calls: list[tuple[DueTimeout, int]] = []
        self.fail_times: dict[str, int] = {}
        self.lock = threading.Lock()

    def __call__(self, t: DueTimeout) -> None:
        with self.lock:
            self.calls.append((t, self.clock.now_ms()))
            left = self.fail_times.get(t.key, 0)
            if left:
                self.fail_times[t.key] = left - 1
        if left:
            raise RuntimeError(f"handler failure for {t.key}")

    def keys(self) -> Counter[str]:
        with self.lock:
            return Counter(t.key for t, _ in self.calls)


def _at_least(recorder: Recorder, n: int) -> bool:
    return len(recorder.calls) >= n


class TimeoutsContract(_ClockMixin):
    """The public API's promises, on a provider pair."""

    delay = 1.0  # seconds; short so real-time providers stay quick

    @pytest.fixture
    def env(
        self,
        make_transport: Callable[[Clock], Transport],
        make_store: Callable[[Clock], Store],
        clock: Clock,
    ) -> Iterator[tuple[Timeouts, Recorder, CountingTransport, CountingStore]]:
        transport = CountingTransport(make_transport(clock))
        store = CountingStore(make_store(clock))
        timeouts = Timeouts(
            transport,
            store,
            clock=clock,
            lease=timedelta(seconds=5),
            retry_backoff=timedelta(milliseconds=500),
            max_attempts=3,
        )
        recorder = Recorder(clock)
        timeouts.handler(KIND)(recorder)
        yield timeouts, recorder, transport, store
        timeouts.close()

    def consumer(self, timeouts: Timeouts, **kw: Any) -> Consumer:
        kw.setdefault("wait_seconds", 0.5 if self.real_time else 0.0)
        return timeouts.consumer(**kw)

    def settle(self, consumer: Consumer, until: Callable[[], bool] | None = None) -> None:
        """Let due work happen: a few real seconds at most."""
        pump(consumer, until=until, seconds=15.0 if self.real_time else 5.0)

    # -- firing ----------------------------------------------------------------------------------

    def test_fires_after_due_and_never_before(self, env: Any, clock: Clock) -> None:
        timeouts, rec, _, _ = env
        t = timeouts.schedule(KIND, "o1", after=timedelta(seconds=self.delay), payload={"n": 1})
        c = self.consumer(timeouts)
        pump(c, seconds=0.3)
        assert rec.calls == []
        self.wait(clock, self.delay + 0.1)
        self.settle(c, until=lambda: len(rec.calls) >= 1)
        assert len(rec.calls) == 1
        due, started = rec.calls[0]
        assert (due.kind, due.key, due.payload, due.attempt) == (KIND, "o1", {"n": 1}, 1)
        assert due.idempotency_key == f"{KIND}:o1:{t.generation}"
        assert started >= t.due_at_ms
        status = timeouts.status(KIND, "o1")
        assert status is not None and status.state is TimeoutState.FIRED
        assert timeouts.cancel(KIND, "o1") is CancelResult.TOO_LATE

    def test_cancel_before_due_never_fires(self, env: Any, clock: Clock) -> None:
        timeouts, rec, _, _ = env
        timeouts.schedule(KIND, "o1", after=timedelta(seconds=self.delay))
        assert timeouts.cancel(KIND, "o1") is CancelResult.CANCELLED
        assert timeouts.cancel(KIND, "o1") is CancelResult.ALREADY_CANCELLED
        # no consumer ran while it was cancelled; consumers starting later keep it cancelled
        self.wait(clock, self.delay + 0.5)
        self.settle(self.consumer(timeouts))
        assert rec.calls == []
        status = timeouts.status(KIND, "o1")
        assert status is not None and status.state is TimeoutState.CANCELLED

    def test_cancel_of_unknown_key_leaves_no_marker(self, env: Any, clock: Clock) -> None:
        timeouts, rec, _, _ = env
        assert timeouts.cancel(KIND, "o1") is CancelResult.NOT_FOUND
        assert timeouts.status(KIND, "o1") is None
        timeouts.schedule(KIND, "o1", after=0)
        self.settle(self.consumer(timeouts), until=lambda: len(rec.calls) >= 1)
        assert rec.keys() == Counter({"o1": 1})

    def test_reschedule_later_fires_once_at_the_new_time(self, env: Any, clock: Clock) -> None:
        timeouts, rec, transport, _ = env
        first = timeouts.schedule(KIND, "o1", after=timedelta(seconds=self.delay))
        later = timeouts.schedule(KIND, "o1", after=timedelta(seconds=self.delay * 2))
        assert later.generation == first.generation
        assert len(transport.sent) == 1  # no new message
        c = self.consumer(timeouts)
        self.wait(clock, self.delay + 0.2)
        self.settle(c)  # the old message arrives early and is re-queued for the remainder
        assert rec.calls == []
        self.wait(clock, self.delay)
        self.settle(c, until=lambda: len(rec.calls) >= 1)
        assert rec.keys() == Counter({"o1": 1})
        assert rec.calls[0][1] >= later.due_at_ms

    def test_reschedule_earlier_fires_once_at_the_new_time(self, env: Any, clock: Clock) -> None:
        timeouts, rec, transport, _ = env
        timeouts.schedule(KIND, "o1", after=timedelta(seconds=self.delay * 3))
        earlier = timeouts.schedule(KIND, "o1", after=timedelta(seconds=self.delay))
        assert earlier.generation == 2 and len(transport.sent) == 2
        c = self.consumer(timeouts)
        self.wait(clock, self.delay + 0.2)
        self.settle(c, until=lambda: len(rec.calls) >= 1)
        self.wait(clock, self.delay * 2 + 0.2)
        self.settle(c)
        assert rec.keys() == Counter({"o1": 1})
        assert rec.calls[0][0].generation == 2
        assert earlier.due_at_ms <= rec.calls[0][1]

    def test_sliding_timeout_costs_store_writes_not_messages(self, env: Any, clock: Clock) -> None:
        timeouts, rec, transport, store = env
        timeouts.schedule(KIND, "session", after=timedelta(seconds=self.delay))
        writes_before = store.items["schedule"]
        for _ in range(1000):
            timeouts.schedule(KIND, "session", after=timedelta(seconds=self.delay))
        assert store.items["schedule"] - writes_before == 1000
        assert len(transport.sent) == 1
        c = self.consumer(timeouts)
        self.wait(clock, self.delay + 0.3)
        self.settle(c, until=lambda: len(rec.calls) >= 1)
        self.settle(c)
        assert rec.keys() == Counter({"session": 1})

    # -- duplicates, leases, failures --------------------------------------------------------------

    def test_duplicate_and_stale_deliveries_are_dropped(self, env: Any, clock: Clock) -> None:
        timeouts, rec, transport, _ = env
        t = timeouts.schedule(KIND, "o1", after=0, payload={"v": 1})
        stale = TimeoutMessage(KIND, "o1", t.generation + 5, t.due_at_ms, None).encode()
        # a second copy of the same message under another id, as an at-least-once broker may do
        body = TimeoutMessage(KIND, "o1", t.generation, t.due_at_ms, {"v": 1}).encode()
        transport.inner.send([OutgoingMessage("dup-copy", body, t.due_at_ms)])
        transport.inner.send([OutgoingMessage("stale-copy", stale, t.due_at_ms)])
        c = self.consumer(timeouts)
        self.settle(c, until=lambda: c.stats.received >= 3)
        self.settle(c)
        # a copy that met the live lease was put back until the lease ends; then it is dropped
        self.wait(clock, timeouts.lease_ms / 1000 + 0.5)
        self.settle(c, until=lambda: sum(c.stats.dropped.values()) >= 2)
        assert rec.keys() == Counter({"o1": 1})
        assert sum(c.stats.dropped.values()) == 2
        assert c.stats.dropped.get("stale") == 1

    def test_lease_expiry_gives_a_reclaim_with_attempts_plus_one(
        self, env: Any, clock: Clock
    ) -> None:
        timeouts, rec, transport, store = env
        t = timeouts.schedule(KIND, "o1", after=0)
        # a consumer that claims and dies mid-handler: receive + claim, then nothing
        deliveries = transport.receive(10, 2.0, timeouts.lease_ms / 1000)
        assert [d.message_id for d in deliveries] == [t.idempotency_key]
        msg = TimeoutMessage.decode(deliveries[0].body)
        claim = ClaimRequest(msg, "dead-consumer", timeouts.lease_ms, 3, OrphanPolicy.FIRE, 10**9)
        assert store.claim([claim])[0].timeout.attempts == 1
        self.wait(clock, timeouts.lease_ms / 1000 + 1)
        self.settle(self.consumer(timeouts), until=lambda: len(rec.calls) >= 1)
        assert [(d.key, d.attempt) for d, _ in rec.calls] == [("o1", 2)]
        status = timeouts.status(KIND, "o1")
        assert status is not None and status.state is TimeoutState.FIRED

    def test_failure_releases_with_backoff_then_fires(self, env: Any, clock: Clock) -> None:
        timeouts, rec, _, _ = env
        rec.fail_times["o1"] = 1
        timeouts.schedule(KIND, "o1", after=0)
        c = self.consumer(timeouts)
        self.settle(c, until=lambda: len(rec.calls) >= 1)
        status = timeouts.status(KIND, "o1")
        assert status is not None and status.state is TimeoutState.PENDING
        assert "handler failure" in (status.reason or "")
        self.wait(clock, 0.7)  # past the 500 ms backoff
        self.settle(c, until=lambda: len(rec.calls) >= 2)
        assert [d.attempt for d, _ in rec.calls] == [1, 2]
        status = timeouts.status(KIND, "o1")
        assert status is not None and status.state is TimeoutState.FIRED

    def test_dead_after_max_attempts(self, env: Any, clock: Clock) -> None:
        timeouts, rec, _, _ = env
        rec.fail_times["o1"] = 99
        timeouts.schedule(KIND, "o1", after=0)
        c = self.consumer(timeouts)
        for expected in (1, 2, 3):
            self.settle(c, until=functools.partial(_at_least, rec, expected))
            self.wait(clock, 2.5)  # backoff: 0.5 s then 1 s
        self.settle(c)
        assert [d.attempt for d, _ in rec.calls] == [1, 2, 3]
        status = timeouts.status(KIND, "o1")
        assert status is not None and status.state is TimeoutState.DEAD
        assert c.stats.dead_lettered == 1

    def test_handler_scheduling_its_own_firing_identity_is_refused(
        self, env: Any, clock: Clock
    ) -> None:
        timeouts: Timeouts = env[0]
        errors: list[BaseException] = []

        @timeouts.handler("self-ref")
        def again(t: DueTimeout) -> None:
            try:
                timeouts.schedule(t.kind, t.key, after=10)
            except InvalidTransitionError as exc:
                errors.append(exc)

        timeouts.schedule("self-ref", "x", after=0)
        self.settle(self.consumer(timeouts), until=lambda: bool(errors))
        assert len(errors) == 1 and "firing" in str(errors[0])

    # -- orphans and bad messages ----------------------------------------------------------------

    @pytest.mark.parametrize("policy", ["fire", "drop"])
    def test_orphan_policy(self, env: Any, clock: Clock, policy: str) -> None:
        timeouts, rec, transport, _ = env
        timeouts.orphans = OrphanPolicy(policy)
        due = clock.now_ms()
        body = TimeoutMessage(KIND, "orphan", 4, due, {"from": "message"}).encode()
        transport.send([OutgoingMessage(f"{KIND}:orphan:4", body, due)])
        c = self.consumer(timeouts)
        self.settle(c, until=lambda: c.stats.received >= 1)
        self.settle(c)
        if policy == "fire":
            assert [(d.key, d.payload, d.generation) for d, _ in rec.calls] == [
                ("orphan", {"from": "message"}, 4)
            ]
            assert c.stats.orphans == 1
        else:
            assert rec.calls == [] and c.stats.dropped.get("missing") == 1

    def test_malformed_and_unknown_kind_are_dead_lettered_and_the_loop_goes_on(
        self, env: Any, clock: Clock
    ) -> None:
        timeouts, rec, transport, _ = env
        now = clock.now_ms()
        unknown = TimeoutMessage("nobody-handles", "k", 1, now, None).encode()
        transport.send(
            [
                OutgoingMessage("bad-json", b"{not json", now),
                OutgoingMessage("bad-fields", b'{"v": 1, "kind": "payment"}', now),
                OutgoingMessage("nobody-handles:k:1", unknown, now),
            ]
        )
        timeouts.schedule(KIND, "good", after=0)
        c = self.consumer(timeouts)
        self.settle(c, until=lambda: len(rec.calls) >= 1 and c.stats.dead_lettered >= 3)
        assert rec.keys() == Counter({"good": 1})
        assert c.stats.dead_lettered == 3

    # -- input validation ------------------------------------------------------------------------

    def test_bad_input_is_refused_before_anything_is_written(self, env: Any) -> None:
        timeouts, _, transport, store = env
        with pytest.raises(ValidationError, match="timezone"):
            timeouts.schedule(KIND, "n", at=datetime(2030, 1, 1, 12, 0))
        with pytest.raises(ValidationError, match="negative"):
            timeouts.schedule(KIND, "n", after=timedelta(seconds=-5))
        with pytest.raises(ValidationError, match="JSON"):
            timeouts.schedule(KIND, "n", after=1, payload={"s": {1, 2}})
        big = "x" * (transport.capabilities.max_message_bytes + 1)
        with pytest.raises(PayloadTooLargeError, match="limit"):
            timeouts.schedule(KIND, "n", after=1, payload=big)
        assert store.items["schedule"] == 0 and transport.sent == []
        assert timeouts.status(KIND, "n") is None
        ok = timeouts.schedule(KIND, "n", at=datetime(2030, 1, 1, 12, 0, tzinfo=UTC))
        assert ok.due_at == datetime(2030, 1, 1, 12, 0, tzinfo=UTC)

    def test_schedule_many_and_cancel_many(self, env: Any, clock: Clock) -> None:
        timeouts, rec, _, _ = env
        items = [{"kind": KIND, "key": f"b{i}", "after": self.delay} for i in range(40)]
        made = timeouts.schedule_many(items)
        assert [t.key for t in made] == [f"b{i}" for i in range(40)]
        answers = timeouts.cancel_many([(KIND, f"b{i}") for i in range(0, 40, 2)] + [(KIND, "zz")])
        assert answers == [CancelResult.CANCELLED] * 20 + [CancelResult.NOT_FOUND]
        self.wait(clock, self.delay + 0.2)
        c = self.consumer(timeouts, batch_size=10)
        self.settle(c, until=lambda: len(rec.calls) >= 20)
        self.settle(c)
        assert rec.keys() == Counter({f"b{i}": 1 for i in range(1, 40, 2)})

    # -- races -----------------------------------------------------------------------------------

    def test_cancel_racing_the_due_instant_with_consumer_threads(
        self, env: Any, clock: Clock
    ) -> None:
        """Exactly one of fire and cancel wins, and cancel tells the truth (threads here;
        ``MultiProcessContract`` races real processes)."""
        timeouts, rec, _, _ = env
        n = 60 if self.real_time else 200
        spread = 2.0
        keys = [f"r{i}" for i in range(n)]
        timeouts.schedule_many(
            [{"kind": KIND, "key": k, "after": 0.5 + spread * i / n} for i, k in enumerate(keys)]
        )
        answers: dict[str, CancelResult] = {}
        consumers = [self.consumer(timeouts, concurrency=2, wait_seconds=0.01) for _ in range(3)]
        threads = [threading.Thread(target=c.run, daemon=True) for c in consumers]
        for th in threads:
            th.start()
        rng = random.Random(7)
        deadline = time.monotonic() + 30
        order = list(keys)
        for k in order:
            if isinstance(clock, FakeClock):
                clock.advance((0.5 + spread) / n * rng.uniform(0.5, 1.5))
                time.sleep(rng.uniform(0, 0.002))
            answers[k] = timeouts.cancel(KIND, k)
        if isinstance(clock, FakeClock):
            clock.advance(5)
        while time.monotonic() < deadline:
            states = {timeouts.status(KIND, k).state for k in keys}
            if states <= {TimeoutState.FIRED, TimeoutState.CANCELLED}:
                break
            time.sleep(0.05)
        for c in consumers:
            c.stop()
        for th in threads:
            th.join(10)
        fired = rec.keys()
        for k in keys:
            if answers[k] is CancelResult.CANCELLED:
                assert fired[k] == 0, f"{k}: cancel answered cancelled but the handler ran"
            else:
                assert answers[k] is CancelResult.TOO_LATE, (k, answers[k])
                assert fired[k] == 1, f"{k}: not cancelled, fired {fired[k]} times"
