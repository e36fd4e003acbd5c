"""Job contracts shared by producers, workers and the store: lifecycle, wire format, cache keys,
queues.

A job travels as a plain dict inside a standard Celery task message (task ``aidist.run_jobs``, one
positional argument: a list of job entries). Many jobs submitted together share one message.

The message body is msgpack (kombu's serializer, which knows no extension types), so an entry's
input travels in one of two ways: text (a ``str``, or a list of them: a pipeline step's items)
as itself under ``input``, exactly as before typed inputs existed; anything else (bytes, arrays,
JSON-like values, a blob reference: whatever ``aidist.codec`` encodes) as its codec bytes under
``input_codec``, a msgpack bin that kombu carries untouched, decoded back to the same types by
``from_wire``. A worker of an older release meets no ``input`` there and fails such a job naming
the missing field, never misreading bytes as the input.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import msgpack

from aidist import codec
from aidist.errors import MalformedEntry

RUN_JOBS_TASK = "aidist.run_jobs"
"""Celery task name every aidist message carries; Flower and ``celery inspect`` show it."""

WIRE_VERSION = 1
MESSAGE_OVERHEAD = 4096  # bytes of a message besides its entries: Celery's headers and envelope


class JobKind(enum.StrEnum):
    """What a job does: run a model, or run a preprocessing op."""

    INFER = "infer"
    PREPROCESS = "preprocess"


class JobStatus(enum.StrEnum):
    """Lifecycle of a job. queued -> running -> succeeded | failed; queued -> cancelled |
    expired."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"

    @property
    def terminal(self) -> bool:
        """True once the job will never change again."""
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.EXPIRED}
)


def canonical_params(params: dict[str, Any] | None) -> str:
    """Params as canonical JSON (sorted keys, no spaces) so equal params hash equally."""
    if not params:  # most jobs: no params (a flush groups every job by this)
        return "{}"
    return json.dumps(params, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def cache_key(kind: JobKind, target: str, version: str, params: dict[str, Any] | None,
              input_bytes: bytes) -> str:
    """Content key of a result: same model version, params and input give the same key."""
    digest = hashlib.blake2b(digest_size=20)
    for part in (kind.value, target, version, canonical_params(params)):
        digest.update(part.encode())
        digest.update(b"\x00")
    digest.update(input_bytes)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class Step:
    """One stage of a pipeline: a model or op, its version and params."""

    kind: JobKind
    target: str
    version: str
    params: dict[str, Any] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        """Plain dict for the message."""
        return {"kind": self.kind.value, "target": self.target, "version": self.version,
                "params": self.params}

    @classmethod
    def from_wire(cls, data: Any) -> Step:
        """Parse a step; ``ValueError`` if malformed."""
        if not isinstance(data, dict) or not isinstance(data.get("params", {}), dict):
            raise MalformedEntry("a pipeline step must be a map with map params")
        try:
            return cls(JobKind(data["kind"]), str(data["target"]), str(data["version"]),
                       data.get("params") or {})
        except KeyError as exc:
            raise MalformedEntry(f"pipeline step lacks field {exc.args[0]!r}") from exc


def recorded_steps(kind: JobKind, target: str, version: str, params: dict[str, Any]
                   ) -> tuple[Step, ...]:
    """The steps of a job as recorded in its row: a pipeline keeps its chain in ``params``
    under its label ``a>b``; any other job is one step."""
    if "steps" in params and ">" in target:
        return tuple(Step.from_wire(step) for step in params["steps"])
    return (Step(kind, target, version, params),)


def pipeline_key(steps: list[Step], input_bytes: bytes) -> str:
    """Content key of a pipeline's final result: every step's target, version and params."""
    described = [[s.kind.value, s.target, s.version, canonical_params(s.params)] for s in steps]
    return cache_key(JobKind.INFER, "pipeline", "1", {"steps": described}, input_bytes)


@dataclass(frozen=True, slots=True)
class JobEntry:
    """One job as it travels in a message: enough to run it without reading Postgres."""

    id: str
    kind: JobKind
    target: str
    version: str
    input: Any
    cache_key: str
    params: dict[str, Any] = field(default_factory=dict)
    reply_to: str | None = None
    steps: tuple[Step, ...] = ()
    each: bool = False
    step: int = 0  # pipeline step this message runs (0: the first)
    attempt: int = 0  # for a later step: the run (attempt number) that forwarded it
    takeover: bool = False  # redelivered: may take over a run whose worker is gone

    def to_wire(self, encoded_input: bytes | None = None) -> dict[str, Any]:
        """Plain dict for msgpack (kombu's, with no extension types); never pickle. Text travels
        as itself; any other input as its codec bytes (``encoded_input`` if the caller has them
        already, as the client does: they are the row's payload)."""
        value = self.input
        wire: dict[str, Any] = {
            "v": WIRE_VERSION,
            "id": self.id,
            "kind": self.kind.value,
            "target": self.target,
            "version": self.version,
            "input": value,
            "key": self.cache_key,
            "params": self.params,
            "reply_to": self.reply_to,
        }
        if not travels_as_text(value):
            del wire["input"]
            wire["input_codec"] = codec.encode(value) if encoded_input is None else encoded_input
        if self.steps:
            wire["steps"] = [step.to_wire() for step in self.steps]
        if self.each:
            wire["each"] = True
        if self.step:
            wire["step"], wire["attempt"] = self.step, self.attempt
        if self.takeover:
            wire["takeover"] = True
        return wire

    def taking_over(self) -> JobEntry:
        """This entry as delivered again: it may take over a run whose worker is gone."""
        return replace(self, takeover=True)

    def next_step(self, output: Any, attempt: int) -> JobEntry:
        """The entry that carries this job to its next pipeline step, with ``output`` as input
        (a list output is run item by item there, ``each``; an array or any other value goes
        whole, with its type), fenced on the run ``attempt``."""
        step = self.steps[0]
        return JobEntry(id=self.id, kind=step.kind, target=step.target, version=step.version,
                        input=output, cache_key=self.cache_key, params=step.params,
                        reply_to=self.reply_to, steps=self.steps[1:],
                        each=isinstance(output, list), step=self.step + 1, attempt=attempt)

    @classmethod
    def from_wire(cls, data: Any) -> JobEntry:
        """Parse one wire entry; raises ``ValueError`` describing what is wrong."""
        if not isinstance(data, dict):
            raise MalformedEntry(f"job entry must be a map, got {type(data).__name__}")
        if data.get("v") != WIRE_VERSION:
            raise MalformedEntry(f"unsupported job entry version {data.get('v')!r}")
        try:
            params = data.get("params") or {}
            if not isinstance(params, dict):
                raise MalformedEntry("params must be a map")
            steps = data.get("steps") or []
            if not isinstance(steps, list):
                raise MalformedEntry("steps must be a list")
            each = bool(data.get("each", False))
            step, attempt = data.get("step", 0), data.get("attempt", 0)
            if not (isinstance(step, int) and isinstance(attempt, int) and step >= 0):
                raise MalformedEntry("step and attempt must be non-negative integers")
            packed = data.get("input_codec")
            value = data["input"] if packed is None else _decoded_input(packed)
            if each and not isinstance(value, list):
                raise MalformedEntry("an 'each' entry needs a list input")
            return cls(
                id=str(data["id"]),
                kind=JobKind(data["kind"]),
                target=str(data["target"]),
                version=str(data["version"]),
                input=value,
                cache_key=str(data["key"]),
                params=params,
                reply_to=data.get("reply_to"),
                steps=tuple(Step.from_wire(step) for step in steps),
                each=each,
                step=step,
                attempt=attempt,
                takeover=bool(data.get("takeover", False)),
            )
        except KeyError as exc:
            raise MalformedEntry(f"job entry lacks field {exc.args[0]!r}") from exc


def travels_as_text(value: Any) -> bool:
    """True for an input that travels as itself: a ``str``, or a list of them. Exact types only
    (a ``str`` subclass is encoded), so what ``from_wire`` gives back is what was sent."""
    if type(value) is str:
        return True
    return type(value) is list and all(type(item) is str for item in value)


def _decoded_input(packed: Any) -> Any:
    if not isinstance(packed, bytes):
        raise MalformedEntry(f"input_codec must be bytes, got {type(packed).__name__}")
    try:
        return codec.decode(packed)
    except Exception as exc:  # msgpack raises several ValueError and TypeError kinds
        raise MalformedEntry(f"input_codec cannot be decoded: {exc}") from exc


def wire_overhead(wire: dict[str, Any]) -> int:
    """Bytes an entry takes in a message besides its input (id, key, target, params, steps)."""
    rest = {k: v for k, v in wire.items() if k not in ("input", "input_codec")}
    return len(msgpack.packb(rest, use_bin_type=True)) + 16


def message_packs(sizes: Sequence[int], pack_size: int, max_bytes: int) -> list[slice]:
    """Consecutive runs of entries (by their sizes in bytes) to send as one message each: at
    most ``pack_size`` entries, and at most ``max_bytes`` with the message's own overhead. An
    entry larger than that alone gets a message of its own (the caller refuses those first)."""
    packs: list[slice] = []
    start, total = 0, MESSAGE_OVERHEAD
    for index, size in enumerate(sizes):
        if index > start and (index - start >= pack_size or total + size > max_bytes):
            packs.append(slice(start, index))
            start, total = index, MESSAGE_OVERHEAD
        total += size
    if start < len(sizes):
        packs.append(slice(start, len(sizes)))
    return packs
