"""Broker probes over AMQP with pika: queue depth and consumer counts, without the management
plugin.

Used to tell when workers are consuming (the demo, tests) and, later, to scale on backlog.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import pika
import pika.exceptions

from aidist.config import redact_url
from aidist.errors import ServiceUnavailable

# A passive declare of a queue that does not exist yet is an expected answer here, not a warning.
logging.getLogger("pika.channel").setLevel(logging.ERROR)


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


def queue_stats(broker_url: str, queues: Sequence[str],
                connect_timeout_s: float = 5.0) -> list[QueueStats]:
    """Depth and consumers of each queue, by passive declares on one connection."""
    try:
        connection = pika.BlockingConnection(pika_parameters(broker_url, connect_timeout_s))
    except pika.exceptions.AMQPError as exc:
        raise ServiceUnavailable("RabbitMQ", redact_url(broker_url),
                                 str(exc) or type(exc).__name__) from exc
    stats = []
    try:
        channel = connection.channel()
        for name in queues:
            try:
                frame = channel.queue_declare(name, passive=True)
                stats.append(QueueStats(name, frame.method.message_count,
                                        frame.method.consumer_count))
            except pika.exceptions.ChannelClosedByBroker:
                stats.append(QueueStats(name, 0, 0))
                channel = connection.channel()
    finally:
        if connection.is_open:
            connection.close()
    return stats
