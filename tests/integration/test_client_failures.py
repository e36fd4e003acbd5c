"""producers.Client when a service fails: a dead service fails fast with ServiceUnavailable
and writes nothing, a publish the broker refuses fails its jobs, a broker lost mid-submit leaves
the recorded jobs to the sweeper, and the sweeper expires queued jobs past their deadline."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from aidist.config import Settings
from aidist.errors import AidistError, JobExpired, ServiceUnavailable
from aidist.jobs import JobStatus
from aidist.transport import Publisher
from db.store import JobStore
from producers import Client
from tests.conftest import free_port, make_settings, pika_connection, queue_depth
from tests.forwarding import Forwarder, moved_to
from tests.integration.conftest import (
    TOY,
    clean_namespace,
    drain,
    isolated_settings,
    total_jobs,
    toy_queue,
)
from workers.sweeper import sweep_once

pytestmark = pytest.mark.integration


def test_publish_refused_by_the_broker_marks_the_jobs_failed(
        ns_settings: Settings, ns_client: Client, store: JobStore) -> None:
    queue = toy_queue(ns_settings)
    connection = pika_connection(ns_settings)
    try:  # someone declared the queue with other arguments: RabbitMQ refuses ours
        connection.channel().queue_declare(queue, durable=True)
    finally:
        connection.close()
    before = store.count_by_status()
    with pytest.raises(AidistError) as raised:
        ns_client.infer_many(TOY, ["one", "two", "three"])
    assert "PRECONDITION_FAILED" in str(raised.value)
    after = store.count_by_status()
    assert after[JobStatus.FAILED] == before[JobStatus.FAILED] + 3
    assert after[JobStatus.QUEUED] == before[JobStatus.QUEUED]
    failed = store.list_jobs(limit=3, status=JobStatus.FAILED)
    assert all(record.error and record.error.startswith("not published:") for record in failed)
    assert queue_depth(ns_settings, queue) == 0


# -- dead services ------------------------------------------------------------------------------

@dataclass(frozen=True)
class DeadService:
    """A setting pointing at a port nothing listens on, and what the error must show."""

    setting: str
    url: str
    service: str
    shown: str
    secret: str | None = None


DEAD_SERVICES = {
    "broker": DeadService("broker_url", "amqp://guest:guest@127.0.0.1:1//", "RabbitMQ",
                          "amqp://guest:***@127.0.0.1:1//", "guest:guest"),
    "redis": DeadService("redis_url", "redis://127.0.0.1:1/0", "Redis", "redis://127.0.0.1:1/0"),
    "redis-password": DeadService("redis_url", "redis://:hunter2@127.0.0.1:1/0", "Redis",
                                  "redis://:***@127.0.0.1:1/0", "hunter2"),
    "postgres": DeadService("database_url", "postgresql+psycopg://postgres@127.0.0.1:1/x",
                            "PostgreSQL", "postgresql+psycopg://postgres@127.0.0.1:1/x"),
    "postgres-password": DeadService(
        "database_url", "postgresql+psycopg://postgres:hunter2@127.0.0.1:1/x", "PostgreSQL",
        "postgresql+psycopg://postgres:***@127.0.0.1:1/x", "hunter2"),
}


@pytest.mark.timeout(10, func_only=True)  # the bound: the error comes within 10 s
@pytest.mark.parametrize("dead_service", list(DEAD_SERVICES.values()), ids=list(DEAD_SERVICES))
def test_dead_service_raises_service_unavailable_fast(settings: Settings, store: JobStore,
                                                      dead_service: DeadService) -> None:
    setting, service, shown, secret = (dead_service.setting, dead_service.service,
                                       dead_service.shown, dead_service.secret)
    dead = isolated_settings(settings, **{setting: dead_service.url})
    before = total_jobs(store)
    try:
        with Client(dead) as dead_client, pytest.raises(ServiceUnavailable) as raised:
            dead_client.infer(TOY, "x")
        error = raised.value
        assert isinstance(error, AidistError) and isinstance(error, ConnectionError)
        assert error.service == service
        assert error.url == shown
        message = str(error)
        assert service in message and shown in message
        if secret is not None:
            assert secret not in message
        assert error.__cause__ is not None
        assert total_jobs(store) == before  # nothing written anywhere it could be
        if setting != "broker_url":
            assert queue_depth(dead, toy_queue(dead)) == 0  # and nothing sent
    finally:
        clean_namespace(make_settings(**{**dead.model_dump(), setting: getattr(settings,
                                                                               setting)}))


def test_jobs_whose_publish_failed_mid_submit_are_published_by_the_sweeper(
        ns_settings: Settings, store: JobStore) -> None:
    # The client reaches RabbitMQ through a forwarder that then goes away, open connection and
    # all: a real broker loss between the submit's first connect and its publish.
    forwarder = Forwarder(free_port(), 5672)
    forwarder.start()
    broker_url, _ = moved_to(ns_settings.broker_url, forwarder.port)
    settings = ns_settings.model_copy(update={"publish_retry_s": 0.0, "broker_url": broker_url})
    queue = toy_queue(ns_settings)
    try:
        with Client(settings) as client:
            client.publisher.connect()  # the broker was up when the submit began
            forwarder.stop()
            jobs = client.infer_many(TOY, [f"outbox {uuid.uuid4()}" for _ in range(3)])
    finally:
        forwarder.stop()
    assert len(jobs) == 3  # recorded: accepted, to be sent later
    records = store.get_many([job.id for job in jobs])
    assert {records[job.id].status for job in jobs} == {JobStatus.QUEUED}
    assert queue_depth(ns_settings, queue) == 0

    publisher = Publisher(ns_settings.broker_url, ns_settings.namespace)
    try:
        assert sweep_once(ns_settings, store, publisher.publish, older_than_s=0) >= 3
    finally:
        publisher.close()
    swept = {entry["id"] for _, entries in drain(ns_settings, queue) for entry in entries}
    assert {job.id for job in jobs} <= swept  # (rows other tests left unsent may come along)


def test_a_queued_job_past_its_deadline_is_expired_by_a_sweep_without_a_worker(
        ns_settings: Settings, ns_client: Client, store: JobStore) -> None:
    late = ns_client.infer(TOY, f"too late {uuid.uuid4()}",
                           deadline=datetime.now(UTC) - timedelta(seconds=1))
    timely = ns_client.infer(TOY, f"in time {uuid.uuid4()}", deadline=3600)
    plain = ns_client.infer(TOY, f"no deadline {uuid.uuid4()}")
    published: list[str] = []
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(late.result, 30)  # a client already waiting on it learns it too
        # No worker consumes this namespace: only the sweep can end the job. (A day's age keeps
        # it from publishing rows other tests left unsent.)
        sweep_once(ns_settings, store, lambda queue, *_: published.append(queue),
                   older_than_s=86_400.0)
        assert isinstance(waiting.exception(timeout=15), JobExpired)
    assert published == []
    record = store.get(late.id)
    assert record.status is JobStatus.EXPIRED
    assert record.finished_at is not None and record.started_at is None
    with pytest.raises(JobExpired) as raised:
        late.result(timeout=5)
    assert raised.value.job_id == late.id
    assert {timely.status(), plain.status()} == {JobStatus.QUEUED}
    # someone else's handle reads the same from Postgres
    with Client(ns_settings) as other, pytest.raises(JobExpired):
        other.get(late.id).result(timeout=5)
