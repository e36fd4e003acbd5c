"""Lifecycle through real workers: cancel, timeout, deadline, cache hits, load failures,
preprocessing."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from aidist import JobStatus
from aidist.errors import JobCancelled, JobExpired, JobFailed, JobTimeout
from db.store import JobStore
from models.ops import load_tokenizer
from producers import Client, Job
from tests.conftest import WorkerProcess, wait_for

pytestmark = pytest.mark.e2e


def _occupy_gpu_worker(client: Client, seconds: float = 3.0) -> Job:
    """Hold the (solo) gpu worker with a sleepy job and wait until it is running."""
    blocker = client.infer("sleepy", str(seconds))
    wait_for(lambda: blocker.status() is JobStatus.RUNNING, timeout=120,
             message="sleepy job to start")
    return blocker


def test_cancelled_queued_job_never_runs(workers: object, client: Client, store: JobStore) -> None:
    blocker = _occupy_gpu_worker(client)
    job = client.infer("toy-classifier", "cancel me before I run")
    assert job.cancel() is True
    assert job.status() is JobStatus.CANCELLED
    assert blocker.result(timeout=120) == 3.0
    # a job queued behind the cancelled one runs, so the worker has passed the cancelled message
    follower = client.infer("toy-classifier", "run me after the cancelled one")
    follower.result(timeout=60)
    record = store.get(job.id)
    assert record.status is JobStatus.CANCELLED
    assert record.attempts == 0 and record.started_at is None and record.worker is None
    with pytest.raises(JobCancelled):
        job.result(timeout=5)
    assert job.cancel() is True  # idempotent: still cancelled
    assert follower.cancel() is False  # finished jobs cannot be cancelled
    assert follower.status() is JobStatus.SUCCEEDED


def test_result_timeout_raises_and_job_keeps_going(workers: object, client: Client) -> None:
    job = client.infer("sleepy", "1.5")
    with pytest.raises(JobTimeout) as caught:
        job.result(timeout=0.2)
    assert caught.value.job_id == job.id
    assert job.result(timeout=120) == 1.5


def test_past_deadline_expires_without_running(workers: object, client: Client,
                                               store: JobStore) -> None:
    job = client.infer("toy-classifier", "too late", deadline=datetime.now(UTC) - timedelta(1))
    with pytest.raises(JobExpired):
        job.result(timeout=60)
    record = store.get(job.id)
    assert record.status is JobStatus.EXPIRED
    assert record.finished_at is not None


def test_second_submit_is_a_cache_hit_without_worker(workers: object, client: Client,
                                                     store: JobStore) -> None:
    text = f"cache me {np.random.default_rng().integers(1 << 40)}"
    first = client.infer("toy-classifier", text)
    expected = first.result(timeout=60)
    second = client.infer("toy-classifier", text)
    assert second.status() is JobStatus.SUCCEEDED
    np.testing.assert_array_equal(second.result(timeout=1), expected)
    record = store.get(second.id)
    assert record.cache_hit and record.worker is None and record.started_at is None
    assert record.attempts == 0


def test_model_that_cannot_load_fails_its_jobs_with_the_load_error_after_grace(
        workers: dict[str, WorkerProcess], client: Client) -> None:
    job = client.infer("unloadable", "anything")
    with pytest.raises(JobFailed, match="corrupt"):
        job.result(timeout=60)
    log = workers["gpu"].log()
    assert "not ready for unloadable" in log
    assert "no worker can run unloadable" in log
    assert client.infer("toy-classifier", "others still run").result(timeout=60).shape == (4,)


def test_preprocessing_ops_on_the_cpu_pool(workers: object, client: Client) -> None:
    text = "Hello  world,\u00a0this is\tan aidist test."
    assert client.preprocess("tokenize", text).result(timeout=60) == load_tokenizer().encode(
        text).ids
    assert client.preprocess("normalize", text, {"lowercase": True}).result(timeout=60) == (
        "hello world, this is an aidist test.")
    words = " ".join(f"w{i}" for i in range(50))
    chunks = client.preprocess("chunk", words, {"size": 20, "overlap": 5}).result(timeout=60)
    assert chunks[0].split() == [f"w{i}" for i in range(20)]
    assert chunks[1].split()[:5] == chunks[0].split()[-5:]
    assert chunks[-1].split()[-1] == "w49"


def test_map_keeps_input_order_with_progress(workers: object, client: Client,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    texts = [f"order check {i} " + "x" * (i % 7) for i in range(300)]
    out = client.map("flaky", texts, progress=True, timeout=120)
    assert out == [len(t) for t in texts]
    assert "300/300" in capsys.readouterr().out


def test_as_completed_yields_every_job_once(workers: object, client: Client) -> None:
    jobs = client.infer_many("toy-classifier", [f"completion {i}" for i in range(40)])
    seen = [job.id for job in client.as_completed(jobs, timeout=120)]
    assert sorted(seen) == sorted(job.id for job in jobs)
    assert all(job.done() for job in jobs)


def test_get_handle_from_another_client_sees_result(workers: object, client: Client,
                                                    settings: object) -> None:
    job = client.infer("flaky", "seen from elsewhere")
    with Client(client.settings) as other:
        handle = other.get(job.id)
        assert handle.result(timeout=60) == len("seen from elsewhere")
        assert handle.status() is JobStatus.SUCCEEDED


def test_imap_streams_outputs_in_input_order(workers: object, client: Client) -> None:
    texts = [f"stream {i} " + "y" * (i % 5) for i in range(150)]
    stream = client.imap("flaky", texts, timeout=120)
    assert next(stream) == len(texts[0])
    assert list(stream) == [len(t) for t in texts[1:]]


def test_result_lost_from_redis_is_recomputed(workers: object, client: Client,
                                              store: JobStore) -> None:
    job = client.infer("toy-classifier", f"recompute me {np.random.default_rng().random()}")
    first = job.result(timeout=60)
    client.cache.client.delete(client.cache.result_key(job.cache_key))  # as if Redis lost it
    again = job.result(timeout=60)
    np.testing.assert_array_equal(again, first)
    assert client.cache.get_many([job.cache_key]) != [None]  # back in Redis under the same key
    pipeline = client.pipeline(["normalize", "tokenize"], "  Lost  PIPELINE result ")
    tokens = pipeline.result(timeout=60)
    client.cache.client.delete(client.cache.result_key(pipeline.cache_key))
    assert pipeline.result(timeout=60) == tokens


def test_cancelling_a_running_job_drops_its_result(workers: object, client: Client,
                                                   store: JobStore) -> None:
    seconds = 2.0 + (uuid.uuid4().int % 9973) / 1e7  # an input (cache key) of this test only
    job = _occupy_gpu_worker(client, seconds=seconds)  # running now
    assert job.cancel() is True
    follower = client.infer("toy-classifier", "after the cancelled running job")
    follower.result(timeout=120)  # the worker has moved past the cancelled job's batch
    assert store.get(job.id).status is JobStatus.CANCELLED
    with pytest.raises(JobCancelled):
        job.result(timeout=5)
    # its batch ran to the end, but the output was thrown away, not cached
    assert client.cache.get_many([job.cache_key]) == [None]
    assert store.results_by_key([job.cache_key]) == {}
