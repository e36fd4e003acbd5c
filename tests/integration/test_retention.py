"""Retention on the real PostgreSQL (``db.retention``): finished jobs past the cutoff go with
their history and the blobs no remaining row references; queued, running, recently finished
jobs and leaders a running job still follows stay; batches, the one-prune-at-a-time lock, a
blob store that fails, and the workers' sweeper pass.

A database of this module's own: a prune deletes every old row of its database, and the counts
asserted here must be this module's rows only.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import make_url, text

from aidist.config import Settings
from aidist.errors import ServiceUnavailable
from aidist.jobs import JobStatus
from db import setup as db_setup
from db.file_blobs import FileBlobStore
from db.records import NewJob, Outcome
from db.retention import _LOCK_KEY, JobPruner, blob_deleter
from db.store import JobStore
from tests.conftest import make_settings
from tests.integration.conftest import NewJobFactory, first, unique
from workers.sweeper import prune_once, sweeper

pytestmark = pytest.mark.integration

DAY_S = 86_400.0
RETENTION_S = 3600.0


@pytest.fixture(scope="module")
def database_url(settings: Settings) -> Iterator[str]:
    url = make_url(settings.database_url).set(database=unique("aidist_prune_"))
    rendered = url.render_as_string(hide_password=False)
    db_setup.upgrade(rendered)
    yield rendered
    db_setup.drop_database(rendered)


@pytest.fixture
def store(database_url: str) -> Iterator[JobStore]:
    """A job store on the module's database, emptied first."""
    job_store = JobStore.connect(database_url)
    with job_store.engine.begin() as connection:
        connection.execute(text("TRUNCATE jobs, job_events"))
    yield job_store
    job_store.close()


class RecordingBlobs:
    """A ``delete_blobs`` callable that records the keys it is handed (or fails, when told)."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[list[str]] = []
        self.fail = fail

    def __call__(self, keys: Sequence[str]) -> int:
        if self.fail:
            raise ServiceUnavailable("blob store", "file:///nowhere", "disk gone")
        self.calls.append(list(keys))
        return len(keys)


def age(store: JobStore, job_ids: Sequence[str], seconds: float, *,
        finished: bool = True) -> None:
    """Move the jobs' creation (and end) ``seconds`` into the past (no status changes, so the
    history triggers record nothing)."""
    ended = ", finished_at = finished_at - make_interval(secs => :s)" if finished else ""
    with store.engine.begin() as connection:
        connection.execute(text(f"UPDATE jobs SET created_at = created_at - make_interval("
                                f"secs => :s){ended} WHERE id = ANY(:ids)"),
                           {"s": seconds, "ids": [uuid.UUID(i) for i in job_ids]})


def run(store: JobStore, job: NewJob, status: JobStatus, **outcome: Any) -> None:
    """Insert ``job``, claim it and end it with ``status``: a row with a real history."""
    store.insert_jobs([job])
    (claim,) = store.claim(first(job.id), "gpu-1@test")
    store.finish([Outcome(job.id, claim.attempt, status, **outcome)])


def events_of(store: JobStore, job_ids: Sequence[str]) -> int:
    with store.engine.begin() as connection:
        return int(connection.execute(text(
            "SELECT count(*) FROM job_events WHERE job_id = ANY(:ids)"),
            {"ids": [uuid.UUID(i) for i in job_ids]}).scalar_one())


def test_prune_deletes_old_finished_jobs_their_history_and_only_unreferenced_blobs(
        store: JobStore, new_job: NewJobFactory) -> None:
    kept_key, only_old, shared_old = "a" * 64, "b" * 64, "c" * 64
    succeeded = new_job(blob_keys=(kept_key, only_old))
    failed = new_job(blob_keys=(only_old, shared_old))
    run(store, succeeded, JobStatus.SUCCEEDED, result=b"r")
    run(store, failed, JobStatus.FAILED, error="boom")
    cancelled, expired = new_job(), new_job(deadline=datetime.now(UTC) - timedelta(seconds=1))
    store.insert_jobs([cancelled, expired])
    store.cancel(cancelled.id)
    assert store.expire_overdue(10) == 1
    old = [succeeded.id, failed.id, cancelled.id, expired.id]

    # Kept: a recent job that still references kept_key; queued and running jobs created long
    # ago; one created long ago that finished only now; a cancelled leader a running job
    # still follows (the sweeper settles the follower first).
    recent = new_job(blob_keys=(kept_key,))
    run(store, recent, JobStatus.SUCCEEDED, result=b"r")
    queued, running, late = new_job(), new_job(), new_job()
    store.insert_jobs([queued, running, late])
    store.claim(first(running.id, late.id), "gpu-1@test")
    store.finish([Outcome(late.id, 1, JobStatus.SUCCEEDED, result=b"r")])
    key = uuid.uuid4().hex
    leader, follower = new_job(cache_key=key), new_job(cache_key=key)
    store.insert_jobs([leader, follower])
    store.claim(first(leader.id), "gpu-1@test")
    (follows,) = store.claim(first(follower.id), "gpu-2@test")
    assert follows.follows == leader.id
    store.cancel(leader.id)
    age(store, [*old, leader.id], DAY_S)
    age(store, [queued.id, running.id, late.id], DAY_S, finished=False)
    kept = [recent.id, queued.id, running.id, late.id, leader.id, follower.id]
    old_events, kept_events = events_of(store, old), events_of(store, kept)
    assert old_events == 10  # queued, running, its end (x2); queued, cancelled / expired (x2)

    blobs = RecordingBlobs()
    pruned = JobPruner(store.engine, blobs).prune(RETENTION_S)

    assert (pruned.jobs, pruned.events, pruned.blobs) == (4, old_events, 2)
    assert blobs.calls == [sorted([only_old, shared_old])]  # kept_key: `recent` still has it
    assert store.existing(old) == set()
    assert events_of(store, old) == 0
    assert store.existing(kept) == set(kept)
    assert events_of(store, kept) == kept_events
    counts = store.count_by_status()
    assert (counts[JobStatus.QUEUED], counts[JobStatus.RUNNING]) == (1, 2)

    again = JobPruner(store.engine, blobs).prune(RETENTION_S)
    assert (again.jobs, again.events, len(blobs.calls)) == (0, 0, 1)


def test_prune_goes_in_batches_up_to_a_limit(store: JobStore, new_job: NewJobFactory) -> None:
    jobs = [new_job(status=JobStatus.SUCCEEDED, cache_hit=True) for _ in range(5)]
    store.insert_jobs(jobs)
    age(store, [j.id for j in jobs], DAY_S)
    pruner = JobPruner(store.engine)
    seen: list[int] = []

    first_pass = pruner.prune(RETENTION_S, batch=2, limit=3,
                              progress=lambda total: seen.append(total.jobs))
    assert (first_pass.jobs, seen) == (3, [2, 3])
    assert len(store.existing([j.id for j in jobs])) == 2
    assert pruner.prune(RETENTION_S, batch=2).jobs == 2


def test_a_prune_that_finds_another_running_skips_or_waits(
        store: JobStore, new_job: NewJobFactory) -> None:
    job = new_job(status=JobStatus.SUCCEEDED, cache_hit=True)
    store.insert_jobs([job])
    age(store, [job.id], DAY_S)
    pruner = JobPruner(store.engine)
    with store.engine.connect() as other, other.begin():
        other.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
        skipped = pruner.prune(RETENTION_S)
    assert (skipped.busy, skipped.jobs) == (True, 0)
    assert store.existing([job.id]) == {job.id}
    done = pruner.prune(RETENTION_S, wait=True)
    assert (done.busy, done.jobs) == (False, 1)


def test_a_blob_store_that_fails_or_is_missing_leaves_the_rows_and_their_keys(
        store: JobStore, new_job: NewJobFactory) -> None:
    job = new_job(status=JobStatus.SUCCEEDED, cache_hit=True, blob_keys=("d" * 64,))
    plain = new_job(status=JobStatus.SUCCEEDED, cache_hit=True)
    store.insert_jobs([job, plain])
    age(store, [job.id, plain.id], DAY_S)
    assert JobPruner(store.engine).prune(RETENTION_S).jobs == 1  # no blob store: plain only
    with pytest.raises(ServiceUnavailable):
        JobPruner(store.engine, RecordingBlobs(fail=True)).prune(RETENTION_S)
    assert store.existing([job.id]) == {job.id}
    blobs = RecordingBlobs()
    assert JobPruner(store.engine, blobs).prune(RETENTION_S).jobs == 1
    assert blobs.calls == [["d" * 64]]


def test_the_sweepers_pass_prunes_a_bounded_amount_and_logs_it(
        store: JobStore, new_job: NewJobFactory, database_url: str,
        caplog: pytest.LogCaptureFixture) -> None:
    jobs = [new_job(status=JobStatus.SUCCEEDED, cache_hit=True) for _ in range(3)]
    store.insert_jobs(jobs)
    age(store, [j.id for j in jobs], DAY_S)
    pruner = JobPruner(store.engine)
    bounded = make_settings(database_url=database_url, retention_s=RETENTION_S,
                            prune_per_sweep=2, sweep_after_s=DAY_S)

    assert prune_once(make_settings(retention_s=0), pruner).jobs == 0  # 0: keep for ever
    with caplog.at_level(logging.INFO, logger="aidist.sweeper"):
        assert prune_once(bounded, pruner).jobs == 2
        assert prune_once(bounded, pruner).jobs == 1
        assert prune_once(bounded, pruner).jobs == 0
    lines = [r.getMessage() for r in caplog.records if r.name == "aidist.sweeper"]
    assert len(lines) == 2 and lines[0].startswith("pruned 2 finished jobs that ended over")

    more = new_job(status=JobStatus.SUCCEEDED, cache_hit=True)
    store.insert_jobs([more])
    age(store, [more.id], DAY_S)
    published: list[str] = []
    duty = sweeper(bounded, store, lambda queue, *_: published.append(queue), pruner)
    duty.loop.step()  # one pass of the worker hook: sweep (nothing unsent is old), then prune
    assert store.existing([more.id]) == set()
    assert published == []


def test_prune_deletes_the_unreferenced_blobs_from_a_real_file_store(
        store: JobStore, new_job: NewJobFactory, tmp_path: Path) -> None:
    """The wiring the workers and `aidist db prune` use: ``blob_deleter`` over a real store."""
    blobs = FileBlobStore(tmp_path / "blobs")
    gone, stays = blobs.put(b"only the old job's output"), blobs.put(b"shared with a recent job")
    old, recent = new_job(blob_keys=(gone.key, stays.key)), new_job(blob_keys=(stays.key,))
    run(store, old, JobStatus.SUCCEEDED, result=b"r")
    run(store, recent, JobStatus.SUCCEEDED, result=b"r")
    age(store, [old.id], DAY_S)
    pruned = JobPruner(store.engine, blob_deleter(blobs, grace_s=0)).prune(RETENTION_S)
    assert (pruned.jobs, pruned.blobs) == (1, 1)
    assert (blobs.exists(gone.key), blobs.exists(stays.key)) == (False, True)
