"""The job store: every statement that writes job rows lives here (the hot-path ones in
db.statements, the reads in db.job_reads, which ``JobStore`` inherits). Rows leave as frozen
dataclasses.

Hot-path writes are one statement per batch: ``insert_jobs`` (``INSERT ... unnest``), ``claim`` and
``finish`` (``UPDATE ... FROM unnest(...)``). ``claim`` fences on status, pipeline step and attempt
so a duplicate or stale message never starts a second run; ``finish`` fences on the attempt so a
stale run can never overwrite a newer one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Engine,
    func,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert

from aidist.codec import check_blob_key
from aidist.jobs import JobKind, JobStatus
from db.array_literals import bool_array, bytea_slices, int_array, text_array, timestamp_array
from db.engine import create_store_engine, driver_cursor
from db.job_reads import RECORD_COLUMNS, JobReads, as_uuid, as_uuids, is_uuid, record_of
from db.records import (
    Claim,
    ClaimRequest,
    JobRecord,
    NewJob,
    Outcome,
    UnsentJob,
)
from db.schema import jobs_table
from db.statements import CLAIM, FINISH, INSERT_JOBS, MARK_SENT, SETTLE_FOLLOWERS

DEFAULT_MAX_ATTEMPTS = 8
# Rows per INSERT statement, and payload bytes: bounds one statement's parameters (Postgres
# takes no single value over 1 GB, and the payloads of a page travel as one).
INSERT_PAGE = 10_000
INSERT_PAGE_BYTES = 64 * 1024 * 1024


class JobStore(JobReads):
    """Reads and writes job rows. Thread-safe (one pooled connection per call)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def connect(cls, database_url: str, connect_timeout_s: float = 5.0) -> JobStore:
        """Build a store from a URL (no connection is opened until the first call)."""
        return cls(create_store_engine(database_url, connect_timeout_s))

    def ping(self) -> None:
        """Raise ``ServiceUnavailable`` unless the database answers."""
        with self._once() as connection:
            connection.execute(text("SELECT 1"))

    def insert_jobs(self, jobs: Sequence[NewJob]) -> None:
        """Insert all rows in one ``INSERT ... SELECT FROM unnest(...)``, at most ``INSERT_PAGE``
        rows and (past the first row) ``INSERT_PAGE_BYTES`` of payloads per statement, all in
        one transaction."""
        if not jobs:
            return
        pages = insert_pages(jobs)
        if len(pages) == 1:
            with driver_cursor(self.engine) as cursor:
                cursor.execute(INSERT_JOBS, insert_params(jobs))
            return
        with self._begin() as connection:
            for page in pages:
                connection.exec_driver_sql(INSERT_JOBS, insert_params(page))

    def insert_idempotent(self, job: NewJob) -> JobRecord | None:
        """Insert unless a job with the same (tenant, idempotency key) exists; return that one."""
        statement = (
            pg_insert(jobs_table)
            .values(**_new_row(job))
            .on_conflict_do_nothing(
                index_elements=[text("coalesce(tenant, '')"), jobs_table.c.idempotency_key],
                index_where=text("idempotency_key IS NOT NULL"),
            )
            .returning(jobs_table.c.id)
        )
        with self._begin() as connection:
            if connection.execute(statement).first() is not None:
                return None
            existing = connection.execute(
                select(*RECORD_COLUMNS).where(
                    func.coalesce(jobs_table.c.tenant, "") == (job.tenant or ""),
                    jobs_table.c.idempotency_key == job.idempotency_key,
                )
            ).mappings().one()
            return record_of(existing)

    def claim(self, requests: Sequence[ClaimRequest], worker: str,
              max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> list[Claim]:
        """Start a run of each job its delivery may run (see ``ClaimRequest``), in one UPDATE.
        Jobs past their deadline come back expired; jobs that already had ``max_attempts`` runs
        (worker deaths and redeliveries count: a message that kills its worker comes back every
        time) come back failed; jobs that are finished, cancelled, or held by another run do not
        come back, and their delivery must not run them."""
        valid = [r for r in requests if is_uuid(r.id)]
        if not valid:
            return []
        params = claim_params(valid, worker, max_attempts)
        with driver_cursor(self.engine) as cursor:
            cursor.execute(CLAIM, params)
            return [Claim(job_id, JobStatus(status), attempts, follows, twin_stored,
                          queued_s=max(float(queued_s), 0.0))
                    for job_id, status, attempts, follows, queued_s, twin_stored
                    in cursor.fetchall()]

    def finish(self, outcomes: Sequence[Outcome]) -> int:
        """Record how each run ended, in one statement; returns how many rows changed. A row whose
        attempt moved on, or that was cancelled meanwhile, is left alone."""
        return len(self.finish_returning(outcomes))

    def finish_returning(self, outcomes: Sequence[Outcome]) -> set[str]:
        """``finish``, returning the ids it changed (only those get a completion notice)."""
        if not outcomes:
            return set()
        params = finish_params(outcomes)
        with driver_cursor(self.engine) as cursor:
            cursor.execute(FINISH, params)
            return {job_id for (job_id,) in cursor.fetchall()}

    def cancel(self, job_id: str) -> JobStatus:
        """Cancel a job that has not finished; returns its status afterwards (unchanged if it had
        finished). A queued job never runs; a running one is not recorded as finished by the
        worker, whose results it discards, and the next step of a pipeline never starts."""
        with self._once() as connection:
            row = connection.execute(
                text(
                    "UPDATE jobs SET status = 'cancelled', finished_at = now() "
                    "WHERE id = :id AND status IN ('queued', 'running') RETURNING status"
                ),
                {"id": as_uuid(job_id)},
            ).first()
        return JobStatus(row.status) if row is not None else self.get(job_id).status

    def expire_overdue(self, limit: int) -> int:
        """Expire up to ``limit`` queued jobs whose deadline has passed; returns how many.

        A worker's claim expires such a job too, but only once a worker takes its message: with
        no worker consuming its queue it would stay queued for ever, and a client waiting on it
        would never learn that it cannot run. The sweeper calls this each pass. Rows are locked
        with SKIP LOCKED, so sweepers in several workers never wait on each other; a claim
        racing one waits for the row, then finds it expired and does not run it (as it would
        have expired it itself), and so does any message of the job still in the queue."""
        # A CTE, not ``id IN (SELECT ... LIMIT)``: the planner runs such a subquery once per
        # outer row (a semi join), each run may pick other rows, and the limit stops holding.
        statement = text(
            "WITH overdue AS MATERIALIZED ("
            "SELECT id FROM jobs WHERE status = 'queued' AND deadline IS NOT NULL "
            "AND deadline < now() ORDER BY deadline LIMIT :limit FOR UPDATE SKIP LOCKED) "
            "UPDATE jobs SET status = 'expired', finished_at = now() FROM overdue "
            "WHERE jobs.id = overdue.id AND jobs.status = 'queued' RETURNING jobs.id"
        )
        with self._once() as connection:
            return len(connection.execute(statement, {"limit": limit}).all())

    def mark_sent(self, job_ids: Sequence[str]) -> None:
        """Record that the jobs' messages were confirmed by the broker (they leave the outbox).
        Only queued rows are written (the sweeper never looks at any other), and rows another
        statement holds are skipped: a claim holding one is about to start it, and waiting for
        claims while holding rows they wait for deadlocked (measured: a 6 s stall of two flushes
        at the 1 s deadlock timeout). A row left unmarked that stays queued is sent again by the
        sweeper, which the claim fencing makes harmless."""
        ids = [job_id for job_id in job_ids if is_uuid(job_id)]  # no UUID object per id
        if not ids:
            return
        with driver_cursor(self.engine) as cursor:
            cursor.execute(MARK_SENT, {"ids": text_array(ids)})

    def sweep_unsent(self, older_than_s: float, limit: int,
                     publish: Callable[[list[UnsentJob]], Sequence[str]]) -> int:
        """Hand queued jobs that were never confirmed sent (older than ``older_than_s``) to
        ``publish``, and mark those it returns as sent, in one transaction. Rows are locked with
        SKIP LOCKED, so sweepers in several workers never publish the same row at once; should
        a job still end up with two messages, the claim fencing runs it once."""
        query = text(
            "SELECT id, kind, target, version, params, cache_key, payload, priority FROM jobs "
            "WHERE status = 'queued' AND sent_at IS NULL AND payload IS NOT NULL "
            "AND created_at < now() - make_interval(secs => :age) "
            "ORDER BY created_at LIMIT :limit FOR UPDATE SKIP LOCKED"
        )
        with self._begin() as connection:
            rows = [
                UnsentJob(str(r.id), JobKind(r.kind), r.target, r.version, r.params, r.cache_key,
                          r.payload, r.priority)
                for r in connection.execute(query, {"age": older_than_s, "limit": limit})
            ]
            if not rows:
                return 0
            sent = list(publish(rows))
            connection.execute(
                text("UPDATE jobs SET sent_at = now() WHERE id = ANY(:ids)"),
                {"ids": as_uuids(sent)},
            )
            return len(sent)

    def settle_followers(self) -> int:
        """End (or requeue, unsent) the followers of leaders that have ended; returns how many.
        The sweeper runs this each pass."""
        with self._once() as connection:
            return len(connection.execute(SETTLE_FOLLOWERS).all())

    def fail_unsent(self, job_ids: Sequence[str], error: str) -> None:
        """Mark queued jobs failed when their message could not be published."""
        with self._once() as connection:
            connection.execute(
                text(
                    "UPDATE jobs SET status = 'failed', error = :error, finished_at = now() "
                    "WHERE id = ANY(:ids) AND status = 'queued'"
                ),
                {"ids": as_uuids(job_ids), "error": error},
            )

    def close(self) -> None:
        """Close pooled connections."""
        self.engine.dispose()


def insert_pages(jobs: Sequence[NewJob], rows: int = INSERT_PAGE,
                 payload_bytes: int = INSERT_PAGE_BYTES) -> list[Sequence[NewJob]]:
    """``jobs`` cut into the pages ``insert_jobs`` writes: at most ``rows`` rows, and at most
    ``payload_bytes`` of payloads unless one row alone is larger."""
    pages: list[Sequence[NewJob]] = []
    start, size = 0, 0
    for index, job in enumerate(jobs):
        length = len(job.payload or b"")
        if index > start and (index - start >= rows or size + length > payload_bytes):
            pages.append(jobs[start:index])
            start, size = index, 0
        size += length
    pages.append(jobs[start:])
    return pages


def insert_params(jobs: Sequence[NewJob]) -> dict[str, Any]:
    """``INSERT_JOBS``'s parameters: one array literal per column (``db.array_literals``;
    payloads as one bytea and their slices), ids checked as UUIDs."""
    for job in jobs:
        as_uuid(job.id)
    payloads, payload_at, payload_lengths = bytea_slices([job.payload for job in jobs])
    return {
        "ids": text_array(job.id for job in jobs),
        "kinds": text_array(job.kind.value for job in jobs),
        "targets": text_array(job.target for job in jobs),
        "versions": text_array(job.version for job in jobs),
        "cache_keys": text_array(job.cache_key for job in jobs),
        "payloads": payloads,
        "payload_at": payload_at,
        "payload_lengths": payload_lengths,
        "statuses": text_array(job.status.value for job in jobs),
        "params": text_array(json.dumps(job.params) for job in jobs),
        "cache_hits": bool_array(job.cache_hit for job in jobs),
        "priorities": int_array(job.priority for job in jobs),
        "tenants": text_array(job.tenant for job in jobs),
        "idempotency_keys": text_array(job.idempotency_key for job in jobs),
        "deadlines": timestamp_array(job.deadline for job in jobs),
        "blob_keys": text_array(" ".join(map(check_blob_key, job.blob_keys)) or None
                                for job in jobs),
        "finished": bool_array(job.status.terminal for job in jobs),
    }


def claim_params(requests: Sequence[ClaimRequest], worker: str,
                 max_attempts: int) -> dict[str, Any]:
    """``CLAIM``'s parameters for requests whose ids are UUIDs (the server parses them)."""
    return {"ids": text_array(r.id for r in requests),
            "steps": int_array(r.step for r in requests),
            "attempts": int_array(r.attempt for r in requests),
            "takeovers": bool_array(r.takeover for r in requests),
            "holders": text_array(r.holder for r in requests),
            "worker": worker, "max_attempts": max_attempts,
            "gave_up": f"gave up after {max_attempts} attempts (the job's runs kept being "
                       "interrupted: worker deaths or redeliveries)"}


def finish_params(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """``FINISH``'s parameters (results as one bytea and their slices)."""
    results, result_at, result_lengths = bytea_slices([o.result for o in outcomes])
    return {
        "ids": text_array(o.id for o in outcomes),
        "attempts": int_array(o.attempt for o in outcomes),
        "statuses": text_array(o.status.value for o in outcomes),
        "errors": text_array(o.error for o in outcomes),
        "results": results,
        "result_at": result_at,
        "result_lengths": result_lengths,
        "blob_keys": text_array(o.blob_key for o in outcomes),
    }


def _new_row(job: NewJob) -> dict[str, Any]:
    row = asdict(job)
    row["id"] = as_uuid(job.id)
    row["blob_keys"] = list(job.blob_keys) or None
    row["finished_at"] = datetime.now(UTC) if job.status.terminal else None
    return row
