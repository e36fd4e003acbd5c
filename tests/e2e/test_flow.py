"""End to end: real worker processes consume real RabbitMQ queues, state in Postgres, results in
Redis."""

from __future__ import annotations

import numpy as np
import pytest

from aidist import JobStatus
from aidist.errors import JobFailed
from db.store import JobStore
from producers import Client

pytestmark = pytest.mark.e2e


def test_infer_returns_normalised_minilm_vector(workers: object, client: Client,
                                                store: JobStore) -> None:
    job = client.infer("minilm", "The quick brown fox jumps over the lazy dog.")
    vector = job.result(timeout=60)
    assert vector.shape == (384,)
    assert vector.dtype == np.float32
    assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-4
    record = store.get(job.id)
    assert record.status is JobStatus.SUCCEEDED
    assert record.attempts == 1
    assert record.worker is not None
    assert record.started_at is not None and record.finished_at is not None
    assert not record.cache_hit


def test_one_bad_input_fails_only_its_job(workers: object, client: Client) -> None:
    texts = ["fine one", "this goes boom", "fine two", "fine three"]
    jobs = client.infer_many("flaky", texts)
    finished = list(client.as_completed(jobs, timeout=60))
    assert {j.id for j in finished} == {j.id for j in jobs}
    statuses = [job.status() for job in jobs]
    assert statuses == [JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.SUCCEEDED,
                        JobStatus.SUCCEEDED]
    with pytest.raises(JobFailed, match="flaky model refuses"):
        jobs[1].result(timeout=5)
    assert [jobs[i].result(timeout=5) for i in (0, 2, 3)] == [len(texts[i]) for i in (0, 2, 3)]
    # the worker keeps going after the failure
    assert client.infer("flaky", "still alive").result(timeout=60) == len("still alive")


def test_batch_that_runs_out_of_memory_is_retried_item_by_item(workers: object,
                                                               client: Client) -> None:
    texts = [f"item {i}" for i in range(7)]
    assert client.map("oom-on-batches", texts, timeout=60) == [t.upper() for t in texts]
