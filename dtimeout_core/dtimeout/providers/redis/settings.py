"""Typed settings of the Redis provider, parsed from its URL.

Four schemes (DESIGN §3)::

    redis://[[USER]:PASSWORD@]HOST[:PORT][/DB][?OPTIONS]
    rediss://…                                  same, TLS
    redis+cluster://[[USER]:PASSWORD@]HOST[:PORT][,HOST[:PORT]…][?OPTIONS]
    redis+sentinel://[[USER]:PASSWORD@]HOST[:PORT][,HOST[:PORT]…][/DB]?master=NAME[&OPTIONS]

Options: ``prefix`` (key prefix, default ``dtimeout``), ``shards`` (due-index shards; default 16
on cluster, 1 elsewhere), ``socket_timeout``, ``connect_timeout``, ``health_check_interval``,
``retries`` (redis-py re-sends after a connection error; default 10, about 4 s of backoff in
all, enough to ride out a restart unnoticed), ``poll_interval`` (longest idle poll of the
transport), ``max_connections``, ``fuse`` (default true: a store handed a Redis transport on
the same server, database, user and prefix enqueues the messages in its schedule script,
``RedisStore.schedule_and_send``; false on either URL keeps schedule and send apart; see
``fusion.py``).
TLS: ``ssl`` (for cluster and sentinel), ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``,
``ssl_cert_reqs`` (``required``/``optional``/``none``), ``ssl_check_hostname``.
Sentinel: ``master``, ``sentinel_username``, ``sentinel_password``.
Durations are seconds (``0.5``) or carry a unit (``500ms``, ``5s``, ``1m``).

A password absent from the URL is taken from ``DTIMEOUT_REDIS_PASSWORD`` so it need not appear in
configuration files at all. Unknown options are refused by name: a typo must not silently fall
back to a default.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote

from dtimeout.errors import ConfigurationError
from dtimeout.providers.redis.keys import DEFAULT_PREFIX, validate_prefix

SCHEMES = ("redis", "rediss", "redis+cluster", "redis+sentinel")
PASSWORD_ENV = "DTIMEOUT_REDIS_PASSWORD"
_DEFAULT_PORT = {"redis+sentinel": 26379}
_CERT_REQS = ("required", "optional", "none")
_ALIASES = {
    "ca": "ssl_ca_certs",
    "cert": "ssl_certfile",
    "key": "ssl_keyfile",
    "service_name": "master",
    "socket_connect_timeout": "connect_timeout",
}
_OPTIONS = {
    "prefix",
    "shards",
    "socket_timeout",
    "connect_timeout",
    "health_check_interval",
    "retries",
    "poll_interval",
    "max_connections",
    "fuse",
    "ssl",
    "ssl_ca_certs",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_cert_reqs",
    "ssl_check_hostname",
    "master",
    "sentinel_username",
    "sentinel_password",
}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*$")


@dataclass(frozen=True)
class RedisSettings:
    """Everything needed to connect and lay out keys; built by :func:`parse_url`."""

    scheme: str
    hosts: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    db: int = 0
    prefix: str = DEFAULT_PREFIX
    shards: int = 1
    socket_timeout: float = 5.0
    connect_timeout: float = 5.0
    health_check_interval: float = 30.0
    retries: int = 10
    poll_interval: float = 0.05
    max_connections: int | None = None
    fuse: bool = True
    ssl: bool = False
    ssl_ca_certs: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_cert_reqs: str = "required"
    ssl_check_hostname: bool = True
    master: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)

    @property
    def cluster(self) -> bool:
        return self.scheme == "redis+cluster"

    @property
    def sentinel(self) -> bool:
        return self.scheme == "redis+sentinel"

    def display(self) -> str:
        """The URL without secrets, for messages and logs."""
        auth = ""
        if self.username or self.password:
            auth = f"{self.username or ''}{':****' if self.password else ''}@"
        hosts = ",".join(f"{_host(h)}:{p}" for h, p in self.hosts)
        db = f"/{self.db}" if self.db and not self.cluster else ""
        return f"{self.scheme}://{auth}{hosts}{db}"

    def connection_kwargs(self) -> dict[str, Any]:
        """Keyword arguments shared by ``redis.Redis``, ``RedisCluster`` and sentinel masters
        (everything except hosts, db and the retry object)."""
        kwargs: dict[str, Any] = {
            "username": self.username,
            "password": self.password,
            "socket_timeout": self.socket_timeout,
            "socket_connect_timeout": self.connect_timeout,
            "health_check_interval": self.health_check_interval,
        }
        if self.max_connections is not None:
            kwargs["max_connections"] = self.max_connections
        if self.ssl:
            kwargs.update(
                ssl=True,
                ssl_ca_certs=self.ssl_ca_certs,
                ssl_certfile=self.ssl_certfile,
                ssl_keyfile=self.ssl_keyfile,
                ssl_cert_reqs=self.ssl_cert_reqs,
                # Checking a host name needs a verified certificate in the first place.
                ssl_check_hostname=self.ssl_check_hostname and self.ssl_cert_reqs != "none",
            )
        return kwargs


def parse_url(url: str) -> RedisSettings:
    """Parse and validate a provider URL; raise :class:`ConfigurationError` naming the problem."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in SCHEMES:
        raise ConfigurationError(
            f"not a Redis URL (expected one of {', '.join(s + '://' for s in SCHEMES)})"
        )
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hostlist = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, pw = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(pw) if colon else None
    if password is None:
        password = os.environ.get(PASSWORD_ENV) or None
    default_port = _DEFAULT_PORT.get(scheme, 6379)
    hosts = tuple(_parse_host(h, default_port, scheme) for h in (hostlist or "").split(","))
    if len(hosts) > 1 and scheme in ("redis", "rediss"):
        raise ConfigurationError(
            f"{scheme}:// takes one host; use redis+cluster:// or redis+sentinel:// for several"
        )
    options = _options(query)
    db = _int(path.strip("/") or options.pop("db", "0"), "db", 0)
    if db and scheme == "redis+cluster":
        raise ConfigurationError("Redis Cluster has only database 0; remove the /DB from the URL")
    values: dict[str, Any] = {
        "scheme": scheme,
        "hosts": hosts,
        "username": username,
        "password": password,
        "db": db,
        "shards": 16 if scheme == "redis+cluster" else 1,
        "ssl": scheme == "rediss",
    }
    for name, raw in options.items():
        values[name] = _convert(name, raw)
    try:
        validate_prefix(values.get("prefix", DEFAULT_PREFIX))
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None
    if values["shards"] > 1024:
        raise ConfigurationError("shards must be between 1 and 1024")
    if values.get("ssl_cert_reqs", "required") not in _CERT_REQS:
        raise ConfigurationError(f"ssl_cert_reqs must be one of {', '.join(_CERT_REQS)}")
    if scheme == "redis+sentinel" and not values.get("master"):
        raise ConfigurationError("redis+sentinel:// needs ?master=NAME (the monitored master)")
    return RedisSettings(**values)


def _options(query: str) -> dict[str, str]:
    options: dict[str, str] = {}
    for raw_name, value in parse_qsl(query, keep_blank_values=True):
        name = _ALIASES.get(raw_name, raw_name)
        if name not in _OPTIONS and name != "db":
            close = difflib.get_close_matches(raw_name, sorted(_OPTIONS), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            known = ", ".join(sorted(_OPTIONS))
            raise ConfigurationError(
                f"unknown Redis URL option {raw_name!r} ({hint}known: {known})"
            )
        options[name] = value
    return options


def _convert(name: str, raw: str) -> Any:
    if name in ("shards", "retries", "max_connections"):
        return _int(raw, name, 1 if name == "shards" else 0)
    if name in ("socket_timeout", "connect_timeout", "health_check_interval", "poll_interval"):
        return _seconds(raw, name)
    if name in ("ssl", "ssl_check_hostname", "fuse"):
        return _bool(raw, name)
    return raw or None


def _parse_host(text: str, default_port: int, scheme: str) -> tuple[str, int]:
    text = text.strip()
    if not text:
        raise ConfigurationError(f"{scheme}:// URL has no host")
    if text.startswith("["):  # [::1]:6379
        host, _, tail = text[1:].partition("]")
        port = tail.removeprefix(":")
    else:
        host, _, port = text.partition(":")
    if not host:
        raise ConfigurationError(f"{scheme}:// URL has an empty host in {text!r}")
    return host, _int(port, "port", 1) if port else default_port


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _int(raw: str, name: str, minimum: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(
            f"Redis URL option {name} must be an integer, not {raw!r}"
        ) from None
    if value < minimum or (name == "port" and value > 65535):
        raise ConfigurationError(f"Redis URL option {name} is out of range: {value}")
    return value


def _seconds(raw: str, name: str) -> float:
    match = _DURATION.match(raw)
    if not match:
        raise ConfigurationError(
            f"Redis URL option {name} must be a duration like 0.5, 500ms or 5s, not {raw!r}"
        )
    number, unit = float(match.group(1)), match.group(2) or "s"
    return number * {"ms": 0.001, "s": 1.0, "m": 60.0}[unit]


def _bool(raw: str, name: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"Redis URL option {name} must be true or false, not {raw!r}")
