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
from collections.abc import Sequence
from contextlib import suppress
from typing import Any

import amqp.exceptions
from kombu.connection import Connection
from kombu.exceptions import KombuError
from kombu.messaging import Producer

from aidist.config import redact_url
from aidist.errors import ConfigError, ServiceUnavailable
from aidist.jobs import RUN_JOBS_TASK
from aidist.transport.topology import job_queue, jobs_exchange

SERVICE = "RabbitMQ"
_BROKER_ERRORS = (OSError, KombuError, amqp.exceptions.AMQPError)


def task_label(entries: Sequence[dict[str, Any]]) -> str:
    """What a message runs, as Flower and ``celery inspect`` show it (the task's shadow name):
    its model or op and how many jobs it carries, e.g. ``minilm (56 jobs)``. Never an input: they
    may be private."""
    targets = sorted({str(entry.get("target", "?")) for entry in entries})
    count = len(entries)
    return f"{'+'.join(targets)} ({count} job{'' if count == 1 else 's'})"


def task_message(
    entries: Sequence[dict[str, Any]], origin: str
) -> tuple[Any, dict[str, Any], str]:
    """Body and headers of a Celery protocol-2 ``aidist.run_jobs`` message carrying ``entries``:
    the shadow name says what it runs, the argument summary how many jobs (inputs stay out of
    every header, so no monitor shows them)."""
    task_id = str(uuid.uuid4())
    headers = {
        "lang": "py",
        "task": RUN_JOBS_TASK,
        "id": task_id,
        "root_id": task_id,
        "parent_id": None,
        "group": None,
        "shadow": task_label(entries),
        "eta": None,
        "expires": None,
        "retries": 0,
        "timelimit": [None, None],
        "argsrepr": f"[<{len(entries)} job{'' if len(entries) == 1 else 's'}>]",
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


class _Link:
    """One thread's confirmed connection, producer, and the queues it has declared."""

    def __init__(self) -> None:
        self.connection: Connection | None = None
        self.producer: Producer | None = None
        self.declared: set[str] = set()

    def reset(self) -> None:
        if self.connection is not None:
            with suppress(*_BROKER_ERRORS):
                self.connection.release()  # type: ignore[no-untyped-call]
        self.connection = None
        self.producer = None
        self.declared.clear()


class Publisher:
    """Confirmed publishing, one AMQP connection per calling thread: a confirm round trip in one
    thread never holds up another (kombu connections are not thread-safe to share anyway)."""

    def __init__(self, broker_url: str, namespace: str, connect_timeout_s: float = 5.0) -> None:
        self.broker_url = broker_url
        self.namespace = namespace
        self.connect_timeout_s = connect_timeout_s
        self._url = redact_url(broker_url)
        self._origin = f"aidist-client@{socket.gethostname()}"
        self._local = threading.local()
        self._links: list[_Link] = []
        self._links_lock = threading.Lock()

    def _link(self) -> _Link:
        link: _Link | None = getattr(self._local, "link", None)
        if link is None:
            link = _Link()
            self._local.link = link
            with self._links_lock:
                self._links.append(link)
        return link

    def _ensure(self, link: _Link) -> Producer:
        if link.producer is None:
            connection = Connection(  # type: ignore[no-untyped-call]
                self.broker_url,
                connect_timeout=self.connect_timeout_s,
                transport_options={"confirm_publish": True},
                heartbeat=0,
            )
            connection.connect()  # type: ignore[no-untyped-call]
            link.connection = connection
            channel = connection.channel()  # type: ignore[no-untyped-call]
            link.producer = Producer(channel, serializer="msgpack")  # type: ignore[no-untyped-call]
        return link.producer

    def connect(self) -> None:
        """Open this thread's connection now, so a down broker fails before anything is written."""
        link = self._link()
        try:
            self._ensure(link)
        except _BROKER_ERRORS as exc:
            link.reset()
            raise ServiceUnavailable(SERVICE, self._url, str(exc) or type(exc).__name__) from exc

    def publish(self, queue_name: str, entries: Sequence[dict[str, Any]], priority: int = 0) -> str:
        """Publish one message carrying ``entries`` to ``queue_name``; returns once the broker has
        confirmed it. Retries once on a fresh connection if the old one had died."""
        body, headers, task_id = task_message(entries, self._origin)
        link = self._link()
        for attempt in (1, 2):
            try:
                producer = self._ensure(link)
                if queue_name not in link.declared:
                    queue = job_queue(self.namespace, queue_name)(producer.channel)
                    queue.declare()  # type: ignore[no-untyped-call]
                    link.declared.add(queue_name)
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
                link.reset()
                raise ConfigError(
                    f"queue {queue_name} exists with other arguments than aidist declares "
                    f"({exc}); delete it or use another AIDIST_NAMESPACE"
                ) from exc
            except _BROKER_ERRORS as exc:
                link.reset()
                if attempt == 2:
                    raise ServiceUnavailable(
                        SERVICE, self._url, str(exc) or type(exc).__name__
                    ) from exc
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close every thread's connection."""
        with self._links_lock:
            for link in self._links:
                link.reset()
