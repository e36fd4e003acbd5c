"""Whether a bench phase's gpu-pool worker really sends Celery task events, seen on the broker.

The bench passes ``AIDIST_TASK_EVENTS`` to its workers, but what it measures is only worth its
label if the worker did what it was told: a receiver on Celery's event exchange counts the
``task-*`` events the run's gpu worker sends for one probe job (a fresh text, so the cache cannot
answer it). The worker's node name carries the run's namespace (``gpu-1.bench<hex>@host``), so
other aidist workers on the same broker are not counted. Worker heartbeats (sent with events on
or off, every 2 s) show the receiver is listening, and two of them after the probe's result show
that anything the worker sent with that result has arrived: no fixed sleep decides "none came".
The probe runs during the warm-up, never while a measurement runs.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from types import TracebackType
from typing import Any

from celery import Celery

from bench.env import Workers, wait_for
from producers import Client

PROBE_TIMEOUT_S = 60.0
HEARTBEATS_AFTER = 2  # a heartbeat could leave just before the probe's own events; two cannot


class EventProbe:
    """Counts the events of the run's gpu-pool node(s) while open (a thread consumes)."""

    def __init__(self, broker_url: str, namespace: str) -> None:
        self.node_part = f".{namespace}@"
        self.counts: Counter[str] = Counter()
        self.error: BaseException | None = None
        self._app = Celery(broker=broker_url, set_as_current=False)
        self._connection: Any = self._app.connection_for_read()
        self._receiver: Any = self._app.events.Receiver(self._connection,
                                                        handlers={"*": self._on_event})
        self._thread = threading.Thread(target=self._capture, name="event-probe", daemon=True)

    def _on_event(self, event: dict[str, Any]) -> None:
        hostname = str(event.get("hostname", ""))
        if hostname.startswith("gpu-") and self.node_part in hostname:
            self.counts[str(event.get("type"))] += 1

    def _capture(self) -> None:
        try:
            self._receiver.capture(limit=None, timeout=None, wakeup=False)
        except BaseException as exc:
            self.error = exc

    @property
    def heartbeats(self) -> int:
        self._raise_error()
        return self.counts["worker-heartbeat"]

    @property
    def task_events(self) -> int:
        self._raise_error()
        return sum(n for kind, n in self.counts.items() if kind.startswith("task-"))

    def _raise_error(self) -> None:
        if self.error is not None:
            raise RuntimeError(f"event receiver failed: {self.error!r}") from self.error

    def __enter__(self) -> EventProbe:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._receiver.should_stop = True  # the capture loop looks every second
        self._thread.join(timeout=10)
        self._connection.release()


def check_task_events(client: Client, workers: Workers, *, expected: bool,
                      timeout: float = PROBE_TIMEOUT_S) -> dict[str, int]:
    """Run one probe job through the gpu pool and count its task events; raise unless they are
    there (``expected``) or absent (not ``expected``)."""
    settings = client.settings
    with EventProbe(settings.broker_url, settings.namespace) as probe:
        wait_for(lambda: probe.heartbeats > 0, timeout=timeout, workers=workers,
                 what="a worker-heartbeat event from the gpu pool (the receiver listening)")
        client.infer("minilm", f"task event probe {uuid.uuid4().hex}").result(timeout=timeout)
        after = probe.heartbeats
        wait_for(lambda: probe.counts["task-succeeded"] > 0
                 or probe.heartbeats >= after + HEARTBEATS_AFTER,
                 timeout=timeout, workers=workers,
                 what="the probe job's task-succeeded event or two heartbeats after its result")
        seen = {"task_events": probe.task_events, "heartbeats": probe.heartbeats}
    if (seen["task_events"] > 0) != expected:
        raise RuntimeError(
            f"the gpu worker was started with AIDIST_TASK_EVENTS={str(expected).lower()} but "
            f"sent {seen['task_events']} task events for a probe job")
    return seen
