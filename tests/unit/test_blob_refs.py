"""BlobRef: a large payload's reference (content key and size) round-trips through the codec as
its own msgpack extension type, anywhere in a value, and nothing but a real content key passes."""

from __future__ import annotations

import hashlib

import msgpack
import numpy as np
import pytest

from aidist import codec
from aidist.codec import BlobRef


def test_a_reference_is_the_sha256_and_size_of_the_bytes() -> None:
    data = b"x" * 1000
    ref = BlobRef.of(data)
    assert ref.key == hashlib.sha256(data).hexdigest()
    assert ref.size == 1000
    assert BlobRef.of(b"x" * 1000) == ref
    assert BlobRef.of(b"y" * 1000) != ref


def test_references_round_trip_alone_and_inside_values() -> None:
    ref = BlobRef.of(b"payload")
    assert codec.decode(codec.encode(ref)) == ref
    value = {"image": ref, "others": [BlobRef.of(b"a"), np.arange(3, dtype=np.int32)]}
    decoded = codec.decode(codec.encode(value))
    assert decoded["image"] == ref
    assert decoded["others"][0] == BlobRef.of(b"a")
    np.testing.assert_array_equal(decoded["others"][1], np.arange(3, dtype=np.int32))


def test_a_reference_travels_as_extension_type_2_holding_key_and_size() -> None:
    ref = BlobRef.of(b"payload")
    raw = msgpack.unpackb(codec.encode(ref))
    assert raw == msgpack.ExtType(2, msgpack.packb([ref.key, ref.size]))
    assert len(codec.encode(ref)) < 80  # a reference, not the bytes


@pytest.mark.parametrize("key", ["", "ab", "../../etc/passwd" + "0" * 48, "A" * 64, "g" * 64])
def test_anything_but_a_content_key_is_refused(key: str) -> None:
    with pytest.raises(ValueError, match="64 lowercase hex"):
        BlobRef(key, 1)
    with pytest.raises(ValueError, match="64 lowercase hex"):
        codec.decode(msgpack.packb(msgpack.ExtType(2, msgpack.packb([key, 1]))))


@pytest.mark.parametrize("size", [-1, True, 1.5, "3"])
def test_a_size_is_a_non_negative_integer(size: object) -> None:
    with pytest.raises(ValueError, match="size"):
        BlobRef("0" * 64, size)  # type: ignore[arg-type]


def test_as_blob_ref_tells_a_stored_reference_from_any_other_value() -> None:
    ref = BlobRef.of(b"payload")
    assert codec.as_blob_ref(codec.encode(ref)) == ref
    for other in ("text", b"\xc7\x01\x02a", [ref], {"r": ref}, np.zeros(3)):
        encoded = other if isinstance(other, bytes) else codec.encode(other)
        assert codec.as_blob_ref(encoded) is None
    assert codec.as_blob_ref(None) is None
