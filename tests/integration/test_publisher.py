"""aidist.transport.Publisher against the real RabbitMQ: durable queues, Celery protocol-2
messages with msgpack bodies, read back raw with pika."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import msgpack
import pika
import pika.exceptions
import pytest

from aidist.config import Settings
from aidist.errors import ServiceUnavailable
from aidist.jobs import RUN_JOBS_TASK, JobEntry, JobKind
from aidist.transport import Publisher, dead_letter_exchange, queue_arguments, queue_name
from tests.conftest import pika_connection, queue_depth, wait_for

pytestmark = pytest.mark.integration

QUEUE_TARGET = "toy-classifier"


@pytest.fixture
def publisher(ns_settings: Settings) -> Iterator[Publisher]:
    """A publisher into this test's own namespace."""
    job_publisher = Publisher(ns_settings.broker_url, ns_settings.namespace)
    try:
        yield job_publisher
    finally:
        job_publisher.close()


def _queue(settings: Settings) -> str:
    return queue_name(settings.namespace, JobKind.INFER, QUEUE_TARGET)


def _entries(count: int, reply_to: str | None = "aidist:reply:abc") -> list[dict[str, Any]]:
    return [
        JobEntry(str(uuid.uuid4()), JobKind.INFER, QUEUE_TARGET, "toy-v1", f"text {i}",
                 uuid.uuid4().hex, {}, reply_to).to_wire()
        for i in range(count)
    ]


def _get_one(settings: Settings, queue: str) -> tuple[Any, Any, bytes]:
    connection = pika_connection(settings)
    try:
        method, properties, body = connection.channel().basic_get(queue, auto_ack=True)
    finally:
        connection.close()
    assert method is not None, f"no message in {queue}"
    return method, properties, body


def test_publish_creates_a_durable_priority_queue_with_dead_lettering(
        ns_settings: Settings, publisher: Publisher) -> None:
    queue = _queue(ns_settings)
    assert queue_depth(ns_settings, queue) == 0
    publisher.publish(queue, _entries(1))
    assert queue_depth(ns_settings, queue) == 1
    assert queue_arguments(ns_settings.namespace) == {
        "x-max-priority": 10,
        "x-dead-letter-exchange": dead_letter_exchange(ns_settings.namespace),
    }

    connection = pika_connection(ns_settings)
    try:
        # the same declaration is accepted: durable, with exactly these arguments
        channel = connection.channel()
        channel.queue_declare(queue, durable=True, arguments=queue_arguments(ns_settings.namespace))
        # RabbitMQ refuses a declaration that differs from the existing queue
        for durable, arguments in ((False, queue_arguments(ns_settings.namespace)),
                                   (True, {"x-max-priority": 10}),
                                   (True, {})):
            channel = connection.channel()
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
                channel.queue_declare(queue, durable=durable, arguments=arguments)
            assert refused.value.reply_code == 406
    finally:
        connection.close()


def test_published_message_is_a_celery_protocol2_msgpack_task(ns_settings: Settings,
                                                             publisher: Publisher) -> None:
    queue = _queue(ns_settings)
    entries = _entries(3)
    task_id = publisher.publish(queue, entries, priority=7)

    method, properties, body = _get_one(ns_settings, queue)
    assert method.routing_key == queue
    assert method.exchange == f"{ns_settings.namespace}.jobs"
    assert properties.content_type == "application/x-msgpack"
    assert properties.content_encoding == "binary"
    assert properties.delivery_mode == 2
    assert properties.priority == 7
    assert properties.correlation_id == task_id
    headers = properties.headers
    assert headers["task"] == RUN_JOBS_TASK == "aidist.run_jobs"
    assert headers["id"] == task_id
    assert headers["root_id"] == task_id
    assert headers["lang"] == "py"
    assert headers["argsrepr"] == "[<3 jobs>]"
    uuid.UUID(task_id)

    assert body[:1] != b"\x80"  # not a pickle stream (protocol 2+ starts with PROTO 0x80)
    decoded = msgpack.unpackb(body, raw=False)
    assert isinstance(decoded, list) and len(decoded) == 3
    args, kwargs, embed = decoded
    assert args == [entries]
    assert kwargs == {}
    assert embed == {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    assert [JobEntry.from_wire(entry).id for entry in args[0]] == [e["id"] for e in entries]


def test_each_publish_is_one_message_in_order(ns_settings: Settings,
                                              publisher: Publisher) -> None:
    queue = _queue(ns_settings)
    batches = [_entries(2), _entries(1), _entries(5)]
    task_ids = [publisher.publish(queue, batch) for batch in batches]
    assert len(set(task_ids)) == 3
    assert queue_depth(ns_settings, queue) == 3
    for batch, task_id in zip(batches, task_ids, strict=True):
        _, properties, body = _get_one(ns_settings, queue)
        assert properties.headers["id"] == task_id
        assert msgpack.unpackb(body, raw=False)[0] == [batch]


def test_higher_priority_messages_are_delivered_first(ns_settings: Settings,
                                                      publisher: Publisher) -> None:
    queue = _queue(ns_settings)
    low = publisher.publish(queue, _entries(1), priority=0)
    high = publisher.publish(queue, _entries(1), priority=9)
    wait_for(lambda: queue_depth(ns_settings, queue) == 2, timeout=10, message="two messages")
    first = _get_one(ns_settings, queue)[1].headers["id"]
    second = _get_one(ns_settings, queue)[1].headers["id"]
    assert (first, second) == (high, low)


def test_publish_to_a_dead_broker_raises_service_unavailable(ns_settings: Settings) -> None:
    dead = Publisher("amqp://guest:s3cret@127.0.0.1:1//", ns_settings.namespace,
                     connect_timeout_s=1)
    try:
        with pytest.raises(ServiceUnavailable) as raised:
            dead.publish(_queue(ns_settings), _entries(1))
    finally:
        dead.close()
    assert raised.value.service == "RabbitMQ"
    assert "s3cret" not in str(raised.value)
    assert "guest:***@127.0.0.1:1" in str(raised.value)


def test_publish_after_the_queue_was_deleted_is_not_silently_lost(
        ns_settings: Settings, publisher: Publisher) -> None:
    queue = _queue(ns_settings)
    publisher.publish(queue, _entries(1))
    connection = pika_connection(ns_settings)
    try:
        connection.channel().queue_delete(queue)  # an operator resets the queue
    finally:
        connection.close()
    try:
        publisher.publish(queue, _entries(1))
    except ServiceUnavailable:
        return  # failing loudly is acceptable: the client marks the jobs failed
    assert queue_depth(ns_settings, queue) == 1
