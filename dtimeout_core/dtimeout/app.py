"""``Timeouts``: what users write against — schedule, cancel, status, and handlers.

The store decides every transition; this module validates input before anything is written,
sends the message a schedule needs, and keeps the one cross-system promise the store cannot keep
alone: no PENDING record exists without a message. When a send fails after retries the record is
moved to CANCELLED (reason ``send_failed``) and the caller gets the error.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar, cast

from dtimeout.clock import SYSTEM_CLOCK, Clock, to_ms
from dtimeout.errors import (
    DtimeoutError,
    InvalidTransitionError,
    PayloadTooLargeError,
    SendFailedError,
    ValidationError,
)
from dtimeout.interfaces import (
    CancelOutcome,
    CancelRef,
    CancelRequest,
    OutgoingMessage,
    ScheduleOutcome,
    ScheduleRequest,
    Store,
    Transport,
)
from dtimeout.model import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_RETENTION_MS,
    CancelResult,
    DueTimeout,
    OrphanPolicy,
    ScheduleResult,
    Timeout,
    TimeoutState,
    encode_payload,
    idempotency_key,
    message_body,
    validate_identity,
)
from dtimeout.retries import RetryPolicy

if TYPE_CHECKING:
    import pluggy

    from dtimeout.consumer import Consumer
    from dtimeout.registry import Registry

log = logging.getLogger(__name__)

Handler = Callable[[DueTimeout], Any]
H = TypeVar("H", bound=Handler)

# Generations are counters; 15 digits is more than any identity will see.
_MAX_GENERATION = 999_999_999_999_999
# A message's bytes besides kind, key and payload, with the widest generation and due time.
_FRAME_BYTES = len(message_body("", "", _MAX_GENERATION, 10**16, ""))


@dataclass(frozen=True, slots=True)
class ScheduleItem:
    """One entry of :meth:`Timeouts.schedule_many`: exactly one of ``after`` and ``at``."""

    kind: str
    key: str
    after: timedelta | float | None = None
    at: datetime | None = None
    payload: Any = None


class BatchScheduleError(DtimeoutError):
    """Raised by ``schedule_many`` when some items were refused or not sent.

    The others were scheduled. ``results`` has one entry per input item, in order: the written
    :class:`Timeout`, or the error that refused that item.
    """

    def __init__(self, results: list[Timeout | DtimeoutError]) -> None:
        self.results = results
        errors = [r for r in results if isinstance(r, DtimeoutError)]
        first = errors[0] if errors else None
        super().__init__(f"{len(errors)} of {len(results)} timeouts not scheduled; first: {first}")


class Timeouts:
    """Durable, cancellable timeouts over a transport and a store.

    ``transport`` and ``store`` are provider URLs (``sqlite:///…``, ``redis://…``,
    ``sqs://…``) or ready-made provider objects; when both are omitted they come from
    configuration (CLI > ``DTIMEOUT_*`` environment > ``dtimeout.toml`` > the embedded SQLite
    default).
    """

    def __init__(
        self,
        transport: str | Transport | None = None,
        store: str | Store | None = None,
        *,
        clock: Clock | None = None,
        retention: timedelta | None = None,
        max_attempts: int | None = None,
        lease: timedelta | None = None,
        retry_backoff: timedelta = timedelta(seconds=1),
        orphans: OrphanPolicy | str | None = None,
        retry: RetryPolicy | None = None,
        plugin_manager: pluggy.PluginManager | None = None,
    ) -> None:
        transport_url = transport if isinstance(transport, str) else None
        store_url = store if isinstance(store, str) else None
        if transport is None or store is None:
            # Built from configuration: the configured values fill whatever was not given.
            from dtimeout.config import load_settings

            settings = load_settings()
            transport_url = transport_url or (settings.transport if transport is None else None)
            store_url = store_url or (settings.store if store is None else None)
            retention = retention if retention is not None else settings.retention
            max_attempts = max_attempts if max_attempts is not None else settings.max_attempts
            lease = lease if lease is not None else settings.lease
            orphans = orphans if orphans is not None else settings.orphans
        self.clock = clock or SYSTEM_CLOCK
        self.retention_ms = _positive_ms(
            retention if retention is not None else timedelta(milliseconds=DEFAULT_RETENTION_MS),
            "retention",
        )
        self.lease_ms = _positive_ms(lease or timedelta(seconds=30), "lease")
        self.retry_backoff_ms = _positive_ms(retry_backoff, "retry_backoff")
        max_attempts = DEFAULT_MAX_ATTEMPTS if max_attempts is None else max_attempts
        if max_attempts < 1:
            raise ValidationError("max_attempts must be at least 1")
        self.max_attempts = max_attempts
        try:
            self.orphans = OrphanPolicy(orphans or OrphanPolicy.FIRE)
        except ValueError:
            raise ValidationError(f"orphans must be 'fire' or 'drop', not {orphans!r}") from None
        self.handlers: dict[str, Handler] = {}
        self._pm = plugin_manager
        self._registry: Registry | None = None
        self.transport: Transport = (
            transport
            if isinstance(transport, Transport)
            else self._open("transport", transport_url)
        )
        self.store: Store = store if isinstance(store, Store) else self._open("store", store_url)
        self.retry = retry or RetryPolicy()

    # -- wiring ----------------------------------------------------------------------------------

    @property
    def plugin_manager(self) -> pluggy.PluginManager:
        """The plugin manager used for provider lookup and lifecycle events."""
        if self._pm is None:
            from dtimeout.plugins import make_plugin_manager

            self._pm = make_plugin_manager()
        return self._pm

    def _open(self, role: str, url: str | None) -> Any:
        from dtimeout.registry import Registry

        assert url is not None
        if self._registry is None:  # one registry for both roles
            self._registry = Registry.from_plugin_manager(self.plugin_manager)
        if role == "transport":
            return self._registry.open_transport(url, self.clock)
        return self._registry.open_store(url, self.clock)

    def emit(self, event: str, **kwargs: Any) -> None:
        """Call a lifecycle hook; an observer's exception is logged, never propagated."""
        if self._pm is None:
            return  # nobody could have registered an observer
        hook = getattr(self._pm.hook, event)
        if not hook.get_hookimpls():
            return  # no observer of this event: skip the call on the hot path
        try:
            hook(**kwargs)
        except Exception:
            log.exception("an observer of %s raised; ignored", event)

    def close(self) -> None:
        self.transport.close()
        if self.store is not cast(object, self.transport):  # one object may serve both roles
            self.store.close()

    def __enter__(self) -> Timeouts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- handlers --------------------------------------------------------------------------------

    def handler(self, kind: str) -> Callable[[H], H]:
        """Register the function that runs when a timeout of ``kind`` fires."""
        validate_identity(kind, "-")

        def decorate(fn: H) -> H:
            if kind in self.handlers:
                raise ValidationError(f"a handler for kind {kind!r} is already registered")
            self.handlers[kind] = fn
            return fn

        return decorate

    # -- schedule --------------------------------------------------------------------------------

    def schedule(
        self,
        kind: str,
        key: str,
        *,
        after: timedelta | float | None = None,
        at: datetime | None = None,
        payload: Any = None,
    ) -> Timeout:
        """Schedule ``(kind, key)`` to fire after ``after`` or at ``at`` (aware datetime).

        Scheduling a PENDING identity reschedules it; a FIRING one raises
        ``InvalidTransitionError``; an ended one starts afresh with the next generation.
        """
        result = self._schedule_batch([ScheduleItem(kind, key, after, at, payload)])[0]
        if isinstance(result, DtimeoutError):
            raise result
        return result

    def schedule_many(self, items: Iterable[ScheduleItem | Mapping[str, Any]]) -> list[Timeout]:
        """Schedule many at once (batched store writes and sends).

        Items that are invalid are refused without affecting the others; if any item was
        refused or not sent, ``BatchScheduleError`` is raised after the rest are scheduled.
        """
        parsed = [i if isinstance(i, ScheduleItem) else ScheduleItem(**i) for i in items]
        results = self._schedule_batch(parsed)
        if any(isinstance(r, DtimeoutError) for r in results):
            raise BatchScheduleError(results)
        return [r for r in results if isinstance(r, Timeout)]

    def _schedule_batch(self, items: Sequence[ScheduleItem]) -> list[Timeout | DtimeoutError]:
        results: list[Timeout | DtimeoutError | None] = [None] * len(items)
        requests: list[tuple[int, ScheduleRequest]] = []
        payload_json: dict[int, str] = {}
        now = self.clock.now_ms()
        for index, item in enumerate(items):
            try:
                request, payload_json[index] = self._validate(item, now)
                requests.append((index, request))
            except ValidationError as exc:
                results[index] = exc
        if requests:
            outcomes = self._store_schedule([r for _, r in requests])
            to_send: list[tuple[int, ScheduleOutcome]] = []
            for (index, _), outcome in zip(requests, outcomes, strict=True):
                if outcome.result is ScheduleResult.REFUSED:
                    t = outcome.timeout
                    results[index] = InvalidTransitionError(
                        f"timeout {t.kind}:{t.key} is firing right now; "
                        "schedule it again after it finishes"
                    )
                else:
                    results[index] = outcome.timeout
                    if outcome.result.needs_message and not outcome.sent:
                        to_send.append((index, outcome))
            if to_send:  # none when the store enqueued them itself (schedule_and_send)
                bodies = [
                    message_body(t.kind, t.key, t.generation, t.due_at_ms, payload_json[index])
                    for index, t in ((i, o.timeout) for i, o in to_send)
                ]
                sent = self._send_messages([o for _, o in to_send], bodies)
                for index, error in sent.items():
                    results[to_send[index][0]] = error
            self._cancel_superseded(outcomes)
            for r, outcome in zip(requests, outcomes, strict=True):
                if not isinstance(results[r[0]], DtimeoutError):
                    self.emit(
                        "dtimeout_timeout_scheduled",
                        timeout=outcome.timeout,
                        result=outcome.result.value,
                    )
        return [r for r in results if r is not None]

    def _validate(self, item: ScheduleItem, now_ms: int) -> tuple[ScheduleRequest, str]:
        """Refuse bad input before anything is written; returns the request and the payload's
        JSON (encoded once, reused for the message)."""
        validate_identity(item.kind, item.key)
        due = _due_at_ms(item.after, item.at, now_ms)
        payload_json = encode_payload(item.payload)  # refuses what JSON cannot carry
        limit = self.transport.capabilities.max_message_bytes
        # A cheap bound first (in the body a character of kind or key takes at most 6 bytes, a
        # payload character at most 4): only a message that might be near the limit is built
        # to be measured, sized with the widest generation the record may reach.
        bound = 6 * (len(item.kind) + len(item.key)) + 4 * len(payload_json) + _FRAME_BYTES
        if bound <= limit:
            size = 0
        else:
            size = len(message_body(item.kind, item.key, _MAX_GENERATION, due, payload_json))
        if size > limit:
            raise PayloadTooLargeError(
                f"timeout {item.kind}:{item.key}: its message would be {size} bytes, over the "
                f"transport's limit of {limit} bytes"
            )
        request = ScheduleRequest(
            item.kind, item.key, due, item.payload, self.retention_ms, payload_json
        )
        return request, payload_json

    def _store_schedule(self, requests: list[ScheduleRequest]) -> list[ScheduleOutcome]:
        """One batched store write. After a transient failure the write may have been applied
        already; a retry then answers EXTENDED for what was CREATED, so messages are sent for
        every PENDING outcome of a retried call (a duplicate of the same id is harmless: the
        transport de-duplicates or the claim drops it)."""
        attempts = 0

        def call() -> list[ScheduleOutcome]:
            nonlocal attempts
            attempts += 1
            fused = self.store.schedule_and_send(self.transport, requests)
            return fused if fused is not None else self.store.schedule(requests)

        outcomes = self.retry.call(call, what="store.schedule")
        if attempts > 1:
            outcomes = [
                ScheduleOutcome(ScheduleResult.CREATED, o.timeout)
                if o.result is ScheduleResult.EXTENDED and o.timeout.state is TimeoutState.PENDING
                else o
                for o in outcomes
            ]
        return outcomes

    def _send_messages(
        self, outcomes: list[ScheduleOutcome], bodies: list[bytes]
    ) -> dict[int, DtimeoutError]:
        """Send one message per outcome in transport-sized chunks; returns failures by index.

        A chunk that still fails after retries moves its timeouts to CANCELLED (send_failed)."""
        failures: dict[int, DtimeoutError] = {}
        messages = [
            OutgoingMessage(o.timeout.idempotency_key, body, o.timeout.due_at_ms)
            for o, body in zip(outcomes, bodies, strict=True)
        ]
        handles: list[tuple[str, str, int, str]] = []
        for start, stop in _chunks(messages, self.transport.capabilities):
            chunk = messages[start:stop]
            try:
                got = self.retry.call(
                    functools.partial(self.transport.send, chunk), what="transport.send"
                )
            except DtimeoutError as exc:
                # A transport that knows which entries it did not accept says so in ``failed``;
                # the others were taken and stay scheduled.
                failed = set(getattr(exc, "failed", None) or [m.message_id for m in chunk])
                error = SendFailedError(f"could not send {len(failed)} message(s): {exc}")
                error.__cause__ = exc
                for index in range(start, stop):
                    if messages[index].message_id not in failed:
                        continue
                    t = outcomes[index].timeout
                    self.store.abandon(
                        t.kind, t.key, t.generation, TimeoutState.CANCELLED, "send_failed"
                    )
                    failures[index] = error
                continue
            for index, handle in zip(range(start, stop), got, strict=True):
                if handle is not None:
                    t = outcomes[index].timeout
                    handles.append((t.kind, t.key, t.generation, handle))
        if handles:
            self.retry.call(lambda: self.store.attach_handles(handles), what="store.attach")
        return failures

    def _cancel_superseded(self, outcomes: list[ScheduleOutcome]) -> None:
        """Best effort: remove the message an earlier reschedule made stale."""
        if not self.transport.capabilities.native_cancel:
            return
        refs = [
            CancelRef(
                idempotency_key(o.timeout.kind, o.timeout.key, o.timeout.generation - 1),
                o.previous_handle,
            )
            for o in outcomes
            if o.result is ScheduleResult.ADVANCED
        ]
        if refs:
            self._native_cancel(refs)

    def _native_cancel(self, refs: list[CancelRef]) -> None:
        try:
            self.transport.cancel(refs)
        except DtimeoutError as exc:  # the store already decided; this only saves a delivery
            log.info("native cancel of %d message(s) failed (harmless): %s", len(refs), exc)

    # -- cancel ----------------------------------------------------------------------------------

    def cancel(self, kind: str, key: str, *, request_id: str | None = None) -> CancelResult:
        """The complementary action: stop ``(kind, key)`` from firing, if it is not too late.

        Answers ``cancelled`` (it will never fire), ``too_late`` (firing or fired),
        ``not_found`` or ``already_cancelled``.
        """
        return self.cancel_many([(kind, key)], request_ids=[request_id] if request_id else None)[0]

    def cancel_many(
        self, pairs: Iterable[tuple[str, str]], *, request_ids: Sequence[str] | None = None
    ) -> list[CancelResult]:
        """Cancel many at once; answers in input order."""
        items = list(pairs)
        for kind, key in items:
            validate_identity(kind, key)
        ids = list(request_ids) if request_ids else [uuid.uuid4().hex for _ in items]
        requests = [CancelRequest(k, key, rid) for (k, key), rid in zip(items, ids, strict=True)]
        withdrawn = False

        def call() -> list[CancelOutcome]:
            nonlocal withdrawn
            fused = self.store.cancel_and_withdraw(self.transport, requests)
            withdrawn = fused is not None
            return fused if fused is not None else self.store.cancel(requests)

        # The same request ids on every retry: a re-sent cancel answers as the first one did.
        outcomes = self.retry.call(call, what="store.cancel")
        refs = [
            CancelRef(idempotency_key(r.kind, r.key, o.generation), o.handle)
            for r, o in zip(requests, outcomes, strict=True)
            if o.result is CancelResult.CANCELLED and o.generation is not None
        ]
        if refs and not withdrawn and self.transport.capabilities.native_cancel:
            self._native_cancel(refs)
        for r, o in zip(requests, outcomes, strict=True):
            self.emit("dtimeout_timeout_cancelled", kind=r.kind, key=r.key, result=o.result)
        return [o.result for o in outcomes]

    # -- inspection ------------------------------------------------------------------------------

    def status(self, kind: str, key: str) -> Timeout | None:
        """The timeout's record, or None when there is none."""
        validate_identity(kind, key)
        return self.retry.call(lambda: self.store.get(kind, key), what="store.get")

    def list(
        self,
        state: TimeoutState | str | None = None,
        kind: str | None = None,
        limit: int = 100,
    ) -> list[Timeout]:
        """Records ordered by due time."""
        st = TimeoutState(state) if state is not None else None
        return self.retry.call(
            lambda: self.store.list(state=st, kind=kind, limit=limit), what="store.list"
        )

    # -- consuming -------------------------------------------------------------------------------

    def consumer(self, **options: Any) -> Consumer:
        """A consumer that runs this object's handlers; see ``dtimeout.consumer.Consumer``."""
        from dtimeout.consumer import Consumer

        return Consumer(self, **options)


def _positive_ms(value: timedelta, name: str) -> int:
    if not isinstance(value, timedelta):
        raise ValidationError(f"{name} must be a timedelta")
    ms = int(value.total_seconds() * 1000)
    if ms <= 0:
        raise ValidationError(f"{name} must be positive")
    return ms


def _due_at_ms(after: timedelta | float | None, at: datetime | None, now_ms: int) -> int:
    if (after is None) == (at is None):
        raise ValidationError("give exactly one of after= and at=")
    if at is not None:
        if not isinstance(at, datetime):
            raise ValidationError("at= must be a datetime")
        if at.tzinfo is None or at.utcoffset() is None:
            raise ValidationError(
                f"at={at.isoformat()} has no timezone; pass an aware datetime "
                "(e.g. tzinfo=datetime.UTC)"
            )
        return to_ms(at)
    if isinstance(after, timedelta):
        seconds = after.total_seconds()
    elif isinstance(after, int | float) and not isinstance(after, bool):
        seconds = float(after)
    else:
        raise ValidationError("after= must be a timedelta or a number of seconds")
    if seconds < 0:
        raise ValidationError(f"after= must not be negative (got {seconds:g}s)")
    return now_ms + round(seconds * 1000)


def _chunks(messages: Sequence[OutgoingMessage], caps: Any) -> Iterable[tuple[int, int]]:
    """Split by the transport's message-count and byte limits."""
    start = 0
    size = 0
    for index, m in enumerate(messages):
        full = index - start >= caps.max_send_batch
        too_big = caps.max_send_batch_bytes is not None and size + len(m.body) > (
            caps.max_send_batch_bytes
        )
        if index > start and (full or too_big):
            yield start, index
            start, size = index, 0
        size += len(m.body)
    if start < len(messages):
        yield start, len(messages)
