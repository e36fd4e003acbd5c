"""The job history on the real PostgreSQL: the triggers of migration 0007 record every transition
the store's statements make (``job_events``), and the store reads it back (``history``,
``events_after``, ``list_jobs``' filters).

All tests share the session's database; each looks only at the job ids it created itself.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from alembic import command
from sqlalchemy import create_engine, inspect, text

from aidist.errors import UnknownJob
from aidist.jobs import JobStatus
from db import setup as db_setup
from db.records import ClaimRequest, JobEvent, Outcome
from db.schema import job_events_table
from db.store import JobStore
from tests.integration.conftest import NewJobFactory, first

pytestmark = pytest.mark.integration


def _trail(events: list[JobEvent]) -> list[tuple[str, int, int, str | None]]:
    return [(e.status.value, e.attempt, e.step, e.worker) for e in events]


def test_a_run_records_queued_running_succeeded_with_worker_attempt_and_time(
        store: JobStore, new_job: NewJobFactory) -> None:
    job = new_job(target="normalize")
    store.insert_jobs([job])
    store.mark_sent([job.id])  # the outbox's write is no transition
    (claim,) = store.claim(first(job.id), "worker-a")
    assert store.claim(first(job.id), "worker-a") == [claim]  # its own claim again: none either
    store.finish([Outcome(job.id, claim.attempt, JobStatus.SUCCEEDED, result=b"r")])

    history = store.history(job.id)
    assert _trail(history) == [("queued", 0, 0, None), ("running", 1, 0, "worker-a"),
                               ("succeeded", 1, 0, "worker-a")]
    record = store.get(job.id)
    assert history[0].at == record.created_at
    assert history[1].at <= record.started_at  # a claim again moves started_at, not the run
    assert history[2].at == record.finished_at
    assert [e.seq for e in history] == sorted(e.seq for e in history)
    assert {(e.job_id, e.target) for e in history} == {(job.id, "normalize")}


def test_a_failed_run_records_its_end(store: JobStore, new_job: NewJobFactory) -> None:
    job = new_job()
    store.insert_jobs([job])
    (claim,) = store.claim(first(job.id), "worker-a")
    store.finish([Outcome(job.id, claim.attempt, JobStatus.FAILED, error="boom")])
    assert _trail(store.history(job.id))[-1] == ("failed", 1, 0, "worker-a")


def test_a_cancelled_queued_job_and_a_cache_hit(store: JobStore, new_job: NewJobFactory) -> None:
    queued, hit = new_job(), new_job(status=JobStatus.SUCCEEDED, cache_hit=True)
    store.insert_jobs([queued, hit])
    store.cancel(queued.id)
    assert _trail(store.history(queued.id)) == [("queued", 0, 0, None),
                                                ("cancelled", 0, 0, None)]
    assert _trail(store.history(hit.id)) == [("succeeded", 0, 0, None)]


def test_an_overdue_queued_job_records_its_expiry(store: JobStore,
                                                  new_job: NewJobFactory) -> None:
    job = new_job(deadline=datetime.now(UTC) - timedelta(seconds=1))
    store.insert_jobs([job])
    assert store.expire_overdue(100_000) >= 1  # (rows other tests left overdue may come along)
    assert _trail(store.history(job.id)) == [("queued", 0, 0, None), ("expired", 0, 0, None)]


def test_a_takeover_is_a_second_running_row_on_the_other_worker_and_a_step_a_third(
        store: JobStore, new_job: NewJobFactory) -> None:
    job = new_job()
    store.insert_jobs([job])
    store.claim(first(job.id), "dead")
    (taken,) = store.claim([ClaimRequest(job.id, takeover=True, holder="dead")], "alive")
    store.claim([ClaimRequest(job.id, step=1, attempt=taken.attempt)], "gpu")
    store.finish([Outcome(job.id, taken.attempt, JobStatus.SUCCEEDED)])
    assert _trail(store.history(job.id)) == [
        ("queued", 0, 0, None), ("running", 1, 0, "dead"), ("running", 2, 0, "alive"),
        ("running", 2, 1, "gpu"), ("succeeded", 2, 1, "gpu")]


def test_followers_record_their_leaders_end_or_their_requeue(
        store: JobStore, new_job: NewJobFactory) -> None:
    key, other_key = uuid.uuid4().hex, uuid.uuid4().hex
    leader, follower = new_job(cache_key=key), new_job(cache_key=key)
    gone, requeued = new_job(cache_key=other_key), new_job(cache_key=other_key)
    store.insert_jobs([leader, follower, gone, requeued])
    store.claim(first(leader.id, gone.id), "w1")
    claims = {c.id: c for c in store.claim(first(follower.id, requeued.id), "w2")}
    assert (claims[follower.id].follows, claims[requeued.id].follows) == (leader.id, gone.id)

    store.finish([Outcome(leader.id, 1, JobStatus.SUCCEEDED, result=b"r")])
    assert _trail(store.history(follower.id)) == [
        ("queued", 0, 0, None), ("running", 1, 0, "w2"), ("succeeded", 1, 0, "w2")]

    store.cancel(gone.id)
    assert store.settle_followers() >= 1
    assert [e.status for e in store.history(requeued.id)] == [
        JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.QUEUED]


def test_history_of_an_unknown_job_is_empty_and_of_a_non_uuid_an_error(store: JobStore) -> None:
    assert store.history(str(uuid.uuid4())) == []
    with pytest.raises(UnknownJob):
        store.history("not-a-uuid")


def test_events_after_reads_in_seq_order_with_the_seqs_asked_again(
        store: JobStore, new_job: NewJobFactory) -> None:
    start = store.last_event_seq()
    jobs = [new_job(target="chunk") for _ in range(3)]
    store.insert_jobs(jobs)
    store.claim(first(*(j.id for j in jobs)), "worker-a")
    events = [e for e in store.events_after(start, limit=100_000)
              if e.job_id in {j.id for j in jobs}]
    assert len(events) == 6
    assert [e.seq for e in events] == sorted(e.seq for e in events)
    assert store.last_event_seq() >= events[-1].seq
    assert {e.target for e in events} == {"chunk"}

    (limited,) = store.events_after(start, limit=1)
    assert limited.seq > start
    again = store.events_after(events[-1].seq, also=[events[0].seq, events[1].seq])
    assert [e.seq for e in again[:2]] == [events[0].seq, events[1].seq]


def test_list_jobs_filters_by_target_tenant_status_and_creation_time(
        store: JobStore, new_job: NewJobFactory) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    mine = [new_job(tenant=tenant, target="chunk"), new_job(tenant=tenant),
            new_job(tenant=tenant, target="chunk")]
    store.insert_jobs(mine)
    store.cancel(mine[2].id)
    created = store.get(mine[0].id).created_at

    assert {r.id for r in store.list_jobs(limit=100, tenant=tenant)} == {j.id for j in mine}
    assert {r.id for r in store.list_jobs(limit=100, tenant=tenant, target="chunk")} == {
        mine[0].id, mine[2].id}
    assert [r.id for r in store.list_jobs(limit=100, tenant=tenant, target="chunk",
                                          status=JobStatus.QUEUED)] == [mine[0].id]
    assert len(store.list_jobs(limit=100, tenant=tenant, since=created)) == 3
    assert store.list_jobs(limit=100, tenant=tenant, until=created) == []
    assert store.list_jobs(limit=100, tenant=tenant,
                           since=created + timedelta(seconds=1)) == []
    assert len(store.list_jobs(limit=2, tenant=tenant)) == 2


def test_migration_0007_creates_the_declared_table_and_downgrades_cleanly(
        scratch_database_url: str) -> None:
    db_setup.upgrade(scratch_database_url)
    engine = create_engine(scratch_database_url)
    try:
        inspector = inspect(engine)
        columns = {c["name"] for c in inspector.get_columns("job_events")}
        assert columns == {c.name for c in job_events_table.c}
        indexes = {i["name"]: i["column_names"] for i in inspector.get_indexes("job_events")}
        assert indexes == {i.name: [c.name for c in i.columns] for i in job_events_table.indexes}

        command.downgrade(db_setup.alembic_config(scratch_database_url), "0006")
        with engine.connect() as connection:
            triggers = connection.execute(text(
                "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'jobs'::regclass "
                "AND NOT tgisinternal")).scalar_one()
        assert triggers == 0
        assert "job_events" not in inspect(engine).get_table_names()
        db_setup.upgrade(scratch_database_url)
        assert "job_events" in inspect(engine).get_table_names()
    finally:
        engine.dispose()


def test_an_idempotent_resubmission_records_no_second_queued(store: JobStore,
                                                             new_job: NewJobFactory) -> None:
    key = f"k-{uuid.uuid4().hex}"
    job = new_job(idempotency_key=key)
    assert store.insert_idempotent(job) is None
    existing = store.insert_idempotent(new_job(idempotency_key=key))
    assert existing is not None and existing.id == job.id
    assert _trail(store.history(job.id)) == [("queued", 0, 0, None)]


def test_a_large_update_records_its_history_by_hashing_not_a_nested_loop(
        store: JobStore, new_job: NewJobFactory) -> None:
    """The update trigger joins transition tables, which have no statistics: with a nested loop
    an UPDATE of n rows cost n^2 (migration 0011 turns it off inside the trigger)."""
    with store.engine.begin() as connection:
        config = connection.execute(text(
            "SELECT proconfig FROM pg_proc WHERE proname = 'job_events_updated'")).scalar_one()
    assert "enable_nestloop=off" in config
    jobs = [new_job() for _ in range(2000)]
    store.insert_jobs(jobs)
    store.claim([ClaimRequest(job.id) for job in jobs], "w")  # 2,000 rows in one statement
    assert [event.status for event in store.history(jobs[-1].id)] == [
        JobStatus.QUEUED, JobStatus.RUNNING]
