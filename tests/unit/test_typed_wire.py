"""Typed inputs on the wire: through kombu's own msgpack serializer (which knows no extension
types) and back to the same types; text entries exactly as before; cache keys that cover dtype
and shape; messages packed within the size limit."""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np
import pytest
from kombu import serialization

from aidist import codec
from aidist.codec import BlobRef
from aidist.errors import MalformedEntry
from aidist.jobs import (
    MESSAGE_OVERHEAD,
    JobEntry,
    JobKind,
    cache_key,
    message_packs,
    travels_as_text,
    wire_overhead,
)


def _entry(value: Any, **fields: Any) -> JobEntry:
    return JobEntry("6f1c1b8e-9f0e-4a57-8a47-2f3c1e9d1b10", JobKind.INFER, "typed", "1", value,
                    "key", reply_to="client-1", **fields)


def _through_kombu(wire: dict[str, Any]) -> dict[str, Any]:
    """What a worker receives: the body as kombu's msgpack serializer packs and unpacks it."""
    content_type, encoding, body = serialization.dumps(  # type: ignore[no-untyped-call]
        [[wire]], serializer="msgpack")
    received: dict[str, Any] = serialization.loads(  # type: ignore[no-untyped-call]
        body, content_type, encoding, accept=[content_type])[0][0]
    return received


TYPED = {
    "bytes": b"\x00\x01\xffraw",
    "float32 image tensor": np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4) / 7,
    "big-endian int16": np.arange(6, dtype=">i2").reshape(3, 2),
    "uint8 HxWxC": np.full((4, 5, 3), 200, dtype=np.uint8),
    "json map": {"a": [1, 2.5, None, True], "b": {"c": "d"}},
    "list of ints": [101, 7592, 102],
    "list of arrays": [np.ones(3, dtype=np.float32), np.zeros((2, 2), dtype=np.int64)],
    "a blob reference": BlobRef.of(b"payload kept in the blob store"),
    "an unknown extension": msgpack.ExtType(42, b"future"),
}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray):
        return (isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape
                and bool(np.array_equal(a, b)))
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(_same, a, b))
    return type(a) is type(b) and bool(a == b)


@pytest.mark.parametrize("value", list(TYPED.values()), ids=list(TYPED))
def test_typed_inputs_come_back_as_the_same_types(value: Any) -> None:
    wire = _entry(value).to_wire()
    assert "input" not in wire and isinstance(wire["input_codec"], bytes)
    received = JobEntry.from_wire(_through_kombu(wire))
    assert _same(value, received.input)


def test_the_client_passes_the_payload_it_has_already() -> None:
    value = np.ones((2, 2), dtype=np.float32)
    payload = codec.encode(value)
    assert _entry(value).to_wire(payload)["input_codec"] is payload


@pytest.mark.parametrize("value", ["plain text", ["chunk one", "chunk two"], []])
def test_text_travels_as_itself(value: Any) -> None:
    wire = _entry(value, each=isinstance(value, list)).to_wire(b"ignored for text")
    assert wire["input"] == value and "input_codec" not in wire
    assert list(wire) == ["v", "id", "kind", "target", "version", "input", "key", "params",
                          "reply_to"] + (["each"] if isinstance(value, list) else [])
    assert JobEntry.from_wire(_through_kombu(wire)).input == value


def test_only_exact_text_travels_as_itself() -> None:
    class Name(str):
        pass

    assert travels_as_text("x") and travels_as_text(["a", "b"])
    assert not travels_as_text(Name("x")) and not travels_as_text(["a", 1])
    assert not travels_as_text(("a", "b")) and not travels_as_text(b"x")


def test_an_each_entry_of_arrays_keeps_them() -> None:
    items = [np.ones((2, 3), dtype=np.float32), np.ones((4, 3), dtype=np.float32)]
    received = JobEntry.from_wire(_through_kombu(_entry(items, each=True).to_wire()))
    assert received.each and [x.shape for x in received.input] == [(2, 3), (4, 3)]


@pytest.mark.parametrize(("packed", "message"), [
    ("not bytes", "input_codec must be bytes, got str"),
    (b"\xc1", "input_codec cannot be decoded"),
])
def test_malformed_codec_input_is_a_malformed_entry(packed: Any, message: str) -> None:
    wire = _entry(b"x").to_wire()
    wire["input_codec"] = packed
    with pytest.raises(MalformedEntry, match=message):
        JobEntry.from_wire(wire)


def test_an_each_entry_needs_a_list_after_decoding() -> None:
    wire = _entry(b"x").to_wire()
    wire["each"] = True
    with pytest.raises(MalformedEntry, match="needs a list input"):
        JobEntry.from_wire(wire)


def _key(value: Any) -> str:
    return cache_key(JobKind.INFER, "typed", "1", None, codec.encode(value))


def test_cache_key_covers_dtype_and_shape_not_only_the_bytes() -> None:
    base = np.arange(12, dtype=np.float32)
    same_bytes = [base, base.reshape(3, 4), base.reshape(4, 3), base.view(np.int32),
                  base.view(np.uint8).reshape(48)]
    assert len({_key(array) for array in same_bytes}) == len(same_bytes)
    assert _key(base.reshape(3, 4)) == _key(np.arange(12, dtype=np.float32).reshape(3, 4))
    assert _key(b"abc") != _key("abc") != _key(["abc"])


def test_message_packs_respect_the_count_and_the_bytes() -> None:
    limit = MESSAGE_OVERHEAD + 100
    assert message_packs([10] * 7, 3, 10**9) == [slice(0, 3), slice(3, 6), slice(6, 7)]
    assert message_packs([40, 40, 40, 90, 5, 5], 128, limit) == [
        slice(0, 2), slice(2, 3), slice(3, 6)]
    assert message_packs([500, 1], 128, limit) == [slice(0, 1), slice(1, 2)]  # alone if bigger
    assert message_packs([], 128, limit) == []


def test_wire_overhead_counts_everything_but_the_input() -> None:
    small, big = _entry("x").to_wire(), _entry("x" * 1000).to_wire()
    assert wire_overhead(small) == wire_overhead(big) > len("6f1c1b8e-9f0e-4a57-8a47-2f3c1e9d1b10")
