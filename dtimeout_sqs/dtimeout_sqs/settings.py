"""Typed settings for the SQS transport, parsed from its URL.

Two spellings are accepted::

    sqs://QUEUE_NAME?region=eu-west-1&endpoint_url=http://127.0.0.1:5000&dlq=NAME&wait=20
    sqs://https://sqs.eu-west-1.amazonaws.com/123456789012/QUEUE_NAME?dlq=…

Credentials never come from the URL: they come from boto3's own chain (environment, profile,
instance or task role). A URL that carries some (user info, or an access-key style option) is
refused with a one-line error that does not repeat them, because URLs end up in shell history,
logs and ``dtimeout check`` output.

Parsing is pure (no boto3, no I/O) so the plugin can validate a URL cheaply and the tests can
cover every spelling without a server.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from dtimeout.errors import ConfigurationError

SCHEME = "sqs"
MAX_WAIT_SECONDS = 20  # ReceiveMessage's WaitTimeSeconds upper bound
MAX_NATIVE_DELAY_SECONDS = 900  # DelaySeconds upper bound

_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,80}$|^[A-Za-z0-9_-]{1,75}\.fifo$")
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")
# sqs.eu-west-1.amazonaws.com, sqs.cn-north-1.amazonaws.com.cn, eu-west-1.queue.amazonaws.com
_AWS_HOST = re.compile(
    r"^(?:sqs[.-](?P<r1>[a-z0-9-]+)|(?P<r2>[a-z0-9-]+)\.queue)\.amazonaws\.com(?:\.cn)?$"
)
# Option names that would carry a secret: refused, never echoed.
_CREDENTIAL_OPTIONS = {
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
    "access_key",
    "access_key_id",
    "secret_key",
    "secret_access_key",
    "session_token",
    "secret",
    "password",
    "token",
}
_OPTIONS = {"region", "endpoint_url", "dlq", "wait", "profile", "attempts", "test_max_delay"}

_CREDENTIALS_REFUSED = (
    "sqs: credentials are not accepted in the transport URL; use the AWS credential chain "
    "(environment variables, a profile via ?profile=, or an instance/task role)"
)


@dataclass(frozen=True, slots=True)
class SqsSettings:
    """Where the queue is and how to talk to it.

    Exactly one of ``queue_name`` and ``queue_url`` is set. ``wait_seconds`` overrides the
    consumer's poll wait (long polling, 0-20 s); ``attempts`` is botocore's total attempts per
    call (1 by default: dtimeout's own retry policy is the one retry layer, see the transport).
    ``test_max_delay_seconds`` is for tests only: it shortens the native delay cap (900 s) so
    that bridging of long delays can be exercised in seconds.
    """

    queue_name: str | None = None
    queue_url: str | None = None
    region: str | None = None
    endpoint_url: str | None = None
    dlq: str | None = None  # a queue name or a queue URL
    wait_seconds: int | None = None
    profile: str | None = None
    attempts: int = 1
    test_max_delay_seconds: int | None = None

    @property
    def display_name(self) -> str:
        """The queue as shown in messages (a name or URL never holds a secret here)."""
        if self.queue_name is not None:
            return self.queue_name
        assert self.queue_url is not None
        return self.queue_url.rstrip("/").rsplit("/", 1)[-1]


def parse_url(url: str) -> SqsSettings:
    """Parse an ``sqs://`` URL; raise :class:`ConfigurationError` naming what is wrong."""
    prefix = f"{SCHEME}://"
    if not url.startswith(prefix):
        raise ConfigurationError(f"sqs: the URL must start with '{prefix}'")
    rest = url[len(prefix) :]
    if rest.startswith(("https://", "http://")):
        return _parse_queue_url(rest)
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise ConfigurationError(_CREDENTIALS_REFUSED)
    options = _parse_options(parts.query)
    name = parts.netloc
    if parts.path not in ("", "/"):
        raise ConfigurationError(
            "sqs: expected sqs://QUEUE_NAME?… or sqs://https://… (a full queue URL); "
            f"got a path after the queue name {name!r}"
        )
    if not name:
        raise ConfigurationError("sqs: the URL names no queue (sqs://QUEUE_NAME?region=…)")
    _check_queue_name(name)
    return _build(options, queue_name=name, queue_url=None, url_region=None, url_endpoint=None)


def _parse_queue_url(queue_url_with_options: str) -> SqsSettings:
    parts = urlsplit(queue_url_with_options)
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise ConfigurationError(_CREDENTIALS_REFUSED)
    options = _parse_options(parts.query)
    segments = [s for s in parts.path.split("/") if s]
    if len(segments) != 2 or not segments[0].isdigit():
        raise ConfigurationError(
            "sqs: a queue URL looks like https://sqs.REGION.amazonaws.com/ACCOUNT_ID/QUEUE_NAME"
        )
    _check_queue_name(segments[1])
    host = parts.hostname or ""
    match = _AWS_HOST.match(host)
    if match:
        # A real AWS queue: boto3 finds the endpoint from the region; no endpoint override.
        url_region: str | None = match.group("r1") or match.group("r2")
        url_endpoint: str | None = None
    else:
        # A compatible server (moto, ElasticMQ, LocalStack): talk to the host the URL names.
        url_region = None
        url_endpoint = f"{parts.scheme}://{parts.netloc}"
    queue_url = f"{parts.scheme}://{parts.netloc}/{segments[0]}/{segments[1]}"
    return _build(
        options,
        queue_name=None,
        queue_url=queue_url,
        url_region=url_region,
        url_endpoint=url_endpoint,
    )


def _parse_options(query: str) -> dict[str, str]:
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError as exc:
        raise ConfigurationError("sqs: the URL's query string is malformed") from exc
    options: dict[str, str] = {}
    for name, value in pairs:
        lowered = name.lower()
        if lowered in _CREDENTIAL_OPTIONS or lowered.startswith("x-amz-"):
            raise ConfigurationError(_CREDENTIALS_REFUSED)
        if lowered not in _OPTIONS:
            known = ", ".join(sorted(_OPTIONS - {"test_max_delay"}))
            raise ConfigurationError(f"sqs: unknown URL option {name!r} (known: {known})")
        if lowered in options:
            raise ConfigurationError(f"sqs: URL option {name!r} is given twice")
        if value == "":
            raise ConfigurationError(f"sqs: URL option {name!r} has no value")
        options[lowered] = value
    return options


def _build(
    options: dict[str, str],
    *,
    queue_name: str | None,
    queue_url: str | None,
    url_region: str | None,
    url_endpoint: str | None,
) -> SqsSettings:
    region = options.get("region", url_region)
    if region is not None and not _REGION.match(region):
        raise ConfigurationError(f"sqs: region {region!r} does not look like an AWS region")
    endpoint = options.get("endpoint_url", url_endpoint)
    if endpoint is not None:
        ep = urlsplit(endpoint)
        if ep.scheme not in ("http", "https") or not ep.hostname:
            raise ConfigurationError("sqs: endpoint_url must be an http:// or https:// URL")
        if ep.username is not None or ep.password is not None:
            raise ConfigurationError(_CREDENTIALS_REFUSED)
    dlq = options.get("dlq")
    if dlq is not None and not dlq.startswith(("https://", "http://")):
        _check_queue_name(dlq, what="dlq")
    return SqsSettings(
        queue_name=queue_name,
        queue_url=queue_url,
        region=region,
        endpoint_url=endpoint,
        dlq=dlq,
        wait_seconds=_int_option(options, "wait", 0, MAX_WAIT_SECONDS),
        profile=options.get("profile"),
        attempts=_int_option(options, "attempts", 1, 10) or 1,
        test_max_delay_seconds=_int_option(options, "test_max_delay", 1, MAX_NATIVE_DELAY_SECONDS),
    )


def _int_option(options: dict[str, str], name: str, low: int, high: int) -> int | None:
    raw = options.get(name)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(f"sqs: URL option {name!r} must be an integer") from None
    if not low <= value <= high:
        raise ConfigurationError(f"sqs: URL option {name!r} must be between {low} and {high}")
    return value


def _check_queue_name(name: str, *, what: str = "queue name") -> None:
    if not _QUEUE_NAME.match(name):
        raise ConfigurationError(
            f"sqs: {what} {name[:100]!r} is not valid (1-80 letters, digits, '-' or '_', "
            "optionally ending in '.fifo')"
        )
