"""models.image and models.toy_vision: PNG/JPEG bytes or pixel arrays to a float32 CHW tensor,
and a seeded classifier over such tensors that batches to the same answers as one at a time."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from PIL import Image

from aidist.demo import make_images
from aidist.errors import InvalidInput
from models import build_registry, toy_vision
from models.image import image_tensor, validate_image_params
from models.registry import LoadContext, Runner


def _png(pixels: np.ndarray) -> bytes:
    encoded = io.BytesIO()
    Image.fromarray(pixels).save(encoded, format="PNG")
    return encoded.getvalue()


PIXELS = np.random.default_rng(3).integers(0, 256, size=(20, 30, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def image_op() -> Runner:
    return build_registry().get("image").load(LoadContext())


@pytest.fixture(scope="module")
def vision() -> Runner:
    return build_registry().get("toy-vision").load(LoadContext())


def test_image_becomes_a_float32_chw_tensor_of_the_asked_size(image_op: Runner) -> None:
    (tensor,) = image_op([_png(PIXELS)], {"size": [12, 16]})
    assert tensor.dtype == np.float32 and tensor.shape == (3, 12, 16)
    assert float(tensor.min()) >= 0.0 and float(tensor.max()) <= 1.0


def test_png_bytes_and_the_same_pixels_as_an_array_agree(image_op: Runner) -> None:
    from_png, from_array = image_op([_png(PIXELS), PIXELS], {"size": [20, 30]})
    np.testing.assert_array_equal(from_png, from_array)
    np.testing.assert_allclose(from_array, PIXELS.transpose(2, 0, 1) / 255.0, atol=1e-6)


def test_grey_and_rgba_inputs_become_rgb() -> None:
    grey = np.full((5, 5, 1), 51, dtype=np.uint8)
    rgba = np.concatenate([PIXELS, np.zeros((20, 30, 1), dtype=np.uint8)], axis=2)
    assert np.allclose(image_tensor(grey, 5, 5), 0.2)
    np.testing.assert_array_equal(image_tensor(rgba, 20, 30), image_tensor(PIXELS, 20, 30))


@pytest.mark.parametrize(("params", "expected"), [
    ({}, {"size": [64, 64]}),
    ({"size": [224, 112]}, {"size": [224, 112]}),
    ({"size": (8, 9)}, {"size": [8, 9]}),
])
def test_image_params(params: dict[str, Any], expected: dict[str, Any]) -> None:
    assert validate_image_params(params) == expected


@pytest.mark.parametrize("params", [{"size": [0, 5]}, {"size": [5]}, {"size": "64x64"},
                                    {"size": [5.0, 5]}, {"size": [5000, 5]}, {"mode": "L"}])
def test_image_params_refused(params: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput, match=r"size|unknown params"):
        validate_image_params(params)


def test_toy_vision_is_seeded_probabilities_and_batches_agree(vision: Runner) -> None:
    rng = np.random.default_rng(5)
    tensors = [rng.random((3, 16, 16), dtype=np.float32) for _ in range(5)]
    batched = vision(tensors, {})
    again = build_registry().get("toy-vision").load(LoadContext())(tensors, {})
    for row, other, tensor in zip(batched, again, tensors, strict=True):
        assert row.dtype == np.float32 and row.shape == (toy_vision.CLASSES,)
        assert float(row.sum()) == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_array_equal(row, other)
        np.testing.assert_allclose(row, vision([tensor], {})[0], atol=1e-6)


def test_version_in_the_registry_is_the_models_own() -> None:
    assert build_registry().version("toy-vision") == toy_vision.VERSION


def test_demo_images_are_seeded_pngs() -> None:
    first, again = make_images(4, seed=9), make_images(4, seed=9)
    assert first == again and len(set(first)) == 4
    assert all(png.startswith(b"\x89PNG") for png in first)
