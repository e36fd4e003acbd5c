"""Binary encoding of inputs and results: msgpack, with numpy arrays as typed binary. Never
pickle."""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

_NDARRAY = 1


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject or obj.dtype.fields is not None:
            raise TypeError(f"cannot encode an array of dtype {obj.dtype}; use a numeric dtype")
        array = obj if obj.flags.c_contiguous else obj.copy(order="C")
        header = msgpack.packb([array.dtype.str, list(array.shape)])
        return msgpack.ExtType(_NDARRAY, header + array.tobytes())
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot encode {type(obj).__name__}; use str, numbers, lists, maps or arrays")


def _ext_hook(code: int, data: bytes) -> Any:
    if code != _NDARRAY:
        return msgpack.ExtType(code, data)
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(data)
    dtype, shape = next(unpacker)
    offset = unpacker.tell()
    return np.frombuffer(data, dtype=np.dtype(dtype), offset=offset).reshape(shape)


def encode(value: Any) -> bytes:
    """Encode a result or input to bytes (msgpack; ndarray as an extension type)."""
    packed: bytes = msgpack.packb(value, default=_default, use_bin_type=True)
    return packed


def decode(data: bytes) -> Any:
    """Inverse of :func:`encode`; arrays come back read-only numpy arrays."""
    return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)
