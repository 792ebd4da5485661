"""The consume loop: receive due messages, claim them in the store, run handlers, settle.

``run()`` is a short loop over ``run_once()`` — one receive → claim → fire → settle cycle.
Handlers run on ``concurrency`` worker threads; the loop keeps at most one receive batch of
claimed jobs beyond them and heartbeats every lease it holds, so a job waiting for a worker is as
safe as a running one. Results are settled
in batches (one ``complete`` and one ``ack`` call for all that finished), which keeps round trips
per timeout low at load.

A store that shares a server with the transport may fuse the steps (``Store.receive_and_claim``,
``Store.complete_and_ack``: Redis on one queue). Then each cycle is one call to receive and
claim, and settlements after the first run on a settler thread, one batch at a time, so the
server settles one batch while this loop receives and claims the next.

Transient provider failures are retried by ``RetryPolicy``; when retries give up inside ``run()``
the loop logs, backs off and resumes (a broker restart never kills a consumer). Handler
exceptions release the timeout with exponential backoff and dead-letter it after
``max_attempts``. A message that is not a dtimeout message, or whose kind has no handler, is
dead-lettered with the reason — never retried forever, never stopping the loop.
"""

from __future__ import annotations

import functools
import logging
import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dtimeout.clock import Clock, to_datetime
from dtimeout.errors import DtimeoutError, MalformedMessageError, ProviderError
from dtimeout.interfaces import (
    ClaimOutcome,
    ClaimRequest,
    Delivery,
    LeaseRef,
    ReceiveClaimRequest,
    ReceivedClaims,
)
from dtimeout.model import (
    ClaimResult,
    DueTimeout,
    SettleResult,
    TimeoutMessage,
    TimeoutState,
)
from dtimeout.workers import Workers

if TYPE_CHECKING:
    from dtimeout.app import Timeouts

log = logging.getLogger(__name__)

_MAX_LATENESS_SAMPLES = 200_000
_MIN_REQUEUE_MS = 10


@dataclass
class ConsumerStats:
    """What a consumer did; ``lateness_ms`` holds up to 200,000 samples (handler start - due)."""

    received: int = 0
    fired: int = 0
    failed: int = 0
    dead_lettered: int = 0
    requeued: int = 0
    orphans: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    lateness_ms: list[int] = field(default_factory=list)

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "fired": self.fired,
            "failed": self.failed,
            "dead_lettered": self.dead_lettered,
            "requeued": self.requeued,
            "orphans": self.orphans,
            "dropped": dict(self.dropped),
        }


@dataclass(eq=False)
class _Job:
    delivery: Delivery
    lease: LeaseRef
    due: DueTimeout
    handler: Callable[[DueTimeout], Any]
    clock: Clock
    started_ms: int = 0
    error: BaseException | None = None
    duration_ms: int = 0
    gate: threading.Lock = field(default_factory=threading.Lock)
    leased_at: float = field(default_factory=time.monotonic)  # claim or last renewal
    settling: bool = False  # with the settler thread, which completes it right now


class Consumer:
    """Runs the handlers of a :class:`~dtimeout.app.Timeouts` as their timeouts come due."""

    def __init__(
        self,
        timeouts: Timeouts,
        *,
        concurrency: int = 1,
        batch_size: int | None = None,
        wait_seconds: float = 1.0,
        heartbeat_seconds: float | None = None,
        purge_every_seconds: float = 60.0,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.timeouts = timeouts
        self.transport = timeouts.transport
        self.store = timeouts.store
        self.concurrency = concurrency
        caps = self.transport.capabilities
        self.batch_size = min(batch_size or max(10, concurrency), caps.max_receive_batch)
        self.wait_seconds = wait_seconds
        self.lease_seconds = timeouts.lease_ms / 1000
        self.heartbeat_seconds = heartbeat_seconds or self.lease_seconds / 3
        self.purge_every_seconds = purge_every_seconds
        self.on_event = on_event
        self.stats = ConsumerStats()
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._claims = 0
        # Fused steps (Store.receive_and_claim / complete_and_ack): tried until the store
        # answers None once, i.e. it cannot fuse with this transport.
        self._fuse_receive = True
        self._fuse_settle = True
        self._stop = threading.Event()
        # Handlers always run on workers, never on the loop thread, so the loop can keep
        # heartbeating the leases of long handlers (and of claimed jobs waiting for a worker).
        self._workers: Workers[_Job] | None = Workers(concurrency, _run)
        self.max_in_flight = max(self.batch_size, concurrency)
        self._jobs: set[_Job] = set()  # claimed and not yet settled
        self._unsettled: list[_Job] = []  # finished; complete/ack (or release) still to do
        self._settler: _Settler | None = None  # started once a fused settlement worked
        self._settle_chunk = max(1, self.max_in_flight // 2)  # jobs per settler batch
        self._heartbeat_at = time.monotonic() + self.heartbeat_seconds
        self._purge_at = time.monotonic() + purge_every_seconds
        self._stats_lock = threading.Lock()

    # -- the loop --------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to stop after the current cycle; in-flight handlers finish. Thread-safe."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def in_flight(self) -> int:
        """Claimed timeouts not yet settled (queued, running, or finished and unsettled)."""
        return len(self._jobs)

    def run(
        self,
        *,
        stop_when: Callable[[], bool] | None = None,
        max_idle_seconds: float | None = None,
    ) -> ConsumerStats:
        """Consume until ``stop()``, ``stop_when()`` turns true, or nothing arrived for
        ``max_idle_seconds`` (burst mode); then finish in-flight handlers and return the stats."""
        idle_since = time.monotonic()
        outage_wait = 0.5
        try:
            while not self._stop.is_set() and not (stop_when and stop_when()):
                try:
                    handled = self.run_once()
                    outage_wait = 0.5
                except ProviderError as exc:
                    if not self.timeouts.retry.is_transient(exc):
                        raise
                    log.error("provider unavailable, backing off %.1fs: %s", outage_wait, exc)
                    self._stop.wait(outage_wait)
                    outage_wait = min(outage_wait * 2, 10.0)
                    continue
                now = time.monotonic()
                if handled or self._jobs:
                    idle_since = now
                elif max_idle_seconds is not None and now - idle_since >= max_idle_seconds:
                    break
        finally:
            self.close()
        return self.stats

    def run_once(self) -> int:
        """One cycle: settle finished handlers, receive what is due (up to the free capacity),
        claim, hand to workers. Returns how many messages were received; 0 is the normal
        "nothing due" answer."""
        self._settle()
        self._maintain()
        free = self.max_in_flight - len(self._jobs)
        settler = self._settler
        if free <= 0 or (settler is not None and settler.busy and free < self._settle_chunk):
            # full, or nearly and a settlement is about to free a chunk: a tiny receive would
            # cost the server a call's overhead for a handful of messages
            self._settle(wait=min(self.heartbeat_seconds, 0.5))
            return 0
        wait_for = 0.0 if self._jobs else self.wait_seconds
        wanted = min(self.batch_size, free)
        if self._fuse_receive:
            fused = self._receive_and_claim(wanted, wait_for)
            if fused is not None:
                return fused
        deliveries = self._call(
            lambda: self.transport.receive(wanted, wait_for, self.lease_seconds),
            "transport.receive",
        )
        if not deliveries:
            if self._jobs:
                self._settle(wait=min(self.wait_seconds, 0.05))
            return 0
        self.stats.received += len(deliveries)
        self._dispatch(deliveries)
        return len(deliveries)

    def drain(self, timeout: float = 60.0) -> None:
        """Finish running handlers and settle them; on stop, hand back claimed jobs that have
        not started yet (released at once, so another consumer can take them). Bounded: what
        cannot be settled in ``timeout`` (the store is down) is left to lease expiry."""
        if self._stop.is_set():
            for job in list(self._jobs):
                if Workers.take_back(job):
                    self._jobs.discard(job)
                    self._hand_back(job)
        deadline = time.monotonic() + timeout
        while self._jobs and time.monotonic() < deadline:
            try:
                self._settle(wait=0.5)
                self._maintain()
            except ProviderError as exc:
                log.error("could not settle on shutdown, retrying: %s", exc)
                time.sleep(0.5)
        if self._jobs:
            log.warning(
                "%d timeout(s) not settled at shutdown; their leases will expire and another "
                "consumer will take them",
                len(self._jobs),
            )

    def close(self) -> None:
        """Drain, then stop the worker and settler threads. The consumer cannot run after
        this."""
        self.drain()
        if self._settler is not None:
            self._settler.close()
            self._settler = None
        if self._workers is not None:
            self._workers.close()
            self._workers = None

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one batch -------------------------------------------------------------------------------

    def _receive_and_claim(self, wanted: int, wait_for: float) -> int | None:
        """The fused receive → claim (``Store.receive_and_claim``): claimed jobs go to the
        workers, what the store settled itself is counted as ``_route`` would, and what it left
        unclaimed takes the usual path. None when the store cannot fuse (then never again)."""
        self._claims += 1
        call = uuid.uuid4().hex[:12]  # the same id on every retry of this call
        request = ReceiveClaimRequest(
            wanted,
            wait_for,
            self.timeouts.lease_ms,
            call,
            f"{self.id}:{self._claims}.",
            self.timeouts.max_attempts,
            self.timeouts.orphans,
            self.timeouts.retention_ms,
            frozenset(self.timeouts.handlers),
        )
        got: ReceivedClaims | None = self._call(
            lambda: self.store.receive_and_claim(self.transport, request),
            "store.receive_and_claim",
        )
        if got is None:
            self._fuse_receive = False
            return None
        received = got.received
        if not received:
            if self._jobs:
                self._settle(wait=min(self.wait_seconds, 0.05))
            return 0
        self.stats.received += received
        handlers, clock = self.timeouts.handlers, self.timeouts.clock
        for claimed in got.claimed:
            if claimed.orphan:
                self.stats.orphans += 1
                log.warning(
                    "firing orphan %s: its record was missing (expired or wiped)",
                    claimed.delivery.message_id,
                )
            due = claimed.due
            self._start(_Job(claimed.delivery, claimed.lease, due, handlers[due.kind], clock))
        for message_id, result, reason in got.settled:
            if result is ClaimResult.NOT_DUE or result is ClaimResult.BUSY:
                self.stats.requeued += 1
            elif result is ClaimResult.DEAD:
                self._dead_lettered(message_id, reason)
            else:
                self.stats.drop(result.value)
                self.timeouts.emit(
                    "dtimeout_message_dropped", message_id=message_id, reason=result.value
                )
        if got.deliveries:
            self._dispatch(got.deliveries)
        return received

    def _dispatch(self, deliveries: list[Delivery]) -> None:
        claims: list[tuple[Delivery, ClaimRequest]] = []
        for delivery in deliveries:
            try:
                message = TimeoutMessage.decode(delivery.body)
            except MalformedMessageError as exc:
                self._dead_letter(delivery, f"malformed: {exc}")
                continue
            if message.kind not in self.timeouts.handlers:
                reason = f"no handler for kind {message.kind!r}"
                self._call(
                    functools.partial(
                        self.store.abandon,
                        message.kind,
                        message.key,
                        message.generation,
                        TimeoutState.DEAD,
                        reason,
                    ),
                    "store.abandon",
                )
                self._dead_letter(delivery, reason)
                continue
            self._claims += 1
            owner = f"{self.id}:{self._claims}"  # the same token on every retry of this claim
            claims.append(
                (
                    delivery,
                    ClaimRequest(
                        message,
                        owner,
                        self.timeouts.lease_ms,
                        self.timeouts.max_attempts,
                        self.timeouts.orphans,
                        self.timeouts.retention_ms,
                    ),
                )
            )
        if not claims:
            return
        outcomes = self._call(lambda: self.store.claim([c for _, c in claims]), "store.claim")
        to_ack: list[Delivery] = []
        for (delivery, request), outcome in zip(claims, outcomes, strict=True):
            self._route(delivery, request, outcome, to_ack)
        if to_ack:
            self._call(lambda: self.transport.ack(to_ack), "transport.ack")

    def _route(
        self,
        delivery: Delivery,
        request: ClaimRequest,
        outcome: ClaimOutcome,
        to_ack: list[Delivery],
    ) -> None:
        result, record, message = outcome.result, outcome.timeout, request.message
        if result is ClaimResult.CLAIMED:
            assert record is not None
            if record.orphan:
                self.stats.orphans += 1
                log.warning(
                    "firing orphan %s: its record was missing (expired or wiped)",
                    message.message_id,
                )
            due = DueTimeout(
                record.kind,
                record.key,
                record.payload,
                to_datetime(record.due_at_ms),
                record.generation,
                record.attempts,
            )
            lease = LeaseRef(record.kind, record.key, record.generation, request.owner)
            handler = self.timeouts.handlers[due.kind]
            self._start(_Job(delivery, lease, due, handler, self.timeouts.clock))
        elif result is ClaimResult.NOT_DUE or result is ClaimResult.BUSY:
            assert record is not None
            now = self.timeouts.clock.now_ms()
            until = record.due_at_ms if result is ClaimResult.NOT_DUE else record.lease_expires_ms
            delay = max(_MIN_REQUEUE_MS, until - now + (0 if result is ClaimResult.NOT_DUE else 50))
            self._call(lambda: self.transport.retry_later(delivery, delay), "transport.retry_later")
            self.stats.requeued += 1
        elif result is ClaimResult.DEAD:
            reason = (record.reason if record else None) or "attempts exhausted"
            self._dead_letter(delivery, reason)
        else:
            to_ack.append(delivery)
            self.stats.drop(result.value)
            self.timeouts.emit(
                "dtimeout_message_dropped", message_id=message.message_id, reason=result.value
            )

    def _start(self, job: _Job) -> None:
        assert self._workers is not None, "consumer already closed"
        self._jobs.add(job)
        self._workers.submit(job)

    def _hand_back(self, job: _Job) -> None:
        result, _ = self._call(
            lambda: self.store.release(
                job.lease,
                backoff_ms=0,
                max_attempts=self.timeouts.max_attempts + 1,
                error="consumer stopped before the handler started",
                retention_ms=self.timeouts.retention_ms,
            ),
            "store.release",
        )
        if result is SettleResult.RELEASED:
            self._call(lambda: self.transport.retry_later(job.delivery, 0), "transport.retry_later")

    # -- settling --------------------------------------------------------------------------------

    def _settle(self, *, wait: float | None = None) -> None:
        """Complete and ack (or release) finished jobs in batches. A job leaves the books only
        when its settlement succeeded: if the store or transport fails past the retries, the
        jobs stay and the next cycle tries again (complete and release are idempotent for the
        lease owner).

        With a fusing store (one ``complete_and_ack`` call settles a batch), batches after the
        first go to the settler thread, one at a time, and this only collects their answers:
        Redis settles one batch while this thread receives and claims the next, instead of
        each waiting for the other."""
        settler = self._settler
        done: tuple[list[_Job], list[SettleResult] | Exception] | None = None
        if settler is not None and settler.busy:
            done = settler.result(wait)  # the batch out frees capacity soonest: wait for it
            wait = None
        if self._workers is not None and self._jobs:
            self._unsettled.extend(self._workers.finished(wait=wait))
        if done is not None:
            self._settled(*done)
        if not self._unsettled:
            return
        ok = [j for j in self._unsettled if j.error is None]
        if ok and (settler is None or not settler.busy):
            if settler is not None:
                # at most half the capacity at a time: the other half can be received and
                # claimed meanwhile, so the server always has the next call waiting
                ok = ok[: self._settle_chunk]
                for job in ok:
                    job.settling = True
                settler.submit(ok)
            else:
                self._book(ok, self._complete_and_ack(ok))
                if self._fuse_settle:
                    self._settler = _Settler(self._complete_and_ack)
            sent = set(ok)
            self._unsettled = [j for j in self._unsettled if j not in sent]
        for job in [j for j in self._unsettled if j.error is not None]:
            self._failed(job)
            self._unsettled.remove(job)
            self._jobs.discard(job)

    def _settled(self, jobs: list[_Job], answers: list[SettleResult] | Exception) -> None:
        """Book what the settler did; a failed settlement puts its jobs back and raises."""
        if isinstance(answers, Exception):
            for job in jobs:
                job.settling = False
            self._unsettled[:0] = jobs
            raise answers
        self._book(jobs, answers)

    def _book(self, jobs: list[_Job], answers: list[SettleResult]) -> None:
        for job, answer in zip(jobs, answers, strict=True):
            self._jobs.discard(job)
            if answer is SettleResult.COMPLETED:
                self._fired(job)
            else:  # lost the lease: redelivery and the store decide; do not ack
                log.warning("lease lost before completing %s", job.lease)

    def _complete_and_ack(self, jobs: list[_Job]) -> list[SettleResult]:
        """Complete the jobs' leases and ack the messages of those completed: one fused call
        when the store can (``Store.complete_and_ack``), else ``complete`` then ``ack``."""
        if self._fuse_settle:
            items = [(j.lease, j.delivery) for j in jobs]
            fused: list[SettleResult] | None = self._call(
                lambda: self.store.complete_and_ack(self.transport, items),
                "store.complete_and_ack",
            )
            if fused is not None:
                return fused
            self._fuse_settle = False
        answers: list[SettleResult] = self._call(
            lambda: self.store.complete([j.lease for j in jobs]), "store.complete"
        )
        acked = [j for j, a in zip(jobs, answers, strict=True) if a is SettleResult.COMPLETED]
        if acked:
            self._call(lambda: self.transport.ack([j.delivery for j in acked]), "transport.ack")
        return answers

    def _fired(self, job: _Job) -> None:
        lateness = job.started_ms - int(job.due.due_at.timestamp() * 1000)
        self.stats.fired += 1
        if len(self.stats.lateness_ms) < _MAX_LATENESS_SAMPLES:
            self.stats.lateness_ms.append(lateness)
        self.timeouts.emit(
            "dtimeout_timeout_fired",
            timeout=job.due,
            lateness_ms=lateness,
            duration_ms=job.duration_ms,
        )
        if self.on_event:
            self.on_event("fired", {"timeout": job.due, "lateness_ms": lateness})

    def _failed(self, job: _Job) -> None:
        error = job.error
        assert error is not None
        text = f"{type(error).__name__}: {error}"[:1000]
        backoff = min(self.timeouts.retry_backoff_ms * 2 ** max(0, job.due.attempt - 1), 300_000)
        result, _ = self._call(
            lambda: self.store.release(
                job.lease,
                backoff_ms=backoff,
                max_attempts=self.timeouts.max_attempts,
                error=text,
                retention_ms=self.timeouts.retention_ms,
            ),
            "store.release",
        )
        log.warning(
            "handler for %s failed (attempt %d): %s", job.due.idempotency_key, job.due.attempt, text
        )
        self.stats.failed += 1
        if result is SettleResult.RELEASED:
            self._call(
                lambda: self.transport.retry_later(job.delivery, backoff), "transport.retry_later"
            )
        elif result is SettleResult.DEAD:
            self._dead_letter(job.delivery, text)
        self.timeouts.emit(
            "dtimeout_timeout_failed",
            timeout=job.due,
            error=error,
            will_retry=result is SettleResult.RELEASED,
        )

    def _dead_letter(self, delivery: Delivery, reason: str) -> None:
        self._call(lambda: self.transport.dead_letter(delivery, reason), "transport.dead_letter")
        self._dead_lettered(delivery.message_id, reason)

    def _dead_lettered(self, message_id: str, reason: str) -> None:
        self.stats.dead_lettered += 1
        log.warning("dead-lettered %s: %s", message_id, reason)
        self.timeouts.emit("dtimeout_message_dead_lettered", message_id=message_id, reason=reason)

    # -- housekeeping ----------------------------------------------------------------------------

    def _maintain(self) -> None:
        now = time.monotonic()
        if self._jobs and now >= self._heartbeat_at:
            self._heartbeat()
        if now >= self._purge_at:
            self._purge_at = now + self.purge_every_seconds
            try:
                purged = self.store.purge_expired()
                if purged:
                    log.info("purged %d expired record(s)", purged)
            except ProviderError as exc:
                log.warning("purge failed (will try again): %s", exc)

    def _heartbeat(self) -> None:
        """Keep the leases of claimed, unsettled jobs alive, in the store and in the transport.
        Only leases a heartbeat old are renewed: quick jobs settle before they need it."""
        now = time.monotonic()
        self._heartbeat_at = now + self.heartbeat_seconds
        # A job with the settler is being completed right now: renewing it would race the
        # completion (and answer "lost" once it is done), as the loop never did while settling.
        running = [
            j for j in self._jobs if not j.settling and now - j.leased_at >= self.heartbeat_seconds
        ]
        if not running:
            return
        for job in running:
            job.leased_at = now
        held = self._call(
            lambda: self.store.renew([j.lease for j in running], self.timeouts.lease_ms),
            "store.renew",
        )
        for job, ok in zip(running, held, strict=True):
            if ok:
                self._call(
                    functools.partial(self.transport.extend, job.delivery, self.lease_seconds),
                    "transport.extend",
                )
            else:
                log.warning("lease of %s lost while its handler runs", job.lease)

    def _call(self, fn: Callable[[], Any], what: str) -> Any:
        return self.timeouts.retry.call(fn, what=what)


class _Settler:
    """A thread that settles one batch of finished jobs at a time (``settle(jobs)`` answers
    per job, or raises). The loop submits a batch and later collects ``(jobs, answers)`` or
    ``(jobs, error)``; it alone keeps the books, so nothing here touches the consumer's state."""

    def __init__(self, settle: Callable[[list[_Job]], list[SettleResult]]) -> None:
        self._settle = settle
        self._inbox: queue.SimpleQueue[list[_Job] | None] = queue.SimpleQueue()
        self._outbox: queue.SimpleQueue[tuple[list[_Job], list[SettleResult] | Exception]] = (
            queue.SimpleQueue()
        )
        self.busy = False  # a batch is out (read and written by the loop thread only)
        self._thread = threading.Thread(target=self._loop, name="dtimeout-settler", daemon=True)
        self._thread.start()

    def submit(self, jobs: list[_Job]) -> None:
        assert not self.busy, "one batch at a time"
        self.busy = True
        self._inbox.put(jobs)

    def result(
        self, wait: float | None
    ) -> tuple[list[_Job], list[SettleResult] | Exception] | None:
        """The batch out, once settled; None while it is not (waiting up to ``wait``)."""
        try:
            if wait is None:
                done = self._outbox.get_nowait()
            else:
                done = self._outbox.get(timeout=max(wait, 0.0))
        except queue.Empty:
            return None
        self.busy = False
        return done

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread; a batch still out after a drain gave up on it (the store is down)
        is left to lease expiry, as the serial loop would leave it."""
        self._inbox.put(None)
        self._thread.join(timeout)

    def _loop(self) -> None:
        while (jobs := self._inbox.get()) is not None:
            try:
                answers: list[SettleResult] | Exception = self._settle(jobs)
            except Exception as exc:  # handed to the loop, which raises it as its own
                answers = exc
            self._outbox.put((jobs, answers))


def _run(job: _Job) -> None:
    job.started_ms = job.clock.now_ms()
    started = time.monotonic()
    try:
        job.handler(job.due)
    except Exception as exc:  # a handler's failure is data for release(), not a loop crash
        job.error = exc
    job.duration_ms = int((time.monotonic() - started) * 1000)


__all__ = ["Consumer", "ConsumerStats", "DtimeoutError"]
