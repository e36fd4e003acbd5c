"""db.store.JobStore against the real PostgreSQL: inserts, claims, fenced finishes, cancels, errors.

All tests share the session's database; each counts only the job ids it created itself.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from aidist.errors import AidistError, ConfigError, ServiceUnavailable, UnknownJob
from aidist.jobs import JobKind, JobStatus
from db import setup as db_setup
from db.records import Claim, ClaimRequest, Outcome, UnsentJob
from db.store import INSERT_PAGE, JobStore
from tests.integration.conftest import NewJobFactory, first, takeover

pytestmark = pytest.mark.integration


def test_insert_many_rows_then_count_shows_them_queued(store: JobStore,
                                                      new_job: NewJobFactory) -> None:
    rows = [new_job() for _ in range(1000)]
    store.insert_jobs(rows)
    ids = [row.id for row in rows]
    counts = store.count_by_status(ids)
    assert counts[JobStatus.QUEUED] == 1000
    assert sum(counts.values()) == 1000
    assert set(counts) == set(JobStatus)


def test_insert_nothing_is_a_no_op(store: JobStore) -> None:
    before = sum(store.count_by_status().values())
    store.insert_jobs([])
    assert sum(store.count_by_status().values()) == before


def test_get_and_get_many_return_the_stored_fields(store: JobStore,
                                                   new_job: NewJobFactory) -> None:
    first = new_job(kind=JobKind.PREPROCESS, target="chunk", params={"size": 8, "overlap": 2},
                    priority=7, tenant="acme")
    second = new_job()
    store.insert_jobs([first, second])

    record = store.get(first.id)
    assert record.id == first.id
    assert record.kind is JobKind.PREPROCESS
    assert record.target == "chunk"
    assert record.version == first.version
    assert record.cache_key == first.cache_key
    assert record.params == {"size": 8, "overlap": 2}
    assert record.priority == 7
    assert record.tenant == "acme"
    assert record.status is JobStatus.QUEUED
    assert record.attempts == 0
    assert record.cache_hit is False
    assert record.created_at.tzinfo is not None
    assert (record.started_at, record.finished_at, record.worker, record.error) == (
        None, None, None, None)

    missing = str(uuid.uuid4())
    found = store.get_many([first.id, second.id, missing, "not-a-uuid"])
    assert set(found) == {first.id, second.id}
    assert found[second.id].target == "toy-classifier"
    assert store.payloads([first.id]) == {first.id: first.payload}


@pytest.mark.parametrize("job_id", [str(uuid.uuid4()), "not-a-uuid", ""])
def test_get_of_unknown_id_raises_unknown_job(store: JobStore, job_id: str) -> None:
    with pytest.raises(UnknownJob) as raised:
        store.get(job_id)
    assert isinstance(raised.value, AidistError)
    assert isinstance(raised.value, LookupError)


def test_claim_moves_queued_to_running(store: JobStore, new_job: NewJobFactory) -> None:
    row = new_job()
    store.insert_jobs([row])
    claims = store.claim(first(row.id), "worker-a")
    assert claims == [Claim(row.id, JobStatus.RUNNING, 1)]
    record = store.get(row.id)
    assert record.status is JobStatus.RUNNING
    assert record.attempts == 1
    assert record.worker == "worker-a"
    assert record.started_at is not None
    assert record.finished_at is None

    # a duplicate first delivery does not start a second run while it runs
    assert store.claim(first(row.id), "worker-b") == []
    # a lost worker's job is taken over by its redelivery: a new attempt by another worker
    assert store.claim(takeover(row.id), "worker-b") == [Claim(row.id, JobStatus.RUNNING, 2)]
    again = store.get(row.id)
    assert (again.attempts, again.worker) == (2, "worker-b")


def test_claim_of_a_job_past_its_deadline_expires_it(store: JobStore,
                                                     new_job: NewJobFactory) -> None:
    late = new_job(deadline=datetime.now(UTC) - timedelta(minutes=1))
    timely = new_job(deadline=datetime.now(UTC) + timedelta(hours=1))
    store.insert_jobs([late, timely])
    claims = {claim.id: claim for claim in store.claim(first(late.id, timely.id), "worker-a")}
    assert claims[late.id].status is JobStatus.EXPIRED
    assert claims[timely.id].status is JobStatus.RUNNING
    record = store.get(late.id)
    assert record.status is JobStatus.EXPIRED
    assert record.finished_at is not None
    assert store.get(timely.id).finished_at is None
    # expired is terminal: it is never claimed again
    assert store.claim(first(late.id), "worker-b") == []


@pytest.mark.parametrize(
    "status", [JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.EXPIRED]
)
def test_claim_skips_finished_jobs(store: JobStore, new_job: NewJobFactory,
                                   status: JobStatus) -> None:
    finished = new_job(status=status)
    queued = new_job()
    store.insert_jobs([finished, queued])
    claims = store.claim(first(finished.id, queued.id, "not-a-uuid"), "worker-a")
    assert claims == [Claim(queued.id, JobStatus.RUNNING, 1)]
    record = store.get(finished.id)
    assert record.status is status
    assert record.attempts == 0
    assert record.worker is None
    assert record.finished_at is not None


def test_claim_of_nothing_returns_nothing(store: JobStore) -> None:
    assert store.claim(first(), "worker-a") == []
    assert store.claim(first(str(uuid.uuid4())), "worker-a") == []


def test_finish_with_a_stale_attempt_changes_nothing(store: JobStore,
                                                     new_job: NewJobFactory) -> None:
    row = new_job()
    store.insert_jobs([row])
    store.claim(first(row.id), "worker-a")
    store.claim(takeover(row.id), "worker-b")  # attempt 2 took over
    assert store.finish([Outcome(row.id, 1, JobStatus.FAILED, "stale run")]) == 0
    record = store.get(row.id)
    assert record.status is JobStatus.RUNNING
    assert record.error is None
    assert record.finished_at is None

    assert store.finish([Outcome(row.id, 2, JobStatus.SUCCEEDED)]) == 1
    done = store.get(row.id)
    assert done.status is JobStatus.SUCCEEDED
    assert done.finished_at is not None
    # a redelivered run of the same attempt cannot overwrite the finished row either
    assert store.finish([Outcome(row.id, 2, JobStatus.FAILED, "late duplicate")]) == 0
    assert store.get(row.id).status is JobStatus.SUCCEEDED


def test_finish_leaves_a_job_cancelled_meanwhile_cancelled(store: JobStore,
                                                          new_job: NewJobFactory) -> None:
    queued, running = new_job(), new_job()
    store.insert_jobs([queued, running])
    assert store.cancel(queued.id) is JobStatus.CANCELLED
    store.claim(first(running.id), "worker-a")
    with store.engine.begin() as connection:  # cancelled while it ran (an operator's UPDATE)
        connection.execute(text("UPDATE jobs SET status = 'cancelled' WHERE id = :id"),
                           {"id": uuid.UUID(running.id)})
    changed = store.finish([Outcome(queued.id, 0, JobStatus.SUCCEEDED),
                            Outcome(running.id, 1, JobStatus.SUCCEEDED)])
    assert changed == 0
    assert store.get(queued.id).status is JobStatus.CANCELLED
    assert store.get(running.id).status is JobStatus.CANCELLED


def test_finish_writes_error_text_per_job_in_one_call(store: JobStore,
                                                      new_job: NewJobFactory) -> None:
    good, bad = new_job(), new_job()
    store.insert_jobs([good, bad])
    store.claim(first(good.id, bad.id), "worker-a")
    error = "ValueError: flaky model refuses 'boom' — ünïcode kept"
    changed = store.finish([Outcome(good.id, 1, JobStatus.SUCCEEDED),
                            Outcome(bad.id, 1, JobStatus.FAILED, error)])
    assert changed == 2
    failed = store.get(bad.id)
    assert failed.status is JobStatus.FAILED
    assert failed.error == error
    assert failed.finished_at is not None
    succeeded = store.get(good.id)
    assert succeeded.status is JobStatus.SUCCEEDED
    assert succeeded.error is None
    assert store.finish([]) == 0


def test_cancel_cancels_unfinished_jobs_and_leaves_finished_ones(store: JobStore,
                                                          new_job: NewJobFactory) -> None:
    queued, running, succeeded = new_job(), new_job(), new_job(status=JobStatus.SUCCEEDED)
    store.insert_jobs([queued, running, succeeded])
    store.claim(first(running.id), "worker-a")

    assert store.cancel(queued.id) is JobStatus.CANCELLED
    record = store.get(queued.id)
    assert record.status is JobStatus.CANCELLED
    assert record.finished_at is not None
    assert store.claim(first(queued.id), "worker-a") == []  # a cancelled job never runs

    assert store.cancel(running.id) is JobStatus.CANCELLED  # stops at the next batch boundary
    assert store.finish([Outcome(running.id, store.get(running.id).attempts,
                                 JobStatus.SUCCEEDED)]) == 0  # the worker's result is dropped
    assert store.get(running.id).status is JobStatus.CANCELLED
    assert store.cancel(succeeded.id) is JobStatus.SUCCEEDED
    assert store.get(succeeded.id).status is JobStatus.SUCCEEDED
    assert store.cancel(queued.id) is JobStatus.CANCELLED  # cancelling twice is harmless


@pytest.mark.parametrize("job_id", [str(uuid.uuid4()), "not-a-uuid"])
def test_cancel_of_unknown_job_raises_unknown_job(store: JobStore, job_id: str) -> None:
    with pytest.raises(UnknownJob):
        store.cancel(job_id)


def test_insert_idempotent_returns_the_first_jobs_record(store: JobStore,
                                                         new_job: NewJobFactory) -> None:
    key = uuid.uuid4().hex
    first = new_job(idempotency_key=key, tenant="tenant-a")
    assert store.insert_idempotent(first) is None
    duplicate = new_job(idempotency_key=key, tenant="tenant-a", target="other")
    existing = store.insert_idempotent(duplicate)
    assert existing is not None
    assert existing.id == first.id
    assert existing.target == first.target
    assert existing.idempotency_key == key
    with pytest.raises(UnknownJob):
        store.get(duplicate.id)

    other_tenant = new_job(idempotency_key=key, tenant="tenant-b")
    assert store.insert_idempotent(other_tenant) is None
    assert store.get(other_tenant.id).tenant == "tenant-b"

    no_tenant = new_job(idempotency_key=key)
    assert store.insert_idempotent(no_tenant) is None
    again = store.insert_idempotent(new_job(idempotency_key=key))
    assert again is not None
    assert again.id == no_tenant.id
    assert sum(store.count_by_status([first.id, duplicate.id, other_tenant.id,
                                      no_tenant.id]).values()) == 3


def test_fail_unsent_marks_only_queued_jobs_failed(store: JobStore,
                                                   new_job: NewJobFactory) -> None:
    queued, running, cancelled = new_job(), new_job(), new_job(status=JobStatus.CANCELLED)
    store.insert_jobs([queued, running, cancelled])
    store.claim(first(running.id), "worker-a")
    store.fail_unsent([queued.id, running.id, cancelled.id], "not published: broker gone")
    failed = store.get(queued.id)
    assert failed.status is JobStatus.FAILED
    assert failed.error == "not published: broker gone"
    assert failed.finished_at is not None
    assert store.get(running.id).status is JobStatus.RUNNING
    assert store.get(running.id).error is None
    assert store.get(cancelled.id).status is JobStatus.CANCELLED
    assert store.get(cancelled.id).error is None


def test_list_jobs_newest_first_and_filtered_by_status(store: JobStore,
                                                       new_job: NewJobFactory) -> None:
    rows = [new_job() for _ in range(3)]
    for row in rows:  # separate transactions: distinct created_at
        store.insert_jobs([row])
    newest = store.list_jobs(limit=3)
    assert [record.id for record in newest] == [row.id for row in reversed(rows)]
    created = [record.created_at for record in newest]
    assert created == sorted(created, reverse=True)

    store.cancel(rows[1].id)
    cancelled = store.list_jobs(limit=1000, status=JobStatus.CANCELLED)
    assert all(record.status is JobStatus.CANCELLED for record in cancelled)
    ids = {record.id for record in cancelled}
    assert rows[1].id in ids
    assert rows[0].id not in ids and rows[2].id not in ids
    assert len(store.list_jobs(limit=2)) == 2


def test_store_on_a_missing_database_raises_service_unavailable(scratch_database_url: str
                                                                ) -> None:
    missing = JobStore.connect(scratch_database_url, connect_timeout_s=2)
    try:
        with pytest.raises(ServiceUnavailable) as raised:
            missing.get(str(uuid.uuid4()))
    finally:
        missing.close()
    assert raised.value.service == "PostgreSQL"
    assert "PostgreSQL" in str(raised.value)
    assert raised.value.__cause__ is not None


def test_store_on_a_database_without_the_jobs_table_raises_config_error(
        scratch_database_url: str) -> None:
    assert db_setup.create_database(scratch_database_url) is True
    empty = JobStore.connect(scratch_database_url)
    try:
        with pytest.raises(ConfigError, match="aidist db upgrade"):
            empty.count_by_status()
        with pytest.raises(ConfigError, match="aidist db upgrade"):
            empty.get(str(uuid.uuid4()))
        empty.ping()  # the server itself answers
    finally:
        empty.close()


def test_get_many_and_count_accept_more_ids_than_bind_parameters(
        store: JobStore, new_job: NewJobFactory) -> None:
    rows = [new_job(), new_job()]
    store.insert_jobs(rows)
    ids = [row.id for row in rows] + [str(uuid.uuid4()) for _ in range(66_000)]
    assert set(store.get_many(ids)) == {row.id for row in rows}
    assert store.count_by_status(ids)[JobStatus.QUEUED] == 2


def test_finished_among_reports_only_terminal_jobs(store: JobStore,
                                                   new_job: NewJobFactory) -> None:
    queued, ran, failed, cancelled = (new_job() for _ in range(4))
    store.insert_jobs([queued, ran, failed, cancelled])
    claims = {c.id: c for c in store.claim(first(ran.id, failed.id), "w")}
    store.finish([Outcome(ran.id, claims[ran.id].attempt, JobStatus.SUCCEEDED),
                  Outcome(failed.id, claims[failed.id].attempt, JobStatus.FAILED, "bad")])
    store.cancel(cancelled.id)
    found = {job_id: (status, error) for job_id, status, error in
             store.finished_among([queued.id, ran.id, failed.id, cancelled.id, "not-a-uuid"])}
    assert found == {ran.id: (JobStatus.SUCCEEDED, None), failed.id: (JobStatus.FAILED, "bad"),
                     cancelled.id: (JobStatus.CANCELLED, None)}


def test_claim_fails_a_job_that_used_up_its_attempts(store: JobStore,
                                                     new_job: NewJobFactory) -> None:
    job = new_job()
    store.insert_jobs([job])
    for attempt in (1, 2):  # two runs interrupted (worker deaths): redelivered each time
        (claim,) = store.claim(takeover(job.id), f"w{attempt}", max_attempts=2)
        assert claim.status is JobStatus.RUNNING and claim.attempt == attempt
    (claim,) = store.claim(takeover(job.id), "w3", max_attempts=2)
    assert claim.status is JobStatus.FAILED
    record = store.get(job.id)
    assert record.status is JobStatus.FAILED and record.finished_at is not None
    assert record.error is not None and "gave up after 2 attempts" in record.error
    assert store.claim(takeover(job.id), "w4", max_attempts=2) == []  # final now


def test_a_pipeline_step_continues_only_the_run_that_forwarded_it(
        store: JobStore, new_job: NewJobFactory) -> None:
    job = new_job()
    store.insert_jobs([job])
    (claim,) = store.claim(first(job.id), "step-0")
    assert store.claim([ClaimRequest(job.id, step=1, attempt=claim.attempt + 1)], "w") == []
    (step1,) = store.claim([ClaimRequest(job.id, step=1, attempt=claim.attempt)], "step-1")
    assert step1 == Claim(job.id, JobStatus.RUNNING, claim.attempt)  # not a new attempt
    assert store.claim([ClaimRequest(job.id, step=1, attempt=claim.attempt)], "w") == []
    # a stale redelivery of step 0 does not restart a job that has moved on
    assert store.claim(takeover(job.id), "w") == []
    # the redelivery of step 1 (its worker died) takes over, as a new attempt
    (again,) = store.claim([ClaimRequest(job.id, step=1, attempt=claim.attempt,
                                         takeover=True)], "w")
    assert again.attempt == claim.attempt + 1


def test_finish_keeps_a_durable_copy_found_by_cache_key(store: JobStore,
                                                        new_job: NewJobFactory) -> None:
    job, other = new_job(), new_job()
    store.insert_jobs([job, other])
    claims = {c.id: c for c in store.claim(first(job.id, other.id), "w")}
    store.finish([Outcome(job.id, claims[job.id].attempt, JobStatus.SUCCEEDED, result=b"\x01v"),
                  Outcome(other.id, claims[other.id].attempt, JobStatus.FAILED, "bad")])
    assert store.results_by_key([job.cache_key, other.cache_key, "absent"]) == {
        job.cache_key: b"\x01v"}
    assert store.results_by_key([]) == {}


def test_a_claim_says_which_jobs_have_a_twin_that_succeeded_with_its_result(
        store: JobStore, new_job: NewJobFactory) -> None:
    done = new_job()
    store.insert_jobs([done])
    (claim,) = store.claim(first(done.id), "w")
    assert not claim.twin_stored  # nothing identical has succeeded yet
    store.finish([Outcome(done.id, claim.attempt, JobStatus.SUCCEEDED, result=b"\x01r")])
    twin, failed_twin, alone = (new_job(cache_key=done.cache_key), new_job(), new_job())
    failing = new_job(cache_key=failed_twin.cache_key)
    store.insert_jobs([failing])
    (failed,) = store.claim(first(failing.id), "w")
    store.finish([Outcome(failing.id, failed.attempt, JobStatus.FAILED, "bad")])
    store.insert_jobs([twin, failed_twin, alone])
    claims = {c.id: c.twin_stored for c in store.claim(first(twin.id, failed_twin.id,
                                                                alone.id), "w")}
    assert claims == {twin.id: True, failed_twin.id: False, alone.id: False}


def test_sweep_hands_over_only_old_unsent_queued_jobs_once(store: JobStore,
                                                           new_job: NewJobFactory) -> None:
    unsent, sent, running = new_job(), new_job(), new_job()
    store.insert_jobs([unsent, sent, running])
    store.mark_sent([sent.id])
    store.claim(first(running.id), "w")
    assert store.sweep_unsent(3600, 100, lambda rows: [r.id for r in rows]) == 0  # too young
    seen: list[str] = []

    def publish(rows: list[UnsentJob]) -> list[str]:
        seen.extend(row.id for row in rows)
        return [row.id for row in rows if row.id == unsent.id]

    store.sweep_unsent(0, 100_000, publish)
    assert unsent.id in seen and sent.id not in seen and running.id not in seen
    again: list[str] = []
    store.sweep_unsent(0, 100_000, lambda rows: again.extend(r.id for r in rows) or [])
    assert unsent.id not in again  # marked sent by the first sweep


def test_a_worker_may_claim_again_what_it_holds_without_a_new_attempt(
        store: JobStore, new_job: NewJobFactory) -> None:
    job = new_job()
    store.insert_jobs([job])
    assert store.claim(first(job.id), "w") == [Claim(job.id, JobStatus.RUNNING, 1)]
    # its claim retried after a lost connection: still attempt 1, so its finish still counts
    assert store.claim(first(job.id), "w") == [Claim(job.id, JobStatus.RUNNING, 1)]
    assert store.claim(first(job.id), "other") == []


def test_a_twin_of_a_running_job_follows_it_and_ends_with_it(store: JobStore,
                                                             new_job: NewJobFactory) -> None:
    leader = new_job()
    twin, twin_in_flush = new_job(cache_key=leader.cache_key), new_job(cache_key=leader.cache_key)
    store.insert_jobs([leader, twin, twin_in_flush])
    (lead,) = store.claim(first(leader.id), "w1")
    assert lead.follows is None
    (follow,) = store.claim(first(twin.id), "w2")
    assert follow.status is JobStatus.RUNNING and follow.follows == leader.id
    changed = store.finish([Outcome(leader.id, lead.attempt, JobStatus.SUCCEEDED,
                                    result=b"\x01shared")])
    assert changed == 1  # the leader's row; its follower ended in the same statement
    record = store.get(twin.id)
    assert record.status is JobStatus.SUCCEEDED and record.finished_at is not None
    # a twin that starts after the leader finished runs (or takes the stored result) itself
    (late,) = store.claim(first(twin_in_flush.id), "w3")
    assert late.follows is None


def test_followers_of_a_leader_that_ended_without_them_are_settled(
        store: JobStore, new_job: NewJobFactory) -> None:
    cancelled_leader, failed_leader = new_job(), new_job()
    orphan = new_job(cache_key=cancelled_leader.cache_key)
    failing = new_job(cache_key=failed_leader.cache_key)
    store.insert_jobs([cancelled_leader, failed_leader, orphan, failing])
    store.claim(first(cancelled_leader.id, failed_leader.id), "w1")
    assert all(c.follows for c in store.claim(first(orphan.id, failing.id), "w2"))
    store.cancel(cancelled_leader.id)
    # the other leader fails without a finish statement, as a claim out of attempts does
    with store.engine.begin() as connection:
        connection.execute(text("UPDATE jobs SET status = 'failed', error = 'out of attempts' "
                                "WHERE id = :id"), {"id": failed_leader.id})
    assert store.settle_followers() >= 2
    requeued, failed = store.get(orphan.id), store.get(failing.id)
    assert requeued.status is JobStatus.QUEUED  # runs on its own now: unsent, for the sweeper
    assert failed.status is JobStatus.FAILED and failed.error == "out of attempts"
    swept: list[str] = []

    def publish(rows: list[UnsentJob]) -> list[str]:
        swept.extend(row.id for row in rows if row.id == orphan.id)
        return swept

    store.sweep_unsent(0, 100_000, publish)
    assert swept == [orphan.id]


def test_holders_names_the_other_workers_running_jobs(store: JobStore,
                                                      new_job: NewJobFactory) -> None:
    mine, theirs, queued = new_job(), new_job(), new_job()
    store.insert_jobs([mine, theirs, queued])
    store.claim(first(mine.id), "me")
    store.claim(first(theirs.id), "them")
    assert store.holders([mine.id, theirs.id, queued.id, "not-a-uuid"], other_than="me") == {
        theirs.id: "them"}
    assert store.holders([], other_than="me") == {}


def test_expire_overdue_expires_only_queued_jobs_past_their_deadline(
        store: JobStore, new_job: NewJobFactory) -> None:
    now = datetime.now(UTC)
    late = new_job(deadline=now - timedelta(seconds=1))
    timely = new_job(deadline=now + timedelta(hours=1))
    no_deadline = new_job()
    finished_late = new_job(status=JobStatus.SUCCEEDED, deadline=now - timedelta(minutes=1))
    running = new_job(deadline=now + timedelta(hours=1))
    store.insert_jobs([late, timely, no_deadline, finished_late, running])
    store.claim(first(running.id), "worker-a")
    with store.engine.begin() as connection:  # its deadline passes while it runs
        connection.execute(text("UPDATE jobs SET deadline = now() - interval '1 second' "
                                "WHERE id = :id"), {"id": running.id})

    assert store.expire_overdue(100_000) >= 1  # (rows other tests left overdue may come along)
    records = store.get_many([late.id, timely.id, no_deadline.id, finished_late.id, running.id])
    assert records[late.id].status is JobStatus.EXPIRED
    assert records[late.id].finished_at is not None
    assert records[late.id].started_at is None  # it never ran
    assert {records[j.id].status for j in (timely, no_deadline)} == {JobStatus.QUEUED}
    assert records[finished_late.id].status is JobStatus.SUCCEEDED
    assert records[running.id].status is JobStatus.RUNNING  # a started run is not cut short
    assert store.claim(first(late.id), "worker-b") == []  # its message, if any, does not run it


def test_expire_overdue_takes_at_most_limit_rows_a_call(store: JobStore,
                                                        new_job: NewJobFactory) -> None:
    store.expire_overdue(100_000)  # whatever other tests left overdue
    past = datetime.now(UTC) - timedelta(seconds=1)
    jobs = [new_job(deadline=past) for _ in range(3)]
    store.insert_jobs(jobs)
    assert store.expire_overdue(2) == 2
    assert store.count_by_status([job.id for job in jobs])[JobStatus.EXPIRED] == 2
    assert store.expire_overdue(2) == 1
    assert store.expire_overdue(2) == 0
    assert store.count_by_status([job.id for job in jobs])[JobStatus.EXPIRED] == 3


def test_the_queued_deadline_index_serves_the_expiry_scan(store: JobStore) -> None:
    with store.engine.connect() as connection:
        definition = connection.execute(text(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_jobs_queued_deadline'"
        )).scalar()
    assert definition is not None
    assert "(deadline)" in definition and "queued" in definition and "NOT NULL" in definition


@pytest.mark.parametrize("awkward", ['with "quotes"', "back\\slash\\", "{braces},commas",
                                     "NULL", "", "ünïcødé ✓", "trailing space "])
def test_text_columns_keep_any_value_through_the_array_literals(
        store: JobStore, new_job: NewJobFactory, awkward: str) -> None:
    job = replace(new_job(), target=awkward, tenant=awkward, idempotency_key=awkward,
                  params={"note": awkward})
    store.insert_jobs([job])
    worker = f"w{awkward}"
    (claim,) = store.claim([ClaimRequest(job.id, holder=awkward)], worker=worker)
    assert store.holders([job.id], other_than="") == {job.id: worker}
    store.finish([Outcome(job.id, claim.attempt, JobStatus.FAILED, error=awkward)])
    record = store.get(job.id)
    assert (record.target, record.tenant, record.error) == (awkward, awkward, awkward)
    assert record.params == {"note": awkward}


def test_payloads_and_results_of_any_size_come_back_byte_for_byte(
        store: JobStore, new_job: NewJobFactory) -> None:
    # Each statement takes its bytea column as one value and every row's slice of it: empty,
    # missing, binary with every byte value, and large values must each land in their own row.
    values: list[bytes | None] = [b"", None, bytes(range(256)) * 3, b"\x00", b"x" * 300_000,
                                  b"\\x41", b"last"]
    jobs = [new_job(payload=value) for value in values]
    store.insert_jobs(jobs)
    stored = store.payloads([job.id for job in jobs])
    assert stored == {job.id: value for job, value in zip(jobs, values, strict=True)
                      if value is not None}
    claims = {c.id: c for c in store.claim(first(*[job.id for job in jobs]), "worker-bytes")}
    results = list(reversed(values))
    changed = store.finish_returning([
        Outcome(job.id, claims[job.id].attempt, JobStatus.SUCCEEDED, result=result)
        for job, result in zip(jobs, results, strict=True)])
    assert changed == {job.id for job in jobs}
    assert {r.status for r in store.get_many([job.id for job in jobs]).values()} == {
        JobStatus.SUCCEEDED}
    assert store.results_by_key([job.cache_key for job in jobs]) == {
        job.cache_key: result for job, result in zip(jobs, results, strict=True)
        if result is not None}


def test_an_insert_larger_than_one_page_lands_whole(store: JobStore,
                                                    new_job: NewJobFactory) -> None:
    rows = [new_job(payload=str(i).encode()) for i in range(INSERT_PAGE + 3)]
    store.insert_jobs(rows)
    assert store.count_by_status([row.id for row in rows])[JobStatus.QUEUED] == len(rows)
    assert store.payloads([rows[-1].id]) == {rows[-1].id: str(INSERT_PAGE + 2).encode()}


def test_claims_and_finishes_are_planned_once_per_connection(scratch_database_url: str,
                                                             new_job: NewJobFactory) -> None:
    # One-job claims and finishes (single-message load) used to be planned at every run: the
    # custom plans saw their arrays' lengths and always looked cheaper than the generic one.
    db_setup.upgrade(scratch_database_url)
    store = JobStore.connect(scratch_database_url)
    try:
        jobs = [new_job() for _ in range(16)]
        store.insert_jobs([new_job() for _ in range(3000)] + jobs)
        with store.engine.begin() as connection:  # statistics of a table in use
            connection.execute(text("ANALYZE jobs"))
        for job in jobs:  # one thread: every call takes the pool's one connection
            (claim,) = store.claim([ClaimRequest(job.id)], "w")
            assert store.finish([Outcome(job.id, claim.attempt, JobStatus.SUCCEEDED)]) == 1
        with store.engine.connect() as connection:
            plans = dict(connection.execute(text(
                "SELECT CASE WHEN statement LIKE '%%WITH done AS%%' THEN 'finish' "
                "WHEN statement LIKE '%%UPDATE jobs SET%%status = CASE%%' THEN 'claim' END, "
                "generic_plans FROM pg_prepared_statements")).all())
    finally:
        store.close()
    # psycopg prepares a statement at its fifth run, Postgres plans its first five runs as
    # prepared statement itself, then keeps the generic plan: 16 runs, 6 of them generic.
    assert plans.get("claim", 0) >= 6 and plans.get("finish", 0) >= 6, plans
