"""A job that kills its worker process: redelivered (never lost), then failed once it has used up
its attempts; the pool replaces its dead processes and carries on."""

from __future__ import annotations

import pytest

from aidist import JobStatus
from aidist.errors import JobFailed
from db.store import JobStore
from producers import Client
from tests.conftest import WorkerProcess

pytestmark = pytest.mark.e2e


def test_job_that_kills_its_worker_fails_after_its_attempts(
        workers: dict[str, WorkerProcess], client: Client, store: JobStore) -> None:
    killer = client.preprocess("crashing", "die")
    with pytest.raises(JobFailed, match="gave up after 3 attempts"):
        killer.result(timeout=120)
    record = store.get(killer.id)
    assert record.status is JobStatus.FAILED and record.attempts == 4  # 3 runs + the refusal
    assert workers["cpu"].process.poll() is None  # the pool is still up
    assert client.preprocess("crashing", "live").result(timeout=60) == "live"


def test_a_killer_in_a_packed_message_does_not_take_its_message_mates_down(
        workers: dict[str, WorkerProcess], client: Client) -> None:
    jobs = client.preprocess_many("crashing", ["first", "die", "second", "third"])
    assert len({job.id for job in jobs}) == 4  # one message: they were submitted together
    list(client.as_completed(jobs, timeout=180))
    assert [job.status() for job in jobs] == [JobStatus.SUCCEEDED, JobStatus.FAILED,
                                             JobStatus.SUCCEEDED, JobStatus.SUCCEEDED]
    assert [client.results_of([jobs[i]])[0] for i in (0, 2, 3)] == ["first", "second", "third"]
    assert "split a redelivered message into 4 single-job messages" in workers["cpu"].log()
