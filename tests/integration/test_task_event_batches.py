"""Task events of batched messages go gathered: the hook keeps them in Celery's own event
dispatcher and sends a group as one ``task.multi`` message (a list, which Celery's receivers
unpack) when the batcher says it is through with it. Real RabbitMQ, real dispatcher; a queue of
the test's own on Celery's event exchange counts the AMQP messages."""

from __future__ import annotations

import socket
import uuid
from contextlib import suppress
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery
from kombu import Exchange, Queue
from kombu.connection import Connection

from aidist.config import Settings
from tests.conftest import wait_for
from workers.task_events import TaskEvents

pytestmark = pytest.mark.integration


def _message(task_id: str) -> SimpleNamespace:
    return SimpleNamespace(headers={"id": task_id, "task": "aidist.run_jobs",
                                    "shadow": "minilm (1 job)", "argsrepr": "[<1 job>]"},
                           delivery_info={"routing_key": "q"})


def _next_message(queue: Any) -> Any:
    return wait_for(lambda: queue.get(no_ack=True), timeout=10, interval=0.01,
                    message="an event message on the probe queue")


def test_a_groups_task_events_travel_as_one_message(settings: Settings) -> None:
    app = Celery(broker=settings.broker_url, set_as_current=False)
    hostname = f"gpu-test-{uuid.uuid4().hex[:8]}@host"
    with Connection(settings.broker_url) as listening, Connection(settings.broker_url) as sending:
        probe = Queue(f"event-probe-{uuid.uuid4().hex}", Exchange("celeryev", type="topic"),
                      routing_key="task.#", exclusive=True, auto_delete=True)(listening.channel())
        probe.declare()
        dispatcher = app.events.Dispatcher(sending, hostname=hostname, enabled=True)
        hook = TaskEvents()
        hook.consumer_ready(SimpleNamespace(event_dispatcher=dispatcher, hostname=hostname))
        messages = [_message(f"t-{uuid.uuid4().hex}") for _ in range(3)]
        for message in messages:
            hook.message_event("received", message, {})
        for message in messages:
            hook.message_event("started", message, {})
        assert probe.get(no_ack=True) is None  # held until the batcher is through with them
        hook.messages_handled()
        gathered = _next_message(probe)
        events = gathered.decode()
        assert gathered.delivery_info["routing_key"] == "task.multi"
        assert [e["type"] for e in events] == ["task-received"] * 3 + ["task-started"] * 3
        assert [e["uuid"] for e in events] == [m.headers["id"] for m in messages] * 2
        assert {e["hostname"] for e in events} == {hostname}
        for message in messages:
            hook.message_event("succeeded", message, {"result": "1 jobs", "runtime": 0.1})
        hook.messages_handled()
        settled = _next_message(probe).decode()
        assert [e["type"] for e in settled] == ["task-succeeded"] * 3
        dispatcher.close()


def test_celerys_receiver_sees_each_gathered_event(settings: Settings) -> None:
    # What Flower runs: Celery's EventReceiver, which unpacks a task.multi list event by event.
    app = Celery(broker=settings.broker_url, set_as_current=False)
    hostname = f"gpu-test-{uuid.uuid4().hex[:8]}@host"
    seen: list[dict[str, Any]] = []
    with Connection(settings.broker_url) as listening, Connection(settings.broker_url) as sending:
        receiver = app.events.Receiver(listening, handlers={"*": seen.append})
        with receiver.consumer_context() as (connection, _, _):  # its queue is bound now
            dispatcher = app.events.Dispatcher(sending, hostname=hostname, enabled=True)
            hook = TaskEvents()
            hook.consumer_ready(SimpleNamespace(event_dispatcher=dispatcher, hostname=hostname))
            message = _message(f"t-{uuid.uuid4().hex}")
            hook.message_event("received", message, {})
            hook.message_event("started", message, {})
            hook.messages_handled()

            def ours() -> list[str]:
                with suppress(socket.timeout, TimeoutError):
                    connection.drain_events(timeout=0.1)
                return [e["type"] for e in seen if e.get("hostname") == hostname]

            wait_for(lambda: len(ours()) >= 2, timeout=10, interval=0.0,
                     message="both events through Celery's receiver")
            assert ours() == ["task-received", "task-started"]
            dispatcher.close()
