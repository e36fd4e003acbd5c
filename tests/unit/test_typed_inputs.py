"""models.inputs through the registry: each input type accepts what it declares and refuses
everything else with an ``InvalidInput`` that names what was expected."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from PIL import Image

from aidist.errors import ConfigError, InvalidInput
from aidist.jobs import JobKind
from models import build_registry
from models.registry import LoadContext, ModelSpec, Registry, Runner


def _echo(context: LoadContext) -> Runner:
    def run(inputs: Sequence[Any], params: dict[str, Any]) -> list[Any]:
        return list(inputs)

    return run


def _spec(input_type: str, **fields: Any) -> ModelSpec:
    return ModelSpec(name=f"typed-{input_type}", kind=JobKind.INFER, loader=_echo,
                     version="1", input_type=input_type, **fields)


def png(width: int = 6, height: int = 4, mode: str = "RGB", fmt: str = "PNG") -> bytes:
    encoded = io.BytesIO()
    Image.new(mode, (width, height), 128).save(encoded, format=fmt)
    return encoded.getvalue()


@pytest.fixture(scope="module")
def registry() -> Registry:
    return build_registry()


BYTES = _spec("bytes", max_input_bytes=8)
IMAGE = _spec("image", max_input_bytes=4096)
TENSOR = _spec("tensor", input_dtypes=("float32", "float16"), input_shape=(3, None, None),
               max_input_bytes=3 * 8 * 8 * 4)
ANY_TENSOR = _spec("tensor")
JSON = _spec("json", max_input_bytes=64)


@pytest.mark.parametrize(("spec", "value"), [
    (BYTES, b"\x00binary"),
    (BYTES, bytearray(b"12345678")),
    (IMAGE, png()),
    (IMAGE, png(fmt="JPEG")),
    (IMAGE, png(mode="RGBA")),
    (IMAGE, np.zeros((4, 6, 3), dtype=np.uint8)),
    (IMAGE, np.zeros((4, 6, 1), dtype=np.uint8)),
    (TENSOR, np.zeros((3, 8, 8), dtype=np.float32)),
    (TENSOR, np.zeros((3, 1, 5), dtype=np.float16)),
    (ANY_TENSOR, np.arange(5, dtype=np.int64)),
    (ANY_TENSOR, np.array([True, False])),
    (JSON, {"a": [1, 2.5, None, True], "b": {"c": "d"}}),
    (JSON, ["x", 3]),
    (JSON, None),
], ids=lambda v: getattr(v, "name", None) or type(v).__name__)
def test_accepted(registry: Registry, spec: ModelSpec, value: Any) -> None:
    registry.validate_input(spec, value)


@pytest.mark.parametrize(("spec", "value", "message"), [
    (BYTES, "text", r"typed-bytes takes bytes, got str; encode text first"),
    (BYTES, np.zeros(3, dtype=np.uint8), r"takes bytes, got ndarray"),
    (BYTES, b"", r"got empty bytes"),
    (BYTES, b"123456789", r"has 9 bytes, the limit is 8 \(its max_input_bytes\)"),
    (IMAGE, "a.png", r"takes an image: PNG or JPEG bytes, or an HxWxC uint8 array .*got str"),
    (IMAGE, b"GIF89a not supported", r"these 20 bytes are neither PNG nor JPEG"),
    (IMAGE, png()[:30], r"got PNG bytes that do not decode as an image"),
    (IMAGE, png()[:8] + b"\x00" * 40, r"got PNG bytes that do not decode"),
    (IMAGE, png(64, 64, fmt="JPEG") + b"\x00" * 5000, r"has \d+ bytes, the limit is 4096"),
    (IMAGE, np.zeros((4, 6, 3), dtype=np.float32), r"got a float32 array of shape \(4, 6, 3\)"),
    (IMAGE, np.zeros((3, 4, 6), dtype=np.uint8), r"got a uint8 array of shape \(3, 4, 6\)"),
    (IMAGE, np.zeros((4, 6), dtype=np.uint8), r"got a uint8 array of shape \(4, 6\)"),
    (IMAGE, np.zeros((0, 6, 3), dtype=np.uint8), r"got an empty image array"),
    (IMAGE, np.zeros((64, 64, 3), dtype=np.uint8), r"has 12288 bytes, the limit is 4096"),
    (TENSOR, [[1.0]], r"takes a tensor \(a numpy array\), got list; pass np.asarray"),
    (TENSOR, np.zeros((3, 8, 8), dtype=np.float64),
     r"takes a tensor of dtype float32 or float16, got float64; convert it with "
     r"\.astype\('float32'\)"),
    (TENSOR, np.zeros((8, 8), dtype=np.float32),
     r"takes a tensor of shape \(3, None, None\) \(None: any size\), got shape \(8, 8\)"),
    (TENSOR, np.zeros((4, 8, 8), dtype=np.float32), r"got shape \(4, 8, 8\)"),
    (TENSOR, np.zeros((3, 0, 8), dtype=np.float32), r"got an empty tensor of shape \(3, 0, 8\)"),
    (TENSOR, np.zeros((3, 9, 8), dtype=np.float32), r"has 864 bytes, the limit is 768"),
    (ANY_TENSOR, np.array(["a", "b"]), r"takes a numeric tensor, got dtype <U1"),
    (JSON, {1: "x"}, r"takes JSON objects with string keys, got key 1"),
    (JSON, {"a": {1, 2}}, r"takes JSON \(dict, list, str, number, bool, None\), got set"),
    (JSON, [b"raw"], r"got bytes"),
    (JSON, {"x": float("nan")}, r"takes JSON numbers, got nan \(not finite\)"),
    (JSON, [2**70], r"takes JSON integers within 64 bits"),
    (JSON, np.zeros(2), r"got ndarray"),
    (JSON, {"long": "x" * 100}, r"has \d+ bytes, the limit is 64"),
], ids=lambda v: v if isinstance(v, str) and len(v) < 20 else None)
def test_refused_with_a_message_naming_what_was_expected(registry: Registry, spec: ModelSpec,
                                                         value: Any, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        registry.validate_input(spec, value)


def test_json_nested_too_deep_is_refused(registry: Registry) -> None:
    deep: Any = "leaf"
    for _ in range(150):
        deep = [deep]
    with pytest.raises(InvalidInput, match="nested at most 100 deep"):
        registry.validate_input(_spec("json"), deep)


def test_text_models_keep_their_checks(registry: Registry) -> None:
    with pytest.raises(InvalidInput, match=r"takes text \(str\), got ndarray"):
        registry.validate_input(registry.get("minilm"), np.zeros(3, dtype=np.float32))


def test_builtin_typed_specs(registry: Registry) -> None:
    vision = registry.get("toy-vision")
    assert (vision.input_type, vision.input_dtypes, vision.input_shape) == (
        "tensor", ("float32",), (3, None, None))
    assert registry.get("image").input_type == "image"
    assert registry.get("minilm").input_type == "text"


@pytest.mark.parametrize(("fields", "message"), [
    ({"input_type": "audio"}, r"input_type 'audio' unknown; use one of text, bytes, image"),
    ({"input_type": "bytes", "input_dtypes": ("float32",)},
     r"input_dtypes and input_shape apply to input_type 'tensor' only"),
    ({"input_type": "tensor", "input_dtypes": ("floaty",)}, r"'floaty' is not a numpy dtype"),
    ({"input_type": "tensor", "input_dtypes": ("U8",)}, r"'U8' is not numeric"),
    ({"input_type": "tensor", "input_shape": (3, -1)}, r"input_shape is a tuple of sizes"),
    ({"input_type": "tensor", "input_shape": (3, 2.5)}, r"input_shape is a tuple of sizes"),
    ({"max_input_bytes": 0}, r"max_input_bytes must be a positive integer"),
    ({"max_output_bytes": None}, r"max_output_bytes must be a positive integer"),
])
def test_declarations_that_make_no_sense_are_config_errors(fields: dict[str, Any],
                                                           message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ModelSpec(name="bad", kind=JobKind.INFER, loader=_echo, version="1", **fields)
