"""Test-only models over typed inputs (registered by ``tests.plugins``): bytes, tensors and JSON.

``bytes-echo`` returns its bytes reversed, and 4 KiB (over its ``max_output_bytes``) for an input
starting ``grow``; ``tensor-stats`` returns each array doubled with what its model call held (how
many inputs, of which dtypes and shapes), so tests see how the worker batched them;
``json-echo`` returns its JSON input with the sorted keys of a dict.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aidist import JobKind, LoadContext, ModelSpec, Registry, Runner

GROWN_BYTES = 4096
BYTES_ECHO_MAX_OUTPUT = 1024


def load_bytes_echo(context: LoadContext) -> Runner:
    def run(inputs: Sequence[Any], params: dict[str, Any]) -> list[Any]:
        return [b"x" * GROWN_BYTES if data.startswith(b"grow") else bytes(data)[::-1]
                for data in inputs]

    return run


def load_tensor_stats(context: LoadContext) -> Runner:
    def run(inputs: Sequence[Any], params: dict[str, Any]) -> list[Any]:
        layouts = sorted({f"{x.dtype.name}{list(x.shape)}" for x in inputs})
        return [{"doubled": x * 2, "batch": len(inputs), "layouts": layouts} for x in inputs]

    return run


def load_json_echo(context: LoadContext) -> Runner:
    def run(inputs: Sequence[Any], params: dict[str, Any]) -> list[Any]:
        return [{"got": value, "keys": sorted(value) if isinstance(value, dict) else None}
                for value in inputs]

    return run


def register_models(registry: Registry) -> None:
    """Add the typed test models."""
    registry.register(ModelSpec(name="bytes-echo", kind=JobKind.INFER, loader=load_bytes_echo,
                                version="bytes-echo-1", pool="gpu", input_type="bytes",
                                max_input_bytes=64 * 1024,
                                max_output_bytes=BYTES_ECHO_MAX_OUTPUT))
    registry.register(ModelSpec(name="tensor-stats", kind=JobKind.INFER,
                                loader=load_tensor_stats, version="tensor-stats-1", pool="gpu",
                                max_batch_size=16, input_type="tensor",
                                input_dtypes=("float32", "int64"), input_shape=(None, 3),
                                max_input_bytes=4096))
    registry.register(ModelSpec(name="json-echo", kind=JobKind.PREPROCESS, loader=load_json_echo,
                                version="json-echo-1", pool="cpu", input_type="json",
                                max_input_bytes=1024))
