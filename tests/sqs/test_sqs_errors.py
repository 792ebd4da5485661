"""botocore failures become dtimeout errors with the right ``transient`` flag, and botocore's own
retries are bounded so they do not multiply with dtimeout's retry policy.

Server answers are injected at botocore's ``before-send`` boundary, so the real parsing of an
SQS JSON-protocol error and the transport's real translation both run.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse, HTTPHeaders
from sqs_support import REGION

from dtimeout.clock import SYSTEM_CLOCK
from dtimeout.errors import ConfigurationError, DtimeoutError, TransientTransportError
from dtimeout.errors import TransportError as DtTransportError
from dtimeout_sqs.client import make_client
from dtimeout_sqs.settings import parse_url
from dtimeout_sqs.transport import SqsTransport

pytestmark = pytest.mark.usefixtures("fake_aws")


class _Raw:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.body


class Answer:
    """Answers every SQS request with one canned HTTP error, counting the attempts."""

    def __init__(self, status: int, error_type: str, query_error: str | None) -> None:
        self.status, self.error_type, self.query_error = status, error_type, query_error
        self.attempts = 0

    def __call__(self, request: Any, **_: Any) -> AWSResponse:
        self.attempts += 1
        headers = HTTPHeaders()
        headers["Content-Type"] = "application/x-amz-json-1.0"
        if self.query_error:
            headers["x-amzn-query-error"] = self.query_error
        body = f'{{"__type":"{self.error_type}","message":"injected"}}'.encode()
        return AWSResponse(request.url, self.status, headers, _Raw(body))


CASES = [
    (400, "com.amazonaws.sqs#ThrottlingException", "Throttling;Sender", TransientTransportError),
    (500, "com.amazonaws.sqs#InternalError", None, TransientTransportError),
    (503, "com.amazonaws.sqs#ServiceUnavailable", None, TransientTransportError),
    (403, "com.amazon.coral.service#AccessDeniedException", None, ConfigurationError),
    (
        400,
        "com.amazonaws.sqs#QueueDoesNotExist",
        "AWS.SimpleQueueService.NonExistentQueue;Sender",
        ConfigurationError,
    ),
    (400, "com.amazon.coral.service#UnrecognizedClientException", None, ConfigurationError),
    (400, "com.amazonaws.sqs#InvalidAddress", None, DtTransportError),
]


def _open(url: str, answer: Answer) -> SqsTransport:
    settings = parse_url(url)
    client = make_client(settings)
    client.meta.events.register("before-send.sqs", answer)  # type: ignore[arg-type]
    return SqsTransport(settings, SYSTEM_CLOCK, client=client)


@pytest.mark.parametrize(("status", "error_type", "query_error", "expected"), CASES)
def test_server_errors_are_translated(
    status: int, error_type: str, query_error: str | None, expected: type[DtimeoutError]
) -> None:
    answer = Answer(status, error_type, query_error)
    with pytest.raises(DtimeoutError) as info:
        _open(f"sqs://orders?region={REGION}&endpoint_url=http://127.0.0.1:9", answer)
    error = info.value
    assert type(error) is expected
    assert bool(getattr(error, "transient", False)) == (expected is TransientTransportError)
    assert "orders" in str(error) and "\n" not in str(error)
    assert isinstance(error.__cause__, Exception)  # botocore's error stays chained
    assert answer.attempts == 1  # botocore does not retry by default: dtimeout's policy does


def test_botocore_attempts_are_bounded_by_the_url_option() -> None:
    answer = Answer(500, "com.amazonaws.sqs#InternalError", None)
    with pytest.raises(TransientTransportError):
        _open(f"sqs://q?region={REGION}&endpoint_url=http://127.0.0.1:9&attempts=2", answer)
    assert answer.attempts == 2


def test_missing_credentials_are_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    url = f"sqs://q?region={REGION}&endpoint_url=http://127.0.0.1:9"
    with pytest.raises(ConfigurationError, match="credentials"):
        SqsTransport(parse_url(url), SYSTEM_CLOCK)


def test_an_unknown_profile_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
    with pytest.raises(ConfigurationError, match="credentials"):
        SqsTransport(parse_url(f"sqs://q?region={REGION}&profile=nope"), SYSTEM_CLOCK)
