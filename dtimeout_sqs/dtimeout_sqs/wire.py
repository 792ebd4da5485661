"""What goes on the wire to SQS, computed without I/O: delays, bodies, attributes, sizes, batches.

Kept pure so the limits SQS enforces (and a local emulator may not) are checked by our own code
and property-tested: ``DelaySeconds`` in 0-900, at most 10 entries and at most the queue's byte
limit per ``SendMessageBatch``, message bodies restricted to the characters SQS accepts.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dtimeout.errors import MalformedMessageError
from dtimeout_sqs.settings import MAX_NATIVE_DELAY_SECONDS

MAX_BATCH_ENTRIES = 10
MAX_VISIBILITY_SECONDS = 43_200  # 12 hours

# Message attributes dtimeout adds. The due time travels outside the body so the transport can
# bridge long delays without parsing bodies it does not own.
ATTR_DUE = "dtimeout.due_at_ms"
ATTR_ID = "dtimeout.id"
ATTR_ENCODING = "dtimeout.encoding"  # "base64" when the body is not SQS-safe text
ATTR_REASON = "dtimeout.dead_reason"
ATTR_SOURCE = "dtimeout.source_queue"
REASON_LIMIT = 1000  # characters kept of a dead-letter reason

# Room left in the advertised ``max_message_bytes`` for our attributes: names, types, the due
# time and the encoding marker take under 80 bytes, the id (``kind:key:generation``) the rest.
# The app refuses payloads against the advertised limit before writing anything; a message
# whose id is unusually long (over ~170 bytes) is still caught by the exact per-message check
# in ``send``, which refuses it by name. A worst-case reserve (two 512-character names in
# 4-byte UTF-8) would not even fit SQS's smallest queue limit of 1,024 bytes.
ATTRIBUTE_HEADROOM = 256

# Characters SQS accepts in a body or string attribute (#x9 #xA #xD #x20-#xD7FF #xE000-#xFFFD
# #x10000-#x10FFFF); anything else is sent base64-encoded.
_NOT_SQS_TEXT = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")

if TYPE_CHECKING:
    from mypy_boto3_sqs.type_defs import (
        MessageAttributeValueTypeDef,
        SendMessageBatchRequestEntryTypeDef,
    )

    Attributes = dict[str, MessageAttributeValueTypeDef]


def delay_seconds(due_at_ms: int, now_ms: int, cap_seconds: int) -> int:
    """Native ``DelaySeconds`` for a message due at ``due_at_ms``: 0 ≤ result ≤ ``cap_seconds``.

    Rounded up, so the message never becomes visible before its due time (SQS counts whole
    seconds); a due time in the past gives 0; beyond the cap the transport bridges with hops.
    """
    if not 0 <= cap_seconds <= MAX_NATIVE_DELAY_SECONDS:
        raise ValueError(f"delay cap {cap_seconds} s is outside 0-{MAX_NATIVE_DELAY_SECONDS}")
    remaining_ms = due_at_ms - now_ms
    if remaining_ms <= 0:
        return 0
    return min(-(-remaining_ms // 1000), cap_seconds)


def whole_seconds(seconds: float, high: int = MAX_VISIBILITY_SECONDS) -> int:
    """``seconds`` rounded up to a whole number in 0-``high`` (SQS takes whole seconds; a
    lease or wait rounded down would be shorter than asked)."""
    whole = int(-(-seconds // 1)) if seconds > 0 else 0
    return min(whole, high)


def encode_body(body: bytes) -> tuple[str, bool]:
    """The body as SQS text; ``(text, True)`` when it had to be base64-encoded."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(body).decode("ascii"), True
    if _NOT_SQS_TEXT.search(text):
        return base64.b64encode(body).decode("ascii"), True
    return text, False


def decode_body(text: str, attributes: Mapping[str, Any]) -> bytes:
    """Inverse of :func:`encode_body`, driven by the encoding attribute."""
    if _string_attr(attributes, ATTR_ENCODING) == "base64":
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise MalformedMessageError("body is marked base64 but does not decode") from exc
    return text.encode("utf-8")


def sqs_text(value: str, limit: int) -> str:
    """``value`` cut to ``limit`` characters with anything SQS refuses replaced by '?'."""
    return _NOT_SQS_TEXT.sub("?", value[:limit])


def our_attributes(message_id: str, due_at_ms: int, base64_body: bool) -> Attributes:
    """dtimeout's own attributes: the stable id, the due time, the body encoding."""
    attrs: Attributes = {
        ATTR_ID: {"DataType": "String", "StringValue": sqs_text(message_id, 2048)},
        ATTR_DUE: {"DataType": "Number", "StringValue": str(due_at_ms)},
    }
    if base64_body:
        attrs[ATTR_ENCODING] = {"DataType": "String", "StringValue": "base64"}
    return attrs


def resendable_attributes(received: Mapping[str, Any]) -> Attributes:
    """The attributes of a received message in the shape ``SendMessage`` accepts."""
    out: Attributes = {}
    for name, value in received.items():
        if "StringValue" in value:
            out[name] = {"DataType": value["DataType"], "StringValue": value["StringValue"]}
    return out


def due_at_of(attributes: Mapping[str, Any]) -> int | None:
    """The due time a message carries, or None (not ours, or unreadable: treat as due)."""
    raw = _string_attr(attributes, ATTR_DUE)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        return None


def message_id_of(attributes: Mapping[str, Any]) -> str | None:
    """dtimeout's id of a message (stable across hops and re-sends), or None when not ours."""
    return _string_attr(attributes, ATTR_ID)


def message_size(body_text: str, attributes: Attributes) -> int:
    """Bytes SQS counts against ``MaximumMessageSize``: body plus each attribute's name, type
    and value."""
    size = len(body_text.encode("utf-8"))
    for name, value in attributes.items():
        size += len(name.encode("utf-8")) + len(value["DataType"].encode("utf-8"))
        size += len(value.get("StringValue", "").encode("utf-8"))
    return size


@dataclass(slots=True)
class Entry:
    """One ``SendMessageBatch`` entry and what we need to report about it."""

    entry_id: str  # unique within one send call ([A-Za-z0-9_-]{1,80})
    message_id: str  # dtimeout's id, for error messages and ``failed``
    body: str
    attributes: Attributes
    delay: int
    size: int

    def request(self) -> SendMessageBatchRequestEntryTypeDef:
        return {
            "Id": self.entry_id,
            "MessageBody": self.body,
            "DelaySeconds": self.delay,
            "MessageAttributes": self.attributes,
        }


def batches(entries: Sequence[Entry], max_bytes: int) -> Iterator[list[Entry]]:
    """Split into ``SendMessageBatch`` calls: ≤ 10 entries and ≤ ``max_bytes`` each, in order.

    Every entry is expected to fit ``max_bytes`` alone (``send`` refuses larger ones first).
    """
    batch: list[Entry] = []
    size = 0
    for entry in entries:
        if batch and (len(batch) == MAX_BATCH_ENTRIES or size + entry.size > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(entry)
        size += entry.size
    if batch:
        yield batch


def chunks(items: Sequence[Any], size: int = MAX_BATCH_ENTRIES) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _string_attr(attributes: Mapping[str, Any], name: str) -> str | None:
    value = attributes.get(name)
    if not isinstance(value, Mapping):
        return None
    text = value.get("StringValue")
    return text if isinstance(text, str) else None
