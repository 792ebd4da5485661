"""Typed settings for the Azure Service Bus transport, parsed from its URL and the environment.

The URL names *where*, never *who*::

    azure-servicebus://NAMESPACE/QUEUE?retry_total=2&transport=websockets

``NAMESPACE`` is ``my-ns`` (``.servicebus.windows.net`` is added when there is no dot),
``my-ns.servicebus.windows.net``, or the emulator's ``localhost[:port]``. Credentials come only
from the environment variable ``DTIMEOUT_AZURE_CONNECTION_STRING`` or, when it is unset and
``azure-identity`` is installed, from ``DefaultAzureCredential``. A URL carrying credentials is
refused with a message that does not repeat them, because URLs end up in shell history, logs
and ``dtimeout check`` output; the connection string never appears in a repr, a log line or an
error (it holds the shared access key).

Parsing is pure (no SDK, no I/O) so a bad URL is reported even when the SDK is missing, and the
tests cover every spelling without a broker.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qsl, urlsplit

from dtimeout.errors import ConfigurationError

SCHEME = "azure-servicebus"
CONNECTION_STRING_ENV = "DTIMEOUT_AZURE_CONNECTION_STRING"
PUBLIC_SUFFIX = ".servicebus.windows.net"

# Standard tier: 256 KiB per message *including* headers (up to 64 KiB of them). Our headers
# are small (message id, two application properties), so the body may use nearly all of it.
DEFAULT_MAX_MESSAGE_BYTES = 250_000
# Entity names: letters, digits, periods, hyphens, underscores and slashes, up to 260.
_QUEUE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._/-]{0,258}[A-Za-z0-9_])?$")
_HOST = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")
_CREDENTIAL_OPTIONS = re.compile(
    r"(?i)^(shared_?access_?(key|key_?name|signature)|sas|key|password|secret|token|"
    r"connection_?string|conn_?str|credential)$"
)
_RETRY_MODES = ("exponential", "fixed")
_OPTIONS = (
    "retry_total",
    "retry_backoff_factor",
    "retry_backoff_max",
    "retry_mode",
    "try_timeout",
    "transport",
    "max_message_bytes",
    "lock_renewal",
)
_CREDENTIALS_REFUSED = (
    f"{SCHEME}: credentials are not accepted in the transport URL; set "
    f"{CONNECTION_STRING_ENV} or use DefaultAzureCredential "
    "(pip install 'dtimeout-azure[identity]')"
)


@dataclass(frozen=True, slots=True)
class RetryOptions:
    """The SDK's own retry settings, always passed explicitly.

    They sit below dtimeout's tenacity policy (``dtimeout.retries``), which retries whatever the
    SDK finally raises. The SDK defaults (3 tries, up to 120 s backoff) multiplied by ours would
    turn a short outage into minutes of silence, so the SDK layer only absorbs blips.
    """

    total: int = 2
    backoff_factor: float = 0.5
    backoff_max: float = 4.0
    mode: Literal["exponential", "fixed"] = "exponential"
    # One attempt's bound (SDK >= 7.15; older versions ignore it): a link attach or a
    # management call that hangs fails after this instead of blocking the consumer forever.
    try_timeout: float = 30.0


@dataclass(frozen=True, slots=True)
class ConnectionStringInfo:
    """The non-secret parts of a connection string (the key stays in the opaque string)."""

    host: str  # as written after sb://, with a port when the emulator uses one
    entity_path: str | None
    emulator: bool


@dataclass(frozen=True, slots=True)
class AzureSettings:
    """Where the queue is, how to authenticate, and how to talk to it."""

    namespace: str  # fully qualified: my-ns.servicebus.windows.net, or localhost[:port]
    queue: str
    retry: RetryOptions = field(default_factory=RetryOptions)
    websockets: bool = False  # AMQP over WebSockets (port 443) for networks that block 5671
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    lock_renewal: bool = True  # the SDK's AutoLockRenewer keeps locks for the whole lease
    # The secret: repr=False keeps it out of every repr, log and traceback of this object.
    connection_string: str | None = field(default=None, repr=False, compare=False)
    emulator: bool = False

    @property
    def credential_source(self) -> str:
        """How we authenticate, for ``dtimeout check`` and logs (never the secret itself)."""
        if self.connection_string is not None:
            return f"connection string from {CONNECTION_STRING_ENV}"
        return "DefaultAzureCredential (azure-identity)"

    def describe(self) -> str:
        """A one-line, secret-free description."""
        return f"{SCHEME}://{self.namespace}/{self.queue} ({self.credential_source})"


def fully_qualified(namespace: str) -> str:
    """``my-ns`` → ``my-ns.servicebus.windows.net``; names with a dot (and localhost) as is."""
    host = namespace.split(":", 1)[0]
    if "." in host or host.lower() == "localhost":
        return namespace
    return namespace + PUBLIC_SUFFIX


def parse_connection_string(value: str) -> ConnectionStringInfo:
    """Read Endpoint, EntityPath and UseDevelopmentEmulator without keeping the key.

    Errors never quote the string: it holds the shared access key.
    """
    parts: dict[str, str] = {}
    for item in value.strip().rstrip(";").split(";"):
        name, sep, val = item.partition("=")
        if not sep or not name.strip():
            raise ConfigurationError(
                f"{CONNECTION_STRING_ENV} is malformed: expected Name=value pairs separated by ';'"
            )
        parts[name.strip().lower()] = val.strip()
    endpoint = parts.get("endpoint")
    if not endpoint:
        raise ConfigurationError(f"{CONNECTION_STRING_ENV} has no Endpoint=sb://…")
    host = urlsplit(endpoint if "://" in endpoint else f"sb://{endpoint}").netloc
    if not host:
        raise ConfigurationError(f"{CONNECTION_STRING_ENV} has an Endpoint without a host")
    if not any(k in parts for k in ("sharedaccesskey", "sharedaccesssignature")):
        raise ConfigurationError(
            f"{CONNECTION_STRING_ENV} has neither SharedAccessKey nor SharedAccessSignature"
        )
    return ConnectionStringInfo(
        host=host.rstrip("/"),
        entity_path=parts.get("entitypath") or None,
        emulator=parts.get("usedevelopmentemulator", "").lower() == "true",
    )


def parse_url(url: str, environ: Mapping[str, str]) -> AzureSettings:
    """``azure-servicebus://NAMESPACE/QUEUE?options`` plus the credential from ``environ``."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigurationError(f"{SCHEME}: not a valid URL ({exc})") from None
    if parts.scheme != SCHEME:
        raise ConfigurationError(f"not an {SCHEME}:// URL (scheme {parts.scheme!r})")
    if parts.username is not None or parts.password is not None:
        raise ConfigurationError(_CREDENTIALS_REFUSED)
    host = parts.hostname or ""
    if not host or not _HOST.match(host):
        raise ConfigurationError(
            f"{SCHEME}: the URL must name a namespace: {SCHEME}://NAMESPACE/QUEUE"
        )
    namespace = fully_qualified(host + (f":{port}" if port is not None else ""))
    queue = parts.path.strip("/")
    if not queue:
        raise ConfigurationError(f"{SCHEME}: the URL must name a queue: {SCHEME}://NAMESPACE/QUEUE")
    if not _QUEUE.match(queue):
        raise ConfigurationError(
            f"{SCHEME}: {queue!r} is not a valid queue name (letters, digits, '.', '-', '_', "
            "'/'; at most 260 characters)"
        )
    options = _options(parts.query)
    settings = AzureSettings(
        namespace=namespace,
        queue=queue,
        retry=RetryOptions(
            total=_int(options, "retry_total", 2, low=0, high=10),
            backoff_factor=_float(options, "retry_backoff_factor", 0.5, low=0.0, high=60.0),
            backoff_max=_float(options, "retry_backoff_max", 4.0, low=0.0, high=300.0),
            mode=_retry_mode(options.get("retry_mode", "exponential")),
            try_timeout=_float(options, "try_timeout", 30.0, low=1.0, high=600.0),
        ),
        websockets=_transport(options.get("transport", "amqp")),
        max_message_bytes=_int(
            options, "max_message_bytes", DEFAULT_MAX_MESSAGE_BYTES, low=1024, high=100 * 2**20
        ),
        lock_renewal=_flag(options, "lock_renewal", True),
    )
    return _with_credentials(settings, environ)


def _with_credentials(settings: AzureSettings, environ: Mapping[str, str]) -> AzureSettings:
    conn = environ.get(CONNECTION_STRING_ENV, "").strip()
    if not conn:
        if settings.namespace.split(":", 1)[0].lower() == "localhost":
            raise ConfigurationError(
                f"{SCHEME}: the emulator at {settings.namespace} needs {CONNECTION_STRING_ENV} "
                "(…;UseDevelopmentEmulator=true)"
            )
        return settings
    info = parse_connection_string(conn)
    if not _same_host(info.host, settings.namespace):
        raise ConfigurationError(
            f"{SCHEME}: {CONNECTION_STRING_ENV} is for namespace {info.host!r} but the URL "
            f"names {settings.namespace!r}"
        )
    if info.entity_path is not None and info.entity_path != settings.queue:
        raise ConfigurationError(
            f"{SCHEME}: {CONNECTION_STRING_ENV} is scoped to queue {info.entity_path!r} but the "
            f"URL names {settings.queue!r}"
        )
    return AzureSettings(
        namespace=settings.namespace,
        queue=settings.queue,
        retry=settings.retry,
        websockets=settings.websockets,
        max_message_bytes=settings.max_message_bytes,
        lock_renewal=settings.lock_renewal,
        connection_string=conn,
        emulator=info.emulator,
    )


def _same_host(from_conn: str, from_url: str) -> bool:
    """Hosts agree (case-insensitive); ports are compared only when both name one."""
    a_host, _, a_port = from_conn.lower().partition(":")
    b_host, _, b_port = from_url.lower().partition(":")
    if fully_qualified(a_host) != fully_qualified(b_host):
        return False
    return not (a_port and b_port and a_port != b_port)


def _options(query: str) -> dict[str, str]:
    options: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if _CREDENTIAL_OPTIONS.match(name):
            raise ConfigurationError(_CREDENTIALS_REFUSED)
        if name not in _OPTIONS:
            raise ConfigurationError(
                f"{SCHEME}: unknown option {name!r}; known: {', '.join(_OPTIONS)}"
            )
        options[name] = value
    return options


def _int(options: Mapping[str, str], name: str, default: int, *, low: int, high: int) -> int:
    if name not in options:
        return default
    try:
        value = int(options[name])
    except ValueError:
        raise ConfigurationError(f"{SCHEME}: {name} must be an integer") from None
    if not low <= value <= high:
        raise ConfigurationError(f"{SCHEME}: {name} must be between {low} and {high}")
    return value


def _float(
    options: Mapping[str, str], name: str, default: float, *, low: float, high: float
) -> float:
    if name not in options:
        return default
    try:
        value = float(options[name])
    except ValueError:
        raise ConfigurationError(f"{SCHEME}: {name} must be a number") from None
    if not low <= value <= high:
        raise ConfigurationError(f"{SCHEME}: {name} must be between {low:g} and {high:g}")
    return value


def _flag(options: Mapping[str, str], name: str, default: bool) -> bool:
    value = options.get(name)
    if value is None:
        return default
    if value.lower() in ("1", "true", "yes", "on", "auto"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"{SCHEME}: {name} must be on or off")


def _retry_mode(value: str) -> Literal["exponential", "fixed"]:
    if value == "exponential":
        return "exponential"
    if value == "fixed":
        return "fixed"
    raise ConfigurationError(f"{SCHEME}: retry_mode must be one of {', '.join(_RETRY_MODES)}")


def _transport(value: str) -> bool:
    if value in ("amqp", "websockets"):
        return value == "websockets"
    raise ConfigurationError(f"{SCHEME}: transport must be amqp or websockets")
