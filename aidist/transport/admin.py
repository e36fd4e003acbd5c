"""Broker administration over AMQP with pika: queue depth and consumer counts (without the
management plugin), the dead-letter topology, deleting a namespace's queues, and publishing a raw
message around the client.

Queue depth tells when workers consume (the demo, tests) and how far behind a pool is; declaring
the dead-letter topology first also proves the broker is reachable before a worker starts.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions

from aidist.config import redact_url
from aidist.errors import ServiceUnavailable
from aidist.jobs import RUN_JOBS_TASK
from aidist.transport.topology import dead_letter_exchange, dead_letter_queue, jobs_exchange

SERVICE = "RabbitMQ"
# Every pika failure reaches the caller as an exception (``ServiceUnavailable`` with the reason);
# pika's own lines would repeat it (an ERROR and a traceback for each refused connect: a flood
# while a worker waits for the broker at start-up), and a passive declare of a queue that does
# not exist yet is an expected answer here, not an error.
logging.getLogger("pika").setLevel(logging.CRITICAL)


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Ready messages and consumers of one queue (both 0 for a queue that does not exist)."""

    name: str
    messages: int
    consumers: int


def pika_parameters(broker_url: str, connect_timeout_s: float = 5.0) -> pika.URLParameters:
    """pika parameters for a kombu-style URL (``amqp://host//`` means vhost ``/``)."""
    url = broker_url[:-1] + "%2F" if broker_url.endswith("//") else broker_url
    parameters = pika.URLParameters(url)
    parameters.socket_timeout = connect_timeout_s
    parameters.blocked_connection_timeout = connect_timeout_s
    parameters.connection_attempts = 1
    return parameters


@contextmanager
def broker_channel(broker_url: str, connect_timeout_s: float = 5.0
                   ) -> Iterator[pika.adapters.blocking_connection.BlockingChannel]:
    """A channel on a connection of its own, closed after the block; ``ServiceUnavailable`` if
    the broker cannot be reached or drops the connection."""
    try:
        connection = pika.BlockingConnection(pika_parameters(broker_url, connect_timeout_s))
    except (pika.exceptions.AMQPError, OSError) as exc:
        raise ServiceUnavailable(SERVICE, redact_url(broker_url), _reason(exc)) from exc
    try:
        yield connection.channel()
    except (pika.exceptions.AMQPConnectionError, OSError) as exc:
        raise ServiceUnavailable(SERVICE, redact_url(broker_url), _reason(exc)) from exc
    finally:
        if connection.is_open:
            connection.close()


def _reason(exc: BaseException) -> str:
    """What went wrong, in words. pika wraps a refused or timed-out socket in errors whose text
    is empty (``AMQPConnectionError(AMQPConnectorSocketConnectError(...))``): name the socket
    error inside."""
    inner = getattr(exc.args[0], "exception", None) if exc.args else None
    if isinstance(inner, BaseException):
        return str(inner) or type(inner).__name__
    return str(exc) or repr(exc)


def queue_stats(broker_url: str, queues: Sequence[str],
                connect_timeout_s: float = 5.0) -> list[QueueStats]:
    """Depth and consumers of each queue, by passive declares on one connection."""
    stats = []
    with broker_channel(broker_url, connect_timeout_s) as first:
        channel = first
        for name in queues:
            try:
                frame = channel.queue_declare(name, passive=True)
                stats.append(QueueStats(name, frame.method.message_count,
                                        frame.method.consumer_count))
            except pika.exceptions.ChannelClosedByBroker:  # no such queue: it closed the channel
                stats.append(QueueStats(name, 0, 0))
                channel = channel.connection.channel()
    return stats


def declare_dead_letters(broker_url: str, namespace: str, connect_timeout_s: float = 5.0) -> None:
    """Declare the dead-letter exchange (fanout) and the queue that keeps what reaches it."""
    with broker_channel(broker_url, connect_timeout_s) as channel:
        channel.exchange_declare(dead_letter_exchange(namespace), exchange_type="fanout",
                                 durable=True)
        channel.queue_declare(dead_letter_queue(namespace), durable=True)
        channel.queue_bind(dead_letter_queue(namespace), dead_letter_exchange(namespace))


def delete_namespace(broker_url: str, namespace: str, queues: Iterable[str],
                     exchanges: Iterable[str] = ()) -> None:
    """Delete the given queues and exchanges and the namespace's dead-letter queue and
    exchanges (for tests and benchmarks that start from nothing)."""
    with broker_channel(broker_url) as channel:
        for name in [*queues, dead_letter_queue(namespace)]:
            channel.queue_delete(name)
        for name in [*exchanges, dead_letter_exchange(namespace), jobs_exchange(namespace).name]:
            channel.exchange_delete(name)


def purge(broker_url: str, queues: Iterable[str]) -> int:
    """Drop every ready message of the given queues (those that exist); returns how many."""
    dropped = 0
    with broker_channel(broker_url) as first:
        channel = first
        for name in queues:
            try:
                frame = channel.queue_purge(name)
                dropped += frame.method.message_count
            except pika.exceptions.ChannelClosedByBroker:  # no such queue: it closed the channel
                channel = channel.connection.channel()
    return dropped


def publish_raw(broker_url: str, namespace: str, queue: str, body: bytes, content_type: str,
                *, task: str = RUN_JOBS_TASK, headers: dict[str, Any] | None = None) -> None:
    """Publish one message, bytes as given, to a job queue around the client: for replaying a
    dead letter by hand, and for tests that need messages the client would never send."""
    task_id = str(uuid.uuid4())
    with broker_channel(broker_url) as channel:
        channel.basic_publish(
            exchange=jobs_exchange(namespace).name,
            routing_key=queue,
            body=body,
            properties=pika.BasicProperties(
                content_type=content_type, content_encoding="binary", delivery_mode=2,
                headers=headers or {"lang": "py", "task": task, "id": task_id,
                                    "root_id": task_id, "retries": 0,
                                    "timelimit": [None, None], "argsrepr": "", "eta": None},
            ),
        )
