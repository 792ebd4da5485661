"""The boto3 SQS client the transport uses: standard credential chain, explicit retries.

botocore's retry mode is set to ``standard`` with ``settings.attempts`` total attempts (1 by
default) because dtimeout's consumer and ``schedule`` already retry transient errors with
backoff; two stacked retry layers would multiply attempts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

from dtimeout_sqs.errors import translate
from dtimeout_sqs.settings import SqsSettings

if TYPE_CHECKING:
    from mypy_boto3_sqs.client import SQSClient

READ_TIMEOUT_SECONDS = 30  # longer than the longest long poll (20 s)


def make_client(settings: SqsSettings) -> SQSClient:
    """A boto3 SQS client from the standard credential chain, with explicit retry settings."""
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"mode": "standard", "total_max_attempts": settings.attempts},
        connect_timeout=5,
        read_timeout=READ_TIMEOUT_SECONDS,
        max_pool_connections=32,
        user_agent_extra="dtimeout",
    )
    try:
        session = boto3.session.Session(profile_name=settings.profile, region_name=settings.region)
        return session.client("sqs", endpoint_url=settings.endpoint_url, config=config)
    except (BotoCoreError, ClientError) as exc:
        raise translate(exc, operation="client setup", queue=settings.display_name) from exc
