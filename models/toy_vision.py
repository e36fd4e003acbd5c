"""toy-vision: a tiny seeded torch model over image tensors, for tests and the demo. Same image,
same probabilities, anywhere.

It takes the float32 ``[3, H, W]`` tensors the ``image`` op makes (any H and W), pools them to a
4x4 grid per channel and applies a fixed random linear layer and a softmax. The worker batches
tensors of one shape together, so a batch is one stacked tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from models.registry import LoadContext, Runner
from models.torch_runtime import prepare

GRID = 4
CHANNELS = 3
CLASSES = 8
SEED = 4321
VERSION = f"toy-vision-v1-seed{SEED}"
INPUT_SHAPE = (CHANNELS, None, None)


def load(context: LoadContext) -> Runner:
    """Build the seeded classifier on the context's device."""
    device, _ = prepare(context)
    generator = torch.Generator().manual_seed(SEED)
    weight = torch.randn(CLASSES, CHANNELS * GRID * GRID, generator=generator) * 0.5
    bias = torch.randn(CLASSES, generator=generator)
    weight, bias = weight.to(device), bias.to(device)

    @torch.inference_mode()
    def run(inputs: Sequence[Any], params: dict[str, Any]) -> list[Any]:
        batch = torch.from_numpy(np.stack([np.asarray(x, dtype=np.float32) for x in inputs]))
        pooled = torch.nn.functional.adaptive_avg_pool2d(batch.to(device), GRID).flatten(1)
        probabilities = torch.softmax(pooled @ weight.T + bias, dim=1).cpu().numpy()
        return [np.asarray(row, dtype=np.float32) for row in probabilities]

    return run
