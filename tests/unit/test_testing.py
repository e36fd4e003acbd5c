"""aidist.testing: the shipped in-memory doubles behave as the services do, and a real Client plus
the real executor run end to end over them, with no service at all."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from aidist import codec
from aidist.config import Settings
from aidist.errors import JobCancelled, JobExpired, JobFailed, ServiceUnavailable, UnknownJob
from aidist.jobs import JobKind, JobStatus
from aidist.testing import InMemoryBroker, InMemoryCache, InMemoryStack, InMemoryStore
from db import ClaimRequest, NewJob, Notice, Outcome
from models import LoadContext, ModelSpec, Runner, build_registry
from producers import Client

WAIT_S = 5.0


class Shout:
    """A model that upper-cases its inputs and records every call."""

    def __init__(self) -> None:
        self.calls: list[list[Any]] = []

    def load(self, context: LoadContext) -> Runner:
        def run(inputs: Sequence[Any], params: dict[str, Any]) -> list[Any]:
            self.calls.append(list(inputs))
            return [str(text).upper() for text in inputs]

        return run

    @property
    def inputs(self) -> list[Any]:
        return [item for call in self.calls for item in call]


@pytest.fixture
def shout() -> Shout:
    return Shout()


def _stack(shout: Shout, **settings: Any) -> InMemoryStack:
    registry = build_registry(["tests.plugins"])
    registry.register(ModelSpec(name="shout", kind=JobKind.INFER, loader=shout.load,
                                version="shout-1", max_batch_size=8))
    return InMemoryStack(Settings(plugins=["tests.plugins"], **settings), registry=registry)


@pytest.fixture
def stack(shout: Shout) -> Iterator[InMemoryStack]:
    built = _stack(shout)
    yield built
    built.close()


@pytest.fixture
def client(stack: InMemoryStack) -> Iterator[Client]:
    with stack.client() as built:
        yield built


def _new_job(key: str = "k", **fields: Any) -> NewJob:
    return NewJob(id=str(uuid.uuid4()), kind=JobKind.INFER, target="shout", version="shout-1",
                  cache_key=key, payload=codec.encode("x"), **fields)


# -- the client and the executor over the doubles --------------------------------------------------


def test_the_user_story_runs_a_real_model_without_services() -> None:
    stack = InMemoryStack(Settings())
    with stack.client() as client:
        job = client.infer("toy-classifier", "hi")
        assert job.status() is JobStatus.QUEUED
        assert stack.run_queued() == 1
        probabilities = job.result(timeout=1)
    assert isinstance(probabilities, np.ndarray) and probabilities.shape == (4,)
    assert float(probabilities.sum()) == pytest.approx(1.0, abs=1e-5)
    stack.close()


def test_a_job_runs_only_when_the_test_delivers_it(stack: InMemoryStack, client: Client,
                                                    shout: Shout) -> None:
    job = client.infer("shout", "hello")
    assert stack.broker.queued() == 1 and shout.calls == []
    assert job.status() is JobStatus.QUEUED
    assert stack.run_queued() == 1
    assert job.result(timeout=1) == "HELLO"
    assert stack.store.get(job.id).worker == "in-memory-worker"
    assert stack.store.get(job.id).started_at is not None
    assert stack.broker.queued() == 0


def test_many_jobs_go_out_packed_in_one_message(stack: InMemoryStack, client: Client,
                                                shout: Shout) -> None:
    jobs = client.infer_many("shout", ["a", "b", "c"])
    (queue,) = stack.broker.queues()
    (message,) = stack.broker.messages(queue)
    assert [entry["id"] for entry in message.entries] == [job.id for job in jobs]
    stack.run_queued()
    assert client.results_of(jobs, timeout=1) == ["A", "B", "C"]
    assert shout.calls == [["a", "b", "c"]]  # one model batch


def test_map_waits_while_a_worker_thread_runs_the_jobs(stack: InMemoryStack,
                                                       client: Client) -> None:
    with stack.worker_thread():
        assert client.map("shout", ["x", "y"], timeout=WAIT_S) == ["X", "Y"]
        assert list(client.imap("shout", ["p", "q"], timeout=WAIT_S)) == ["P", "Q"]


def test_a_pipeline_runs_its_steps_round_after_round(stack: InMemoryStack,
                                                     client: Client) -> None:
    job = client.pipeline(["chunk", "normalize"], "Hello   World  Foo BAR baz",
                          {"chunk": {"size": 2, "overlap": 0}, "normalize": {"lowercase": True}})
    assert stack.run_queued() == 2  # chunk, then normalize on what chunk forwarded
    assert job.result(timeout=1) == ["hello world", "foo bar", "baz"]


def test_a_cancelled_queued_job_never_runs(stack: InMemoryStack, client: Client,
                                           shout: Shout) -> None:
    job, other = client.infer_many("shout", ["dropped", "kept"])
    assert job.cancel()
    stack.run_queued()
    assert shout.inputs == ["kept"]
    assert job.status() is JobStatus.CANCELLED
    with pytest.raises(JobCancelled):
        job.result(timeout=1)
    assert other.result(timeout=1) == "KEPT"
    assert stack.cache.cancelled_among([job.id, other.id]) == {job.id}


def test_an_idempotent_retry_gets_the_first_job(stack: InMemoryStack, client: Client) -> None:
    first = client.infer("shout", "once", idempotency_key="order-1")
    again = client.infer("shout", "once", idempotency_key="order-1")
    other_tenant = client.infer("shout", "once", idempotency_key="order-1", tenant="t2")
    assert again.id == first.id and other_tenant.id != first.id
    assert stack.broker.queued() == 2
    stack.run_queued()
    assert again.result(timeout=1) == "ONCE"


def test_a_failing_input_fails_only_its_own_job(stack: InMemoryStack, client: Client) -> None:
    good, bad = client.infer_many("flaky", ["fine", "boom"])
    stack.run_queued()
    assert good.result(timeout=1) == 4
    with pytest.raises(JobFailed, match="refuses"):
        bad.result(timeout=1)
    assert stack.store.get(bad.id).status is JobStatus.FAILED


def test_states_and_durable_results_are_written_before_redis_and_notices(
        stack: InMemoryStack, client: Client) -> None:
    client.infer_many("shout", ["a", "b"])
    del stack.journal[:]
    stack.run_queued()
    durability = [name for name in stack.journal if name in ("put_many", "finish", "notify")]
    assert stack.journal[0] == "claim"
    assert durability == ["finish", "put_many", "notify"]


def test_a_result_that_left_the_cache_is_read_from_its_durable_copy(
        stack: InMemoryStack, client: Client, shout: Shout) -> None:
    job = client.infer("shout", "keep")
    stack.run_queued()
    assert job.result(timeout=1) == "KEEP"
    stack.cache.results.clear()  # a flushed Redis
    assert job.result(timeout=1) == "KEEP"
    assert shout.inputs == ["keep"]


def test_a_result_without_a_durable_copy_is_recomputed_through_the_queue(shout: Shout) -> None:
    stack = _stack(shout, durable_results=False)
    with stack.client() as client:
        job = client.infer("shout", "again")
        stack.run_queued()
        assert stack.store.stored_result(job.id) is None
        stack.cache.results.clear()  # a flushed Redis: the results and the unread notices
        stack.cache.notices.clear()
        with stack.worker_thread():
            assert job.result(timeout=WAIT_S) == "AGAIN"
    assert shout.inputs == ["again", "again"]


def test_a_small_result_comes_in_its_notice(shout: Shout) -> None:
    """The notice carries the bytes: the client reads them with no round trip to the cache, so
    a result the cache lost after the notice was sent is still there, not computed again."""
    stack = _stack(shout, durable_results=False)
    with stack.client() as client:
        job = client.infer("shout", "noted")
        stack.run_queued()
        stack.cache.results.clear()  # gone from the cache, no durable copy; the notice is unread
        assert job.result(timeout=WAIT_S) == "NOTED"
    assert shout.inputs == ["noted"]


def test_a_job_past_its_deadline_expires_instead_of_running(stack: InMemoryStack,
                                                            client: Client, shout: Shout) -> None:
    job = client.infer("shout", "late", deadline=60)
    stack.store.clock = lambda: datetime.now(UTC) + timedelta(hours=1)
    stack.run_queued()
    assert shout.calls == []
    with pytest.raises(JobExpired):
        job.result(timeout=1)


def test_a_down_broker_fails_the_submit_before_anything_is_recorded(
        stack: InMemoryStack, client: Client) -> None:
    stack.broker.available = False
    with pytest.raises(ServiceUnavailable):
        client.infer("shout", "nowhere")
    assert stack.store.ids() == []


def test_an_unsent_job_is_published_by_the_sweep(stack: InMemoryStack, shout: Shout) -> None:
    job_id = stack.store.add(target="shout", version="shout-1", payload=codec.encode("lost"),
                             sent=False)
    assert stack.sweep() == 1
    assert stack.store.is_sent(job_id)
    stack.run_queued()
    assert stack.store.get(job_id).status is JobStatus.SUCCEEDED
    assert shout.inputs == ["lost"]


def test_a_poison_message_is_dead_lettered(stack: InMemoryStack) -> None:
    stack.broker.publish("some-queue", [{"no": "job"}])
    assert stack.run_queued() == 1
    assert [queue for queue, _ in stack.dead_letters] == ["some-queue"]


# -- the store -------------------------------------------------------------------------------------


def test_the_store_fences_claims_on_status_step_and_attempt() -> None:
    store = InMemoryStore()
    job_id = store.add()
    (claim,) = store.claim([ClaimRequest(job_id)], "w1")
    assert (claim.status, claim.attempt) == (JobStatus.RUNNING, 1)
    assert store.claim([ClaimRequest(job_id)], "w2") == []  # held by w1
    assert store.claim([ClaimRequest(job_id, step=1, attempt=2)], "w1") == []  # stale attempt
    (step,) = store.claim([ClaimRequest(job_id, step=1, attempt=1)], "w1")
    assert step.attempt == 1  # continuing a pipeline is not a new attempt
    (taken,) = store.claim([ClaimRequest(job_id, step=1, attempt=1, takeover=True)], "w2")
    assert taken.attempt == 2 and store.holders([job_id], other_than="w1") == {job_id: "w2"}
    assert store.finish_returning([Outcome(job_id, 1, JobStatus.SUCCEEDED)]) == set()
    assert store.finish_returning([Outcome(job_id, 2, JobStatus.SUCCEEDED)]) == {job_id}
    assert store.claim([ClaimRequest(job_id, takeover=True)], "w3") == []  # finished


def test_the_store_fails_a_claim_out_of_attempts_and_expires_one_past_its_deadline() -> None:
    store = InMemoryStore()
    tired = store.add(status=JobStatus.RUNNING, attempts=3)
    late = store.add(deadline=datetime.now(UTC) - timedelta(seconds=1))
    claims = {c.id: c for c in store.claim([ClaimRequest(tired, takeover=True),
                                            ClaimRequest(late)], "w", max_attempts=3)}
    assert claims[tired].status is JobStatus.FAILED
    assert "gave up after 3 attempts" in (store.get(tired).error or "")
    assert claims[late].status is JobStatus.EXPIRED
    assert store.get(late).finished_at is not None


def test_an_identical_job_follows_a_running_one_and_takes_its_end() -> None:
    store = InMemoryStore()
    leader = store.add(cache_key="same", status=JobStatus.RUNNING, attempts=1, worker="w")
    twin_a, twin_b = store.add(cache_key="same"), store.add(cache_key="same")
    claims = store.claim([ClaimRequest(twin_a), ClaimRequest(twin_b)], "w")
    assert {c.follows for c in claims} == {leader}  # not each other: one statement, one snapshot
    store.finish_returning([Outcome(leader, 1, JobStatus.SUCCEEDED, result=b"r")])
    assert {store.get(i).status for i in (twin_a, twin_b)} == {JobStatus.SUCCEEDED}
    assert store.results_by_key(["same"]) == {"same": b"r"}


def test_followers_of_a_cancelled_leader_go_back_to_the_queue_unsent() -> None:
    store = InMemoryStore()
    leader = store.add(cache_key="same", status=JobStatus.RUNNING, attempts=1)
    follower = store.add(cache_key="same", payload=codec.encode("x"))
    store.claim([ClaimRequest(follower)], "w")
    assert store.cancel(leader) is JobStatus.CANCELLED
    assert store.settle_followers() == 1
    record = store.get(follower)
    assert (record.status, record.follows) == (JobStatus.QUEUED, None)
    assert not store.is_sent(follower)


def test_the_store_answers_like_postgres_for_unknown_and_malformed_ids() -> None:
    store = InMemoryStore()
    with pytest.raises(UnknownJob, match="no job with id"):
        store.get(str(uuid.uuid4()))
    with pytest.raises(UnknownJob, match="not a job id"):
        store.cancel("not-a-uuid")
    assert store.get_many(["not-a-uuid"]) == {}
    assert store.claim([ClaimRequest("not-a-uuid")], "w") == []


def test_idempotency_keys_are_unique_per_tenant() -> None:
    store = InMemoryStore()
    first = _new_job(idempotency_key="k1")
    assert store.insert_idempotent(first) is None
    existing = store.insert_idempotent(_new_job(idempotency_key="k1"))
    assert existing is not None and existing.id == first.id
    assert store.insert_idempotent(_new_job(idempotency_key="k1", tenant="t")) is None


def test_listing_counting_and_failing_unsent_jobs() -> None:
    store = InMemoryStore()
    jobs = [_new_job(key=f"k{i}") for i in range(3)]
    store.insert_jobs(jobs)
    assert [r.id for r in store.list_jobs(limit=2)] == [jobs[2].id, jobs[1].id]
    store.fail_unsent([jobs[0].id], "refused")
    assert store.get(jobs[0].id).error == "refused"
    counts = store.count_by_status()
    assert counts[JobStatus.QUEUED] == 2 and counts[JobStatus.FAILED] == 1
    assert store.finished_among([j.id for j in jobs]) == [(jobs[0].id, JobStatus.FAILED,
                                                           "refused")]
    assert store.payloads([jobs[1].id]) == {jobs[1].id: codec.encode("x")}


def test_overdue_queued_jobs_are_expired_by_the_store() -> None:
    store = InMemoryStore()
    late = store.add(deadline=datetime.now(UTC) - timedelta(seconds=1))
    store.add(deadline=datetime.now(UTC) + timedelta(hours=1))
    assert store.expire_overdue(limit=10) == 1
    assert store.get(late).status is JobStatus.EXPIRED


# -- the cache and the broker ----------------------------------------------------------------------


def test_wait_notices_wakes_when_a_notice_arrives() -> None:
    cache = InMemoryCache("ns")
    reply_to = cache.reply_key("c1")
    assert reply_to == "ns:reply:c1"
    assert cache.wait_notices(reply_to, timeout_s=0.01) == []
    timer = threading.Timer(0.05, cache.notify, [{reply_to: [Notice("j", "succeeded")]}])
    started = time.monotonic()
    timer.start()
    assert cache.wait_notices(reply_to, timeout_s=WAIT_S) == [Notice("j", "succeeded")]
    assert time.monotonic() - started < WAIT_S / 2
    timer.join()


def test_cache_marks_and_results_lapse_after_their_ttl() -> None:
    now = [100.0]
    cache = InMemoryCache(clock=lambda: now[0])
    cache.put_many({"k": b"v"}, ttl_s=10)
    cache.put_alive("w", ttl_s=5)
    cache.mark_cancelled(["j"], ttl_s=5)
    cache.put_presence("node", {"ready": ["shout"]}, ttl_s=5)
    assert cache.alive_among(["w", "x"]) == {"w"}
    assert cache.presences() == [{"ready": ["shout"]}]
    now[0] += 6
    assert cache.alive_among(["w"]) == set() and cache.cancelled_among(["j"]) == set()
    assert cache.presences() == []
    assert cache.get_many(["k"]) == [b"v"]
    now[0] += 5
    assert cache.get_many(["k"]) == [None]


def test_the_broker_keeps_decoded_copies_in_delivery_order() -> None:
    broker = InMemoryBroker()
    entries = [{"id": "a", "input": ("t", 1)}]
    broker.publish("q1", entries)
    broker.publish("q2", [{"id": "b"}], priority=5)
    assert broker.messages("q1")[0].entries == [{"id": "a", "input": ["t", 1]}]
    assert [queue for queue, _ in broker.take()] == ["q2", "q1"]  # higher priority first
    assert broker.queued() == 0
    broker.available = False
    with pytest.raises(ServiceUnavailable):
        broker.publish("q1", entries)


def test_a_cache_hit_keeps_the_result_its_lookup_read(shout: Shout) -> None:
    """A cache hit's ``result()`` takes the bytes the submit's own lookup read: no second read
    (here Redis loses the result right after the submit, and there is no durable copy to fall
    back on, so a second read would recompute through the queue)."""
    stack = _stack(shout, durable_results=False)
    with stack.client() as client:
        first = client.infer("shout", "again")
        stack.run_queued()
        assert first.result(timeout=1) == "AGAIN"
        hit = client.infer("shout", "again")
        assert stack.store.get(hit.id).cache_hit
        stack.cache.results.clear()
        assert hit.result(timeout=1) == "AGAIN"
        assert stack.broker.queued() == 0 and shout.calls == [["again"]]
    stack.close()
