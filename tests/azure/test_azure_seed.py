"""The seed's scenario on the Azure transport (SDK double) with a real Redis store.

A producer schedules one timeout every 3 s with a 6 s delay; for 60% of them the complementary
action (cancel) follows at a random moment before due; two consumer threads fire the rest. The
promises checked: every timeout whose cancel answered ``cancelled`` never fires, every other
fires exactly once and never early; a cancel before the broker enqueued the message removed it
natively, one after was answered by the store and its message dropped at claim.
"""

from __future__ import annotations

import random
import threading
import uuid
from collections import Counter

from azure_support import QUEUE, make_double

from dtimeout.app import Timeouts
from dtimeout.clock import FakeClock
from dtimeout.model import CancelResult, DueTimeout
from dtimeout.providers.redis.plugin import open_store
from dtimeout.testing import pump

KIND = "demo"


def test_seed_scenario_with_a_redis_store(redis_url: str, fake_clock: FakeClock) -> None:
    sep = "&" if "?" in redis_url else "?"
    store = open_store(f"{redis_url}{sep}prefix=az{uuid.uuid4().hex[:10]}", fake_clock)
    transport, ns = make_double(fake_clock, lock_seconds=30)
    timeouts = Timeouts(transport, store, clock=fake_clock)
    fired: Counter[str] = Counter()
    early: list[str] = []
    lock = threading.Lock()

    @timeouts.handler(KIND)
    def timed_out(t: DueTimeout) -> None:
        with lock:
            fired[t.key] += 1
            if fake_clock.now_ms() < int(t.due_at.timestamp() * 1000):
                early.append(t.key)

    rng = random.Random(42)
    consumer = timeouts.consumer(concurrency=2, wait_seconds=0.0)
    cancels: list[tuple[int, str]] = []  # (when, key)
    answers: dict[str, CancelResult] = {}
    after_due: set[str] = set()
    keys = [f"order-{i}" for i in range(30)]
    for key in keys:
        t = timeouts.schedule(KIND, key, after=6, payload={"order": key})
        if rng.random() < 0.6:
            cancels.append((t.due_at_ms - rng.randint(100, 5_900), key))
        for _ in range(3):  # 3 s to the next one, in 1 s steps
            fake_clock.advance(1)
            for when, k in sorted(c for c in cancels if c[0] <= fake_clock.now_ms()):
                cancels.remove((when, k))
                answers[k] = timeouts.cancel(KIND, k)
                record = timeouts.status(KIND, k)
                assert record is not None
                if fake_clock.now_ms() >= record.due_at_ms:
                    after_due.add(k)  # the broker has enqueued it by now
            pump(consumer, seconds=2)
    fake_clock.advance(10)
    pump(consumer, seconds=5)
    consumer.close()

    assert cancels == [] and len(answers) > 10 and 0 < len(after_due) < len(answers)
    assert all(a is CancelResult.CANCELLED for a in answers.values())  # none claimed yet
    assert {k for k in keys if fired[k]} == set(keys) - set(answers)
    assert set(fired.values()) == {1} and early == []
    assert transport.stats()["cancelled_natively"] == len(answers) - len(after_due)
    assert consumer.stats.dropped == {"cancelled": len(after_due)}
    assert ns.snapshot(QUEUE) == {"scheduled": [], "active": [], "dead": []}
    timeouts.close()
