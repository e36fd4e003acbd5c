"""``aidist autoscale`` as an operator runs it: a burst against a pool at --min 0 starts workers,
every job succeeds once, the pool goes back to zero, /metrics shows the signal behind auth, and
SIGTERM leaves no process behind; scale-in under a steady load loses and repeats nothing."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import make_url, text

from aidist import Client, JobStatus
from aidist.config import Settings
from aidist.processes import children_of, warm_stop
from db import JobStore, ResultCache
from db import setup as db_setup
from tests.conftest import (
    REPO,
    aidist_command,
    delete_queues,
    free_port,
    make_settings,
    settings_env,
    wait_for,
)
from tests.plugins import EXEC_LOG_ENV

pytestmark = pytest.mark.e2e
AUTH = "scraper:s3cret-autoscale"


@dataclass
class Pool:
    settings: Settings
    client: Client
    store: JobStore
    process: subprocess.Popen[bytes]
    log_path: Path
    port: int
    exec_dir: Path
    model: str = ""

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metrics(self, auth: str | None = AUTH) -> str:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/metrics")
        if auth is not None:
            request.add_header("Authorization",
                               "Basic " + base64.b64encode(auth.encode()).decode())
        with urllib.request.urlopen(request, timeout=5) as response:
            return str(response.read().decode())

    def gauge(self, name: str) -> float:
        for line in self.metrics().splitlines():
            if line.startswith(f"{name}{{"):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"{name} not in /metrics")

    def workers(self) -> set[int]:
        return children_of(self.process.pid)


def _start(tmp_path: Path, pool: str, model: str, *args: str, **overrides: object) -> Pool:
    tag = f"a{uuid.uuid4().hex[:10]}"
    base = make_settings()
    database_url = make_url(base.database_url).set(database=f"aidist_scale_{tag}")
    settings = make_settings(database_url=database_url.render_as_string(hide_password=False),
                             namespace=tag, plugins=["tests.plugins"], **overrides)
    db_setup.upgrade(settings.database_url)
    exec_dir = tmp_path / "executions"
    exec_dir.mkdir()
    port = free_port()
    log_path = tmp_path / "autoscale.log"
    env = {**settings_env(settings), "AIDIST_METRICS_BASIC_AUTH": AUTH,
           EXEC_LOG_ENV: str(exec_dir)}
    process = subprocess.Popen(
        [aidist_command(), "autoscale", "--pool", pool, "--models", model,
         "--metrics-port", str(port), *args],
        env=env, cwd=REPO, stdout=log_path.open("wb"), stderr=subprocess.STDOUT)
    started = Pool(settings, Client(settings), JobStore.connect(settings.database_url),
                   process, log_path, port, exec_dir)
    wait_for(lambda: _answers(started), timeout=60, message="the autoscaler's /metrics")
    return started


def _answers(pool: Pool) -> bool:
    if pool.process.poll() is not None:
        pytest.fail(f"autoscale exited with {pool.process.returncode}:\n{pool.log()[-3000:]}")
    try:
        pool.metrics()
    except OSError:
        return False
    return True


def _finish(pool: Pool) -> None:
    if pool.process.poll() is None:
        warm_stop(pool.process, timeout=120)
    pool.client.close()
    pool.store.close()
    cache = ResultCache.connect(pool.settings.redis_url, pool.settings.namespace)
    cache.delete_namespace()
    cache.close()
    delete_queues(pool.settings)
    db_setup.drop_database(pool.settings.database_url)


@pytest.fixture(params=[("gpu", "toy-classifier"), ("cpu", "normalize")], ids=["gpu", "cpu"])
def burst_pool(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Pool]:
    pool_name, model = request.param
    extra = ["--concurrency", "2"] if pool_name == "cpu" else []
    pool = _start(tmp_path, pool_name, model, "--min", "0", "--max", "2", "--idle-s", "2",
                  "--target-seconds", "5", *extra)
    pool.model = model
    try:
        yield pool
    finally:
        _finish(pool)


def _attempts(store: JobStore) -> dict[int, int]:
    with store.engine.connect() as connection:
        rows = connection.execute(text("SELECT attempts, count(*) FROM jobs GROUP BY 1")).all()
    return {int(attempts): int(count) for attempts, count in rows}


def test_a_burst_scales_a_pool_up_from_zero_and_back(burst_pool: Pool) -> None:
    pool = burst_pool
    assert pool.gauge("aidist_workers") == 0  # --min 0: nothing runs before work comes
    with pytest.raises(urllib.error.HTTPError) as refused:
        pool.metrics(auth=None)
    assert refused.value.code == 401
    assert AUTH.split(":")[1] not in pool.log()  # the secret is never logged

    jobs = pool.client.submit_many(pool.model, [f"burst {i}" for i in range(2000)])
    wait_for(lambda: pool.gauge("aidist_desired_workers") >= 1, timeout=30,
             message="the autoscaler to see the burst")
    wait_for(pool.workers, timeout=60, message="a worker process to start")
    results = pool.client.results_of(jobs, timeout=240)
    assert len(results) == 2000
    assert pool.store.count_by_status()[JobStatus.SUCCEEDED] == 2000
    assert _attempts(pool.store) == {1: 2000}  # every job ran once, none was taken over

    wait_for(lambda: pool.gauge("aidist_workers") == 0 and not pool.workers(), timeout=120,
             message="the pool to go back to zero after --idle-s")
    log = pool.log()
    assert "0 -> 1 workers" in log or "0 -> 2 workers" in log
    assert "idle for 2s: the floor (0): 2 -> 0 workers" in log or (
        "idle for 2s: the floor (0): 1 -> 0 workers" in log)

    assert warm_stop(pool.process, timeout=120) == 0
    assert "no worker left" in pool.log()


@pytest.fixture
def steady_pool(tmp_path: Path) -> Iterator[Pool]:
    pool = _start(tmp_path, "gpu", "logged", "--min", "1", "--max", "2", "--idle-s", "30",
                  "--target-seconds", "2", autoscale_cooldown_s=1.0)
    try:
        yield pool
    finally:
        _finish(pool)


def test_scale_in_under_a_steady_load_loses_and_repeats_nothing(steady_pool: Pool) -> None:
    pool = steady_pool
    # Until the workers have measured the model, a job counts AIDIST_AUTOSCALE_SECONDS_PER_JOB
    # (0.05 s): 2,000 jobs ask for the maximum; once measured (a few ms a job) one worker is
    # enough, and the autoscaler stops the other while jobs keep coming.
    jobs = pool.client.infer_many("logged", [f"wave0 {i}" for i in range(2000)])
    wait_for(lambda: len(pool.workers()) == 2, timeout=120, message="two workers")
    wave = 1
    while "stopping worker" not in pool.log():
        if pool.process.poll() is not None:
            pytest.fail(f"autoscale exited:\n{pool.log()[-3000:]}")
        jobs += pool.client.infer_many("logged", [f"wave{wave} {i}" for i in range(50)])
        pool.client.results_of(jobs[-50:], timeout=120)
        wave += 1
        assert wave < 2000, "the autoscaler never scaled in"
    jobs += pool.client.infer_many("logged", [f"after {i}" for i in range(200)])
    pool.client.results_of(jobs, timeout=240)
    wait_for(lambda: "stopped (code 0)" in pool.log(), timeout=120,
             message="the stopped worker to drain and exit")

    assert pool.store.count_by_status()[JobStatus.SUCCEEDED] == len(jobs)
    assert _attempts(pool.store) == {1: len(jobs)}
    executed = [line.split("\t", 1)[1] for path in pool.exec_dir.glob("*.log")
                for line in path.read_text().splitlines()]
    assert len(executed) == len(set(executed)) == len(jobs)  # nothing ran twice
    left = pool.workers()
    assert len(left) == 1
    descendants = left | {kid for pid in left for kid in children_of(pid)}
    os.kill(pool.process.pid, signal.SIGTERM)
    assert pool.process.wait(timeout=120) == 0
    assert not [pid for pid in descendants if Path(f"/proc/{pid}").exists()]  # none left behind
    assert "no worker left" in pool.log()
