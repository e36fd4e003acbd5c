"""toy-classifier: a tiny seeded torch model for fast tests. Same input, same probabilities,
anywhere."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from models.registry import LoadContext, Runner
from models.torch_runtime import prepare

FEATURES = 64
CLASSES = 4
SEED = 1234
VERSION = f"toy-v1-seed{SEED}"


def featurize(text: str) -> list[float]:
    """Hashed character-trigram counts, scaled by length: a fixed function of the text."""
    counts = [0.0] * FEATURES
    padded = f"  {text}  "
    for i in range(len(padded) - 2):
        counts[zlib.crc32(padded[i : i + 3].encode()) % FEATURES] += 1.0
    total = max(sum(counts), 1.0)
    return [c / total for c in counts]


def load(context: LoadContext) -> Runner:
    """Build the seeded linear classifier on the context's device."""
    device, _ = prepare(context)
    generator = torch.Generator().manual_seed(SEED)
    weight = torch.randn(CLASSES, FEATURES, generator=generator) * 4.0
    bias = torch.randn(CLASSES, generator=generator)
    weight, bias = weight.to(device), bias.to(device)

    @torch.inference_mode()
    def run(inputs: Sequence[Any], params: dict[str, Any]) -> list[Any]:
        features = torch.tensor([featurize(text) for text in inputs], device=device)
        probabilities = torch.softmax(features @ weight.T + bias, dim=1).cpu().numpy()
        return [np.asarray(row, dtype=np.float32) for row in probabilities]

    return run
