"""Celery task events for batched messages, so Flower shows them like any task.

The gpu pool's batcher takes messages itself (a Celery task strategy), so Celery's own task
events never fire for them. This hook sends them instead: received when a message is taken,
started when its batch runs, then succeeded, failed or retried. The cpu pool runs ordinary Celery
tasks, whose events Celery sends itself. Nothing is sent unless the worker sends events
(``AIDIST_TASK_EVENTS``, Celery's ``worker_send_task_events``).
"""

from __future__ import annotations

from typing import Any

from workers.hooks import WorkerHook


class TaskEvents(WorkerHook):
    """Sends ``task-*`` events through the consumer's event dispatcher."""

    def __init__(self) -> None:
        self.dispatcher: Any = None

    @property
    def enabled(self) -> bool:
        return self.dispatcher is not None and bool(self.dispatcher.enabled)

    def consumer_ready(self, consumer: Any) -> None:
        self.dispatcher = getattr(consumer, "event_dispatcher", None)

    def message_event(self, event: str, message: Any, fields: dict[str, Any]) -> None:
        if not self.enabled:
            return
        headers = message.headers or {}
        if event == "received":
            fields = {"name": headers.get("task"), "args": headers.get("argsrepr", ""),
                      "kwargs": headers.get("kwargsrepr", "{}"),
                      "root_id": headers.get("root_id"), "parent_id": headers.get("parent_id"),
                      "retries": headers.get("retries", 0), "eta": None, "expires": None,
                      **fields}
        self.dispatcher.send(f"task-{event}", uuid=headers.get("id"), **fields)
