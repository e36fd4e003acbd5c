"""The built-in models and ops, always registered, and the registry factory."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from aidist.jobs import JobKind
from models import image, ops
from models.registry import ModelSpec, Registry
from models.weights import minilm_version

_OPS_VERSION = "ops-v1"

BUILTIN_SPECS = (
    ModelSpec(
        name="minilm",
        kind=JobKind.INFER,
        loader="models.minilm:load",
        version=minilm_version,
        pool="gpu",
        max_batch_size=64,
        thread_safe=True,
        description="all-MiniLM-L6-v2 sentence embedding: float32[384], L2-normalised",
        warmup_inputs=("warm up the model",),
    ),
    ModelSpec(
        name="toy-classifier",
        kind=JobKind.INFER,
        loader="models.toy:load",
        version="toy-v1-seed1234",
        pool="gpu",
        max_batch_size=256,
        thread_safe=True,
        description="tiny seeded classifier: float32[4] probabilities",
        warmup_inputs=("warm up",),
    ),
    ModelSpec(
        name="toy-vision",
        kind=JobKind.INFER,
        loader="models.toy_vision:load",
        version="toy-vision-v1-seed4321",
        pool="gpu",
        max_batch_size=64,
        thread_safe=True,
        description="tiny seeded image classifier: float32[3,H,W] -> float32[8] probabilities",
        input_type="tensor",
        input_dtypes=("float32",),
        input_shape=(3, None, None),
        max_input_bytes=16 * 1024 * 1024,
        warmup_inputs=(np.zeros((3, 64, 64), dtype=np.float32),),
    ),
    ModelSpec(
        name="tokenize",
        kind=JobKind.PREPROCESS,
        loader=ops.load_tokenize,
        version=lambda: f"{_OPS_VERSION}-{minilm_version()}",
        pool="cpu",
        max_batch_size=256,
        description="MiniLM WordPiece token ids (with [CLS]/[SEP], at most 256)",
    ),
    ModelSpec(
        name="chunk",
        kind=JobKind.PREPROCESS,
        loader=ops.load_chunk,
        version=_OPS_VERSION,
        pool="cpu",
        max_batch_size=256,
        description="split text into overlapping word windows; params size, overlap",
        validate_params=ops.validate_chunk_params,
    ),
    ModelSpec(
        name="normalize",
        kind=JobKind.PREPROCESS,
        loader=ops.load_normalize,
        version=_OPS_VERSION,
        pool="cpu",
        max_batch_size=512,
        description="NFKC, control characters dropped, whitespace collapsed; param lowercase",
        validate_params=ops.validate_normalize_params,
    ),
    ModelSpec(
        name="image",
        kind=JobKind.PREPROCESS,
        loader=image.load_image,
        version=f"{_OPS_VERSION}-image",
        pool="cpu",
        max_batch_size=64,
        description="PNG/JPEG bytes or HxWxC uint8 -> float32[3,H,W] RGB in [0,1]; param size",
        validate_params=image.validate_image_params,
        input_type="image",
        max_input_bytes=32 * 1024 * 1024,
    ),
)


def build_registry(plugins: Sequence[str] = (), *, max_input_chars: int = 100_000) -> Registry:
    """A registry with the built-ins plus whatever the plugin modules register."""
    registry = Registry(max_input_chars=max_input_chars)
    for spec in BUILTIN_SPECS:
        registry.register(spec)
    registry.load_plugins(plugins)
    return registry
