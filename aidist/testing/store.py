"""``InMemoryStore``: the job store's contract (``db.interfaces.JobStoreLike``) without Postgres.

A test of code that uses the store (the client, the executor, a user's own service around them)
should see the same answers as from ``db.store.JobStore``: the claim fences on status, pipeline
step and attempt exactly like ``db.statements.CLAIM`` (with the same snapshot semantics: a claim
statement does not see its own updates), ``finish_returning`` fences on the attempt and ends the
jobs that follow a finished one, ids that are not UUIDs are never found, and idempotency keys are
unique per tenant. What it does not model is concurrency between processes: one lock makes every
call atomic, which is what one Postgres statement is too.
"""

from __future__ import annotations

import copy
import enum
import itertools
import json
import threading
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from aidist.errors import StoreError, UnknownJob
from aidist.jobs import JobKind, JobStatus
from aidist.testing.rows import Row, Rows, at, claim_rows, finish_rows, row_key, settle_rows
from db.records import Claim, ClaimRequest, JobRecord, JobRun, NewJob, Outcome, UnsentJob
from db.store import DEFAULT_MAX_ATTEMPTS

Clock = Callable[[], datetime]


class _Unset(enum.Enum):
    UNSET = enum.auto()


UNSET = _Unset.UNSET
"""``set_state``'s "leave this field as it is" (``None`` is a value there: no worker, no
deadline)."""


def utc_now() -> datetime:
    """The store's default clock."""
    return datetime.now(UTC)


def _json(value: dict[str, Any]) -> dict[str, Any]:
    """``params`` as a JSONB column gives it back: a fresh copy, and a ``StoreError`` for what
    JSON cannot hold."""
    try:
        loaded: dict[str, Any] = json.loads(json.dumps(value))
    except (TypeError, ValueError) as exc:
        raise StoreError(f"job store statement failed: params are not JSON: {exc}") from exc
    return loaded


class InMemoryStore:
    """``db.store.JobStore`` in memory, thread-safe (one lock; every call is atomic).

    For tests: ``journal`` (shared with an ``InMemoryCache`` if you pass both the same list)
    records the name of every write as it happens (``insert_jobs``, ``insert_idempotent``,
    ``claim``, ``finish``, ``cancel``, ``expire_overdue``, ``mark_sent``, ``sweep_unsent``,
    ``settle_followers``, ``fail_unsent``, ``store.close``), so a test can check the order of
    durability steps; reads are not journaled. ``clock`` decides what "now" is for deadlines
    and timestamps (move it forward to expire a job without sleeping). ``add`` and
    ``set_state`` put rows in states the contract's own calls only reach through a worker
    (running on another worker, out of attempts, past a deadline).
    """

    def __init__(self, *, journal: list[str] | None = None, clock: Clock = utc_now) -> None:
        self.journal: list[str] = journal if journal is not None else []
        self.clock = clock
        self._rows: Rows = {}
        self._seq = itertools.count()
        self._lock = threading.Lock()
        self._sweeping = threading.Lock()

    # -- test helpers -----------------------------------------------------------------------------

    def add(self, job_id: str | None = None, *, kind: JobKind = JobKind.INFER,
            target: str = "test", version: str = "1", cache_key: str | None = None,
            payload: bytes | None = None, params: dict[str, Any] | None = None,
            status: JobStatus = JobStatus.QUEUED, attempts: int = 0, step: int = 0,
            worker: str | None = None, deadline: datetime | None = None,
            tenant: str | None = None, idempotency_key: str | None = None,
            result: bytes | None = None, sent: bool = True) -> str:
        """Put a row in place in any state (replacing one with the same id) and return its id
        (a new UUID unless given). The cache key defaults to one of its own, so the row never
        coalesces with another by accident; ``sent=False`` leaves it in the outbox."""
        row_id = str(uuid.uuid4()) if job_id is None else row_key(job_id)
        if row_id is None:
            raise StoreError(f"job ids are UUIDs, got {job_id!r}")
        now = self.clock()
        with self._lock:
            self._rows[row_id] = Row(
                id=row_id, kind=kind, target=target, version=version,
                cache_key=cache_key if cache_key is not None else f"key-{row_id}",
                payload=payload, status=status, params=_json(params or {}), cache_hit=False,
                priority=0, tenant=tenant, idempotency_key=idempotency_key, deadline=deadline,
                created_at=now, seq=next(self._seq), attempts=attempts, step=step,
                started_at=now if status is not JobStatus.QUEUED else None,
                finished_at=now if status.terminal else None, worker=worker, result=result,
                sent_at=now if sent else None,
            )
        return row_id

    def set_state(self, job_id: str, *, status: JobStatus | _Unset = UNSET,
                  attempts: int | _Unset = UNSET, step: int | _Unset = UNSET,
                  worker: str | _Unset | None = UNSET,
                  deadline: datetime | _Unset | None = UNSET,
                  error: str | _Unset | None = UNSET) -> None:
        """Change fields of a row in place, as another worker or a user would have meanwhile
        ("it was cancelled while it ran", "another worker holds it"); ``UnknownJob`` if there is
        no such row. Fields not given stay as they are."""
        with self._lock:
            row = self._row(job_id)
            if not isinstance(status, _Unset):
                row.status = status
                row.finished_at = self.clock() if status.terminal else None
            if not isinstance(attempts, _Unset):
                row.attempts = attempts
            if not isinstance(step, _Unset):
                row.step = step
            if not isinstance(worker, _Unset):
                row.worker = worker
            if not isinstance(deadline, _Unset):
                row.deadline = deadline
            if not isinstance(error, _Unset):
                row.error = error

    def ids(self) -> list[str]:
        """Every job id, in the order the rows were written."""
        with self._lock:
            return [row.id for row in sorted(self._rows.values(), key=lambda r: r.seq)]

    def stored_result(self, job_id: str) -> bytes | None:
        """The durable copy of a job's result in its row (``durable_results``), if any."""
        with self._lock:
            return self._row(job_id).result

    def blob_keys(self, job_id: str) -> list[str] | None:
        """The blobs a job's row references (``jobs.blob_keys``: its large input and output),
        ``None`` for none."""
        with self._lock:
            keys = self._row(job_id).blob_keys
            return list(keys) if keys is not None else None

    def blob_keys_referenced(self, keys: Sequence[str]) -> set[str]:
        """Those of ``keys`` that some row still references (``JobStore.blob_keys_referenced``)."""
        wanted = set(keys)
        with self._lock:
            return {key for row in self._rows.values() for key in row.blob_keys or ()
                    if key in wanted}

    def is_sent(self, job_id: str) -> bool:
        """Whether the job has left the outbox (its message was confirmed, ``mark_sent``)."""
        with self._lock:
            return self._row(job_id).sent_at is not None

    def _at(self, job_id: str) -> Row | None:
        return at(self._rows, job_id)

    def _row(self, job_id: str) -> Row:
        row = self._at(job_id)
        if row is None:
            raise UnknownJob(f"no job with id {job_id}; check the id (`aidist jobs ls`)")
        return row

    def _log(self, name: str) -> None:
        self.journal.append(name)

    # -- JobStoreLike -----------------------------------------------------------------------------

    def ping(self) -> None:
        """Always answers."""

    def insert_jobs(self, jobs: Sequence[NewJob]) -> None:
        """Insert all rows at once; ``StoreError`` (and nothing inserted) on a duplicate id or
        (tenant, idempotency key), as the unique indexes would."""
        if not jobs:
            return
        self._log("insert_jobs")
        with self._lock:
            rows = [self._new_row(job) for job in jobs]
            ids = [row.id for row in rows]
            if len(set(ids)) != len(ids) or any(i in self._rows for i in ids):
                raise StoreError("job store statement failed: duplicate key value (jobs_pkey)")
            keys = [(r.tenant or "", r.idempotency_key) for r in rows if r.idempotency_key]
            taken = {(r.tenant or "", r.idempotency_key) for r in self._rows.values()
                     if r.idempotency_key is not None}
            if len(set(keys)) != len(keys) or taken.intersection(keys):
                raise StoreError("job store statement failed: duplicate idempotency key")
            for row in rows:
                self._rows[row.id] = row

    def insert_idempotent(self, job: NewJob) -> JobRecord | None:
        """Insert unless a job with the same (tenant, idempotency key) exists; return that one."""
        self._log("insert_idempotent")
        with self._lock:
            for row in self._rows.values():
                if (row.idempotency_key is not None and row.idempotency_key == job.idempotency_key
                        and (row.tenant or "") == (job.tenant or "")):
                    return row.record()
            new = self._new_row(job)
            if new.id in self._rows:
                raise StoreError("job store statement failed: duplicate key value (jobs_pkey)")
            self._rows[new.id] = new
            return None

    def _new_row(self, job: NewJob) -> Row:
        row_id = row_key(job.id)
        if row_id is None:
            raise StoreError(f"job store statement failed: {job.id!r} is not a UUID")
        now = self.clock()
        return Row(
            id=row_id, kind=job.kind, target=job.target, version=job.version,
            cache_key=job.cache_key, payload=job.payload, status=job.status,
            params=_json(job.params), cache_hit=job.cache_hit, priority=job.priority,
            tenant=job.tenant, idempotency_key=job.idempotency_key, deadline=job.deadline,
            created_at=now, seq=next(self._seq), finished_at=now if job.status.terminal else None,
            blob_keys=list(job.blob_keys) or None,
        )

    def get(self, job_id: str) -> JobRecord:
        """One job; ``UnknownJob`` if there is none with this id."""
        with self._lock:
            return self._row(job_id).record()

    def get_many(self, job_ids: Sequence[str]) -> dict[str, JobRecord]:
        """Jobs by id; ids that do not exist (or are not UUIDs) are absent from the result."""
        with self._lock:
            return {row.id: row.record() for row in self._found(job_ids)}

    def _found(self, job_ids: Sequence[str]) -> list[Row]:
        rows = []
        for job_id in job_ids:
            row = self._at(job_id)
            if row is not None:
                rows.append(row)
        return rows

    def finished_among(self, job_ids: Sequence[str]) -> list[tuple[str, JobStatus, str | None]]:
        """(id, status, error) of those of ``job_ids`` that are terminal."""
        with self._lock:
            return [(row.id, row.status, row.error) for row in self._found(job_ids)
                    if row.status.terminal]

    def holders(self, job_ids: Sequence[str], other_than: str) -> dict[str, str]:
        """job id -> worker, for those of ``job_ids`` running on a worker other than
        ``other_than``."""
        with self._lock:
            return {row.id: row.worker for row in self._found(job_ids)
                    if row.status is JobStatus.RUNNING and row.worker is not None
                    and row.worker != other_than}

    def runs(self, job_ids: Sequence[str]) -> dict[str, JobRun]:
        """Status, pipeline step and last claimer of those of ``job_ids`` that have a row."""
        with self._lock:
            return {row.id: JobRun(row.id, row.status, row.step, row.worker)
                    for row in self._found(job_ids)}

    def existing(self, job_ids: Sequence[str]) -> set[str]:
        """Those of ``job_ids`` that have a row."""
        with self._lock:
            return {row.id for row in self._found(job_ids)}

    def payloads(self, job_ids: Sequence[str]) -> dict[str, bytes]:
        """Stored input bytes by job id."""
        with self._lock:
            return {row.id: row.payload for row in self._found(job_ids)
                    if row.payload is not None}

    def list_jobs(self, limit: int = 20, status: JobStatus | None = None) -> list[JobRecord]:
        """The newest jobs first."""
        with self._lock:
            rows = sorted(self._rows.values(), key=lambda r: (r.created_at, r.seq), reverse=True)
            return [row.record() for row in rows
                    if status is None or row.status is status][:limit]

    def count_by_status(self, job_ids: Sequence[str] | None = None) -> dict[JobStatus, int]:
        """How many jobs are in each status (of ``job_ids`` if given, else all)."""
        with self._lock:
            rows = list(self._rows.values()) if job_ids is None else self._found(job_ids)
            counts = dict.fromkeys(JobStatus, 0)
            for row in {row.id: row for row in rows}.values():
                counts[row.status] += 1
            return counts

    def claim(self, requests: Sequence[ClaimRequest], worker: str,
              max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> list[Claim]:
        """Start a run of each job its delivery may run, like ``db.statements.CLAIM``: expired
        past the deadline, failed out of attempts, nothing for jobs finished, cancelled or held
        by another run; a fresh start of a job identical to one running follows that one."""
        self._log("claim")
        with self._lock:
            return claim_rows(self._rows, requests, worker, max_attempts, self.clock())

    def finish_returning(self, outcomes: Sequence[Outcome]) -> set[str]:
        """Record how each run ended, fenced on the attempt (a row whose attempt moved on, or
        that is no longer running, is left alone); jobs that follow a finished one take its end.
        Returns the ids it changed."""
        if not outcomes:
            return set()
        self._log("finish")
        with self._lock:
            return finish_rows(self._rows, outcomes, self.clock())

    def cancel(self, job_id: str) -> JobStatus:
        """Cancel a job that has not finished; returns its status afterwards (unchanged if it had
        finished). ``UnknownJob`` if there is no such job."""
        self._log("cancel")
        if row_key(job_id) is None:
            raise UnknownJob(f"{job_id!r} is not a job id (a UUID)")
        with self._lock:
            row = self._row(job_id)
            if row.status in (JobStatus.QUEUED, JobStatus.RUNNING):
                row.status, row.finished_at = JobStatus.CANCELLED, self.clock()
            return row.status

    def expire_overdue(self, limit: int) -> int:
        """Expire up to ``limit`` queued jobs whose deadline has passed (earliest deadline
        first); returns how many."""
        self._log("expire_overdue")
        with self._lock:
            now = self.clock()
            overdue = sorted((row for row in self._rows.values()
                              if row.status is JobStatus.QUEUED and row.deadline is not None
                              and row.deadline < now),
                             key=lambda r: (r.deadline or now, r.seq))[:limit]
            for row in overdue:
                row.status, row.finished_at = JobStatus.EXPIRED, now
            return len(overdue)

    def mark_sent(self, job_ids: Sequence[str]) -> None:
        """Record that the jobs' messages were confirmed (they leave the outbox)."""
        if not job_ids:
            return
        self._log("mark_sent")
        with self._lock:
            now = self.clock()
            for row in self._found(job_ids):
                if row.sent_at is None:
                    row.sent_at = now

    def sweep_unsent(self, older_than_s: float, limit: int,
                     publish: Callable[[list[UnsentJob]], Sequence[str]]) -> int:
        """Hand queued jobs never confirmed sent (older than ``older_than_s``, oldest first) to
        ``publish`` and mark those it returns as sent. One sweep at a time; ``publish`` runs
        outside the store's lock, so it may call the store."""
        self._log("sweep_unsent")
        with self._sweeping:
            with self._lock:
                cutoff = self.clock() - timedelta(seconds=older_than_s)
                rows = sorted((row for row in self._rows.values()
                               if row.status is JobStatus.QUEUED and row.sent_at is None
                               and row.payload is not None and row.created_at <= cutoff),
                              key=lambda r: (r.created_at, r.seq))[:limit]
                unsent = [UnsentJob(row.id, row.kind, row.target, row.version,
                                    copy.deepcopy(row.params), row.cache_key, row.payload,
                                    row.priority)
                          for row in rows if row.payload is not None]
            if not unsent:
                return 0
            sent = list(publish(unsent))
            with self._lock:
                now = self.clock()
                for row in self._found(sent):
                    row.sent_at = now
            return len(sent)

    def settle_followers(self) -> int:
        """End (or requeue, unsent) the followers of leaders that ended without them, like
        ``db.statements.SETTLE_FOLLOWERS``; returns how many."""
        self._log("settle_followers")
        with self._lock:
            return settle_rows(self._rows, self.clock())

    def results_by_key(self, cache_keys: Sequence[str]) -> dict[str, bytes]:
        """Durable copies of results by cache key (any succeeded job with that key)."""
        wanted = set(cache_keys)
        with self._lock:
            found: dict[str, bytes] = {}
            for row in self._rows.values():
                if (row.cache_key in wanted and row.status is JobStatus.SUCCEEDED
                        and row.result is not None):
                    found.setdefault(row.cache_key, row.result)
            return found

    def fail_unsent(self, job_ids: Sequence[str], error: str) -> None:
        """Mark queued jobs failed when their message could not be published."""
        self._log("fail_unsent")
        with self._lock:
            now = self.clock()
            for row in self._found(job_ids):
                if row.status is JobStatus.QUEUED:
                    row.status, row.error, row.finished_at = JobStatus.FAILED, error, now

    def close(self) -> None:
        """Nothing to close; the rows stay readable (a closed ``JobStore`` reconnects too)."""
        self._log("store.close")

