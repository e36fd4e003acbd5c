"""Job contracts shared by producers, workers and the store: lifecycle, wire format, cache keys,
queues.

A job travels as a plain dict inside a standard Celery task message (task ``aidist.run_jobs``, one
positional argument: a list of job entries). Many jobs submitted together share one message.
"""

from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

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

    def to_wire(self) -> dict[str, Any]:
        """Plain dict for JSON/msgpack; never pickle."""
        return {
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

    @classmethod
    def from_wire(cls, data: Any) -> JobEntry:
        """Parse one wire entry; raises ``ValueError`` describing what is wrong."""
        if not isinstance(data, dict):
            raise ValueError(f"job entry must be a map, got {type(data).__name__}")
        if data.get("v") != WIRE_VERSION:
            raise ValueError(f"unsupported job entry version {data.get('v')!r}")
        try:
            params = data.get("params") or {}
            if not isinstance(params, dict):
                raise ValueError("params must be a map")
            return cls(
                id=str(data["id"]),
                kind=JobKind(data["kind"]),
                target=str(data["target"]),
                version=str(data["version"]),
                input=data["input"],
                cache_key=str(data["key"]),
                params=params,
                reply_to=data.get("reply_to"),
            )
        except KeyError as exc:
            raise ValueError(f"job entry lacks field {exc.args[0]!r}") from exc
