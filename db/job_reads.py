"""The job store's reads: jobs by id, lists and counts, the history, and the helpers that turn
rows into records. ``db.store.JobStore`` inherits them; ``JobReads`` itself only needs the
engine and ``_begin``."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
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
    select,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY

from aidist.errors import UnknownJob
from aidist.jobs import JobKind, JobStatus
from db.engine import transaction
from db.records import JobEvent, JobRecord, JobRun
from db.schema import job_events_table, jobs_table


def record_of(row: RowMapping) -> JobRecord:
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


_CANONICAL_UUID = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
RECORD_COLUMNS = [c for c in jobs_table.c
                   if c.name not in ("payload", "result", "sent_at", "step", "blob_keys")]


def events_query() -> Select[Any]:
    # No foreign key ties events to jobs: an event whose row is gone still shows, without target.
    events = job_events_table.c
    return select(events.seq, events.job_id, events.at, events.status, events.attempt,
                  events.step, events.worker, jobs_table.c.target).select_from(
        job_events_table.outerjoin(jobs_table, jobs_table.c.id == events.job_id))


def event_of(row: RowMapping) -> JobEvent:
    return JobEvent(seq=row["seq"], job_id=str(row["job_id"]), at=row["at"],
                    status=JobStatus(row["status"]), attempt=row["attempt"], step=row["step"],
                    worker=row["worker"], target=row["target"])


def id_in(ids: list[uuid.UUID]) -> ColumnElement[bool]:
    # One array parameter (= ANY), not one parameter per id: Postgres caps a statement at 65,535.
    return jobs_table.c.id == any_(bindparam(None, ids, type_=ARRAY(Uuid())))


def as_uuid(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError as exc:
        raise UnknownJob(f"{value!r} is not a job id (a UUID)") from exc


def is_uuid(value: str) -> bool:
    """True for a string ``uuid.UUID`` reads: the canonical form (every id aidist makes) by a
    regex, at a quarter of a parse's cost (a claim asks for each of its jobs), others parsed."""
    if isinstance(value, str) and _CANONICAL_UUID.fullmatch(value):
        return True
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


def as_uuids(values: Sequence[str]) -> list[uuid.UUID]:
    out = []
    for value in values:
        try:
            out.append(uuid.UUID(str(value)))
        except ValueError:
            continue
    return out


class JobReads:
    """Reads of job rows and their history. Thread-safe (one pooled connection per call)."""

    engine: Engine

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        with transaction(self.engine) as connection:
            yield connection

    @contextmanager
    def _once(self) -> Iterator[Connection]:
        """For a block of one statement: it commits itself (no BEGIN, no COMMIT)."""
        with transaction(self.engine, single=True) as connection:
            yield connection

    def get(self, job_id: str) -> JobRecord:
        """One job; ``UnknownJob`` if there is none with this id."""
        found = self.get_many([job_id])
        if job_id not in found:
            raise UnknownJob(f"no job with id {job_id}; check the id (`aidist jobs ls`)")
        return found[job_id]

    def get_many(self, job_ids: Sequence[str]) -> dict[str, JobRecord]:
        """Jobs by id; ids that do not exist (or are not UUIDs) are absent from the result."""
        ids = as_uuids(job_ids)
        if not ids:
            return {}
        with self._once() as connection:
            rows = connection.execute(
                select(*RECORD_COLUMNS).where(id_in(ids))
            ).mappings()
            return {str(row["id"]): record_of(row) for row in rows}

    def finished_among(self, job_ids: Sequence[str]) -> list[tuple[str, JobStatus, str | None]]:
        """(id, status, error) of those of ``job_ids`` that are terminal: what a waiting client
        needs, without reading whole rows."""
        ids = as_uuids(job_ids)
        if not ids:
            return []
        terminal = [s.value for s in JobStatus if s.terminal]
        query = select(jobs_table.c.id, jobs_table.c.status, jobs_table.c.error).where(
            id_in(ids), jobs_table.c.status.in_(terminal))
        with self._once() as connection:
            return [(str(r.id), JobStatus(r.status), r.error) for r in connection.execute(query)]

    def holders(self, job_ids: Sequence[str], other_than: str) -> dict[str, str]:
        """job id -> worker, for those of ``job_ids`` that are running on a worker other than
        ``other_than`` (whether that worker is still alive is the caller's question)."""
        ids = as_uuids(job_ids)
        if not ids:
            return {}
        query = select(jobs_table.c.id, jobs_table.c.worker).where(
            id_in(ids), jobs_table.c.status == JobStatus.RUNNING.value,
            jobs_table.c.worker.is_not(None), jobs_table.c.worker != other_than)
        with self._once() as connection:
            return {str(row.id): row.worker for row in connection.execute(query)}

    def runs(self, job_ids: Sequence[str]) -> dict[str, JobRun]:
        """Status, pipeline step and last claimer of those of ``job_ids`` that have a row: a
        redelivered message's jobs, looked at before any of them is claimed (only a redelivery
        pays this read)."""
        ids = as_uuids(job_ids)
        if not ids:
            return {}
        query = select(jobs_table.c.id, jobs_table.c.status, jobs_table.c.step,
                       jobs_table.c.worker).where(id_in(ids))
        with self._once() as connection:
            return {str(r.id): JobRun(str(r.id), JobStatus(r.status), r.step, r.worker)
                    for r in connection.execute(query)}

    def existing(self, job_ids: Sequence[str]) -> set[str]:
        """Those of ``job_ids`` that have a row."""
        ids = as_uuids(job_ids)
        if not ids:
            return set()
        with self._once() as connection:
            return {str(row.id) for row in
                    connection.execute(select(jobs_table.c.id).where(id_in(ids)))}

    def payloads(self, job_ids: Sequence[str]) -> dict[str, bytes]:
        """Stored input bytes by job id (for republishing or recomputing)."""
        with self._once() as connection:
            rows = connection.execute(
                select(jobs_table.c.id, jobs_table.c.payload).where(id_in(as_uuids(job_ids)))
            )
            return {str(row.id): row.payload for row in rows if row.payload is not None}

    def list_jobs(self, limit: int = 20, status: JobStatus | None = None, *,
                  target: str | None = None, tenant: str | None = None,
                  since: datetime | None = None, until: datetime | None = None
                  ) -> list[JobRecord]:
        """The newest jobs first, of this status, target and tenant if given, created at or
        after ``since`` and before ``until`` if given."""
        query = select(*RECORD_COLUMNS).order_by(jobs_table.c.created_at.desc()).limit(limit)
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
        with self._once() as connection:
            return [record_of(row) for row in connection.execute(query).mappings()]

    def history(self, job_id: str) -> list[JobEvent]:
        """Every recorded transition of one job, oldest first (empty for a job that has none:
        unknown, or created before the history was; ``get`` tells which)."""
        query = events_query().where(job_events_table.c.job_id == as_uuid(job_id)).order_by(
            job_events_table.c.seq)
        with self._once() as connection:
            return [event_of(row) for row in connection.execute(query).mappings()]

    def last_event_seq(self) -> int:
        """The highest event seq so far (0 if none): where a tail of what comes next starts."""
        query = select(func.coalesce(func.max(job_events_table.c.seq), 0))
        with self._once() as connection:
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
        query = events_query().where(after).order_by(events.seq).limit(limit)
        with self._once() as connection:
            return [event_of(row) for row in connection.execute(query).mappings()]

    def count_by_status(self, job_ids: Sequence[str] | None = None) -> dict[JobStatus, int]:
        """How many jobs are in each status (of ``job_ids`` if given, else all)."""
        query = select(jobs_table.c.status, func.count()).group_by(jobs_table.c.status)
        if job_ids is not None:
            query = query.where(id_in(as_uuids(job_ids)))
        with self._once() as connection:
            counts = {JobStatus(status): n for status, n in connection.execute(query)}
        return {status: counts.get(status, 0) for status in JobStatus}

    def reruns(self) -> int:
        """Attempts beyond each job's first, over every row: runs started again after a worker
        death or a redelivery (what the fault suite reports as re-runs)."""
        query = select(func.coalesce(func.sum(func.greatest(jobs_table.c.attempts - 1, 0)), 0))
        with self._once() as connection:
            return int(connection.execute(query).scalar_one())

    def results_by_key(self, cache_keys: Sequence[str]) -> dict[str, bytes]:
        """Durable copies of results by cache key (any job with that key), for a result that
        has left Redis. Only a succeeded row holds a result, so no status is asked for (it
        would let the planner read every succeeded row through ix_jobs_ended: migration 0012)."""
        if not cache_keys:
            return {}
        query = text(
            "SELECT DISTINCT ON (cache_key) cache_key, result FROM jobs "
            "WHERE cache_key = ANY(:keys) AND result IS NOT NULL"
        )
        with self._once() as connection:
            return {r.cache_key: r.result
                    for r in connection.execute(query, {"keys": list(set(cache_keys))})}

    def blob_keys_referenced(self, keys: Sequence[str]) -> set[str]:
        """Those of the blob ``keys`` that some row's ``blob_keys`` still names (one scan of the
        GIN index): the blobs a prune must keep."""
        if not keys:
            return set()
        query = text("SELECT DISTINCT k FROM jobs, unnest(jobs.blob_keys) AS k "
                     "WHERE jobs.blob_keys && CAST(:keys AS text[]) AND k = ANY(:keys)")
        with self._once() as connection:
            return {row.k for row in connection.execute(query, {"keys": list(set(keys))})}
