"""Binary encoding of inputs and results: msgpack, with numpy arrays as typed binary and large
payloads as references into the blob store (``BlobRef``). Never pickle."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

_NDARRAY = 1
_BLOB_REF = 2
_BLOB_KEY = re.compile(r"^[0-9a-f]{64}$")


def blob_key(data: bytes) -> str:
    """The content key of a payload: its SHA-256 in hex (``sha256sum`` checks a stored blob)."""
    return hashlib.sha256(data).hexdigest()


def check_blob_key(key: str) -> str:
    """``key`` if it is a content key (64 lowercase hex digits), else ``ValueError``: a store
    turns a key into a path or an object name, so nothing else may pass."""
    if not isinstance(key, str) or not _BLOB_KEY.match(key):
        raise ValueError(f"a blob key is 64 lowercase hex digits, got {key!r}")
    return key


@dataclass(frozen=True, slots=True)
class BlobRef:
    """An encoded payload kept in the blob store instead of inline: its content key and size in
    bytes. Content-addressed, so identical payloads share one blob, and the same bytes always
    give the same reference (a cache key over it is as good as one over the bytes)."""

    key: str
    size: int

    def __post_init__(self) -> None:
        check_blob_key(self.key)
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 0:
            raise ValueError(f"a blob size is a non-negative integer, got {self.size!r}")

    @classmethod
    def of(cls, data: bytes) -> BlobRef:
        """The reference of ``data`` (not stored anywhere by this)."""
        return cls(blob_key(data), len(data))


_REF_MAX_BYTES = 96  # a BlobRef's encoding is 76 bytes; longer data is never one


def as_blob_ref(data: bytes | None) -> BlobRef | None:
    """The reference that encoded ``data`` is, if it is one (without decoding anything longer
    than a reference can be): how a stored result or payload is told to be a pointer."""
    if data is None or len(data) > _REF_MAX_BYTES or data[:1] != b"\xc7" or (
            data[2:3] != bytes([_BLOB_REF])):
        return None
    try:
        value = decode(data)
    except (ValueError, TypeError):
        return None
    return value if isinstance(value, BlobRef) else None


def _default(obj: Any) -> Any:
    if isinstance(obj, BlobRef):
        return msgpack.ExtType(_BLOB_REF, msgpack.packb([obj.key, obj.size]))
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
    if code == _BLOB_REF:
        fields = msgpack.unpackb(data, raw=False)
        if not isinstance(fields, list) or len(fields) != 2:
            raise ValueError("a blob reference holds [key, size]")
        return BlobRef(*fields)
    if code != _NDARRAY:
        return msgpack.ExtType(code, data)
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(data)
    dtype, shape = next(unpacker)
    offset = unpacker.tell()
    return np.frombuffer(data, dtype=np.dtype(dtype), offset=offset).reshape(shape)


def encode(value: Any) -> bytes:
    """Encode a result or input to bytes (msgpack; ndarray and BlobRef as extension types)."""
    packed: bytes = msgpack.packb(value, default=_default, use_bin_type=True)
    return packed


def decode(data: bytes) -> Any:
    """Inverse of :func:`encode`; arrays come back read-only numpy arrays."""
    return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)
