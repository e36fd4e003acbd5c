"""The claim's takeover fences on PostgreSQL (db.statements.CLAIM): a takeover takes a run only
from the worker it saw dead, and a redelivered pipeline step that had not begun is continued
without spending an attempt; ``runs`` is what a redelivery reads first."""

from __future__ import annotations

from aidist.jobs import JobStatus
from db.records import ClaimRequest
from db.store import JobStore
from tests.integration.conftest import NewJobFactory, first


def test_a_takeover_takes_a_run_only_from_the_worker_it_saw_dead(
        store: JobStore, new_job: NewJobFactory) -> None:
    job = new_job()
    store.insert_jobs([job])
    store.claim(first(job.id), "dead")
    # two copies of its message came back; the first one's worker took the run over
    (taken,) = store.claim([ClaimRequest(job.id, takeover=True, holder="dead")], "b")
    assert taken.attempt == 2
    assert store.claim([ClaimRequest(job.id, takeover=True, holder="dead")], "c") == []
    record = store.get(job.id)
    assert (record.worker, record.attempts) == ("b", 2)


def test_a_redelivered_step_that_had_not_begun_spends_no_attempt(
        store: JobStore, new_job: NewJobFactory) -> None:
    job = new_job()
    store.insert_jobs([job])
    (claim,) = store.claim(first(job.id), "cpu")  # step 0 ran there and forwarded step 1
    (step,) = store.claim([ClaimRequest(job.id, step=1, attempt=claim.attempt, takeover=True)],
                          "gpu")
    assert step.attempt == claim.attempt
    (again,) = store.claim([ClaimRequest(job.id, step=1, attempt=claim.attempt, takeover=True,
                                         holder="gpu")], "gpu-2")
    assert again.attempt == claim.attempt + 1  # step 1's own run, lost with its worker


def test_runs_tell_status_step_and_worker(store: JobStore, new_job: NewJobFactory) -> None:
    running, queued = new_job(), new_job()
    store.insert_jobs([running, queued])
    (claim,) = store.claim(first(running.id), "w")
    store.claim([ClaimRequest(running.id, step=1, attempt=claim.attempt)], "w")
    runs = store.runs([running.id, queued.id, "not-a-uuid"])
    assert (runs[running.id].status, runs[running.id].step, runs[running.id].worker) == (
        JobStatus.RUNNING, 1, "w")
    assert (runs[queued.id].status, runs[queued.id].worker) == (JobStatus.QUEUED, None)
    assert store.runs([]) == {}
