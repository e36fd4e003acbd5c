"""Torch set-up shared by the torch models: threads, device checks, dtype. Imported only by
loaders."""

from __future__ import annotations

import os

import torch

from aidist.errors import ModelLoadError
from models.registry import LoadContext

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def prepare(context: LoadContext) -> tuple[torch.device, torch.dtype]:
    """Apply the thread count and check the device exists; returns (device, dtype)."""
    threads = context.torch_threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    device = torch.device(context.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {context.device} requested but CUDA is not available here")
    dtype = _DTYPES.get(context.dtype)
    if dtype is None:
        raise ModelLoadError(f"dtype {context.dtype!r} unknown; use one of {sorted(_DTYPES)}")
    if device.type == "cpu" and dtype is torch.float16:
        dtype = torch.float32
    return device, dtype


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Move a batch to ``device``, through pinned memory when it is a GPU."""
    if device.type != "cuda":
        return batch
    return {name: t.pin_memory().to(device, non_blocking=True) for name, t in batch.items()}
