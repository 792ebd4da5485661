"""Entry module of the ``dtimeout-sqs`` plugin: registers the ``sqs://`` transport.

Loaded through the ``dtimeout`` entry-point group every time a plugin manager is built, so it
imports only dtimeout: boto3 (slow to import, and optional) is imported by the factory when a
user actually selects ``sqs://``. A missing boto3 then says how to install it.
"""

from __future__ import annotations

from collections.abc import Callable

from dtimeout import hookimpl
from dtimeout.clock import Clock
from dtimeout.errors import MissingDependencyError
from dtimeout.interfaces import ProviderInfo, Transport
from dtimeout_sqs.settings import SCHEME, parse_url

INSTALL_HINT = "pip install 'dtimeout[sqs]'"


def open_transport(url: str, clock: Clock) -> Transport:
    """Factory for ``sqs://`` URLs: parse, import boto3, look the queue up."""
    settings = parse_url(url)  # a bad URL is reported even when boto3 is missing
    try:
        from dtimeout_sqs.transport import SqsTransport
    except ImportError as exc:
        if (exc.name or "").split(".")[0] in ("boto3", "botocore"):
            raise MissingDependencyError(
                f"sqs:// needs boto3, which is not installed: {INSTALL_HINT}"
            ) from exc
        raise
    return SqsTransport(settings, clock)


@hookimpl
def dtimeout_register_transports(register: Callable[[ProviderInfo], None]) -> None:
    register(
        ProviderInfo(
            scheme=SCHEME,
            name="sqs",
            factory=open_transport,
            description="AWS SQS standard queue (boto3); delays beyond 15 min are bridged",
        )
    )
