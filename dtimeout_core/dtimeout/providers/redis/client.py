"""The redis-py client for a provider URL, and the translation of redis-py's errors.

Errors are translated here and nowhere else: connection resets, timeouts, a loading or failing
over server become ``Transient*Error`` (the consumer backs off and resumes); refused credentials
or certificates become ``ConfigurationError``; the cause stays chained and no message carries a
password.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dtimeout.errors import ConfigurationError, DtimeoutError, MissingDependencyError
from dtimeout.providers.redis.settings import RedisSettings

INSTALL_HINT = "pip install 'redis>=8'"


def import_redis() -> Any:
    try:
        import redis
    except ImportError as exc:  # pragma: no cover - redis is a core dependency
        raise MissingDependencyError(f"the Redis provider needs redis-py: {INSTALL_HINT}") from exc
    return redis


def build_client(settings: RedisSettings) -> Any:
    """A redis-py client for the settings: standalone, sentinel master, or cluster.

    redis-py's own ``Retry`` (exponential backoff from 10 ms, capped at 1 s) absorbs blips and
    short restarts, about 4 s with the default ``retries=10``: a consumer settling a batch during
    a restart finishes it instead of losing it. Longer outages surface as transient errors for
    the caller's own policy.
    """
    redis = import_redis()
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    refused = (redis.exceptions.AuthenticationError, redis.exceptions.AuthorizationError)

    class _Retry(Retry):
        """redis-py counts a refused password as a ConnectionError; retrying it only delays
        the configuration error by seconds, so it fails at once."""

        def call_with_retry(
            self,
            do: Callable[[], Any],
            fail: Callable[..., Any],
            is_retryable: Callable[[Exception], bool] | None = None,
            with_failure_count: bool = False,
        ) -> Any:
            def retryable(error: Exception) -> bool:
                if isinstance(error, refused):
                    return False
                return is_retryable(error) if is_retryable else True

            return super().call_with_retry(do, fail, retryable, with_failure_count)

    retry = _Retry(
        ExponentialBackoff(cap=1.0, base=0.01),
        settings.retries,
        supported_errors=(redis.exceptions.ConnectionError, redis.exceptions.TimeoutError),
    )
    kwargs = settings.connection_kwargs()
    if settings.cluster:
        from redis.cluster import ClusterNode, RedisCluster

        kwargs.pop("health_check_interval", None)  # per-node pools do their own checks
        nodes = [ClusterNode(host, port) for host, port in settings.hosts]  # type: ignore[no-untyped-call]
        return RedisCluster(startup_nodes=nodes, retry=retry, **kwargs)
    if settings.sentinel:
        from redis.sentinel import Sentinel

        sentinel_kwargs = {
            "username": settings.sentinel_username,
            "password": settings.sentinel_password,
            "socket_timeout": settings.socket_timeout,
            "socket_connect_timeout": settings.connect_timeout,
        }
        if settings.ssl:
            sentinel_kwargs.update(
                {k: v for k, v in kwargs.items() if k.startswith("ssl")}  # same TLS as the data
            )
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(settings.hosts), sentinel_kwargs=sentinel_kwargs, **kwargs
        )
        return sentinel.master_for(  # type: ignore[no-untyped-call]
            settings.master, db=settings.db, retry=retry
        )
    host, port = settings.hosts[0]
    return redis.Redis(host=host, port=port, db=settings.db, retry=retry, **kwargs)


def translate(exc: BaseException, where: str, settings: RedisSettings, role: str) -> DtimeoutError:
    """The dtimeout error for a redis-py exception (see the module docstring)."""
    from redis import exceptions as rx

    from dtimeout.errors import (
        StoreError,
        TransientStoreError,
        TransientTransportError,
        TransportError,
    )

    at = f"Redis {role} at {settings.display()}"
    text = " ".join(str(exc).split()) or type(exc).__name__
    if settings.password:
        text = text.replace(settings.password, "****")
    auth_errors = (rx.AuthenticationError, rx.AuthorizationError, rx.NoPermissionError)
    if isinstance(exc, auth_errors) or any(
        marker in text for marker in ("NOAUTH", "WRONGPASS", "invalid username-password")
    ):
        return ConfigurationError(f"{at} refused the credentials: {text}")
    if "certificate verify failed" in text.lower() or "CERTIFICATE_VERIFY_FAILED" in text:
        return ConfigurationError(f"{at}: TLS certificate not accepted: {text}")
    transient_types: tuple[type[BaseException], ...] = (
        rx.ConnectionError,
        rx.TimeoutError,
        rx.BusyLoadingError,
        rx.ClusterError,
        rx.ClusterDownError,
        rx.TryAgainError,
        rx.ReadOnlyError,
        rx.OutOfMemoryError,
        rx.RedisClusterException,
        # NOSCRIPT here: the server forgot the scripts again right after they were reloaded (a
        # restart or SCRIPT FLUSH in progress); nothing ran, and a later retry reloads them.
        rx.NoScriptError,
        ConnectionError,
        TimeoutError,
    )
    permanent_cluster = (rx.CrossSlotTransactionError, rx.InvalidPipelineStack)
    transient = isinstance(exc, transient_types) and not isinstance(exc, permanent_cluster)
    if not transient and any(m in text for m in ("LOADING", "MASTERDOWN", "TRYAGAIN", "BUSY")):
        transient = True
    message = f"{at}: {where} failed: {text}"
    if role == "store":
        return TransientStoreError(message) if transient else StoreError(message)
    return TransientTransportError(message) if transient else TransportError(message)
