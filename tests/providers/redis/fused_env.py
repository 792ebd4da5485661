"""Runs the end-to-end contract (``TimeoutsContract``) through the fused schedule and cancel.

The contract wraps the store and the transport in counting wrappers; the base ``Store``'s
``schedule_and_send`` answers None, so through them nothing would ever fuse. This mixin gives
the test's ``CountingStore`` a ``schedule_and_send`` and a ``cancel_and_withdraw`` that unwrap
the ``CountingTransport``, ask the Redis store to fuse, and count what it did as the wrappers
would have: the items as store writes, every enqueued message as sent (the contract's "no new
message" checks then mean what they say). ``test_schedules_really_fuse`` proves the path is
taken.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import pytest

from dtimeout.interfaces import (
    CancelOutcome,
    CancelRequest,
    OutgoingMessage,
    ScheduleOutcome,
    ScheduleRequest,
    Transport,
)
from dtimeout.model import TimeoutMessage
from dtimeout.testing.helpers import CountingStore, CountingTransport


class FusedEnv:
    @pytest.fixture(autouse=True)
    def _fuse_through_the_counters(self, env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        _, _, counting_transport, counting_store = env
        assert isinstance(counting_store, CountingStore)

        def schedule_and_send(
            transport: Transport, requests: Sequence[ScheduleRequest]
        ) -> list[ScheduleOutcome] | None:
            inner = transport.inner if isinstance(transport, CountingTransport) else transport
            outcomes = counting_store.inner.schedule_and_send(inner, requests)
            if outcomes is None:
                return None
            counting_store.calls["schedule"] += 1
            counting_store.items["schedule"] += len(requests)
            for o in outcomes:
                if o.sent:
                    t = o.timeout
                    body = TimeoutMessage(t.kind, t.key, t.generation, t.due_at_ms, t.payload)
                    counting_transport.sent.append(
                        OutgoingMessage(t.idempotency_key, body.encode(), t.due_at_ms)
                    )
            return outcomes

        def cancel_and_withdraw(
            transport: Transport, requests: Sequence[CancelRequest]
        ) -> list[CancelOutcome] | None:
            inner = transport.inner if isinstance(transport, CountingTransport) else transport
            outcomes = counting_store.inner.cancel_and_withdraw(inner, requests)
            if outcomes is not None:
                counting_store.calls["cancel"] += 1
                counting_store.items["cancel"] += len(requests)
            return outcomes

        monkeypatch.setattr(counting_store, "schedule_and_send", schedule_and_send)
        monkeypatch.setattr(counting_store, "cancel_and_withdraw", cancel_and_withdraw)

    def test_schedules_really_fuse(self, env: Any) -> None:
        timeouts, _, transport, store = env
        timeouts.schedule("fused", "a", after=timedelta(seconds=60))
        timeouts.schedule_many([{"kind": "fused", "key": f"b{i}", "after": 60} for i in range(3)])
        assert transport.calls["send"] == 0
        assert len(transport.sent) == 4
        assert store.inner.stats()["fused_messages"] == 4
