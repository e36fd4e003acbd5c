"""Typed inputs and outputs through real workers: bytes, tensors, JSON and images go in and come
back as the same types, tensors are batched by shape, the image pipeline classifies PNGs, an
over-size output fails only its job, and `aidist submit --file` sends files."""

from __future__ import annotations

import base64
import io
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aidist.config import Settings
from aidist.demo import make_images
from aidist.errors import JobFailed
from db.store import JobStore
from models import LoadContext, build_registry
from models.image import image_tensor
from producers import Client
from tests.conftest import aidist_command, settings_env
from tests.typed_plugins import BYTES_ECHO_MAX_OUTPUT

pytestmark = pytest.mark.e2e
SIZE = [24, 24]


def test_bytes_json_and_tensors_round_trip_with_their_types(workers: object,
                                                            client: Client) -> None:
    raw = bytes(range(256)) * 3
    assert client.infer("bytes-echo", raw).result(timeout=60) == raw[::-1]
    document = {"title": "typed", "values": [1, 2.5, None, True], "nested": {"k": "v"}}
    assert client.preprocess("json-echo", document).result(timeout=60) == {
        "got": document, "keys": ["nested", "title", "values"]}
    rng = np.random.default_rng(11)
    arrays = ([rng.random((2, 3), dtype=np.float32) for _ in range(4)]
              + [rng.random((5, 3), dtype=np.float32) for _ in range(2)]
              + [rng.integers(-9, 9, size=(2, 3)) for _ in range(2)])
    stats = client.map("tensor-stats", arrays, timeout=60)
    for array, result in zip(arrays, stats, strict=True):
        # a model call only ever held arrays of one dtype and shape
        assert result["layouts"] == [f"{array.dtype.name}{list(array.shape)}"]
        assert result["doubled"].dtype == array.dtype
        np.testing.assert_array_equal(result["doubled"], array * 2)


def test_the_image_pipeline_classifies_pngs_and_arrays_alike(workers: object, client: Client,
                                                             store: JobStore) -> None:
    pngs = make_images(3, seed=21)
    jobs = client.pipeline_many(["image", "toy-vision"], pngs, {"image": {"size": SIZE}})
    results = client.results_of(jobs, timeout=120)
    vision = build_registry().get("toy-vision").load(LoadContext())
    expected = vision([image_tensor(png, *SIZE) for png in pngs], {})
    for got, want in zip(results, expected, strict=True):
        assert got.dtype == np.float32 and got.shape == (8,)
        np.testing.assert_allclose(got, want, atol=1e-5)
    pixels = np.asarray(Image.open(io.BytesIO(pngs[0])).convert("RGB"))
    from_array = client.pipeline(["image", "toy-vision"], pixels, {"image": {"size": SIZE}})
    np.testing.assert_allclose(from_array.result(timeout=60), results[0], atol=1e-6)
    again = client.pipeline(["image", "toy-vision"], pngs[0], {"image": {"size": SIZE}})
    assert store.get(again.id).cache_hit
    tensor = client.preprocess("image", pngs[1], {"size": [16, 20]})
    assert tensor.result(timeout=60).shape == (3, 16, 20)


def test_an_oversize_output_fails_only_its_job(workers: object, client: Client) -> None:
    fine, grown = client.infer_many("bytes-echo", [b"fine", b"grow please"])
    assert fine.result(timeout=60) == b"enif"
    with pytest.raises(JobFailed, match=f"over its max_output_bytes of {BYTES_ECHO_MAX_OUTPUT}"):
        grown.result(timeout=60)
    assert client.infer("bytes-echo", b"after").result(timeout=60) == b"retfa"


def _submit(settings: Settings, *args: str) -> list[dict[str, object]]:
    done = subprocess.run([aidist_command(), "submit", *args], capture_output=True, text=True,
                          env=settings_env(settings), timeout=180, check=False)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def test_cli_submits_files_and_summarises_binary_results(workers: object, settings: Settings,
                                                         tmp_path: Path) -> None:
    for index, png in enumerate(make_images(2, seed=5)):
        (tmp_path / f"img{index}.png").write_bytes(png)
    lines = _submit(settings, "image>toy-vision", "--file", str(tmp_path))
    assert [Path(str(line["file"])).name for line in lines] == ["img0.png", "img1.png"]
    for line in lines:
        assert line["status"] == "succeeded"
        assert isinstance(line["result"], list) and len(line["result"]) == 8
    (tensor,) = _submit(settings, "image", "--file", str(tmp_path / "img0.png"), "--params",
                        '{"size": [40, 40]}')
    assert tensor["result"] == {"dtype": "float32", "shape": [3, 40, 40]}
    (tmp_path / "blob.bin").write_bytes(b"\x00\x01binary")
    (echoed,) = _submit(settings, "bytes-echo", "--file", str(tmp_path / "blob.bin"))
    assert echoed["result"] == {"bytes": 8, "base64": base64.b64encode(b"yranib\x01\x00").decode()}
