"""The job store: every SQL statement aidist runs lives here (the hot-path ones in db.statements).
Rows leave as frozen dataclasses.

Hot-path writes are one statement per batch: ``insert_jobs`` (multi-row INSERT), ``claim`` and
``finish`` (``UPDATE ... FROM unnest(...)``). ``claim`` fences on status, pipeline step and attempt
so a duplicate or stale message never starts a second run; ``finish`` fences on the attempt so a
stale run can never overwrite a newer one.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Engine,
    RowMapping,
    Select,
    Uuid,
    any_,
    bindparam,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert

from aidist.errors import UnknownJob
from aidist.jobs import JobKind, JobStatus
from db.engine import create_store_engine, transaction
from db.records import (
    Claim,
    ClaimRequest,
    JobEvent,
    JobRecord,
    JobRun,
    NewJob,
    Outcome,
    UnsentJob,
)
from db.schema import job_events_table, jobs_table
from db.statements import CLAIM, FINISH, SETTLE_FOLLOWERS

DEFAULT_MAX_ATTEMPTS = 8




def _record(row: RowMapping) -> JobRecord:
    return JobRecord(
        id=str(row["id"]),
        kind=JobKind(row["kind"]),
        target=row["target"],
        version=row["version"],
        cache_key=row["cache_key"],
        status=JobStatus(row["status"]),
        attempts=row["attempts"],
        cache_hit=row["cache_hit"],
        priority=row["priority"],
        params=row["params"],
        tenant=row["tenant"],
        idempotency_key=row["idempotency_key"],
        deadline=row["deadline"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        worker=row["worker"],
        error=row["error"],
        follows=str(row["follows"]) if row["follows"] is not None else None,
    )


_RECORD_COLUMNS = [c for c in jobs_table.c
                   if c.name not in ("payload", "result", "sent_at", "step", "blob_keys")]


def _events() -> Select[Any]:
    # No foreign key ties events to jobs: an event whose row is gone still shows, without target.
    events = job_events_table.c
    return select(events.seq, events.job_id, events.at, events.status, events.attempt,
                  events.step, events.worker, jobs_table.c.target).select_from(
        job_events_table.outerjoin(jobs_table, jobs_table.c.id == events.job_id))


def _event(row: RowMapping) -> JobEvent:
    return JobEvent(seq=row["seq"], job_id=str(row["job_id"]), at=row["at"],
                    status=JobStatus(row["status"]), attempt=row["attempt"], step=row["step"],
                    worker=row["worker"], target=row["target"])


class JobStore:
    """Reads and writes job rows. Thread-safe (one pooled connection per call)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def connect(cls, database_url: str, connect_timeout_s: float = 5.0) -> JobStore:
        """Build a store from a URL (no connection is opened until the first call)."""
        return cls(create_store_engine(database_url, connect_timeout_s))

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        with transaction(self.engine) as connection:
            yield connection

    def ping(self) -> None:
        """Raise ``ServiceUnavailable`` unless the database answers."""
        with self._begin() as connection:
            connection.execute(text("SELECT 1"))

    def insert_jobs(self, jobs: Sequence[NewJob]) -> None:
        """Insert all rows in one multi-row INSERT (SQLAlchemy pages very large ones)."""
        if not jobs:
            return
        rows = [_new_row(job) for job in jobs]
        with self._begin() as connection:
            connection.execute(insert(jobs_table), rows)

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
                select(*_RECORD_COLUMNS).where(
                    func.coalesce(jobs_table.c.tenant, "") == (job.tenant or ""),
                    jobs_table.c.idempotency_key == job.idempotency_key,
                )
            ).mappings().one()
            return _record(existing)

    def get(self, job_id: str) -> JobRecord:
        """One job; ``UnknownJob`` if there is none with this id."""
        found = self.get_many([job_id])
        if job_id not in found:
            raise UnknownJob(f"no job with id {job_id}; check the id (`aidist jobs ls`)")
        return found[job_id]

    def get_many(self, job_ids: Sequence[str]) -> dict[str, JobRecord]:
        """Jobs by id; ids that do not exist (or are not UUIDs) are absent from the result."""
        ids = _uuids(job_ids)
        if not ids:
            return {}
        with self._begin() as connection:
            rows = connection.execute(
                select(*_RECORD_COLUMNS).where(_id_in(ids))
            ).mappings()
            return {str(row["id"]): _record(row) for row in rows}

    def finished_among(self, job_ids: Sequence[str]) -> list[tuple[str, JobStatus, str | None]]:
        """(id, status, error) of those of ``job_ids`` that are terminal: what a waiting client
        needs, without reading whole rows."""
        ids = _uuids(job_ids)
        if not ids:
            return []
        terminal = [s.value for s in JobStatus if s.terminal]
        query = select(jobs_table.c.id, jobs_table.c.status, jobs_table.c.error).where(
            _id_in(ids), jobs_table.c.status.in_(terminal))
        with self._begin() as connection:
            return [(str(r.id), JobStatus(r.status), r.error) for r in connection.execute(query)]

    def holders(self, job_ids: Sequence[str], other_than: str) -> dict[str, str]:
        """job id -> worker, for those of ``job_ids`` that are running on a worker other than
        ``other_than`` (whether that worker is still alive is the caller's question)."""
        ids = _uuids(job_ids)
        if not ids:
            return {}
        query = select(jobs_table.c.id, jobs_table.c.worker).where(
            _id_in(ids), jobs_table.c.status == JobStatus.RUNNING.value,
            jobs_table.c.worker.is_not(None), jobs_table.c.worker != other_than)
        with self._begin() as connection:
            return {str(row.id): row.worker for row in connection.execute(query)}

    def runs(self, job_ids: Sequence[str]) -> dict[str, JobRun]:
        """Status, pipeline step and last claimer of those of ``job_ids`` that have a row: a
        redelivered message's jobs, looked at before any of them is claimed (only a redelivery
        pays this read)."""
        ids = _uuids(job_ids)
        if not ids:
            return {}
        query = select(jobs_table.c.id, jobs_table.c.status, jobs_table.c.step,
                       jobs_table.c.worker).where(_id_in(ids))
        with self._begin() as connection:
            return {str(r.id): JobRun(str(r.id), JobStatus(r.status), r.step, r.worker)
                    for r in connection.execute(query)}

    def existing(self, job_ids: Sequence[str]) -> set[str]:
        """Those of ``job_ids`` that have a row."""
        ids = _uuids(job_ids)
        if not ids:
            return set()
        with self._begin() as connection:
            return {str(row.id) for row in
                    connection.execute(select(jobs_table.c.id).where(_id_in(ids)))}

    def payloads(self, job_ids: Sequence[str]) -> dict[str, bytes]:
        """Stored input bytes by job id (for republishing or recomputing)."""
        with self._begin() as connection:
            rows = connection.execute(
                select(jobs_table.c.id, jobs_table.c.payload).where(_id_in(_uuids(job_ids)))
            )
            return {str(row.id): row.payload for row in rows if row.payload is not None}

    def list_jobs(self, limit: int = 20, status: JobStatus | None = None, *,
                  target: str | None = None, tenant: str | None = None,
                  since: datetime | None = None, until: datetime | None = None
                  ) -> list[JobRecord]:
        """The newest jobs first, of this status, target and tenant if given, created at or
        after ``since`` and before ``until`` if given."""
        query = select(*_RECORD_COLUMNS).order_by(jobs_table.c.created_at.desc()).limit(limit)
        if status is not None:
            query = query.where(jobs_table.c.status == status.value)
            if not status.terminal:  # true of every queued or running row: ix_jobs_unfinished
                query = query.where(jobs_table.c.finished_at.is_(None))
        if target is not None:
            query = query.where(jobs_table.c.target == target)
        if tenant is not None:
            query = query.where(jobs_table.c.tenant == tenant)
        if since is not None:
            query = query.where(jobs_table.c.created_at >= since)
        if until is not None:
            query = query.where(jobs_table.c.created_at < until)
        with self._begin() as connection:
            return [_record(row) for row in connection.execute(query).mappings()]

    def history(self, job_id: str) -> list[JobEvent]:
        """Every recorded transition of one job, oldest first (empty for a job that has none:
        unknown, or created before the history was; ``get`` tells which)."""
        query = _events().where(job_events_table.c.job_id == _uuid(job_id)).order_by(
            job_events_table.c.seq)
        with self._begin() as connection:
            return [_event(row) for row in connection.execute(query).mappings()]

    def last_event_seq(self) -> int:
        """The highest event seq so far (0 if none): where a tail of what comes next starts."""
        query = select(func.coalesce(func.max(job_events_table.c.seq), 0))
        with self._begin() as connection:
            return int(connection.execute(query).scalar_one())

    def events_after(self, seq: int, limit: int = 1000, also: Sequence[int] = ()
                     ) -> list[JobEvent]:
        """Up to ``limit`` events of any job after ``seq`` in seq order, and those of ``also``
        (seqs a follower saw missing: a sequence number is taken when a row is written but seen
        only when its transaction commits, so a lower one can appear after a higher one)."""
        events = job_events_table.c
        after = events.seq > seq
        if also:
            after = after | (events.seq == any_(bindparam(None, list(also),
                                                          type_=ARRAY(BigInteger()))))
        query = _events().where(after).order_by(events.seq).limit(limit)
        with self._begin() as connection:
            return [_event(row) for row in connection.execute(query).mappings()]

    def count_by_status(self, job_ids: Sequence[str] | None = None) -> dict[JobStatus, int]:
        """How many jobs are in each status (of ``job_ids`` if given, else all)."""
        query = select(jobs_table.c.status, func.count()).group_by(jobs_table.c.status)
        if job_ids is not None:
            query = query.where(_id_in(_uuids(job_ids)))
        with self._begin() as connection:
            counts = {JobStatus(status): n for status, n in connection.execute(query)}
        return {status: counts.get(status, 0) for status in JobStatus}

    def reruns(self) -> int:
        """Attempts beyond each job's first, over every row: runs started again after a worker
        death or a redelivery (what the fault suite reports as re-runs)."""
        query = select(func.coalesce(func.sum(func.greatest(jobs_table.c.attempts - 1, 0)), 0))
        with self._begin() as connection:
            return int(connection.execute(query).scalar_one())

    def claim(self, requests: Sequence[ClaimRequest], worker: str,
              max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> list[Claim]:
        """Start a run of each job its delivery may run (see ``ClaimRequest``), in one UPDATE.
        Jobs past their deadline come back expired; jobs that already had ``max_attempts`` runs
        (worker deaths and redeliveries count: a message that kills its worker comes back every
        time) come back failed; jobs that are finished, cancelled, or held by another run do not
        come back, and their delivery must not run them."""
        valid = [r for r in requests if _is_uuid(r.id)]
        if not valid:
            return []
        params = {"ids": [_uuid(r.id) for r in valid], "steps": [r.step for r in valid],
                  "attempts": [r.attempt for r in valid],
                  "takeovers": [r.takeover for r in valid],
                  "holders": [r.holder for r in valid],
                  "worker": worker, "max_attempts": max_attempts,
                  "gave_up": f"gave up after {max_attempts} attempts (the job's runs kept being "
                             "interrupted: worker deaths or redeliveries)"}
        with self._begin() as connection:
            rows = connection.execute(CLAIM, params)
            return [Claim(str(r.id), JobStatus(r.status), r.attempts,
                          str(r.follows) if r.follows is not None else None,
                          queued_s=max(float(r.queued_s), 0.0)) for r in rows]

    def finish(self, outcomes: Sequence[Outcome]) -> int:
        """Record how each run ended, in one statement; returns how many rows changed. A row whose
        attempt moved on, or that was cancelled meanwhile, is left alone."""
        return len(self.finish_returning(outcomes))

    def finish_returning(self, outcomes: Sequence[Outcome]) -> set[str]:
        """``finish``, returning the ids it changed (only those get a completion notice)."""
        if not outcomes:
            return set()
        params: dict[str, Any] = {
            "ids": [o.id for o in outcomes],
            "attempts": [o.attempt for o in outcomes],
            "statuses": [o.status.value for o in outcomes],
            "errors": [o.error for o in outcomes],
            "results": [o.result for o in outcomes],
            "blob_keys": [o.blob_key for o in outcomes],
        }
        with self._begin() as connection:
            return {str(row.id) for row in connection.execute(FINISH, params)}

    def cancel(self, job_id: str) -> JobStatus:
        """Cancel a job that has not finished; returns its status afterwards (unchanged if it had
        finished). A queued job never runs; a running one is not recorded as finished by the
        worker, whose results it discards, and the next step of a pipeline never starts."""
        with self._begin() as connection:
            row = connection.execute(
                text(
                    "UPDATE jobs SET status = 'cancelled', finished_at = now() "
                    "WHERE id = :id AND status IN ('queued', 'running') RETURNING status"
                ),
                {"id": _uuid(job_id)},
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
        with self._begin() as connection:
            return len(connection.execute(statement, {"limit": limit}).all())

    def mark_sent(self, job_ids: Sequence[str]) -> None:
        """Record that the jobs' messages were confirmed by the broker (they leave the outbox)."""
        if not job_ids:
            return
        with self._begin() as connection:
            connection.execute(
                text("UPDATE jobs SET sent_at = now() WHERE id = ANY(:ids) AND sent_at IS NULL"),
                {"ids": _uuids(job_ids)},
            )

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
                {"ids": _uuids(sent)},
            )
            return len(sent)

    def settle_followers(self) -> int:
        """End (or requeue, unsent) the followers of leaders that have ended; returns how many.
        The sweeper runs this each pass."""
        with self._begin() as connection:
            return len(connection.execute(SETTLE_FOLLOWERS).all())

    def results_by_key(self, cache_keys: Sequence[str]) -> dict[str, bytes]:
        """Durable copies of results by cache key (any job with that key), for a result that
        has left Redis."""
        if not cache_keys:
            return {}
        query = text(
            "SELECT DISTINCT ON (cache_key) cache_key, result FROM jobs "
            "WHERE cache_key = ANY(:keys) AND status = 'succeeded' AND result IS NOT NULL"
        )
        with self._begin() as connection:
            return {r.cache_key: r.result
                    for r in connection.execute(query, {"keys": list(set(cache_keys))})}

    def blob_keys_referenced(self, keys: Sequence[str]) -> set[str]:
        """Those of the blob ``keys`` that some row's ``blob_keys`` still names (one scan of the
        GIN index): the blobs a prune must keep."""
        if not keys:
            return set()
        query = text("SELECT DISTINCT k FROM jobs, unnest(jobs.blob_keys) AS k "
                     "WHERE jobs.blob_keys && CAST(:keys AS text[]) AND k = ANY(:keys)")
        with self._begin() as connection:
            return {row.k for row in connection.execute(query, {"keys": list(set(keys))})}

    def fail_unsent(self, job_ids: Sequence[str], error: str) -> None:
        """Mark queued jobs failed when their message could not be published."""
        with self._begin() as connection:
            connection.execute(
                text(
                    "UPDATE jobs SET status = 'failed', error = :error, finished_at = now() "
                    "WHERE id = ANY(:ids) AND status = 'queued'"
                ),
                {"ids": _uuids(job_ids), "error": error},
            )

    def close(self) -> None:
        """Close pooled connections."""
        self.engine.dispose()


def _new_row(job: NewJob) -> dict[str, Any]:
    row = asdict(job)
    row["id"] = _uuid(job.id)
    row["blob_keys"] = list(job.blob_keys) or None
    row["finished_at"] = datetime.now(UTC) if job.status.terminal else None
    return row


def _id_in(ids: list[uuid.UUID]) -> ColumnElement[bool]:
    # One array parameter (= ANY), not one parameter per id: Postgres caps a statement at 65,535.
    return jobs_table.c.id == any_(bindparam(None, ids, type_=ARRAY(Uuid())))


def _uuid(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError as exc:
        raise UnknownJob(f"{value!r} is not a job id (a UUID)") from exc


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


def _uuids(values: Sequence[str]) -> list[uuid.UUID]:
    out = []
    for value in values:
        try:
            out.append(uuid.UUID(str(value)))
        except ValueError:
            continue
    return out
