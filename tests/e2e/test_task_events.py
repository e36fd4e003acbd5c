"""Batched gpu-pool messages still emit Celery task events, so Flower sees aidist jobs as tasks."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from celery import Celery
from kombu.connection import Connection

from aidist.config import Settings
from producers import Client
from tests.conftest import wait_for

pytestmark = pytest.mark.e2e


def test_gpu_pool_messages_emit_received_started_succeeded(workers: object, client: Client,
                                                           settings: Settings) -> None:
    events: list[dict[str, Any]] = []
    app = Celery(broker=settings.broker_url, set_as_current=False)
    ready = threading.Event()
    connection = Connection(settings.broker_url)
    receiver = app.events.Receiver(connection, handlers={"*": events.append})

    def capture() -> None:
        ready.set()
        receiver.capture(limit=None, timeout=None, wakeup=False)

    thread = threading.Thread(target=capture, daemon=True)
    thread.start()
    ready.wait(10)

    def batched_task_succeeded() -> bool:  # retried until the receiver is listening
        client.infer("toy-classifier", f"event probe {len(events)}").result(timeout=60)
        # named for what it runs (the shadow name), not aidist.run_jobs
        received = {e["uuid"]: e for e in events if e["type"] == "task-received"
                    and e.get("name") == "toy-classifier (1 job)"
                    and e["hostname"].startswith("gpu-")}
        return any(e["type"] == "task-succeeded" and e["uuid"] in received for e in events)

    try:
        wait_for(batched_task_succeeded, timeout=60, interval=0.2,
                 message="task-received and task-succeeded events from the gpu pool")
        started = [e for e in events if e["type"] == "task-started"]
        assert started and all(e["hostname"].startswith(("gpu-", "cpu-")) for e in started)
    finally:
        receiver.should_stop = True
        connection.release()
