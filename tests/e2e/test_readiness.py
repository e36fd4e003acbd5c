"""A model that fails to load: the worker leaves its queue to others, reports it, and fails its jobs
with the load error only after the grace period, when no worker at all can run them."""

from __future__ import annotations

from pathlib import Path

import pytest

from aidist.config import Settings
from aidist.errors import JobFailed
from aidist.jobs import JobKind, JobStatus
from aidist.transport import queue_name, queue_stats
from db.cache import ResultCache
from producers import Client
from tests.conftest import delete_queues, make_settings, start_worker, wait_for

pytestmark = pytest.mark.e2e


def test_unloadable_model_waits_for_a_capable_worker_then_fails(settings: Settings,
                                                                tmp_path: Path) -> None:
    own = make_settings(**{**settings.model_dump(), "namespace": f"{settings.namespace}r",
                           "load_failure_grace_s": 8.0})
    worker = start_worker(own, "gpu", tmp_path, "--models", "toy-classifier,unloadable",
                          serving=["toy-classifier"])
    try:
        unloadable_queue = queue_name(own.namespace, JobKind.INFER, "unloadable")
        with Client(own) as client:
            job = client.infer("unloadable", "waits first")
            # while the grace period runs, nobody consumes the queue: the job stays queued
            (stats,) = queue_stats(own.broker_url, [unloadable_queue])
            assert stats.consumers == 0 and job.status() is JobStatus.QUEUED
            infos = {m.name: m for m in client.models()}
            assert any("gpu-" in w for w in infos["toy-classifier"].loaded_on)
            assert infos["unloadable"].not_ready_on and not infos["unloadable"].loaded_on
            with pytest.raises(JobFailed, match="corrupt"):
                job.result(timeout=120)
            wait_for(lambda: queue_stats(own.broker_url, [unloadable_queue])[0].consumers == 1,
                     timeout=30, message="fallback consumer")
            assert "failing its jobs with the load error" in worker.log()
    finally:
        assert worker.stop() == 0
        delete_queues(own)
        ResultCache.connect(own.redis_url, own.namespace).delete_namespace()
