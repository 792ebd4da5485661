"""SQS test fixtures: one moto server per session (its own process, real HTTP on a free loopback
port), fake credentials set for the session only, and a fresh queue for every test."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from sqs_support import REGION, Drain, MakeQueue, OpenTransport, Queue

from dtimeout.clock import SYSTEM_CLOCK, Clock
from dtimeout_sqs.settings import parse_url
from dtimeout_sqs.testing import FAKE_CREDENTIALS, MotoServer
from dtimeout_sqs.transport import SqsTransport

if TYPE_CHECKING:
    from mypy_boto3_sqs.client import SQSClient


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    with pytest.MonkeyPatch.context() as mp:
        for name, value in FAKE_CREDENTIALS.items():
            mp.setenv(name, value)
        # Nothing on this machine's AWS config may leak in; nothing may reach AWS.
        for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
            mp.delenv(name, raising=False)
        mp.setenv("AWS_CONFIG_FILE", "/nonexistent/dtimeout-tests/config")
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/dtimeout-tests/credentials")
        with MotoServer() as server:
            mp.setenv("AWS_ENDPOINT_URL", server.endpoint_url)
            yield server


@pytest.fixture
def fake_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials and region for a test that needs no server."""
    for name, value in FAKE_CREDENTIALS.items():
        monkeypatch.setenv(name, value)


@pytest.fixture(scope="session")
def sqs_admin(moto_server: MotoServer) -> SQSClient:
    """A plain boto3 client for setting queues up and looking into them."""
    return boto3.client("sqs", endpoint_url=moto_server.endpoint_url, region_name=REGION)


@pytest.fixture
def make_queue(moto_server: MotoServer, sqs_admin: SQSClient) -> MakeQueue:
    """``make_queue(redrive=N, fifo=False, max_size=None, dlq=False)``: a fresh queue.

    ``redrive=N`` gives it a DLQ through a redrive policy with ``maxReceiveCount`` N;
    ``dlq=True`` creates a separate queue (not linked) for ``?dlq=``.
    """
    return queue_factory(moto_server, sqs_admin)


def queue_factory(server: MotoServer, admin: SQSClient) -> MakeQueue:
    """A ``make_queue`` function for queues on ``server``."""

    def make(
        *,
        redrive: int | None = None,
        fifo: bool = False,
        max_size: int | None = None,
        dlq: bool = False,
        visibility: int = 30,
    ) -> Queue:
        name = f"t-{uuid.uuid4().hex[:16]}"
        attributes: dict[Any, str] = {"VisibilityTimeout": str(visibility)}
        dlq_url = None
        if redrive is not None or dlq:
            dlq_url = admin.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
        if redrive is not None:
            assert dlq_url is not None
            arn = admin.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])
            policy = {
                "deadLetterTargetArn": arn["Attributes"]["QueueArn"],
                "maxReceiveCount": redrive,
            }
            attributes["RedrivePolicy"] = json.dumps(policy)
        if max_size is not None:
            attributes["MaximumMessageSize"] = str(max_size)
        if fifo:
            name += ".fifo"
            attributes["FifoQueue"] = "true"
        url = admin.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
        return Queue(name, url, dlq_url, server.endpoint_url)

    return make


@pytest.fixture
def queue(make_queue: MakeQueue) -> Queue:
    """A fresh standard queue with no redrive policy."""
    return make_queue()


@pytest.fixture
def open_transport(moto_server: MotoServer) -> Iterator[OpenTransport]:
    """``open_transport(queue, clock=SYSTEM_CLOCK, client=None, **url_options)``; closed after."""
    opened: list[SqsTransport] = []

    def open_(
        queue: Queue,
        *,
        clock: Clock = SYSTEM_CLOCK,
        client: SQSClient | None = None,
        max_native_delay_seconds: int | None = None,
        **options: Any,
    ) -> SqsTransport:
        transport = SqsTransport(
            parse_url(queue.sqs_url(**options)),
            clock,
            client=client,
            max_native_delay_seconds=max_native_delay_seconds,
        )
        opened.append(transport)
        return transport

    yield open_
    for transport in opened:
        transport.close()


@pytest.fixture
def drain(sqs_admin: SQSClient) -> Drain:
    """``drain(url)``: every message visible on ``url`` now (deleted as read), bounded."""

    def drain_(url: str, *, rounds: int = 5, wait: int = 1) -> list[Any]:
        seen: list[Any] = []
        for _ in range(rounds):
            got = sqs_admin.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=10,
                WaitTimeSeconds=wait,
                MessageAttributeNames=["All"],
                MessageSystemAttributeNames=["ApproximateReceiveCount"],
            ).get("Messages", [])
            if not got:
                break
            seen.extend(got)
            sqs_admin.delete_message_batch(
                QueueUrl=url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got)
                ],
            )
        return seen

    return drain_
