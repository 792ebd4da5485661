"""The message on the wire: ids, application properties, bodies and schedule times.

Kept apart from the transport so the mapping between our ``OutgoingMessage``/``Delivery`` and
the SDK's ``ServiceBusMessage``/``ServiceBusReceivedMessage`` is one small, pure module.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from azure.servicebus import ServiceBusMessage, ServiceBusReceivedMessage
from azure.servicebus.amqp import AmqpMessageBodyType

from dtimeout.errors import ValidationError

ID_PROPERTY = "dtimeout-id"  # the logical message id (kind:key:generation), on every copy
HOP_PROPERTY = "dtimeout-hop"  # how many retry_later copies led to this message
MAX_MESSAGE_ID = 128  # Service Bus limit on MessageId


def aware_utc(value: datetime) -> datetime:
    """``value`` in UTC; a naive datetime is refused (the SDK would read it as UTC silently)."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValidationError(
            f"azure-servicebus: refusing naive datetime {value.isoformat()} as a schedule time"
        )
    return value.astimezone(UTC)


def wire_message_id(logical: str) -> str:
    """The MessageId on the wire: the logical id, or a digest of it when it is longer than the
    service accepts (128). Deterministic, so duplicate detection still recognises a re-send."""
    if len(logical) <= MAX_MESSAGE_ID:
        return logical
    return "sha256:" + hashlib.sha256(logical.encode("utf-8")).hexdigest()


def outgoing(
    logical: str, body: bytes, *, wire_id: str | None = None, hop: int = 0
) -> ServiceBusMessage:
    properties: dict[str | bytes, Any] = {ID_PROPERTY: logical}
    if hop:
        properties[HOP_PROPERTY] = hop
    return ServiceBusMessage(
        body,
        message_id=wire_message_id(wire_id or logical),
        application_properties=properties,
        content_type="application/json",
    )


def str_properties(props: dict[str | bytes, Any] | None) -> dict[str, str]:
    """Received application properties come back with bytes keys and string values."""
    out: dict[str, str] = {}
    for key, value in (props or {}).items():
        name = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
        out[name] = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return out


def body_bytes(message: ServiceBusReceivedMessage) -> bytes:
    """The body as bytes. Ours are AMQP data sections; anything else is passed on as text so
    the consumer can dead-letter it as malformed with a readable reason."""
    body = message.body
    if message.body_type == AmqpMessageBodyType.DATA:
        chunks: Iterator[bytes] = iter(body) if not isinstance(body, bytes) else iter([body])
        return b"".join(bytes(c) for c in chunks)
    if isinstance(body, bytes):
        return body
    return repr(body if not isinstance(body, Iterator) else list(body)).encode("utf-8")
