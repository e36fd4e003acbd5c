"""Batched messages in Celery's worker state survive what Celery itself does to the requests it
keeps there: a reconnect (new event dispatcher), a cold shutdown (cancel the unacked ones)."""

from __future__ import annotations

from types import SimpleNamespace

from celery.worker import state as worker_state
from celery.worker.consumer.consumer import Consumer

from workers.task_events import BatchedRequest, TaskEvents


def _message(task_id: str) -> SimpleNamespace:
    return SimpleNamespace(headers={"id": task_id, "task": "aidist.run_jobs",
                                    "shadow": "minilm (3 jobs)", "argsrepr": "[<3 jobs>]"},
                           delivery_info={"routing_key": "q"})


def test_received_started_settled_move_through_celerys_state() -> None:
    hook = TaskEvents()
    message = _message("t-1")
    hook.message_event("received", message, {})
    (reserved,) = [r for r in worker_state.reserved_requests if r.id == "t-1"]
    assert reserved.info()["name"] == "minilm (3 jobs)"
    assert reserved.info()["args"] == "[<3 jobs>]"  # never the inputs
    hook.message_event("started", message, {})
    assert reserved in worker_state.active_requests
    assert worker_state.total_count["minilm (3 jobs)"] >= 1
    hook.message_event("succeeded", message, {})
    assert reserved not in worker_state.active_requests
    assert "t-1" not in worker_state.requests


def test_celerys_reconnect_and_cold_shutdown_paths_accept_a_batched_request() -> None:
    request = BatchedRequest(_message("t-2"), "gpu-1@host")
    worker_state.task_reserved(request)
    worker_state.task_accepted(request)
    try:
        request.eventer = object()  # what Celery's events step does after a reconnect
        Consumer.cancel_active_requests(SimpleNamespace(pool=None))  # a cold shutdown
        assert request.task.acks_late and not request.acknowledged
    finally:
        worker_state.task_ready(request)
