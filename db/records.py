"""Rows as frozen dataclasses: what the store hands out and takes in."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aidist.jobs import JobKind, JobStatus


@dataclass(frozen=True, slots=True)
class NewJob:
    """A job about to be inserted."""

    id: str
    kind: JobKind
    target: str
    version: str
    cache_key: str
    payload: bytes | None
    status: JobStatus = JobStatus.QUEUED
    params: dict[str, Any] = field(default_factory=dict)
    cache_hit: bool = False
    priority: int = 0
    tenant: str | None = None
    idempotency_key: str | None = None
    deadline: datetime | None = None
    blob_keys: tuple[str, ...] = ()  # blobs its payload (or a cached result) refers to


@dataclass(frozen=True, slots=True)
class JobRecord:
    """A job as stored."""

    id: str
    kind: JobKind
    target: str
    version: str
    cache_key: str
    status: JobStatus
    attempts: int
    cache_hit: bool
    priority: int
    params: dict[str, Any]
    tenant: str | None
    idempotency_key: str | None
    deadline: datetime | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    worker: str | None
    error: str | None
    follows: str | None = None  # the identical job whose run this one took its end from


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    """What a delivery asks of a job's row. A first delivery (step 0) takes a queued job only: a
    running one is held by another worker, whose unacked message comes back if that worker dies.
    A ``takeover`` (a redelivered message: the previous holder is gone) may take a running one,
    at the same step, and only from ``holder`` when given (the worker seen dead: a run that another
    delivery took over meanwhile is not taken again). A later pipeline step continues the run
    that forwarded it, fenced on its ``attempt``."""

    id: str
    step: int = 0
    attempt: int = 0
    takeover: bool = False
    holder: str | None = None


@dataclass(frozen=True, slots=True)
class JobRun:
    """Where a job's run stands: what a redelivered message looks at before claiming its jobs
    (nobody runs it, it runs at some step on some worker, or it is over)."""

    id: str
    status: JobStatus
    step: int
    worker: str | None


@dataclass(frozen=True, slots=True)
class UnsentJob:
    """A queued job whose message was never confirmed: what the sweeper needs to publish it."""

    id: str
    kind: JobKind
    target: str
    version: str
    params: dict[str, Any]
    cache_key: str
    payload: bytes
    priority: int


@dataclass(frozen=True, slots=True)
class Claim:
    """Result of claiming a job for a run: ``status`` is running (go), or expired (skip)."""

    id: str
    status: JobStatus
    attempt: int
    follows: str | None = None  # an identical job is running: this one takes its end, not a run
    # an identical job has succeeded and kept its result in its row: the run looks for that
    # result in Redis first (without this, every flush asked Redis about every job)
    twin_stored: bool = False
    # seconds from the row's insert to this claim (Postgres's clock both times): a first claim's
    # queue wait, for the workers' metrics; not compared (a claim is the same claim whenever)
    queued_s: float = field(default=0.0, compare=False)


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one run of a job ended, written back in one statement per batch."""

    id: str
    attempt: int
    status: JobStatus
    error: str | None = None
    result: bytes | None = None
    blob_key: str | None = None  # the blob ``result`` refers to, if the output was large


@dataclass(frozen=True, slots=True)
class JobEvent:
    """One transition of a job, as the triggers on ``jobs`` recorded it (``job_events``): the
    status it entered at ``at``, with the row's attempt, pipeline step and worker then. ``seq``
    orders all events of all jobs; ``target`` is the job's, when its row still exists."""

    seq: int
    job_id: str
    at: datetime
    status: JobStatus
    attempt: int
    step: int
    worker: str | None
    target: str | None = None
