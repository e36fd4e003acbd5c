"""What a model's output becomes: encoded bytes within the model's ``max_output_bytes``, or the
entry that carries it to the next pipeline step within ``max_message_bytes``, typed as it came.

Any value ``aidist.codec`` encodes is an output: arrays, bytes, JSON-like values, blob references.
A limit crossed fails that one job with a message saying which limit; the worker goes on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aidist import codec
from aidist.config import Settings
from aidist.errors import UnknownModel
from aidist.jobs import MESSAGE_OVERHEAD, JobEntry, wire_overhead
from aidist.transport import queue_name
from models import Registry
from models.inputs import DEFAULT_MAX_BYTES


@dataclass(frozen=True, slots=True)
class Forward:
    """A pipeline continuation ready to publish: its queue, wire entry and size in bytes."""

    queue: str
    wire: dict[str, Any]
    size: int


def output_limit(registry: Registry, target: str) -> int:
    """``max_output_bytes`` of ``target`` (the default for one not registered here: its jobs
    fail in ``run_group``, naming it)."""
    try:
        return registry.get(target).max_output_bytes
    except UnknownModel:
        return DEFAULT_MAX_BYTES


def encode_output(target: str, output: Any, limit: int) -> tuple[bytes, str | None]:
    """The output's codec bytes, or the error that fails its job."""
    try:
        encoded = codec.encode(output)
    except (TypeError, ValueError) as exc:
        return b"", f"output cannot be encoded: {exc}"
    if len(encoded) > limit:
        return b"", (f"{target} output is {len(encoded)} bytes encoded, over its "
                     f"max_output_bytes of {limit}; the job fails, the worker goes on")
    return encoded, None


def forward(settings: Settings, entry: JobEntry, output: Any, encoded: bytes,
            attempt: int) -> Forward | str:
    """The entry that takes ``entry`` to its next step with ``output`` as input (an array stays
    an array; a list, or a tuple, runs item by item there), fenced on ``attempt``; or the error
    that fails the job if that entry cannot fit in a message."""
    carried = list(output) if isinstance(output, tuple) else output
    following = entry.next_step(carried, attempt)
    wire = following.to_wire(encoded)
    size = wire_overhead(wire) + len(encoded)
    if size + MESSAGE_OVERHEAD > settings.max_message_bytes:
        return (f"pipeline step {entry.target} output ({len(encoded)} bytes) does not fit in a "
                f"message to {following.target} "
                f"(AIDIST_MAX_MESSAGE_BYTES={settings.max_message_bytes})")
    return Forward(queue_name(settings.namespace, following.kind, following.target), wire, size)
