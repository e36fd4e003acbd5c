"""Job contracts shared by producers, workers and the store: lifecycle, wire format, cache keys,
queues.

A job travels as a plain dict inside a standard Celery task message (task ``aidist.run_jobs``, one
positional argument: a list of job entries). Many jobs submitted together share one message.
"""

from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import Any

from aidist.errors import MalformedEntry

RUN_JOBS_TASK = "aidist.run_jobs"
"""Celery task name every aidist message carries; Flower and ``celery inspect`` show it."""

WIRE_VERSION = 1


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
    return json.dumps(params or {}, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


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

    def to_wire(self) -> dict[str, Any]:
        """Plain dict for JSON/msgpack; never pickle."""
        wire = {
            "v": WIRE_VERSION,
            "id": self.id,
            "kind": self.kind.value,
            "target": self.target,
            "version": self.version,
            "input": self.input,
            "key": self.cache_key,
            "params": self.params,
            "reply_to": self.reply_to,
        }
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
        (a list output is run item by item there, ``each``), fenced on the run ``attempt``."""
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
            if each and not isinstance(data["input"], list):
                raise MalformedEntry("an 'each' entry needs a list input")
            return cls(
                id=str(data["id"]),
                kind=JobKind(data["kind"]),
                target=str(data["target"]),
                version=str(data["version"]),
                input=data["input"],
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
