"""The in-memory jobs table's rows, and ``db.statements`` over them: claiming, finishing, settling
followers.

Each function is what one statement does to the table, with its snapshot semantics (a claim's
leader lookup sees the rows as they were before the claim, as an UPDATE's subquery does); the
caller, ``InMemoryStore``, holds its lock around each call.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aidist.jobs import JobKind, JobStatus
from db.records import Claim, ClaimRequest, JobRecord, Outcome

LEADER_ENDED = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.EXPIRED)


def row_key(value: str) -> str | None:
    """A job id in the form rows are kept under, or None if it is not a UUID (Postgres's uuid
    column finds no row for it)."""
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        return None


@dataclass
class Row:
    """One row of the jobs table, mutable in place under the store's lock."""

    id: str
    kind: JobKind
    target: str
    version: str
    cache_key: str
    payload: bytes | None
    status: JobStatus
    params: dict[str, Any]
    cache_hit: bool
    priority: int
    tenant: str | None
    idempotency_key: str | None
    deadline: datetime | None
    created_at: datetime
    seq: int
    attempts: int = 0
    step: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    worker: str | None = None
    error: str | None = None
    follows: str | None = None
    result: bytes | None = None
    sent_at: datetime | None = None
    blob_keys: list[str] | None = None  # content keys of the blobs payload and result refer to

    def record(self) -> JobRecord:
        return JobRecord(
            id=self.id, kind=self.kind, target=self.target, version=self.version,
            cache_key=self.cache_key, status=self.status, attempts=self.attempts,
            cache_hit=self.cache_hit, priority=self.priority, params=copy.deepcopy(self.params),
            tenant=self.tenant, idempotency_key=self.idempotency_key, deadline=self.deadline,
            created_at=self.created_at, started_at=self.started_at,
            finished_at=self.finished_at, worker=self.worker, error=self.error,
            follows=self.follows,
        )


Rows = dict[str, Row]


def at(rows: Rows, job_id: str) -> Row | None:
    """The row of ``job_id``, if there is one."""
    key = row_key(job_id)
    return rows.get(key) if key is not None else None


def claim_rows(rows: Rows, requests: Sequence[ClaimRequest], worker: str, max_attempts: int,
               now: datetime) -> list[Claim]:
    """``db.statements.CLAIM``."""
    gave_up = (f"gave up after {max_attempts} attempts (the job's runs kept being "
               "interrupted: worker deaths or redeliveries)")
    # The leader lookup sees the rows as they were before this statement.
    leaders: dict[str, list[str]] = {}
    for other in rows.values():
        if other.status is JobStatus.RUNNING and other.follows is None:
            leaders.setdefault(other.cache_key, []).append(other.id)
    stored = {other.cache_key for other in rows.values()
              if other.status is JobStatus.SUCCEEDED and other.result is not None}
    claims: list[Claim] = []
    touched: set[str] = set()
    for request in requests:
        row = at(rows, request.id)
        if row is None or row.id in touched:
            continue
        own = (row.status is JobStatus.RUNNING and row.worker == worker
               and row.step == request.step)
        if not _may_claim(row, request, own):
            continue
        touched.add(row.id)
        counts = (request.step == 0 or _takes_over(row, request)) and not own
        give_up = counts and row.attempts >= max_attempts
        past = row.deadline is not None and row.deadline < now
        fresh = request.step == 0 and row.status is JobStatus.QUEUED
        row.status = (JobStatus.EXPIRED if past else JobStatus.FAILED if give_up
                      else JobStatus.RUNNING)
        if give_up and not past:
            row.error = gave_up
        row.attempts += 1 if counts else 0
        row.step = request.step
        row.started_at = now
        row.finished_at = now if past or give_up else None
        row.worker = worker
        row.follows = None
        if fresh and not past and not give_up:
            others = [i for i in leaders.get(row.cache_key, []) if i != row.id]
            row.follows = others[0] if others else None
        running = row.status is JobStatus.RUNNING and row.follows is None
        claims.append(Claim(row.id, row.status, row.attempts, row.follows,
                            twin_stored=running and row.cache_key in stored,
                            queued_s=max((now - row.created_at).total_seconds(), 0.0)))
    return claims


def finish_rows(rows: Rows, outcomes: Sequence[Outcome], now: datetime) -> set[str]:
    """``db.statements.FINISH``: the ids it changed."""
    done: dict[str, Row] = {}
    for outcome in outcomes:
        row = at(rows, outcome.id)
        if (row is None or row.id in done or row.status is not JobStatus.RUNNING
                or row.attempts != outcome.attempt):
            continue
        row.status, row.error, row.finished_at = outcome.status, outcome.error, now
        if outcome.result is not None:
            row.result = outcome.result
        if outcome.blob_key is not None:
            row.blob_keys = [*(row.blob_keys or []), outcome.blob_key]
        done[row.id] = row
    for follower in rows.values():
        leader = done.get(follower.follows) if follower.follows is not None else None
        if (leader is not None and follower.status is JobStatus.RUNNING
                and follower.id not in done):
            follower.status, follower.error = leader.status, leader.error
            follower.result, follower.finished_at = leader.result, now
            follower.blob_keys = copy.copy(leader.blob_keys)
    return set(done)


def settle_rows(rows: Rows, now: datetime) -> int:
    """``db.statements.SETTLE_FOLLOWERS``: how many followers it settled."""
    settled = 0
    for follower in rows.values():
        leader = rows.get(follower.follows) if follower.follows else None
        if (leader is None or follower.status is not JobStatus.RUNNING
                or leader.status not in LEADER_ENDED):
            continue
        if leader.status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
            follower.status, follower.error = leader.status, leader.error
            succeeded = leader.status is JobStatus.SUCCEEDED
            follower.result = leader.result if succeeded else None
            if succeeded:
                follower.blob_keys = copy.copy(leader.blob_keys)
            follower.finished_at = now
        else:
            follower.status, follower.error, follower.result = JobStatus.QUEUED, None, None
            follower.finished_at = follower.sent_at = None
        follower.follows = None
        settled += 1
    return settled


def _may_claim(row: Row, request: ClaimRequest, own: bool) -> bool:
    """``CLAIM``'s WHERE clause: which deliveries may start (or continue) a run of ``row``."""
    running = row.status is JobStatus.RUNNING
    if request.step == 0 and row.status is JobStatus.QUEUED:
        return True
    if own and (request.step == 0 or row.attempts == request.attempt):
        return True
    if request.step == 0 and _takes_over(row, request):
        return True
    return (request.step > 0 and running and row.attempts == request.attempt
            and (row.step == request.step - 1 or _takes_over(row, request)))


def _takes_over(row: Row, request: ClaimRequest) -> bool:
    """``CLAIM``'s ``_TAKES_OVER``: a takeover of the run at the request's step, from the holder
    it names (if it names one)."""
    return (request.takeover and row.status is JobStatus.RUNNING and row.step == request.step
            and (request.holder is None or row.worker == request.holder))
