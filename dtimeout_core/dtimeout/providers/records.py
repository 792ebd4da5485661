"""Stores that keep whole records and apply the model's rules in Python: ``memory``, ``sqlite``.

Such a store supplies one thing — a transaction in which records are read and written atomically
against every other caller (a lock, a ``BEGIN IMMEDIATE``). Everything else, which rule applies
to each item of a batch and what it answers, is written here once, so the built-in stores cannot
drift from each other or from ``dtimeout.model``. (Redis applies the same rules in Lua; its tests
hold the scripts to these answers.)
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from dtimeout.interfaces import (
    CancelOutcome,
    CancelRequest,
    ClaimOutcome,
    ClaimRequest,
    LeaseRef,
    ScheduleOutcome,
    ScheduleRequest,
    Store,
)
from dtimeout.model import (
    ScheduleResult,
    SettleResult,
    Timeout,
    TimeoutState,
    decide_abandon,
    decide_attach_handle,
    decide_cancel,
    decide_claim,
    decide_complete,
    decide_release,
    decide_renew,
    decide_schedule,
)

T = TypeVar("T")
Ident = tuple[str, str]


class RecordTransaction(Protocol):
    """The records one transaction sees. Expired records read as absent."""

    now_ms: int

    def get(self, kind: str, key: str) -> Timeout | None: ...

    def put(self, record: Timeout | None) -> None:
        """Write ``record`` (None: nothing to write). Later ``get``s in the same transaction
        see it, so a batch naming one identity twice applies the rules in order."""
        ...


class RecordStore(Store):
    """A :class:`Store` whose transitions are ``decide_*`` calls inside :meth:`transaction`."""

    @abstractmethod
    def transaction(
        self, op: str, idents: Sequence[Ident], work: Callable[[RecordTransaction], T]
    ) -> T:
        """Run ``work`` in one atomic transaction and return its result. ``idents`` names the
        records it will touch (a hint: a store may read them all at once)."""

    def after_write(self, op: str) -> None:
        """Called after ``schedule`` and ``claim`` commit (housekeeping such as purging)."""

    def schedule(self, requests: Sequence[ScheduleRequest]) -> list[ScheduleOutcome]:
        if not requests:
            return []

        def work(tx: RecordTransaction) -> list[ScheduleOutcome]:
            out = []
            for r in requests:
                current = tx.get(r.kind, r.key)
                record, result = decide_schedule(
                    current,
                    kind=r.kind,
                    key=r.key,
                    due_at_ms=r.due_at_ms,
                    payload=r.payload,
                    now_ms=tx.now_ms,
                    retention_ms=r.retention_ms,
                )
                previous = None
                if result is not ScheduleResult.REFUSED:
                    tx.put(record)
                    if result is ScheduleResult.ADVANCED and current is not None:
                        previous = current.handle
                out.append(ScheduleOutcome(result, record, previous_handle=previous))
            return out

        outcomes = self.transaction("schedule", [(r.kind, r.key) for r in requests], work)
        self.after_write("schedule")
        return outcomes

    def attach_handles(self, items: Sequence[tuple[str, str, int, str]]) -> None:
        if not items:
            return

        def work(tx: RecordTransaction) -> None:
            for kind, key, generation, handle in items:
                current = tx.get(kind, key)
                tx.put(decide_attach_handle(current, generation=generation, handle=handle))

        self.transaction("attach_handles", [(i[0], i[1]) for i in items], work)

    def cancel(self, requests: Sequence[CancelRequest]) -> list[CancelOutcome]:
        if not requests:
            return []

        def work(tx: RecordTransaction) -> list[CancelOutcome]:
            out = []
            for r in requests:
                current = tx.get(r.kind, r.key)
                record, result = decide_cancel(current, request_id=r.request_id, now_ms=tx.now_ms)
                tx.put(record)
                out.append(
                    CancelOutcome(
                        result,
                        generation=None if current is None else current.generation,
                        handle=None if current is None else current.handle,
                    )
                )
            return out

        return self.transaction("cancel", [(r.kind, r.key) for r in requests], work)

    def claim(self, requests: Sequence[ClaimRequest]) -> list[ClaimOutcome]:
        if not requests:
            return []

        def work(tx: RecordTransaction) -> list[ClaimOutcome]:
            out = []
            for r in requests:
                current = tx.get(r.message.kind, r.message.key)
                record, result = decide_claim(
                    current,
                    message=r.message,
                    owner=r.owner,
                    lease_ms=r.lease_ms,
                    max_attempts=r.max_attempts,
                    orphan_policy=r.orphan_policy,
                    now_ms=tx.now_ms,
                    retention_ms=r.retention_ms,
                )
                tx.put(record)
                out.append(ClaimOutcome(result, record or current))
            return out

        idents = [(r.message.kind, r.message.key) for r in requests]
        outcomes = self.transaction("claim", idents, work)
        self.after_write("claim")
        return outcomes

    def renew(self, leases: Sequence[LeaseRef], lease_ms: int) -> list[bool]:
        if not leases:
            return []

        def work(tx: RecordTransaction) -> list[bool]:
            out = []
            for lease in leases:
                record, held = decide_renew(
                    tx.get(lease.kind, lease.key),
                    generation=lease.generation,
                    owner=lease.owner,
                    lease_ms=lease_ms,
                    now_ms=tx.now_ms,
                )
                tx.put(record)
                out.append(held)
            return out

        return self.transaction("renew", [(x.kind, x.key) for x in leases], work)

    def complete(self, leases: Sequence[LeaseRef]) -> list[SettleResult]:
        if not leases:
            return []

        def work(tx: RecordTransaction) -> list[SettleResult]:
            out = []
            for lease in leases:
                record, result = decide_complete(
                    tx.get(lease.kind, lease.key),
                    generation=lease.generation,
                    owner=lease.owner,
                    now_ms=tx.now_ms,
                )
                tx.put(record)
                out.append(result)
            return out

        return self.transaction("complete", [(x.kind, x.key) for x in leases], work)

    def release(
        self,
        lease: LeaseRef,
        *,
        backoff_ms: int,
        max_attempts: int,
        error: str,
        retention_ms: int,
    ) -> tuple[SettleResult, Timeout | None]:
        def work(tx: RecordTransaction) -> tuple[SettleResult, Timeout | None]:
            current = tx.get(lease.kind, lease.key)
            record, result = decide_release(
                current,
                generation=lease.generation,
                owner=lease.owner,
                backoff_ms=backoff_ms,
                max_attempts=max_attempts,
                error=error,
                now_ms=tx.now_ms,
                retention_ms=retention_ms,
            )
            tx.put(record)
            return result, record or current

        return self.transaction("release", [(lease.kind, lease.key)], work)

    def abandon(
        self, kind: str, key: str, generation: int, state: TimeoutState, reason: str
    ) -> SettleResult:
        def work(tx: RecordTransaction) -> SettleResult:
            record, result = decide_abandon(
                tx.get(kind, key),
                generation=generation,
                state=state,
                reason=reason,
                now_ms=tx.now_ms,
            )
            tx.put(record)
            return result

        return self.transaction("abandon", [(kind, key)], work)
