"""A worker started while a service is out of reach waits for it, then serves (or, bounded by
``AIDIST_WORKER_STARTUP_WAIT_S``, exits with one line naming the service and the setting).

No service of the machine is stopped (other tests run meanwhile): the worker is pointed at a local
port where nothing listens, and the test later opens a forwarder (socat) from that port to the
real service, the way the service would come back after a restart.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from aidist.config import Settings
from aidist.jobs import JobKind
from aidist.transport import queue_name, queue_stats
from db.cache import ResultCache
from producers import Client
from tests.conftest import (
    REPO,
    WorkerProcess,
    aidist_command,
    delete_queues,
    free_port,
    make_settings,
    settings_env,
    wait_for,
)
from tests.forwarding import Forwarder, moved_to
from tests.plugins import EXEC_LOG_ENV, GATE_FILE
from tests.startup_plugins import LOADING_FILE

pytestmark = pytest.mark.e2e

SETTING = "AIDIST_WORKER_STARTUP_WAIT_S"


@contextmanager
def isolated(settings: Settings) -> Iterator[Settings]:
    """The session's database with a namespace of this test's own, so only this test's worker
    consumes its queues; its queues and Redis keys are deleted afterwards."""
    own = make_settings(**{**settings.model_dump(), "namespace": f"s{uuid.uuid4().hex[:10]}",
                           "plugins": ["tests.plugins", "tests.startup_plugins"]})
    try:
        yield own
    finally:
        delete_queues(own)
        cache = ResultCache.connect(own.redis_url, own.namespace)
        cache.delete_namespace()
        cache.close()


def launch(settings: Settings, log_dir: Path, model: str,
           env: dict[str, str] | None = None) -> WorkerProcess:
    """``aidist worker --pool gpu --models MODEL`` as a supervisor starts it: at once, whatever
    the state of the services."""
    log_path = log_dir / f"worker-{uuid.uuid4().hex[:6]}.log"
    with log_path.open("wb") as handle:
        process = subprocess.Popen([aidist_command(), "worker", "--pool", "gpu", "--models", model],
                                   env={**settings_env(settings), **(env or {})}, cwd=REPO,
                                   stdout=handle, stderr=subprocess.STDOUT)
    return WorkerProcess("gpu", process, log_path)


def consumers(settings: Settings, model: str) -> int:
    """Consumers of ``model``'s queue, asked of the real broker."""
    (stats,) = queue_stats(settings.broker_url, [queue_name(settings.namespace, JobKind.INFER,
                                                            model)])
    return stats.consumers


def alive_and_logged(worker: WorkerProcess, text: str) -> bool:
    if worker.process.poll() is not None:
        pytest.fail(f"worker exited with {worker.process.returncode}:\n{worker.log()[-3000:]}")
    return text in worker.log()


@pytest.mark.parametrize(("field", "service"), [("broker_url", "RabbitMQ"),
                                                ("database_url", "PostgreSQL"),
                                                ("redis_url", "Redis")])
def test_worker_started_while_a_service_is_unreachable_waits_then_serves(
        settings: Settings, tmp_path: Path, field: str, service: str) -> None:
    port = free_port()
    url, target_port = moved_to(getattr(settings, field), port)
    forwarder = Forwarder(port, target_port)
    with isolated(settings) as real, Client(real) as client:
        worker = launch(make_settings(**{**real.model_dump(), field: url}), tmp_path, "flaky")
        try:
            wait_for(lambda: alive_and_logged(worker, f"waiting for {service} at "), timeout=120,
                     message=f"the worker to log that it waits for {service}")
            log = worker.log()
            assert f"127.0.0.1:{port}" in log  # where it waits, redacted
            assert "guest:guest@" not in log
            assert SETTING in log
            job = client.infer("flaky", "hello")  # queued while the worker waits
            assert worker.process.poll() is None
            assert consumers(real, "flaky") == 0  # it waits before it consumes anything

            forwarder.start()  # the service is back
            assert job.result(timeout=120) == 5
            assert worker.process.poll() is None
            assert f"{service} is reachable after" in worker.log()
        finally:
            worker.stop()
            forwarder.stop()


def test_broker_gone_between_the_wait_and_celerys_connect_is_waited_for(
        settings: Settings, tmp_path: Path) -> None:
    """The broker answers the start-up wait, goes away while the worker loads its model, and
    comes back: Celery's own connect retries (``broker_connection_retry_on_startup``) and the
    worker serves."""
    port = free_port()
    url, target_port = moved_to(settings.broker_url, port)
    forwarder = Forwarder(port, target_port)
    gate = tmp_path / "gate"
    gate.mkdir()
    forwarder.start()
    with isolated(settings) as real, Client(real) as client:
        worker = launch(make_settings(**{**real.model_dump(), "broker_url": url}), tmp_path,
                        "gated-load", env={EXEC_LOG_ENV: str(gate)})
        try:
            wait_for(lambda: (gate / LOADING_FILE).exists() and worker.process.poll() is None,
                     timeout=120, message="the worker to pass its wait and load its model")
            forwarder.stop()  # the broker goes away during the load
            (gate / GATE_FILE).touch()
            wait_for(lambda: alive_and_logged(worker, "Cannot connect to amqp://"), timeout=120,
                     message="Celery to retry its broker connect")
            job = client.infer("gated-load", "after the restart")
            forwarder.start()
            assert job.result(timeout=120) == "gated:after the restart"
            assert worker.process.poll() is None
        finally:
            worker.stop()
            forwarder.stop()


def test_bounded_wait_exits_with_one_line_naming_the_service_and_the_setting(
        settings: Settings) -> None:
    url, _ = moved_to("amqp://guest:secret@127.0.0.1:5672//", free_port())  # nothing listens
    bounded = make_settings(**{**settings.model_dump(), "broker_url": url,
                               "worker_startup_wait_s": 1.0})
    done = subprocess.run([aidist_command(), "worker", "--pool", "gpu", "--models", "flaky"],
                          env=settings_env(bounded), cwd=REPO, capture_output=True, text=True,
                          timeout=120, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 3, output  # ServiceUnavailable's exit code
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    assert "RabbitMQ is unavailable at amqp://guest:***@127.0.0.1:" in errors[0]
    assert f"{SETTING}=1" in errors[0]
    assert "Traceback" not in output and "secret" not in output
