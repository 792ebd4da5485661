"""The retry policy for provider calls (tenacity), shared by the API and the consumer.

Only transient failures are retried: a ``ProviderError`` with ``transient=True`` (providers
translate their SDK's connection resets, timeouts and throttling into those) or an exception of a
type the provider listed in ``ProviderInfo.transient_errors``. Waits grow exponentially with
jitter and are bounded in count and in total time; when retries give up, the original exception
is raised as it was (``reraise=True``), so the caller sees the real cause. Each retry is logged
at INFO; what outlasts the policy is the caller's to report (the consumer logs an error and
backs off; a CLI command prints one line).

SDK-level retries (redis-py ``Retry``, botocore's retry mode, the Azure SDK's ``retry_total``) sit
below this and handle the short blips; this policy covers the longer outages. Providers keep their
SDK retries small so the two do not multiply into minutes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

from dtimeout.errors import ProviderError

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try a provider call before giving up."""

    attempts: int = 5
    max_seconds: float = 30.0
    initial_wait: float = 0.05
    max_wait: float = 5.0
    extra_transient: tuple[type[BaseException], ...] = ()

    def is_transient(self, exc: BaseException) -> bool:
        if isinstance(exc, ProviderError):
            return exc.transient
        return bool(self.extra_transient) and isinstance(exc, self.extra_transient)

    def call(self, fn: Callable[[], T], *, what: str) -> T:
        """Run ``fn``, retrying transient failures; re-raise the last one unchanged.

        The first attempt runs bare: the policy costs nothing on the hot path until a call
        actually fails transiently.
        """
        started = time.monotonic()
        try:
            return fn()
        except Exception as exc:
            # An attempt that alone used up the time budget (an SDK retrying inside it) is
            # not repeated: the budget bounds the whole call, not the time between attempts.
            spent = time.monotonic() - started
            if self.attempts <= 1 or not self.is_transient(exc) or spent >= self.max_seconds:
                raise
            log.info("%s failed (attempt 1), retrying: %s", what, exc)

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.info("%s failed (attempt %d), retrying: %s", what, state.attempt_number + 1, exc)

        retrying = Retrying(
            retry=retry_if_exception(self.is_transient),
            stop=stop_after_attempt(self.attempts - 1)
            | stop_after_delay(max(0.0, self.max_seconds - spent)),
            wait=wait_exponential_jitter(multiplier=self.initial_wait, max=self.max_wait),
            before_sleep=before_sleep,
            reraise=True,
        )
        time.sleep(self.initial_wait)
        return retrying(fn)


NO_RETRY = RetryPolicy(attempts=1)
