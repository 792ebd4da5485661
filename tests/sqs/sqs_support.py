"""Types and constants shared by the SQS tests (a plain module: tests/ is not a package)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dtimeout_sqs.transport import SqsTransport

REGION = "us-east-1"


@dataclass
class Queue:
    name: str
    url: str
    dlq_url: str | None
    endpoint: str

    def sqs_url(self, **options: Any) -> str:
        query = "&".join(f"{k}={v}" for k, v in {"region": REGION, **options}.items())
        return f"sqs://{self.name}?endpoint_url={self.endpoint}&{query}"


MakeQueue = Callable[..., Queue]
OpenTransport = Callable[..., SqsTransport]
Drain = Callable[..., list[Any]]
