"""The limits our own code enforces before SQS sees a request (an emulator would not)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dtimeout.errors import MalformedMessageError
from dtimeout_sqs import wire

NOW = 1_900_000_000_000


@given(
    offset_ms=st.integers(min_value=-(10**10), max_value=10**10),
    cap=st.integers(min_value=0, max_value=900),
)
def test_delay_is_within_0_and_the_cap_and_never_early(offset_ms: int, cap: int) -> None:
    delay = wire.delay_seconds(NOW + offset_ms, NOW, cap)
    assert 0 <= delay <= cap <= 900
    if offset_ms <= 0:
        assert delay == 0
    elif delay < cap:  # not capped: visible at or after due, by less than a second
        assert 0 <= delay * 1000 - offset_ms < 1000
    else:  # capped: bridged by hops, never visible before due either
        assert delay * 1000 <= offset_ms + 999


def test_delay_examples() -> None:
    assert wire.delay_seconds(NOW - 5_000, NOW, 900) == 0
    assert wire.delay_seconds(NOW, NOW, 900) == 0
    assert wire.delay_seconds(NOW + 1, NOW, 900) == 1
    assert wire.delay_seconds(NOW + 899_500, NOW, 900) == 900
    assert wire.delay_seconds(NOW + 20 * 60_000, NOW, 900) == 900
    assert wire.delay_seconds(NOW + 20 * 60_000, NOW, 2) == 2


@pytest.mark.parametrize("cap", [-1, 901])
def test_a_cap_outside_sqs_limits_is_refused(cap: int) -> None:
    with pytest.raises(ValueError, match="outside"):
        wire.delay_seconds(NOW, NOW, cap)


def test_whole_seconds_rounds_up_and_clamps() -> None:
    assert [wire.whole_seconds(x, 20) for x in (-1, 0, 0.2, 1.0, 1.01, 25)] == [0, 0, 1, 1, 2, 20]
    assert wire.whole_seconds(10**9) == wire.MAX_VISIBILITY_SECONDS


@given(st.binary(max_size=300))
def test_any_body_round_trips(body: bytes) -> None:
    text, is_b64 = wire.encode_body(body)
    attrs = wire.our_attributes("k:x:1", NOW, is_b64)
    assert wire.decode_body(text, attrs) == body


def test_sqs_safe_json_travels_as_text_and_unsafe_text_as_base64() -> None:
    assert wire.encode_body('{"k":"café ✓"}'.encode()) == ('{"k":"café ✓"}', False)
    _, is_b64 = wire.encode_body('{"k":"\uffff"}'.encode())
    assert is_b64
    _, is_b64 = wire.encode_body(b"\xff\xfe")
    assert is_b64


def test_a_body_marked_base64_that_is_not_is_malformed() -> None:
    with pytest.raises(MalformedMessageError):
        wire.decode_body(
            "%%%", {wire.ATTR_ENCODING: {"DataType": "String", "StringValue": "base64"}}
        )


def test_message_size_counts_body_and_attribute_names_types_values() -> None:
    attrs = wire.our_attributes("kind:key:1", 1234, False)
    expected = len("héllo".encode()) + sum(
        len(name) + len(v["DataType"]) + len(v["StringValue"]) for name, v in attrs.items()
    )
    assert wire.message_size("héllo", attrs) == expected
    assert wire.message_size("x", attrs) - 1 < wire.ATTRIBUTE_HEADROOM


def _entry(i: int, size: int) -> wire.Entry:
    return wire.Entry(f"m{i}", f"k:{i}:1", "x", {}, 0, size)


@given(sizes=st.lists(st.integers(min_value=1, max_value=1024), max_size=60))
def test_batches_keep_order_and_both_limits(sizes: list[int]) -> None:
    entries = [_entry(i, s) for i, s in enumerate(sizes)]
    planned = list(wire.batches(entries, 1024))
    assert [e for batch in planned for e in batch] == entries
    for batch in planned:
        assert 1 <= len(batch) <= 10
        assert sum(e.size for e in batch) <= 1024


def test_sqs_text_cuts_and_replaces_what_sqs_refuses() -> None:
    assert wire.sqs_text("ab\x00c" * 10, 6) == "ab?cab"
