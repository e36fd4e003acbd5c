"""What a model or op takes as input, and the checks that hold a submission to it.

A ``ModelSpec`` declares one input type: ``text`` (a ``str``, the default), ``bytes``, ``image``
(PNG or JPEG bytes, or an HxWxC uint8 array), ``tensor`` (a numpy array of the dtypes and shape the
model accepts) or ``json`` (dicts with string keys, lists, strings, finite numbers, booleans,
None). The client checks every input before anything is written or sent, and the worker checks
it again (a message can be published around the client), so each failure is an ``InvalidInput``
that names what was expected. Pillow is imported here (not torch): checking an image is opening
its header and verifying its structure, never decoding its pixels.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from aidist import codec
from aidist.errors import ConfigError, InvalidInput

InputType = Literal["text", "bytes", "image", "tensor", "json"]
INPUT_TYPES: tuple[str, ...] = ("text", "bytes", "image", "tensor", "json")
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
IMAGE_FORMATS = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG"}
IMAGE_CHANNELS = (1, 3, 4)
NUMERIC_KINDS = "biufc"  # bool, signed, unsigned, float, complex: what a tensor may hold
JSON_MAX_DEPTH = 100
ShapePattern = tuple[int | None, ...]


def check_declaration(name: str, input_type: str, *, dtypes: Sequence[str],
                      shape: ShapePattern | None, max_input_bytes: int,
                      max_output_bytes: int) -> None:
    """A spec's input declaration must make sense: ``ConfigError`` at registration, not a
    puzzling ``InvalidInput`` on every submit."""
    if input_type not in INPUT_TYPES:
        raise ConfigError(f"{name}: input_type {input_type!r} unknown; use one of "
                          f"{', '.join(INPUT_TYPES)}")
    if (dtypes or shape is not None) and input_type != "tensor":
        raise ConfigError(f"{name}: input_dtypes and input_shape apply to input_type 'tensor' "
                          f"only, not {input_type!r}")
    for dtype in dtypes:
        try:
            kind = np.dtype(dtype).kind
        except TypeError as exc:
            raise ConfigError(f"{name}: input dtype {dtype!r} is not a numpy dtype") from exc
        if kind not in NUMERIC_KINDS:
            raise ConfigError(f"{name}: input dtype {dtype!r} is not numeric")
    if shape is not None and not all(
            dim is None or (type(dim) is int and dim >= 0) for dim in shape):
        raise ConfigError(f"{name}: input_shape is a tuple of sizes (>= 0) and None (any size), "
                          f"got {shape!r}")
    for field, limit in (("max_input_bytes", max_input_bytes),
                         ("max_output_bytes", max_output_bytes)):
        if type(limit) is not int or limit < 1:
            raise ConfigError(f"{name}: {field} must be a positive integer, got {limit!r}")


def check_value(name: str, input_type: str, value: Any, *, dtypes: Sequence[str] = (),
                shape: ShapePattern | None = None,
                max_bytes: int = DEFAULT_MAX_BYTES) -> None:
    """Check one non-text input against its declared type. Raises ``InvalidInput``."""
    if input_type == "bytes":
        _check_bytes(name, value, max_bytes)
    elif input_type == "image":
        _check_image(name, value, max_bytes)
    elif input_type == "tensor":
        _check_tensor(name, value, dtypes, shape, max_bytes)
    elif input_type == "json":
        _check_json(name, value, max_bytes)
    else:  # registration refuses other types; a spec built around it gets a clear message
        raise InvalidInput(f"{name} declares input type {input_type!r}, which aidist does not "
                           "know")


def _too_large(name: str, size: int, limit: int) -> InvalidInput:
    return InvalidInput(
        f"{name} input has {size} bytes, the limit is {limit} (its max_input_bytes); "
        "send a smaller input or register the model with a larger max_input_bytes")


def _check_bytes(name: str, value: Any, max_bytes: int) -> None:
    if not isinstance(value, bytes | bytearray):
        hint = "; encode text first (str.encode())" if isinstance(value, str) else ""
        raise InvalidInput(f"{name} takes bytes, got {type(value).__name__}{hint}")
    if not value:
        raise InvalidInput(f"{name} got empty bytes; pass a non-empty input")
    if len(value) > max_bytes:
        raise _too_large(name, len(value), max_bytes)


def _check_image(name: str, value: Any, max_bytes: int) -> None:
    expected = "an image: PNG or JPEG bytes, or an HxWxC uint8 array (C = 1, 3 or 4)"
    if isinstance(value, np.ndarray):
        if value.dtype != np.uint8 or value.ndim != 3 or value.shape[2] not in IMAGE_CHANNELS:
            raise InvalidInput(f"{name} takes {expected}; got a {value.dtype} array of shape "
                               f"{tuple(value.shape)}")
        if value.shape[0] == 0 or value.shape[1] == 0:
            raise InvalidInput(f"{name} got an empty image array of shape {tuple(value.shape)}")
        if value.nbytes > max_bytes:
            raise _too_large(name, value.nbytes, max_bytes)
        return
    if not isinstance(value, bytes | bytearray):
        raise InvalidInput(f"{name} takes {expected}; got {type(value).__name__}")
    if len(value) > max_bytes:
        raise _too_large(name, len(value), max_bytes)
    data = bytes(value)
    found = next((fmt for magic, fmt in IMAGE_FORMATS.items() if data.startswith(magic)), None)
    if found is None:
        raise InvalidInput(f"{name} takes {expected}; these {len(data)} bytes are neither PNG "
                           "nor JPEG")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            image.verify()  # structure and checksums, without decoding the pixels
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError,
            Image.DecompressionBombError) as exc:
        raise InvalidInput(f"{name} got {found} bytes that do not decode as an image: "
                           f"{exc}") from exc
    if width == 0 or height == 0:
        raise InvalidInput(f"{name} got an empty {found} image ({width}x{height})")


def describe_shape(shape: ShapePattern) -> str:
    """A shape pattern as users write it: ``(3, None, None)``."""
    inner = ", ".join("None" if dim is None else str(dim) for dim in shape)
    return f"({inner},)" if len(shape) == 1 else f"({inner})"


def _check_tensor(name: str, value: Any, dtypes: Sequence[str], shape: ShapePattern | None,
                  max_bytes: int) -> None:
    if not isinstance(value, np.ndarray):
        raise InvalidInput(f"{name} takes a tensor (a numpy array), got "
                           f"{type(value).__name__}; pass np.asarray(value, dtype=...)")
    if dtypes:
        if value.dtype.name not in dtypes:
            raise InvalidInput(f"{name} takes a tensor of dtype {' or '.join(dtypes)}, got "
                               f"{value.dtype.name}; convert it with .astype({dtypes[0]!r})")
    elif value.dtype.kind not in NUMERIC_KINDS:
        raise InvalidInput(f"{name} takes a numeric tensor, got dtype {value.dtype}")
    if shape is not None and (len(shape) != value.ndim or any(
            want is not None and want != got for want, got in zip(shape, value.shape,
                                                                   strict=True))):
        raise InvalidInput(f"{name} takes a tensor of shape {describe_shape(shape)} (None: any "
                           f"size), got shape {describe_shape(tuple(value.shape))}")
    if value.size == 0:
        raise InvalidInput(f"{name} got an empty tensor of shape "
                           f"{describe_shape(tuple(value.shape))}")
    if value.nbytes > max_bytes:
        raise _too_large(name, value.nbytes, max_bytes)


def _check_json(name: str, value: Any, max_bytes: int) -> None:
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > JSON_MAX_DEPTH:
            raise InvalidInput(f"{name} takes JSON nested at most {JSON_MAX_DEPTH} deep")
        if item is None or isinstance(item, bool | str):
            continue
        if isinstance(item, int):
            if not -(2**63) <= item < 2**64:
                raise InvalidInput(f"{name} takes JSON integers within 64 bits, got {item}")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise InvalidInput(f"{name} takes JSON numbers, got {item} (not finite)")
        elif isinstance(item, list | tuple):
            stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str):
                    raise InvalidInput(f"{name} takes JSON objects with string keys, got key "
                                       f"{key!r}")
                stack.append((child, depth + 1))
        else:
            raise InvalidInput(f"{name} takes JSON (dict, list, str, number, bool, None), got "
                               f"{type(item).__name__}")
    size = len(codec.encode(value))
    if size > max_bytes:
        raise _too_large(name, size, max_bytes)
