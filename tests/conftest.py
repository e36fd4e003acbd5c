"""Shared fixtures: every test session gets its own Postgres database, queue/Redis namespace.

The services are the real ones on this machine (RabbitMQ, Redis, PostgreSQL); nothing is mocked.
A service that is down makes the tests that need it fail (never skip): `.ci/run` starts them first.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pika
import pytest
from sqlalchemy import make_url

from aidist import transport
from aidist.config import Settings
from aidist.jobs import RUN_JOBS_TASK
from aidist.processes import warm_stop
from aidist.transport import queue_name, queue_stats
from db import setup as db_setup
from db.cache import ResultCache
from db.store import JobStore
from models import build_registry
from producers import Client
from tests.seaweed import SeaweedS3

BASE = Settings()


def _unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def make_settings(**overrides: object) -> Settings:
    """Settings for an isolated namespace and database, based on the environment's URLs."""
    return Settings(**{**BASE.model_dump(), **overrides})


@pytest.fixture(scope="session")
def settings() -> Iterator[Settings]:
    """A migrated database and a namespace of its own for this test session."""
    name = _unique("aidist_test_")
    database_url = make_url(BASE.database_url).set(database=name).render_as_string(
        hide_password=False
    )
    isolated = make_settings(database_url=database_url, namespace=_unique("t"),
                             plugins=["tests.plugins"], load_failure_grace_s=2.0,
                             task_events=True, max_attempts=3,
                             # Tests insert rows they never publish, or past their deadline,
                             # and look at them: the session's workers must not sweep them (the
                             # fault suite turns the sweeper on where it tests it).
                             sweep_after_s=86_400.0, sweep_interval_s=86_400.0)
    db_setup.upgrade(isolated.database_url)
    yield isolated
    remove_everything_of(isolated)


def remove_everything_of(settings: Settings) -> None:
    """Delete what a test's settings own: its Redis keys, its queues, its database."""
    cache = ResultCache.connect(settings.redis_url, settings.namespace)
    cache.delete_namespace()
    cache.close()
    delete_queues(settings)
    db_setup.drop_database(settings.database_url)


@pytest.fixture(scope="session")
def store(settings: Settings) -> Iterator[JobStore]:
    """The session's job store."""
    job_store = JobStore.connect(settings.database_url)
    yield job_store
    job_store.close()


@pytest.fixture(scope="session")
def cache(settings: Settings) -> Iterator[ResultCache]:
    """The session's result cache."""
    result_cache = ResultCache.connect(settings.redis_url, settings.namespace)
    yield result_cache
    result_cache.close()


def pika_connection(settings: Settings) -> pika.BlockingConnection:
    """A pika connection of the tests' own, to look at what is on the broker independently of
    aidist's transport layer (the product's code goes through ``aidist.transport``)."""
    return pika.BlockingConnection(transport.admin.pika_parameters(settings.broker_url))


def publish_raw(settings: Settings, queue: str, body: bytes, content_type: str,
                task: str = RUN_JOBS_TASK) -> None:
    """Publish a message straight into ``queue``, around aidist's client (for poison and
    duplicate messages)."""
    transport.publish_raw(settings.broker_url, settings.namespace, queue, body, content_type,
                          task=task)


def delete_queues(settings: Settings) -> None:
    """Delete every queue and exchange of the namespace (known names only)."""
    registry = build_registry(settings.plugins)
    transport.delete_namespace(
        settings.broker_url, settings.namespace,
        [queue_name(settings.namespace, spec.kind, spec.name) for spec in registry.specs()])


def free_port() -> int:
    """A local port nothing listens on (the kernel's pick, closed again at once)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(condition: Callable[[], object], timeout: float = 60.0, interval: float = 0.05,
             message: str = "condition") -> object:
    """Poll ``condition`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)



REPO = Path(__file__).resolve().parent.parent
UNLOADABLE = {"unloadable"}  # tests.plugins' model that never loads


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment that makes an ``aidist`` process use these settings."""
    return {**os.environ, **settings.as_env(), "PYTHONPATH": str(REPO),
            "PYTHONUNBUFFERED": "1"}


def aidist_command() -> str:
    """The ``aidist`` console script of the running interpreter's environment."""
    return str(Path(sys.executable).parent / "aidist")


def queue_depth(settings: Settings, queue: str) -> int:
    """Ready messages in ``queue`` (0 if it does not exist)."""
    return queue_stats(settings.broker_url, [queue])[0].messages


@dataclass
class WorkerProcess:
    """A running ``aidist worker`` and its log file."""

    pool: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 60.0) -> int:
        """Warm shutdown (SIGTERM), as an operator would; SIGKILL if it does not stop in time."""
        return warm_stop(self.process, timeout)

    def node(self, settings: Settings) -> str:
        """The Celery node name this worker took (``gpu-1@host``): its presence in Redis says."""
        cache = ResultCache.connect(settings.redis_url, settings.namespace)
        try:
            found = wait_for(lambda: [str(p["node"]) for p in cache.presences()
                                      if p.get("pid") == self.process.pid],
                             timeout=30, message=f"the presence of worker {self.process.pid}")
        finally:
            cache.close()
        assert isinstance(found, list)
        return str(found[0])


def start_worker(settings: Settings, pool: str, log_dir: Path, *extra: str,
                 serving: list[str] | None = None) -> WorkerProcess:
    """Start ``aidist worker --pool POOL`` and wait until it consumes the queues of ``serving``
    (default: every model of its pool that can load)."""
    log_path = log_dir / f"worker-{pool}-{uuid.uuid4().hex[:6]}.log"
    handle = log_path.open("wb")
    process = subprocess.Popen(
        [aidist_command(), "worker", "--pool", pool, *extra],
        env=settings_env(settings), cwd=REPO, stdout=handle, stderr=subprocess.STDOUT,
    )
    worker = WorkerProcess(pool, process, log_path)
    registry = build_registry(settings.plugins)
    names = serving or [s.name for s in registry.specs() if s.pool == pool
                        and s.name not in UNLOADABLE]
    queues = [queue_name(settings.namespace, registry.get(n).kind, n) for n in names]

    def ready() -> bool:
        if process.poll() is not None:
            pytest.fail(f"worker exited with {process.returncode}:\n{worker.log()[-3000:]}")
        return all(s.consumers > 0 for s in queue_stats(settings.broker_url, queues))

    wait_for(ready, timeout=180, interval=0.25, message=f"{pool} worker to consume")
    return worker


@pytest.fixture(scope="session")
def workers(settings: Settings, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[dict[str, WorkerProcess]]:
    """One gpu-pool worker (models, on the CPU here) and one cpu-pool worker, for the session."""
    log_dir = tmp_path_factory.mktemp("workers")
    started = {
        "gpu": start_worker(settings, "gpu", log_dir),
        "cpu": start_worker(settings, "cpu", log_dir, "--concurrency", "2"),
    }
    yield started
    for worker in started.values():
        worker.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """A real S3-compatible server (SeaweedFS) for the session, with one bucket and real
    credentials (``s3_server.env``: the ``AWS_*`` variables a process needs to use it)."""
    server = SeaweedS3.start(tmp_path_factory.mktemp("seaweedfs"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def client(settings: Settings) -> Iterator[Client]:
    """A client bound to the session's isolated settings."""
    with Client(settings) as session_client:
        yield session_client
