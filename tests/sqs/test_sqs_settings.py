"""``sqs://`` URL parsing: both spellings, options, and credentials refused without echo."""

from __future__ import annotations

import pytest

from dtimeout.errors import ConfigurationError
from dtimeout_sqs.settings import SqsSettings, parse_url


def test_queue_name_with_options() -> None:
    s = parse_url(
        "sqs://orders?region=eu-west-1&endpoint_url=http://127.0.0.1:4566&dlq=orders-dead&wait=5"
    )
    assert s == SqsSettings(
        queue_name="orders",
        region="eu-west-1",
        endpoint_url="http://127.0.0.1:4566",
        dlq="orders-dead",
        wait_seconds=5,
    )
    assert s.display_name == "orders"


def test_bare_queue_name_leaves_region_to_the_credential_chain() -> None:
    s = parse_url("sqs://orders")
    assert (s.queue_name, s.region, s.endpoint_url, s.attempts) == ("orders", None, None, 1)


def test_full_aws_queue_url_takes_region_from_the_host() -> None:
    s = parse_url("sqs://https://sqs.eu-central-1.amazonaws.com/123456789012/orders?dlq=dead")
    assert s.queue_url == "https://sqs.eu-central-1.amazonaws.com/123456789012/orders"
    assert (s.queue_name, s.region, s.endpoint_url, s.dlq) == (None, "eu-central-1", None, "dead")
    assert s.display_name == "orders"
    legacy = parse_url("sqs://https://eu-west-1.queue.amazonaws.com/123456789012/orders")
    assert legacy.region == "eu-west-1"


def test_full_url_of_a_compatible_server_becomes_the_endpoint() -> None:
    s = parse_url("sqs://http://127.0.0.1:5000/123456789012/orders?region=us-east-1")
    assert s.endpoint_url == "http://127.0.0.1:5000"
    assert s.queue_url == "http://127.0.0.1:5000/123456789012/orders"
    assert s.region == "us-east-1"


def test_test_only_delay_override_and_attempts() -> None:
    s = parse_url("sqs://q?test_max_delay=2&attempts=3&profile=ops")
    assert (s.test_max_delay_seconds, s.attempts, s.profile) == (2, 3, "ops")


@pytest.mark.parametrize(
    "url",
    [
        "sqs://AKIAEXAMPLEKEY:s3cr3tValue@orders",
        "sqs://orders?aws_access_key_id=AKIAEXAMPLEKEY&aws_secret_access_key=s3cr3tValue",
        "sqs://orders?AWS_SESSION_TOKEN=s3cr3tValue",
        "sqs://orders?X-Amz-Credential=s3cr3tValue",
        "sqs://https://AKIAEXAMPLEKEY:s3cr3tValue@sqs.us-east-1.amazonaws.com/123456789012/q",
        "sqs://orders?endpoint_url=http://user:s3cr3tValue@127.0.0.1:5000",
    ],
)
def test_credentials_in_the_url_are_refused_without_echo(url: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_url(url)
    message = str(info.value)
    assert "credentials are not accepted" in message
    assert "s3cr3tValue" not in message and "AKIAEXAMPLEKEY" not in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqs://", "names no queue"),
        ("sqs://bad name!", "not valid"),
        ("sqs://orders/extra", "path after the queue name"),
        ("sqs://orders?colour=blue", "unknown URL option 'colour'"),
        ("sqs://orders?wait=21", "'wait' must be between 0 and 20"),
        ("sqs://orders?wait=soon", "'wait' must be an integer"),
        ("sqs://orders?region=Mars", "does not look like an AWS region"),
        ("sqs://orders?endpoint_url=ftp://x", "endpoint_url must be"),
        ("sqs://orders?dlq=bad/name", "dlq"),
        ("sqs://orders?region=us-east-1&region=eu-west-1", "given twice"),
        ("sqs://orders?test_max_delay=901", "between 1 and 900"),
        ("sqs://https://sqs.us-east-1.amazonaws.com/orders", "a queue URL looks like"),
        ("redis://x", "must start with 'sqs://'"),
    ],
)
def test_bad_urls_get_one_line_naming_the_problem(url: str, expected: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_url(url)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_fifo_names_parse_so_the_transport_can_explain_its_refusal() -> None:
    assert parse_url("sqs://orders.fifo").queue_name == "orders.fifo"
