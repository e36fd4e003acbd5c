"""What Celery's own tools see of batched messages: task events for Flower, and the worker state
that ``celery inspect active``/``reserved``/``query_task`` and ``stats`` read.

The gpu pool's batcher takes messages itself (a Celery task strategy), so Celery never builds its
``Request`` objects for them: without this hook no task event fires, ``inspect active`` stays
empty while a batch runs and ``stats.total`` stays ``{}`` after thousands of jobs. This hook puts a
``BatchedRequest`` in Celery's worker state for each held message (reserved when taken, active when
its batch starts, gone when it is settled) and sends the ``task-*`` events Celery would send:
received, started, then succeeded, failed (a message some of whose jobs failed: the event names
them, so Flower does not show "Failed 0" while jobs failed) or retried. They go gathered, a
flush's or a settled batch's in one message (Celery's ``task.multi``), not a message each. The
cpu pool runs ordinary Celery tasks, whose state and events Celery keeps itself
(``workers.requests``). Events are sent
only if the worker sends events (``AIDIST_TASK_EVENTS``, on by default); the worker state is kept
either way (it costs a few set operations per message). Every moment runs on the consumer's
thread, as Celery's own state updates do.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery.worker import state as worker_state

from workers.hooks import WorkerHook

LISTED_FAILURES = 5  # job ids a failure event names; the rest are counted
#: Task events sent together at most (a flush of 256 one-job messages makes 256 ``task-started``
#: events; about 300 bytes each).
EVENTS_PER_MESSAGE = 512


class _LateAck:
    """What Celery reads of a request's task: acked late (after the results are stored)."""

    acks_late = True
    name = "aidist.run_jobs"


class BatchedRequest:
    """A batched message in Celery's worker state, with what ``inspect`` shows of a task: its
    id, its shadow name (model and job count), the argument summary (never the inputs). Celery
    also handles the requests in its state itself: it sets ``eventer`` after a reconnect, reads
    ``task.acks_late``/``acknowledged`` and calls ``cancel`` on a cold shutdown, ``terminate``
    on a revoke; each is here (an attribute it lacked would crash the worker's consumer). No
    ``__slots__``, so Celery may set what it likes."""

    task = _LateAck()
    stamps = None
    _eta_timer_entry = None

    def __init__(self, message: Any, hostname: str) -> None:
        headers = message.headers or {}
        self.id: str = headers.get("id") or ""
        self.name: str = headers.get("shadow") or headers.get("task") or "aidist.run_jobs"
        self.argsrepr: str = headers.get("argsrepr", "")
        self.hostname = hostname
        self.delivery_info = dict(getattr(message, "delivery_info", None) or {})
        self.time_start: float | None = None
        self.acknowledged = False
        self.worker_pid = os.getpid()
        self.eventer: Any = None

    def info(self, safe: bool = False) -> dict[str, Any]:
        """What ``inspect active``/``reserved`` report (``safe`` or not: inputs stay out)."""
        return {"id": self.id, "name": self.name, "args": self.argsrepr, "kwargs": "{}",
                "type": "aidist.run_jobs", "hostname": self.hostname,
                "time_start": self.time_start, "acknowledged": self.acknowledged,
                "delivery_info": self.delivery_info, "worker_pid": self.worker_pid}

    def cancel(self, pool: Any = None, signal: Any = None, emit_retry: bool = True) -> None:
        """A cold shutdown: nothing to do here, the message is not acked and comes back."""

    def terminate(self, pool: Any = None, signal: Any = None) -> None:
        """``revoke --terminate`` cannot stop one message of a shared model batch; cancelling
        its jobs does (``job.cancel()``), at the next batch boundary."""

    def __repr__(self) -> str:
        return f"<BatchedRequest {self.name} [{self.id}]>"


class TaskEvents(WorkerHook):
    """Keeps Celery's worker state and sends ``task-*`` events for batched messages."""

    def __init__(self) -> None:
        self.dispatcher: Any = None
        self.hostname = ""
        self._requests: dict[int, BatchedRequest] = {}  # id(message) -> its request

    @property
    def enabled(self) -> bool:
        return self.dispatcher is not None and bool(self.dispatcher.enabled)

    def consumer_ready(self, consumer: Any) -> None:
        self.dispatcher = getattr(consumer, "event_dispatcher", None)
        self.hostname = str(getattr(consumer, "hostname", "") or "")
        if self.dispatcher is not None:
            # Celery's own buffering of an event group: ``task-*`` events wait in the
            # dispatcher and go as one ``task.multi`` message (a list, which Celery's event
            # receivers, Flower's included, unpack) when the batcher is through with a group
            # of messages (``messages_handled``), instead of one message per event.
            self.dispatcher.buffer_group = frozenset({"task"})
            self.dispatcher.buffer_limit = EVENTS_PER_MESSAGE

    def messages_handled(self) -> None:
        if self.enabled:
            self.dispatcher.flush(errors=False, groups=True)

    def message_event(self, event: str, message: Any, fields: dict[str, Any]) -> None:
        self._track(event, message)
        if not self.enabled:
            return
        headers = message.headers or {}
        if event == "received":
            fields = {"name": headers.get("shadow") or headers.get("task"),
                      "args": headers.get("argsrepr", ""),
                      "kwargs": headers.get("kwargsrepr", "{}"),
                      "root_id": headers.get("root_id"), "parent_id": headers.get("parent_id"),
                      "retries": headers.get("retries", 0), "eta": None, "expires": None,
                      **fields}
        elif event == "failed":
            fields = {"traceback": "", **fields}
        self.dispatcher.send(f"task-{event}", uuid=headers.get("id"), **fields)

    def _track(self, event: str, message: Any) -> None:
        key = id(message)
        if event == "received":
            taken = BatchedRequest(message, self.hostname)
            self._requests[key] = taken
            worker_state.task_reserved(taken)
            return
        request = self._requests.get(key)
        if request is None:
            return
        if event == "started":
            request.time_start = time.time()
            worker_state.task_accepted(request)
        else:  # succeeded, failed or retried: settled
            request.acknowledged = event != "retried"
            del self._requests[key]
            worker_state.task_ready(request, successful=event == "succeeded")


def failure_text(failed: list[str], of: int) -> str:
    """The exception a failure event carries: how many of a message's jobs failed, which."""
    named = ", ".join(failed[:LISTED_FAILURES])
    more = f" and {len(failed) - LISTED_FAILURES} more" if len(failed) > LISTED_FAILURES else ""
    return (f"JobsFailed: {len(failed)} of {of} jobs failed: {named}{more} (the message is "
            "acked; each job's error: aidist jobs show ID)")
