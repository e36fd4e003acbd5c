"""The ``image`` preprocessing op: PNG/JPEG bytes (or an HxWxC uint8 array) to the float32 CHW
tensor a vision model takes.

Decode, apply the EXIF orientation, convert to RGB, resize to ``size`` = ``[height, width]``
(bilinear), scale to [0, 1], channels first. Pillow only, no torch: it runs on the cpu pool.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from aidist.errors import InvalidInput
from models.registry import LoadContext, Runner

DEFAULT_SIZE = (64, 64)
MAX_SIDE = 4096


def validate_image_params(params: dict[str, Any]) -> dict[str, Any]:
    """``size``: ``[height, width]``, each 1-4096 pixels (default ``[64, 64]``)."""
    unknown = set(params) - {"size"}
    if unknown:
        raise InvalidInput(f"unknown params {sorted(unknown)}; allowed: ['size']")
    size = params.get("size", list(DEFAULT_SIZE))
    if not (isinstance(size, list | tuple) and len(size) == 2 and all(
            type(side) is int and 1 <= side <= MAX_SIDE for side in size)):
        raise InvalidInput(f"param 'size' must be [height, width], integers in [1, {MAX_SIDE}], "
                           f"got {size!r}")
    return {"size": [int(size[0]), int(size[1])]}


def to_rgb(value: Any) -> Image.Image:
    """An input (encoded bytes, or an HxWxC uint8 array) as an upright RGB image."""
    if isinstance(value, np.ndarray):
        pixels = value[:, :, 0] if value.shape[2] == 1 else value
        return Image.fromarray(np.ascontiguousarray(pixels)).convert("RGB")
    with Image.open(io.BytesIO(bytes(value))) as image:
        upright = ImageOps.exif_transpose(image)
        return upright.convert("RGB")


def image_tensor(value: Any, height: int, width: int) -> np.ndarray:
    """One input as float32 ``[3, height, width]`` in [0, 1]."""
    resized = to_rgb(value).resize((width, height), Image.Resampling.BILINEAR)
    pixels = np.asarray(resized, dtype=np.float32) / np.float32(255.0)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def load_image(context: LoadContext) -> Runner:
    """Runner for ``image``."""

    def run(inputs: Sequence[Any], params: dict[str, Any]) -> list[Any]:
        height, width = validate_image_params(params)["size"]
        return [image_tensor(value, height, width) for value in inputs]

    return run
