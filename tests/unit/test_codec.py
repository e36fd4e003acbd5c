"""aidist.codec: msgpack with numpy arrays as typed binary; round trips, and never pickle."""

from __future__ import annotations

import pickle
from typing import Any

import msgpack
import numpy as np
import pytest

from aidist import codec


@pytest.mark.parametrize(
    "value",
    [
        "plain text",
        "unicode: é ß 漢字 🙂",
        "",
        0,
        -17,
        2**63 - 1,
        3.25,
        -0.0,
        True,
        None,
        [1, "two", 3.0, None],
        {"a": 1, "b": [1, 2, {"c": "d"}]},
        {"nested": {"deeper": {"deepest": [[1, 2], [3, 4]]}}},
        b"\x00\x01binary",
    ],
)
def test_plain_values_round_trip(value: Any) -> None:
    assert codec.decode(codec.encode(value)) == value


def test_tuples_come_back_as_lists() -> None:
    assert codec.decode(codec.encode((1, "a", (2, 3)))) == [1, "a", [2, 3]]


def test_integer_map_keys_survive() -> None:
    assert codec.decode(codec.encode({1: "one", 2: "two"})) == {1: "one", 2: "two"}


def test_float32_vector_round_trip() -> None:
    vector = np.linspace(-1.0, 1.0, 384, dtype=np.float32)
    decoded = codec.decode(codec.encode(vector))
    assert isinstance(decoded, np.ndarray)
    assert decoded.dtype == np.float32
    assert decoded.shape == (384,)
    np.testing.assert_array_equal(decoded, vector)


def test_float32_matrix_round_trip() -> None:
    matrix = np.arange(12, dtype=np.float32).reshape(3, 4) / 7.0
    decoded = codec.decode(codec.encode(matrix))
    assert decoded.dtype == np.float32
    assert decoded.shape == (3, 4)
    np.testing.assert_array_equal(decoded, matrix)


def test_non_contiguous_array_round_trips_with_its_logical_layout() -> None:
    transposed = np.arange(6, dtype=np.float64).reshape(2, 3).T
    assert not transposed.flags.c_contiguous
    decoded = codec.decode(codec.encode(transposed))
    assert decoded.shape == (3, 2)
    np.testing.assert_array_equal(decoded, transposed)


@pytest.mark.parametrize("dtype", ["<i8", ">i4", "<f2", "|u1", "|b1"])
def test_array_dtype_and_byte_order_are_kept(dtype: str) -> None:
    array = np.arange(5).astype(dtype)
    decoded = codec.decode(codec.encode(array))
    assert decoded.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(decoded, array)


def test_empty_array_round_trips() -> None:
    empty = np.zeros((2, 0), dtype=np.float32)
    decoded = codec.decode(codec.encode(empty))
    assert decoded.shape == (2, 0)
    assert decoded.dtype == np.float32


def test_arrays_inside_containers() -> None:
    value = {"embeddings": [np.ones(3, dtype=np.float32), np.zeros(2, dtype=np.float32)], "n": 2}
    decoded = codec.decode(codec.encode(value))
    assert decoded["n"] == 2
    np.testing.assert_array_equal(decoded["embeddings"][0], np.ones(3, dtype=np.float32))
    np.testing.assert_array_equal(decoded["embeddings"][1], np.zeros(2, dtype=np.float32))


def test_decoded_arrays_are_read_only() -> None:
    decoded = codec.decode(codec.encode(np.ones(4, dtype=np.float32)))
    assert not decoded.flags.writeable
    with pytest.raises(ValueError):
        decoded[0] = 2.0


def test_zero_dimensional_array_keeps_its_shape() -> None:
    scalar_array = np.array(3.5, dtype=np.float32)
    decoded = codec.decode(codec.encode(scalar_array))
    assert decoded.shape == ()


@pytest.mark.parametrize(
    ("value", "expected_type"),
    [
        (np.float32(1.5), float),
        (np.float16(0.5), float),
        (np.int64(-3), int),
        (np.uint8(200), int),
        (np.bool_(True), bool),
    ],
)
def test_numpy_scalars_become_python_numbers(value: Any, expected_type: type) -> None:
    decoded = codec.decode(codec.encode(value))
    assert type(decoded) is expected_type
    assert decoded == value.item()


class _Custom:
    pass


@pytest.mark.parametrize(
    "value",
    [_Custom(), {1, 2}, frozenset({"a"}), 1 + 2j, object(), [1, _Custom()], {"k": {3}}, 2**70],
)
def test_unsupported_values_raise_type_error(value: Any) -> None:
    with pytest.raises(TypeError, match="cannot encode"):
        codec.encode(value)


def test_object_dtype_array_is_refused() -> None:
    with pytest.raises(TypeError):
        codec.encode(np.array(["text", 1], dtype=object))


def test_decode_does_not_unpickle() -> None:
    # A pickle stream is not msgpack: decoding it must never rebuild Python objects from it.
    payload = pickle.dumps(_Custom())
    try:
        decoded = codec.decode(payload)
    except ValueError:  # msgpack's ExtraData / UnpackValueError are ValueErrors
        return
    assert not isinstance(decoded, _Custom)


def test_arrays_travel_as_raw_typed_bytes_not_pickle() -> None:
    vector = np.arange(8, dtype=np.float32)
    encoded = codec.encode(vector)
    assert vector.tobytes() in encoded
    assert b"numpy" not in encoded
    assert b"<f4" in encoded


def test_unknown_extension_types_are_left_opaque() -> None:
    packed = msgpack.packb(msgpack.ExtType(42, b"payload"))
    decoded = codec.decode(packed)
    assert decoded == msgpack.ExtType(42, b"payload")
