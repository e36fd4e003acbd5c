"""producers.Client against the real services, with no worker running: submissions land in
Postgres and RabbitMQ (packed), cache hits finish at once, handles time out, cancel and look up
jobs, idempotency. Validation: test_client_validation.py; failing services:
test_client_failures.py.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sqlalchemy import func, select

from aidist import codec
from aidist.config import Settings
from aidist.errors import (
    AidistError,
    IdempotencyConflict,
    JobCancelled,
    JobTimeout,
    ResultUnavailable,
    UnknownJob,
)
from aidist.jobs import JobEntry, JobKind, JobStatus
from aidist.transport import queue_name
from db.cache import ResultCache
from db.records import Outcome
from db.schema import jobs_table
from db.store import JobStore
from producers import Client
from tests.conftest import queue_depth
from tests.integration.conftest import (
    TOY,
    drain,
    first,
    total_jobs,
    toy_queue,
    unique,
)

pytestmark = pytest.mark.integration

Submit = Callable[[Client], object]

# -- submitting without workers ------------------------------------------------------------------

def test_infer_records_a_queued_job_and_publishes_it(ns_settings: Settings, ns_client: Client,
                                                     store: JobStore) -> None:
    deadline = datetime.now(UTC) + timedelta(hours=2)
    job = ns_client.infer(TOY, "hello world", priority=6, deadline=deadline, tenant="acme")
    uuid.UUID(job.id)
    assert job.target == TOY and job.kind is JobKind.INFER
    assert job.status() is JobStatus.QUEUED
    assert job.done() is False

    record = store.get(job.id)
    assert record.status is JobStatus.QUEUED
    assert (record.priority, record.tenant, record.deadline) == (6, "acme", deadline)
    assert record.cache_key == job.cache_key
    assert record.cache_hit is False and record.attempts == 0
    assert store.payloads([job.id]) == {job.id: codec.encode("hello world")}

    assert ns_client.flush()  # a single submission is published from the sender's thread
    [(properties, entries)] = drain(ns_settings, toy_queue(ns_settings))
    assert properties.priority == 6
    [entry] = [JobEntry.from_wire(raw) for raw in entries]
    assert (entry.id, entry.input, entry.target) == (job.id, "hello world", TOY)
    assert entry.cache_key == job.cache_key
    assert entry.reply_to == ns_client.tracker.reply_to
    assert entry.reply_to.startswith(f"{ns_settings.namespace}:reply:")


def test_deadline_in_seconds_is_stored_as_an_absolute_time(ns_client: Client,
                                                           store: JobStore) -> None:
    before = datetime.now(UTC)
    job = ns_client.infer(TOY, "with a deadline", deadline=90)
    after = datetime.now(UTC)
    stored = store.get(job.id).deadline
    assert stored is not None
    assert before + timedelta(seconds=90) <= stored <= after + timedelta(seconds=90)


def test_infer_many_packs_jobs_into_few_messages(ns_settings: Settings, ns_client: Client,
                                                 store: JobStore) -> None:
    assert ns_settings.pack_size == 128
    texts = [f"sentence number {i}" for i in range(300)]
    jobs = ns_client.infer_many(TOY, texts)
    assert len(jobs) == 300
    queue = toy_queue(ns_settings)
    assert queue_depth(ns_settings, queue) == 3  # ceil(300 / 128)

    ids = [job.id for job in jobs]
    assert len(set(ids)) == 300
    counts = store.count_by_status(ids)
    assert counts[JobStatus.QUEUED] == 300
    assert sum(counts.values()) == 300

    messages = drain(ns_settings, queue)
    assert [len(entries) for _, entries in messages] == [128, 128, 44]
    carried = [entry for _, entries in messages for entry in entries]
    assert [entry["id"] for entry in carried] == ids  # input order is kept
    assert [entry["input"] for entry in carried] == texts
    assert len({properties.headers["id"] for properties, _ in messages}) == 3


def test_preprocess_goes_to_the_ops_queue_with_checked_params(
        ns_settings: Settings, ns_client: Client, store: JobStore) -> None:
    job = ns_client.preprocess("chunk", "one two three four five", params={"size": 3})
    assert job.kind is JobKind.PREPROCESS
    assert store.get(job.id).params == {"size": 3, "overlap": 2}
    queue = queue_name(ns_settings.namespace, JobKind.PREPROCESS, "chunk")
    assert ns_client.flush()
    [(_, [entry])] = drain(ns_settings, queue)
    assert entry["kind"] == "preprocess"
    assert entry["params"] == {"size": 3, "overlap": 2}
    assert queue_depth(ns_settings, toy_queue(ns_settings)) == 0


def test_submit_many_routes_by_the_registered_kind(ns_settings: Settings,
                                                   ns_client: Client) -> None:
    ops = ns_client.submit_many("normalize", ["A  b", "c"])
    models = ns_client.submit_many(TOY, ["d"])
    assert {job.kind for job in ops} == {JobKind.PREPROCESS}
    assert {job.kind for job in models} == {JobKind.INFER}
    assert ns_client.flush()  # the one-job call went the single submissions' way
    assert queue_depth(ns_settings,
                       queue_name(ns_settings.namespace, JobKind.PREPROCESS, "normalize")) == 1
    assert queue_depth(ns_settings, toy_queue(ns_settings)) == 1


def test_cache_key_depends_on_model_params_and_input(ns_settings: Settings,
                                                     ns_client: Client) -> None:
    first = ns_client.preprocess("normalize", "Some Text")
    same = ns_client.preprocess("normalize", "Some Text")
    lowered = ns_client.preprocess("normalize", "Some Text", params={"lowercase": True})
    other_input = ns_client.preprocess("normalize", "Other Text")
    as_model = ns_client.infer(TOY, "Some Text")
    assert first.id != same.id
    assert first.cache_key == same.cache_key
    assert len({first.cache_key, lowered.cache_key, other_input.cache_key,
                as_model.cache_key}) == 4
    with Client(ns_settings) as another:  # another client computes the same key
        assert another.preprocess("normalize", "Some Text").cache_key == first.cache_key


def test_cache_hit_succeeds_at_once_without_publishing(ns_settings: Settings, ns_client: Client,
                                                       store: JobStore) -> None:
    text = f"cached input {uuid.uuid4()}"
    first = ns_client.infer(TOY, text)
    queue = toy_queue(ns_settings)
    assert ns_client.flush()
    assert queue_depth(ns_settings, queue) == 1
    value = np.array([0.125, 0.875], dtype=np.float32)
    ns_cache = ResultCache.connect(ns_settings.redis_url, ns_settings.namespace)
    try:
        ns_cache.put_many({first.cache_key: codec.encode(value)}, 60)
    finally:
        ns_cache.close()

    second = ns_client.infer(TOY, text)
    assert second.id != first.id
    assert second.cache_key == first.cache_key
    assert second.status() is JobStatus.SUCCEEDED
    record = store.get(second.id)
    assert record.status is JobStatus.SUCCEEDED
    assert record.cache_hit is True
    assert record.worker is None
    assert record.started_at is None
    assert record.finished_at is not None
    assert record.attempts == 0
    result = second.result(timeout=5)
    np.testing.assert_array_equal(result, value)
    assert result.dtype == np.float32
    assert queue_depth(ns_settings, queue) == 1  # no new message
    assert store.get(first.id).status is JobStatus.QUEUED  # the earlier job is untouched

    # a different client (no notices, no memory) reads the same truth from the services
    with Client(ns_settings) as other:
        handle = other.get(second.id)
        assert handle.status() is JobStatus.SUCCEEDED
        np.testing.assert_array_equal(handle.result(timeout=5), value)


def test_infer_many_publishes_only_the_cache_misses(ns_settings: Settings, ns_client: Client,
                                                    store: JobStore) -> None:
    texts = [f"mixed {i} {uuid.uuid4()}" for i in range(3)]
    probe = ns_client.infer(TOY, texts[1])
    assert ns_client.flush()
    drain(ns_settings, toy_queue(ns_settings))
    ns_client.cache.put_many({probe.cache_key: codec.encode([1.0])}, 60)

    jobs = ns_client.infer_many(TOY, texts)
    statuses = [store.get(job.id).status for job in jobs]
    assert statuses == [JobStatus.QUEUED, JobStatus.SUCCEEDED, JobStatus.QUEUED]
    [(_, entries)] = drain(ns_settings, toy_queue(ns_settings))
    assert [entry["id"] for entry in entries] == [jobs[0].id, jobs[2].id]
    assert jobs[1].result(timeout=5) == [1.0]


def test_evicted_result_is_recomputed_through_the_queue(ns_client: Client,
                                                        ns_settings: Settings) -> None:
    text = f"evicted {uuid.uuid4()}"
    key = ns_client.infer(TOY, text).cache_key
    assert ns_client.flush()
    ns_client.cache.put_many({key: codec.encode(7)}, 60)
    hit = ns_client.infer(TOY, text)
    assert hit.status() is JobStatus.SUCCEEDED
    assert hit.result(timeout=5) == 7  # the bytes the submit's lookup read, taken once
    drain(ns_settings, toy_queue(ns_settings))
    ns_client.cache.client.delete(ns_client.cache.result_key(key))
    with pytest.raises(JobTimeout):  # no worker in this tier: the recompute job waits
        hit.result(timeout=0.5)
    [(_, entries)] = drain(ns_settings, toy_queue(ns_settings))
    assert [(e["key"], e["input"]) for e in entries] == [(key, text)]


def test_result_of_a_changed_model_version_is_unavailable(ns_client: Client,
                                                          store: JobStore) -> None:
    text = f"old version {uuid.uuid4()}"
    job = ns_client.infer(TOY, text)
    with store.engine.begin() as connection:
        connection.execute(jobs_table.update().where(jobs_table.c.id == uuid.UUID(job.id))
                           .values(status="succeeded", version="toy-v0"))
    with pytest.raises(ResultUnavailable) as raised:
        job.result(timeout=5)
    assert raised.value.job_id == job.id


def test_result_of_a_queued_job_times_out(ns_client: Client) -> None:
    job = ns_client.infer(TOY, "nobody will run this")
    with pytest.raises(JobTimeout) as raised:
        job.result(timeout=0.3)
    error = raised.value
    assert isinstance(error, AidistError)
    assert isinstance(error, TimeoutError)
    assert error.job_id == job.id
    assert error.status == "queued"
    assert error.timeout == pytest.approx(0.3)
    assert job.status() is JobStatus.QUEUED  # the job goes on


def test_as_completed_yields_finished_jobs_then_times_out(ns_client: Client) -> None:
    jobs = ns_client.infer_many(TOY, ["first", "second", "third"])
    assert jobs[1].cancel() is True
    seen: list[str] = []
    with pytest.raises(JobTimeout) as raised:
        seen.extend(job.id for job in ns_client.as_completed(jobs, timeout=0.3))
    assert seen == [jobs[1].id]
    assert raised.value.job_id in {jobs[0].id, jobs[2].id}


def test_map_without_workers_times_out(ns_client: Client, store: JobStore) -> None:
    before = store.count_by_status()[JobStatus.QUEUED]
    with pytest.raises(JobTimeout):
        ns_client.map(TOY, ["a", "b"], timeout=0.3)
    assert store.count_by_status()[JobStatus.QUEUED] == before + 2


def test_cancel_a_queued_job(ns_client: Client, store: JobStore) -> None:
    job = ns_client.infer(TOY, "cancel me")
    assert job.cancel() is True
    assert job.status() is JobStatus.CANCELLED
    assert job.done() is True
    record = store.get(job.id)
    assert record.status is JobStatus.CANCELLED
    assert record.finished_at is not None
    with pytest.raises(JobCancelled) as raised:
        job.result(timeout=1)
    assert raised.value.job_id == job.id
    assert job.cancel() is True  # still cancelled: cancelling again is harmless
    assert store.claim(first(job.id), "worker-x") == []  # and it never runs


def test_cancel_of_a_running_job_succeeds_and_of_a_finished_one_fails(ns_client: Client,
                                                                      store: JobStore) -> None:
    running, finished = ns_client.infer_many(TOY, ["running", "finished"])
    store.claim(first(running.id, finished.id), "worker-x")
    store.finish([Outcome(finished.id, 1, JobStatus.SUCCEEDED)])
    assert running.cancel() is True
    assert finished.cancel() is False
    assert store.get(running.id).status is JobStatus.CANCELLED
    assert store.get(finished.id).status is JobStatus.SUCCEEDED


def test_get_returns_a_handle_with_the_same_status(ns_client: Client, client: Client) -> None:
    queued = ns_client.infer(TOY, "look me up")
    cancelled = ns_client.infer(TOY, "and me")
    cancelled.cancel()
    for source in (ns_client, client):  # same client, and one that never saw these jobs
        handle = source.get(queued.id)
        assert handle.id == queued.id
        assert handle.target == TOY and handle.kind is JobKind.INFER
        assert handle.cache_key == queued.cache_key
        assert handle.status() is queued.status() is JobStatus.QUEUED
        other = source.get(cancelled.id)
        assert other.status() is JobStatus.CANCELLED
        with pytest.raises(JobCancelled):
            other.result(timeout=1)


@pytest.mark.parametrize("job_id", ["not-a-uuid", str(uuid.uuid4())])
def test_get_of_an_unknown_job_raises_unknown_job(client: Client, job_id: str) -> None:
    with pytest.raises(UnknownJob) as raised:
        client.get(job_id)
    assert isinstance(raised.value, AidistError)


def test_idempotency_key_returns_the_same_job_and_publishes_once(
        ns_settings: Settings, ns_client: Client, store: JobStore) -> None:
    key = unique("order-")
    first = ns_client.infer(TOY, "charge the card", idempotency_key=key)
    again = ns_client.infer(TOY, "charge the card", idempotency_key=key)
    assert again.id == first.id
    assert again.cache_key == first.cache_key
    assert queue_depth(ns_settings, toy_queue(ns_settings)) == 1
    with store.engine.connect() as connection:
        rows = connection.execute(
            select(func.count()).select_from(jobs_table)
            .where(jobs_table.c.idempotency_key == key)
        ).scalar()
    assert rows == 1

    with Client(ns_settings) as other:  # another client, same key: still the same job
        assert other.infer(TOY, "charge the card", idempotency_key=key).id == first.id
    other_tenant = ns_client.infer(TOY, "charge the card", idempotency_key=key, tenant="b")
    assert other_tenant.id != first.id
    assert queue_depth(ns_settings, toy_queue(ns_settings)) == 2


def test_idempotency_key_reused_for_another_submission_conflicts(
        ns_settings: Settings, ns_client: Client, store: JobStore) -> None:
    key = unique("refund-")
    first = ns_client.infer(TOY, "refund order 1", idempotency_key=key)
    before = total_jobs(store)
    different: dict[str, Submit] = {
        "input": lambda c: c.infer(TOY, "refund order 2", idempotency_key=key),
        "op": lambda c: c.preprocess("normalize", "refund order 1", idempotency_key=key),
        "params": lambda c: c.preprocess("normalize", "refund order 1", {"lowercase": False},
                                         idempotency_key=key),
    }
    for name, submit in different.items():
        with pytest.raises(IdempotencyConflict) as raised:
            submit(ns_client)
        assert (raised.value.key, raised.value.job_id) == (key, first.id), name
        assert first.id in str(raised.value)
    # nothing written, nothing sent: the key still belongs to the first job alone
    assert total_jobs(store) == before
    assert queue_depth(ns_settings, toy_queue(ns_settings)) == 1
    assert queue_depth(ns_settings, queue_name(ns_settings.namespace, JobKind.PREPROCESS,
                                               "normalize")) == 0

    assert ns_client.infer(TOY, "refund order 1", idempotency_key=key).id == first.id
    other_tenant = ns_client.infer(TOY, "refund order 2", idempotency_key=key, tenant="b")
    assert other_tenant.id != first.id
    assert store.get(other_tenant.id).tenant == "b"
    assert queue_depth(ns_settings, toy_queue(ns_settings)) == 2


def test_models_lists_the_builtins(client: Client) -> None:
    infos = {info.name: info for info in client.models()}
    assert {"minilm", TOY, "tokenize", "chunk", "normalize"} <= set(infos)
    for info in infos.values():
        assert isinstance(info.version, str) and info.version
        assert info.kind in {"infer", "preprocess"}
        assert info.device
    assert infos["minilm"].kind == "infer" and infos[TOY].kind == "infer"
    assert infos["tokenize"].kind == "preprocess"
    assert infos["minilm"].device == client.settings.device
    assert infos["normalize"].device == "cpu"
    assert infos[TOY].version == client.registry.version(TOY)


def test_single_submissions_from_threads_share_messages(ns_settings: Settings,
                                                        ns_client: Client,
                                                        store: JobStore) -> None:
    """Each infer returns once its row is committed; the client's sender publishes what the
    threads recorded meanwhile together, so messages carry the jobs of several calls."""
    texts = [[f"thread {t} job {i} {uuid.uuid4()}" for i in range(25)] for t in range(4)]
    ids: list[list[str]] = [[] for _ in texts]
    gate = threading.Barrier(len(texts))

    def submit(index: int) -> None:
        gate.wait()
        ids[index] = [ns_client.infer(TOY, text).id for text in texts[index]]

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(len(texts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert ns_client.flush()
    messages = drain(ns_settings, toy_queue(ns_settings))
    carried = [entry["id"] for _, entries in messages for entry in entries]
    everyone = [job_id for part in ids for job_id in part]
    assert sorted(carried) == sorted(everyone)  # every job once
    assert len(messages) < len(everyone)  # packed across calls
    assert store.count_by_status(everyone)[JobStatus.QUEUED] == 100
