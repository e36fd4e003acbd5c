"""What Celery's own tools (`celery inspect`, task events, so Flower) see of aidist's workers:
stable node names, a consumer loop that answers while a batch runs, running batches in `inspect
active`, counts in `stats`, the prefetch the settings say, and messages whose jobs failed shown
as failed, naming the jobs."""

from __future__ import annotations

import re
import signal
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from kombu.connection import Connection

from aidist.config import Settings
from aidist.jobs import JobStatus
from producers import Client
from tests.conftest import make_settings, start_worker, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def own(settings: Settings) -> Settings:
    """The session's database, a namespace of its own: node slots start from 1."""
    return make_settings(**{**settings.model_dump(), "namespace": f"v{uuid.uuid4().hex[:8]}"})


@pytest.fixture
def control(own: Settings) -> Iterator[Celery]:
    app = Celery("observer", broker=own.broker_url, set_as_current=False)
    app.conf.accept_content = ["msgpack", "json"]  # aidist's workers reply in msgpack
    yield app
    app.close()


class Events:
    """Task events as Flower receives them, captured on a thread."""

    def __init__(self, settings: Settings) -> None:
        self.seen: list[dict[str, Any]] = []
        self.connection = Connection(settings.broker_url)
        app = Celery(broker=settings.broker_url, set_as_current=False)
        self.receiver = app.events.Receiver(self.connection, handlers={"*": self.seen.append})
        self.thread = threading.Thread(target=self._capture, daemon=True)
        self.thread.start()

    def _capture(self) -> None:
        self.receiver.capture(limit=None, timeout=None, wakeup=False)

    def close(self) -> None:
        self.receiver.should_stop = True
        self.connection.release()


@pytest.fixture
def events(own: Settings) -> Iterator[Events]:
    captured = Events(own)
    yield captured
    captured.close()


def test_a_gpu_worker_answers_inspect_while_its_batch_runs(own: Settings, control: Celery,
                                                           tmp_path: Path) -> None:
    worker = start_worker(own, "gpu", tmp_path, "--models", "sleepy", serving=["sleepy"])
    client = Client(own)
    try:
        node = worker.node(own)
        assert node == f"gpu-1.{own.namespace}@{socket.gethostname()}"
        job = client.infer("sleepy", "4")  # one batch of four seconds
        inspect = control.control.inspect(destination=[node], timeout=1.0)

        def running() -> list[dict[str, Any]]:
            return [t for t in (inspect.active() or {}).get(node, [])
                    if t["name"] == "sleepy (1 job)"]

        active = wait_for(running, timeout=30, interval=0.1, message="the batch in inspect active")
        assert active[0]["args"] == "[<1 job>]"  # a summary, never the input
        # active from when its batch is handed to the runner, which then claims it
        wait_for(lambda: job.status() is JobStatus.RUNNING, timeout=10, message="the claim")
        # the batch still runs, and the consumer's loop answers within a second
        assert node in (inspect.ping() or {})
        assert job.result(timeout=60) == 4.0
        stats = wait_for(lambda: (inspect.stats() or {}).get(node), timeout=10)
        assert stats["total"].get("sleepy (1 job)") == 1
        assert stats["prefetch_count"] == own.batch_prefetch
    finally:
        client.close()
        worker.stop()


def test_node_names_are_stable_across_restarts_and_unique_on_a_host(own: Settings,
                                                                    tmp_path: Path) -> None:
    first = start_worker(own, "cpu", tmp_path, "--models", "tokenize", "--concurrency", "1",
                         serving=["tokenize"])
    second = start_worker(own, "cpu", tmp_path, "--models", "tokenize", "--concurrency", "1",
                          serving=["tokenize"])
    host = socket.gethostname()
    try:
        assert [first.node(own), second.node(own)] == [
            f"cpu-{slot}.{own.namespace}@{host}" for slot in (1, 2)]
        first.process.send_signal(signal.SIGKILL)  # no goodbye: its slot still reads taken
        first.process.wait(30)
        again = start_worker(own, "cpu", tmp_path, "--models", "tokenize", "--concurrency", "1",
                             serving=["tokenize"])
        try:
            assert again.node(own) == f"cpu-1.{own.namespace}@{host}"  # its pid is gone: free
        finally:
            again.stop()
    finally:
        second.stop()


@pytest.mark.parametrize(("pool", "target"), [("gpu", "flaky"), ("cpu", "logged-cpu")])
def test_a_message_with_failed_jobs_is_shown_failed_naming_them(
        own: Settings, events: Events, tmp_path: Path, pool: str, target: str) -> None:
    worker = start_worker(own, pool, tmp_path, "--models", target,
                          *(["--concurrency", "1"] if pool == "cpu" else []), serving=[target])
    client = Client(own)
    try:
        good, bad = client.submit_many(target, ["fine", "boom!"])  # one message of two jobs
        wait_for(lambda: bad.done() and good.done(), timeout=60, message="both jobs to end")
        assert (good.status(), bad.status()) == (JobStatus.SUCCEEDED, JobStatus.FAILED)

        def failure() -> list[dict[str, Any]]:
            return [e for e in events.seen if e["type"] == "task-failed"
                    and bad.id in str(e.get("exception"))]

        (event,) = wait_for(failure, timeout=30, message="a task-failed event naming the job")
        assert re.search(r"1 of 2 jobs failed", event["exception"])
        assert good.id not in event["exception"]
        named = [e for e in events.seen if e["type"] == "task-received"
                 and e["uuid"] == event["uuid"]]
        assert named and named[0]["name"] == f"{target} (2 jobs)"
        # acked: nothing is left in the queue or unacked, nothing went to the dead letters
        assert not [e for e in events.seen if e["type"] in ("task-rejected", "task-succeeded")
                    and e["uuid"] == event["uuid"]]
    finally:
        client.close()
        worker.stop()
