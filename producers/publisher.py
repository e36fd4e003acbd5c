"""Publishing job messages to RabbitMQ: standard Celery protocol-2 task messages, msgpack bodies,
durable queues, persistent delivery and publisher confirms.

The client builds the message itself with kombu rather than through a Celery app, so a client
process never imports the worker side. The format is Celery's documented task protocol v2, which is
what lets Flower and ``celery inspect`` show aidist jobs as ordinary ``aidist.run_jobs`` tasks.
"""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

import amqp.exceptions
from kombu.connection import Connection
from kombu.exceptions import KombuError
from kombu.messaging import Producer

from aidist.config import redact_url
from aidist.errors import ConfigError, ServiceUnavailable
from aidist.jobs import RUN_JOBS_TASK
from aidist.routing import job_queue, jobs_exchange

SERVICE = "RabbitMQ"
_BROKER_ERRORS = (OSError, KombuError, amqp.exceptions.AMQPError)


def task_message(
    entries: Sequence[dict[str, Any]], origin: str
) -> tuple[Any, dict[str, Any], str]:
    """Body and headers of a Celery protocol-2 ``aidist.run_jobs`` message carrying ``entries``."""
    task_id = str(uuid.uuid4())
    headers = {
        "lang": "py",
        "task": RUN_JOBS_TASK,
        "id": task_id,
        "root_id": task_id,
        "parent_id": None,
        "group": None,
        "shadow": None,
        "eta": None,
        "expires": None,
        "retries": 0,
        "timelimit": [None, None],
        "argsrepr": f"[<{len(entries)} jobs>]",
        "kwargsrepr": "{}",
        "origin": origin,
        "ignore_result": True,
    }
    body: tuple[list[list[dict[str, Any]]], dict[str, Any], dict[str, None]] = (
        [list(entries)],
        {},
        {"callbacks": None, "errbacks": None, "chain": None, "chord": None},
    )
    return body, headers, task_id


class Publisher:
    """One confirmed AMQP connection per client, shared by its threads under a lock."""

    def __init__(self, broker_url: str, namespace: str, connect_timeout_s: float = 5.0) -> None:
        self.broker_url = broker_url
        self.namespace = namespace
        self.connect_timeout_s = connect_timeout_s
        self._url = redact_url(broker_url)
        self._origin = f"aidist-client@{socket.gethostname()}"
        self._lock = threading.Lock()
        self._connection: Connection | None = None
        self._producer: Producer | None = None
        self._declared: set[str] = set()

    @contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except _BROKER_ERRORS as exc:
            self._reset()
            raise ServiceUnavailable(SERVICE, self._url, str(exc) or type(exc).__name__) from exc

    def _reset(self) -> None:
        if self._connection is not None:
            with suppress(*_BROKER_ERRORS):
                self._connection.release()  # type: ignore[no-untyped-call]
        self._connection = None
        self._producer = None
        self._declared.clear()

    def _ensure(self) -> Producer:
        if self._producer is None:
            connection = Connection(  # type: ignore[no-untyped-call]
                self.broker_url,
                connect_timeout=self.connect_timeout_s,
                transport_options={"confirm_publish": True},
                heartbeat=0,
            )
            connection.connect()  # type: ignore[no-untyped-call]
            self._connection = connection
            channel = connection.channel()  # type: ignore[no-untyped-call]
            self._producer = Producer(channel, serializer="msgpack")  # type: ignore[no-untyped-call]
        return self._producer

    def connect(self) -> None:
        """Open the connection now, so a down broker fails before anything is written."""
        with self._lock, self._guard():
            self._ensure()

    def publish(self, queue_name: str, entries: Sequence[dict[str, Any]], priority: int = 0) -> str:
        """Publish one message carrying ``entries`` to ``queue_name``; returns once the broker has
        confirmed it. Retries once on a fresh connection if the old one had died."""
        body, headers, task_id = task_message(entries, self._origin)
        with self._lock:
            for attempt in (1, 2):
                try:
                    producer = self._ensure()
                    if queue_name not in self._declared:
                        queue = job_queue(self.namespace, queue_name)(producer.channel)
                        queue.declare()  # type: ignore[no-untyped-call]
                        self._declared.add(queue_name)
                    producer.publish(  # type: ignore[no-untyped-call]
                        body,
                        exchange=jobs_exchange(self.namespace),
                        routing_key=queue_name,
                        headers=headers,
                        delivery_mode=2,
                        priority=priority,
                        correlation_id=task_id,
                        mandatory=True,  # a queue deleted meanwhile: returned, so retried
                        retry=False,
                    )
                    return task_id
                except amqp.exceptions.PreconditionFailed as exc:
                    self._reset()
                    raise ConfigError(
                        f"queue {queue_name} exists with other arguments than aidist declares "
                        f"({exc}); delete it or use another AIDIST_NAMESPACE"
                    ) from exc
                except _BROKER_ERRORS as exc:
                    self._reset()
                    if attempt == 2:
                        raise ServiceUnavailable(
                            SERVICE, self._url, str(exc) or type(exc).__name__
                        ) from exc
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._reset()
