"""db.backlog against the real Postgres: the backlog in jobs per model (pipelines by their current
step), in seconds at the measured speed, the KEDA query giving the same number, and the
measurements workers write."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import text

from aidist.jobs import JobStatus
from db import ClaimRequest, JobStore
from db.backlog import BacklogStore, ServiceStat, keda_query
from tests.integration.conftest import NewJobFactory

pytestmark = pytest.mark.integration
DEFAULT_S = 0.05


@pytest.fixture
def models() -> tuple[str, str]:
    tag = uuid.uuid4().hex[:8]
    return f"bk{tag}-a", f"bk{tag}-b"


@pytest.fixture
def backlog(store: JobStore) -> BacklogStore:
    return BacklogStore(store.engine)


def test_backlog_counts_jobs_per_model_with_their_measured_speed(
        store: JobStore, backlog: BacklogStore, new_job: NewJobFactory,
        models: tuple[str, str]) -> None:
    a, b = models
    queued = [new_job(target=a) for _ in range(30)]
    running = [new_job(target=a) for _ in range(5)]
    done = [new_job(target=a, status=JobStatus.SUCCEEDED) for _ in range(7)]
    other = [new_job(target=b) for _ in range(4)]
    store.insert_jobs([*queued, *running, *done, *other])
    store.claim([ClaimRequest(job.id) for job in running], "bk-worker")
    backlog.record([ServiceStat("host:1:aa", a, "gpu", 100.0, 20.0, 8.0),
                    ServiceStat("host:2:bb", a, "gpu", 100.0, 0.0, 12.0)])

    seen = backlog.backlog([a, b], DEFAULT_S)
    by_model = {m.model: m for m in seen.models}
    assert (by_model[a].queued, by_model[a].running) == (30, 5)  # finished jobs do not count
    assert by_model[a].seconds_per_job == pytest.approx(0.1)  # 20 busy s over 200 jobs
    assert by_model[a].cold_start_s == 12.0 and by_model[a].measured
    assert by_model[b].jobs == 4 and not by_model[b].measured
    assert by_model[b].seconds_per_job == DEFAULT_S  # not measured yet: the default
    assert seen.jobs == 39
    assert seen.seconds == pytest.approx(35 * 0.1 + 4 * DEFAULT_S + 12.0)
    assert backlog.backlog_seconds([a, b], DEFAULT_S) == pytest.approx(seen.seconds)
    assert backlog.backlog([b], DEFAULT_S).jobs == 4  # a pool counts only its own models


def test_a_pipeline_counts_towards_the_model_of_its_current_step(
        store: JobStore, backlog: BacklogStore, new_job: NewJobFactory,
        models: tuple[str, str]) -> None:
    a, b = models
    steps = {"steps": [{"kind": "preprocess", "target": a, "version": "1", "params": {}},
                       {"kind": "infer", "target": b, "version": "1", "params": {}}]}
    at_first = new_job(target=f"{a}>{b}", params=steps)
    at_second = new_job(target=f"{a}>{b}", params=steps)
    store.insert_jobs([at_first, at_second])
    store.claim([ClaimRequest(at_second.id)], "bk-worker")
    with store.engine.begin() as connection:  # its first step is done: it runs step 1 now
        connection.execute(text("UPDATE jobs SET step = 1 WHERE id = :id"),
                           {"id": uuid.UUID(at_second.id)})
    by_model = {m.model: m for m in backlog.backlog([a, b], DEFAULT_S).models}
    assert (by_model[a].queued, by_model[a].running) == (1, 0)
    assert (by_model[b].queued, by_model[b].running) == (0, 1)


def test_an_empty_backlog_is_zero_seconds(backlog: BacklogStore, models: tuple[str, str]) -> None:
    assert backlog.backlog(list(models), DEFAULT_S).jobs == 0
    assert backlog.backlog_seconds(list(models), DEFAULT_S) == 0.0  # KEDA: scale to zero


def test_stale_measurements_are_ignored_and_pruned(
        store: JobStore, backlog: BacklogStore, new_job: NewJobFactory,
        models: tuple[str, str]) -> None:
    a, _ = models
    store.insert_jobs([new_job(target=a)])
    backlog.record([ServiceStat("host:3:cc", a, "gpu", 10.0, 50.0, None)])
    with store.engine.begin() as connection:  # its worker stopped writing an hour ago
        connection.execute(text("UPDATE worker_stats SET updated_at = now() - interval '1 hour'"
                                " WHERE worker = 'host:3:cc'"))
    (seen,) = backlog.backlog([a], DEFAULT_S).models
    assert not seen.measured and seen.seconds_per_job == DEFAULT_S
    assert backlog.prune_stats() >= 1
    with store.engine.connect() as connection:
        left = connection.execute(text(
            "SELECT count(*) FROM worker_stats WHERE worker = 'host:3:cc'")).scalar_one()
    assert left == 0


def test_running_jobs_by_worker(store: JobStore, backlog: BacklogStore,
                                new_job: NewJobFactory, models: tuple[str, str]) -> None:
    jobs = [new_job(target=models[0]) for _ in range(3)]
    store.insert_jobs(jobs)
    worker = f"bkhost:{uuid.uuid4().int % 99999}:ab12cd"
    store.claim([ClaimRequest(job.id) for job in jobs], worker)
    assert backlog.running_by_worker()[worker] == 3


def test_the_keda_query_is_plain_sql_with_literals_only(models: tuple[str, str]) -> None:
    query = keda_query(list(models), DEFAULT_S)
    assert ":" not in query.replace("::int", "")  # no bind parameters: KEDA passes none
    assert all(f"'{m}'" in query for m in models)
