"""Runs the end-to-end contract (``TimeoutsContract``) through the fused Redis paths.

The contract wraps the store and the transport in counting wrappers; ``CountingStore`` forwards
the fused methods (``schedule_and_send``, ``cancel_and_withdraw``, ``receive_and_claim``,
``complete_and_ack``) with the ``CountingTransport`` unwrapped, so with store and transport on
one queue the whole contract runs fused, and counts what the fused steps did as the wrappers
would have (every enqueued message as sent: the contract's "no new message" checks mean what
they say). The tests below prove the fused paths are taken.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from dtimeout.model import DueTimeout
from dtimeout.testing.helpers import pump


class FusedEnv:
    def test_schedules_really_fuse(self, env: Any) -> None:
        timeouts, _, transport, store = env
        timeouts.schedule("fused", "a", after=timedelta(seconds=60))
        timeouts.schedule_many([{"kind": "fused", "key": f"b{i}", "after": 60} for i in range(3)])
        assert transport.calls["send"] == 0
        assert len(transport.sent) == 4
        assert store.inner.stats()["fused_messages"] == 4

    def test_consumer_steps_really_fuse(self, env: Any) -> None:
        timeouts, _, transport, store = env
        fired: list[DueTimeout] = []
        timeouts.handler("fused")(fired.append)
        timeouts.schedule_many([{"kind": "fused", "key": f"c{i}", "after": 0} for i in range(3)])
        consumer = timeouts.consumer(concurrency=2, wait_seconds=0.0)
        try:
            pump(consumer, until=lambda: len(fired) == 3 and consumer.in_flight == 0)
        finally:
            consumer.close()
        assert sorted(d.key for d in fired) == ["c0", "c1", "c2"]
        assert store.inner.stats()["fused_claims"] == 3
        assert store.calls["claim"] >= 1 and store.calls["complete"] >= 1
        assert transport.inner.counts() == {"due": 0, "inflight": 0}
