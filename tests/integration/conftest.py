"""Fixtures of the integration tier: isolated namespaces, scratch databases, job-row factories.

Everything here talks to the real RabbitMQ, Redis and PostgreSQL of the machine; nothing is mocked.
No worker process is started in this tier, so whatever a test publishes stays in its queue.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import msgpack
import pytest
from sqlalchemy import make_url

from aidist.config import Settings
from aidist.jobs import JobKind, JobStatus
from aidist.transport import queue_name
from db import setup as db_setup
from db.cache import ResultCache
from db.records import ClaimRequest, NewJob
from db.store import JobStore
from producers import Client
from tests.conftest import delete_queues, make_settings, pika_connection


def unique(prefix: str) -> str:
    """A name no other test (or session) uses."""
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def isolated_settings(settings: Settings, **overrides: Any) -> Settings:
    """The session's database and plugins, but a namespace (queues, Redis keys) of its own."""
    values: dict[str, Any] = {
        "database_url": settings.database_url,
        "namespace": unique("it"),
        "plugins": list(settings.plugins),
        **overrides,
    }
    return make_settings(**values)


def clean_namespace(settings: Settings) -> None:
    """Delete the namespace's queues, exchanges and Redis keys."""
    delete_queues(settings)
    cache = ResultCache.connect(settings.redis_url, settings.namespace)
    try:
        cache.delete_namespace()
    finally:
        cache.close()


def total_jobs(store: JobStore) -> int:
    """Rows in the jobs table, all statuses."""
    return sum(store.count_by_status().values())


@pytest.fixture
def ns_settings(settings: Settings) -> Iterator[Settings]:
    """Settings with a namespace of this test's own; its queues and keys are deleted after."""
    isolated = isolated_settings(settings)
    try:
        yield isolated
    finally:
        clean_namespace(isolated)


@pytest.fixture
def ns_client(ns_settings: Settings) -> Iterator[Client]:
    """A client publishing into this test's own namespace (no worker consumes it)."""
    with Client(ns_settings) as isolated_client:
        yield isolated_client


@pytest.fixture
def scratch_database_url(settings: Settings) -> Iterator[str]:
    """The URL of a database name nobody uses; the database is dropped after the test."""
    url = make_url(settings.database_url).set(database=unique("aidist_scratch_"))
    rendered = url.render_as_string(hide_password=False)
    try:
        yield rendered
    finally:
        db_setup.drop_database(rendered)


NewJobFactory = Callable[..., NewJob]


@pytest.fixture
def new_job() -> NewJobFactory:
    """Build a ``NewJob`` with a fresh id and sensible defaults; keyword arguments override."""

    def build(status: JobStatus = JobStatus.QUEUED, deadline: datetime | None = None,
              **overrides: Any) -> NewJob:
        values: dict[str, Any] = {
            "id": str(uuid.uuid4()),
            "kind": JobKind.INFER,
            "target": "toy-classifier",
            "version": "toy-v-test",
            "cache_key": uuid.uuid4().hex,
            "payload": b"\xa5hello",
            "status": status,
            "deadline": deadline,
            **overrides,
        }
        return NewJob(**values)

    return build


def first(*ids: str) -> list[ClaimRequest]:
    """Claims of first deliveries."""
    return [ClaimRequest(job_id) for job_id in ids]


def takeover(*ids: str) -> list[ClaimRequest]:
    """Claims of redeliveries (the previous holder is gone)."""
    return [ClaimRequest(job_id, takeover=True) for job_id in ids]


TOY = "toy-classifier"


def toy_queue(settings: Settings) -> str:
    """The queue of the toy model in this settings' namespace."""
    return queue_name(settings.namespace, JobKind.INFER, TOY)


def drain(settings: Settings, queue: str) -> list[tuple[Any, list[dict[str, Any]]]]:
    """Take every ready message off ``queue``: (properties, job entries) each."""
    connection = pika_connection(settings)
    messages: list[tuple[Any, list[dict[str, Any]]]] = []
    try:
        channel = connection.channel()
        while True:
            method, properties, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return messages
            messages.append((properties, msgpack.unpackb(body, raw=False)[0][0]))
    finally:
        connection.close()
