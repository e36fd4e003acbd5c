"""producers.AsyncClient against the real services, with no worker running; each test drives its
own event loop with asyncio.run (no pytest-asyncio)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from aidist import codec
from aidist.config import Settings
from aidist.errors import InvalidInput, JobCancelled, JobTimeout, UnknownJob, UnknownModel
from aidist.jobs import JobKind, JobStatus
from aidist.transport import queue_name
from db.store import JobStore
from producers import AsyncClient, AsyncJob
from tests.conftest import queue_depth
from tests.integration.conftest import total_jobs

pytestmark = pytest.mark.integration

TOY = "toy-classifier"


def test_infer_status_cancel_and_get(ns_settings: Settings, store: JobStore) -> None:
    async def scenario() -> tuple[str, list[JobStatus], bool, JobStatus]:
        async with AsyncClient(ns_settings) as client:
            job = await client.infer(TOY, "async hello", priority=3)
            assert isinstance(job, AsyncJob)
            first = await job.status()
            done_before = await job.done()
            cancelled = await job.cancel()
            second = await job.status()
            with pytest.raises(JobCancelled):
                await job.result(timeout=1)
            fetched = await client.get(job.id)
            assert fetched.id == job.id
            return job.id, [first, second], done_before or not cancelled, await fetched.status()

    job_id, statuses, unexpected, fetched_status = asyncio.run(scenario())
    assert statuses == [JobStatus.QUEUED, JobStatus.CANCELLED]
    assert unexpected is False
    assert fetched_status is JobStatus.CANCELLED
    assert store.get(job_id).status is JobStatus.CANCELLED
    assert store.get(job_id).priority == 3
    assert queue_depth(ns_settings, queue_name(ns_settings.namespace, JobKind.INFER, TOY)) == 1


def test_validation_errors_propagate_and_nothing_is_written(ns_settings: Settings,
                                                           store: JobStore) -> None:
    before = total_jobs(store)

    async def scenario() -> None:
        async with AsyncClient(ns_settings) as client:
            with pytest.raises(UnknownModel):
                await client.infer("no-such-model", "x")
            with pytest.raises(InvalidInput):
                await client.infer(TOY, None)
            with pytest.raises(InvalidInput):
                await client.infer(TOY, "x", priority=11)
            with pytest.raises(InvalidInput):
                await client.preprocess("normalize", "x", params={"lowercase": 1})
            with pytest.raises(InvalidInput):
                await client.infer_many(TOY, ["ok", ""])
            with pytest.raises(UnknownJob):
                await client.get("not-a-uuid")
            with pytest.raises(UnknownJob):
                await client.get(str(uuid.uuid4()))

    asyncio.run(scenario())
    assert total_jobs(store) == before
    assert queue_depth(ns_settings, queue_name(ns_settings.namespace, JobKind.INFER, TOY)) == 0


def test_infer_many_and_as_completed(ns_settings: Settings, store: JobStore) -> None:
    async def scenario() -> tuple[list[str], list[str], str]:
        async with AsyncClient(ns_settings) as client:
            jobs = await client.infer_many(TOY, ["a", "b", "c"])
            await jobs[2].cancel()
            seen: list[str] = []
            with pytest.raises(JobTimeout) as raised:
                async for finished in client.as_completed(jobs, timeout=0.3):
                    seen.append(finished.id)
            return [job.id for job in jobs], seen, raised.value.job_id

    ids, seen, late = asyncio.run(scenario())
    assert seen == [ids[2]]
    assert late in ids[:2]
    counts = store.count_by_status(ids)
    assert (counts[JobStatus.QUEUED], counts[JobStatus.CANCELLED]) == (2, 1)
    assert queue_depth(ns_settings, queue_name(ns_settings.namespace, JobKind.INFER, TOY)) == 1


def test_cache_hit_and_result_through_the_async_client(ns_settings: Settings) -> None:
    text = f"async cached {uuid.uuid4()}"

    async def scenario() -> tuple[object, bool]:
        async with AsyncClient(ns_settings) as client:
            first = await client.preprocess("normalize", text)
            client.client.cache.put_many({first.job.cache_key: codec.encode("normalized")}, 60)
            hit = await client.preprocess("normalize", text)
            return await hit.result(timeout=5), await hit.done()

    assert asyncio.run(scenario()) == ("normalized", True)


def test_models_through_the_async_client(ns_settings: Settings) -> None:
    async def scenario() -> set[str]:
        async with AsyncClient(ns_settings) as client:
            return {info.name for info in await client.models()}

    assert {"minilm", TOY, "tokenize", "chunk", "normalize"} <= asyncio.run(scenario())


def test_submit_many_and_pipeline_many_record_and_publish(ns_settings: Settings,
                                                          store: JobStore) -> None:
    async def scenario() -> tuple[list[AsyncJob], list[AsyncJob], list[AsyncJob]]:
        async with AsyncClient(ns_settings) as client:
            ops = await client.submit_many("normalize", ["A  b", "c"], priority=2)
            models = await client.submit_many(TOY, ["d"])
            chained = await client.pipeline_many(["normalize", "tokenize"], ["e", "f", "g"],
                                                  {"normalize": {"lowercase": False}})
            return ops, models, chained

    ops, models, chained = asyncio.run(scenario())
    assert all(isinstance(job, AsyncJob) for job in [*ops, *models, *chained])
    assert {job.job.kind for job in ops} == {JobKind.PREPROCESS}
    assert {job.job.kind for job in models} == {JobKind.INFER}
    assert {store.get(job.id).priority for job in ops} == {2}
    records = store.get_many([job.id for job in chained])
    assert {record.target for record in records.values()} == {"normalize>tokenize"}
    assert len(records) == 3
    assert store.count_by_status([job.id for job in [*ops, *models, *chained]])[
        JobStatus.QUEUED] == 6
    normalize = queue_name(ns_settings.namespace, JobKind.PREPROCESS, "normalize")
    assert queue_depth(ns_settings, normalize) == 2  # one packed message per call
    assert queue_depth(ns_settings, queue_name(ns_settings.namespace, JobKind.INFER, TOY)) == 1


def test_results_of_reads_in_order_and_raises_for_unfinished_or_cancelled(
        ns_settings: Settings) -> None:
    texts = [f"async results {i} {uuid.uuid4()}" for i in range(3)]

    async def scenario() -> list[object]:
        async with AsyncClient(ns_settings) as client:
            first = await client.submit_many("normalize", texts)
            client.client.cache.put_many(
                {job.job.cache_key: codec.encode(f"out {i}") for i, job in enumerate(first)}, 60)
            hits = await client.submit_many("normalize", texts)  # cache hits: already succeeded
            results = await client.results_of(list(reversed(hits)), timeout=5)
            queued = await client.infer(TOY, f"never run {uuid.uuid4()}")
            with pytest.raises(JobTimeout) as late:
                await client.results_of([hits[0], queued], timeout=0.3)
            assert late.value.job_id == queued.id
            assert await queued.cancel()
            with pytest.raises(JobCancelled) as cancelled:
                await client.results_of([hits[0], queued], timeout=5)
            assert cancelled.value.job_id == queued.id
            return results

    assert asyncio.run(scenario()) == ["out 2", "out 1", "out 0"]
