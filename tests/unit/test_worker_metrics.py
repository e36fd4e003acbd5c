"""workers.metrics: what a flush's report adds to each series (executor over the in-memory
doubles), and multiprocess mode across real forked processes: children's counts add up in the
parent, and a SIGKILLed child's live gauges are forgotten at the next scrape."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from dataclasses import replace

import pytest
from prometheus_client import CollectorRegistry

from aidist import codec
from aidist.jobs import JobEntry, JobStatus
from db import Claim
from tests.unit.doubles import Harness
from workers.hooks import BatchReport, Flush, Hooks
from workers.metrics import Readiness, WorkerMetrics
from workers.multiproc import ENV, MetricsDir


def _value(metrics: WorkerMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


@pytest.fixture
def metrics(harness: Harness) -> WorkerMetrics:
    recorded = WorkerMetrics("gpu", ["recorder"])
    harness.runtime.hooks = Hooks([recorded])
    return recorded


def test_a_flush_counts_its_jobs_batch_and_waits(harness: Harness,
                                                  metrics: WorkerMetrics) -> None:
    entries = [harness.entry("recorder", f"text {i}") for i in range(5)]
    harness.run(entries)
    labels = {"pool": "gpu", "target": "recorder"}
    assert _value(metrics, "aidist_jobs_total", status="succeeded", **labels) == 5
    assert _value(metrics, "aidist_jobs_total", status="failed", **labels) == 0
    assert _value(metrics, "aidist_job_run_seconds_count", **labels) == 5
    assert _value(metrics, "aidist_job_queue_wait_seconds_count", **labels) == 5
    assert _value(metrics, "aidist_batch_size_count", target="recorder") == 1  # one flush
    assert _value(metrics, "aidist_batch_size_sum", target="recorder") == 5
    assert _value(metrics, "aidist_cache_misses_total", target="recorder") == 5
    assert _value(metrics, "aidist_cache_hits_total", target="recorder") == 0
    assert _value(metrics, "aidist_job_retries_total") == 0


def test_stored_results_expired_and_unknown_jobs(harness: Harness,
                                                 metrics: WorkerMetrics) -> None:
    stored = harness.entry("recorder", "already done")
    # An identical job succeeded since this one was submitted: its row keeps the result (which
    # the claim sees), and Redis has it.
    harness.store.add(target="recorder", cache_key=stored["key"], status=JobStatus.SUCCEEDED,
                      result=codec.encode("done"))
    harness.cache.put_many({stored["key"]: codec.encode("done")}, 60)
    late = harness.entry("recorder", "too late", expired=True)
    unknown = harness.entry("recorder", "no row", known=False)
    ran = harness.entry("recorder", "runs")
    harness.run([stored, late, unknown, ran])
    labels = {"pool": "gpu", "target": "recorder"}
    assert _value(metrics, "aidist_cache_hits_total", target="recorder") == 1
    assert _value(metrics, "aidist_cache_misses_total", target="recorder") == 1
    assert _value(metrics, "aidist_batch_size_sum", target="recorder") == 1  # hits excluded
    assert _value(metrics, "aidist_jobs_total", status="succeeded", **labels) == 2
    assert _value(metrics, "aidist_jobs_total", status="expired", **labels) == 1
    assert _value(metrics, "aidist_dead_lettered_total") == 1  # the job with no row


def test_a_new_attempt_is_a_retry_a_later_step_is_not(harness: Harness) -> None:
    metrics = WorkerMetrics("cpu")
    first, step = (JobEntry.from_wire(harness.entry("recorder", text)) for text in "ab")
    later = replace(step, step=1, attempt=2)
    report = BatchReport(2, 0, 0, 0, 0, 0, claims=(
        Claim(first.id, JobStatus.RUNNING, 2, queued_s=3.0),  # its second run
        Claim(later.id, JobStatus.RUNNING, 2, queued_s=9.0)))  # the same run, next step
    metrics.record(Flush([first, later]), report, 0.5)
    assert _value(metrics, "aidist_job_retries_total") == 1
    assert _value(metrics, "aidist_job_queue_wait_seconds_count", pool="cpu",
                  target="recorder") == 0  # neither is a first claim


@pytest.fixture
def directory() -> Iterator[MetricsDir]:
    made = MetricsDir.create()
    yield made
    made.close()
    assert not made.path.exists() and ENV not in os.environ


def _child(body: object) -> int:
    pid = os.fork()
    if pid == 0:  # the child: record, then end as told (no pytest teardown here)
        try:
            assert callable(body)
            body()
        finally:
            os._exit(0)
    return pid


def test_forked_children_add_up_and_a_killed_ones_gauge_goes(directory: MetricsDir) -> None:
    metrics = WorkerMetrics("cpu", ["normalize"], directory=directory,
                            registry=CollectorRegistry())
    readiness = Readiness(metrics, directory, prefork=True)
    metrics.worker_started()

    def run_three() -> None:
        metrics.model_loaded("normalize", 0.25)
        for _ in range(3):
            metrics.jobs.labels("cpu", "normalize", "succeeded").inc()

    def load_then_die() -> None:
        metrics.model_loaded("normalize", 7.0)
        metrics.jobs.labels("cpu", "normalize", "succeeded").inc()
        os.kill(os.getpid(), signal.SIGKILL)  # leaves its files as a SIGKILL does

    forked = [_child(body) for body in (run_three, run_three, load_then_die)]
    for pid in forked:
        os.waitpid(pid, 0)
    families = {m.name: m for m in directory.collect()}
    (jobs,) = [s for s in families["aidist_jobs"].samples
               if s.name == "aidist_jobs_total" and s.labels["status"] == "succeeded"]
    assert jobs.value == 7  # every child's count, the killed one's too
    assert "aidist_model_load_seconds" not in families  # dead children: no live gauge left
    assert list(directory.path.glob("gauge_live*")) == []
    # None of them counts as a process that runs jobs (other children of this test process,
    # such as workers an earlier test started and that are still exiting, may).
    assert not set(readiness.warm()) & set(forked)
    assert readiness.check()[0] is False


def test_ready_once_consuming_with_every_target_warm(directory: MetricsDir) -> None:
    metrics = WorkerMetrics("gpu", ["toy", "other"], directory=directory,
                            registry=CollectorRegistry())
    readiness = Readiness(metrics, directory, prefork=False)  # this process runs the jobs
    assert readiness.check() == (False, "starting: loading models, not consuming yet")
    metrics.model_loaded("toy", 0.5)
    metrics.worker_started()
    assert readiness.check() == (False, f"not warm: other (pid {os.getpid()})")
    (ready,) = readiness.collect()
    assert {s.labels["target"]: s.value for s in ready.samples} == {"toy": 1.0, "other": 0.0}
    metrics.model_loaded("other", 0.5)
    assert readiness.check() == (True, "consuming; toy, other warm in 1 process(es)")
    metrics.worker_stopping()
    assert readiness.check() == (False, "stopping (warm shutdown)")
