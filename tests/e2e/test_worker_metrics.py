"""``aidist worker --metrics-port``: a cpu pool's scrape adds up its prefork children (each job
counted once, whichever child ran it), a gpu pool serves every series the code declares with
the labels it declares, credentials are required, and ``/healthz`` says ready once warm."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from aidist.config import Settings
from db import ResultCache
from producers import Client
from tests.conftest import (
    WorkerProcess,
    delete_queues,
    free_port,
    make_settings,
    start_worker,
    wait_for,
)
from tests.e2e.scraping import get, scrape, value
from workers.metrics import exported_series

pytestmark = pytest.mark.e2e
AUTH = "scraper:metrics-secret"
LABELS = {  # every series' label names, as a scrape shows them
    "aidist_jobs_total": {"pool", "target", "status"},
    "aidist_job_run_seconds": {"pool", "target"},
    "aidist_job_queue_wait_seconds": {"pool", "target"},
    "aidist_batch_size": {"target"},
    "aidist_cache_hits_total": {"target"},
    "aidist_cache_misses_total": {"target"},
    "aidist_jobs_coalesced_total": set(),
    "aidist_job_retries_total": set(),
    "aidist_dead_lettered_total": set(),
    "aidist_model_load_seconds": {"target"},
    "aidist_worker_ready": {"target"},
}


@pytest.fixture(scope="module")
def own(settings: Settings) -> Iterator[Settings]:
    """The session's database, a namespace of its own (no other worker takes these jobs)."""
    isolated = make_settings(**{**settings.model_dump(), "namespace": f"{settings.namespace}m",
                                "metrics_basic_auth": AUTH, "pack_size": 2})
    yield isolated
    delete_queues(isolated)
    ResultCache.connect(isolated.redis_url, isolated.namespace).delete_namespace()


def _ready(port: int) -> bool:
    status, body = get(port, "/healthz", AUTH)
    return status == 200 and body.startswith("ok: consuming")


def _metrics_dirs(worker: WorkerProcess) -> list[Path]:
    """The multiprocess directories this worker made (``workers.multiproc``)."""
    return list(Path(tempfile.gettempdir()).glob(f"aidist-metrics-{worker.process.pid}-*"))


def _started(own: Settings, tmp_path: Path, pool: str, *args: str) -> tuple[WorkerProcess, int]:
    port = free_port()
    worker = start_worker(own, pool, tmp_path, "--metrics-port", str(port), *args,
                          serving=[args[args.index("--models") + 1]])
    wait_for(lambda: _ready(port), timeout=60, message="/healthz 200")
    assert len(_metrics_dirs(worker)) == 1
    return worker, port


def test_a_cpu_pool_scrape_adds_up_its_children(own: Settings, tmp_path: Path) -> None:
    worker, port = _started(own, tmp_path, "cpu", "--concurrency", "2", "--models", "normalize")
    try:
        assert get(port, "/metrics", None)[0] == 401
        assert get(port, "/healthz", "scraper:wrong")[0] == 401
        total = 0
        processes: set[str] = set()
        with Client(own) as client:
            for _ in range(5):  # rounds of 20 (10 messages) until both children ran some
                jobs = client.preprocess_many(
                    "normalize", [f"  text {uuid.uuid4().hex} {i} " for i in range(20)])
                for job in jobs:
                    job.result(timeout=60)
                total += len(jobs)
                processes |= {str(client.store.get(job.id).worker).rsplit(":", 1)[0]
                              for job in jobs}
                if len(processes) >= 2:
                    break
        assert len(processes) == 2, processes  # host:pid of each child

        labels = {"pool": "cpu", "target": "normalize"}

        def counted() -> float:
            return value(scrape(port, AUTH)[0], "aidist_jobs_total", status="succeeded", **labels)

        wait_for(lambda: counted() >= total, timeout=30, message=f"{total} jobs counted")
        samples, _ = scrape(port, AUTH)
        assert value(samples, "aidist_jobs_total", status="succeeded", **labels) == total
        assert value(samples, "aidist_jobs_total", status="failed", **labels) == 0
        assert value(samples, "aidist_job_run_seconds_count", **labels) == total
        assert value(samples, "aidist_job_queue_wait_seconds_count", **labels) == total
        assert value(samples, "aidist_job_queue_wait_seconds_sum", **labels) > 0
        assert value(samples, "aidist_cache_misses_total", target="normalize") == total
        assert value(samples, "aidist_batch_size_sum", target="normalize") == total
        assert value(samples, "aidist_worker_ready", target="normalize") == 1
    finally:
        assert worker.stop() == 0
    assert _metrics_dirs(worker) == []  # removed at exit


def test_a_gpu_pool_serves_every_series_with_its_labels(own: Settings, tmp_path: Path) -> None:
    worker, port = _started(own, tmp_path, "gpu", "--models", "toy-classifier")
    try:
        with Client(own) as client:
            jobs = client.infer_many("toy-classifier", [f"toy {uuid.uuid4().hex} {i}"
                                                        for i in range(12)])
            for job in jobs:
                job.result(timeout=60)
        labels = {"pool": "gpu", "target": "toy-classifier"}
        wait_for(lambda: value(scrape(port, AUTH)[0], "aidist_job_run_seconds_count",
                               **labels) >= 12, timeout=30, message="12 jobs counted")
        samples, series = scrape(port, AUTH)
        ours = {name: found for name, found in series.items() if name.startswith("aidist_")}
        assert ours == LABELS and set(LABELS) == exported_series()
        assert value(samples, "aidist_jobs_total", status="succeeded", **labels) == 12
        assert value(samples, "aidist_job_run_seconds_count", **labels) == 12
        assert value(samples, "aidist_cache_misses_total", target="toy-classifier") == 12
        assert value(samples, "aidist_cache_hits_total", target="toy-classifier") == 0
        assert value(samples, "aidist_batch_size_sum", target="toy-classifier") == 12
        assert value(samples, "aidist_model_load_seconds", target="toy-classifier") > 0
        assert value(samples, "aidist_worker_ready", target="toy-classifier") == 1
        assert value(samples, "aidist_dead_lettered_total") == 0
    finally:
        assert worker.stop() == 0
