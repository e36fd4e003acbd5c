"""AsyncClient: the same calls as Client, awaitable.

Each call runs the synchronous client's method on a worker thread (``asyncio.to_thread``): the
drivers underneath (kombu with confirms, psycopg, redis-py) are blocking, and one implementation of
the submit path is worth more than two that drift apart. The event loop never blocks.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

from aidist.config import Settings
from aidist.jobs import JobStatus
from aidist.transport import JobPublisher
from db.blob_base import BlobStore
from db.interfaces import JobStoreLike, ResultCacheLike
from models import ModelInfo, Registry
from producers.client import Client
from producers.job import Job
from producers.submission import SUBMITTER, Deadline


def name_submitter() -> None:
    """This task's single submissions run on whichever of the loop's worker threads is free:
    name the task as their submitter, so that the sender's linger tells a task that streams jobs
    from tasks that each wait for theirs (``producers.sender``). ``asyncio.to_thread`` runs the
    call in a copy of the task's context, where the name is seen."""
    task = asyncio.current_task()
    if task is not None:
        SUBMITTER.set(id(task))


class AsyncJob:
    """Awaitable mirror of ``Job``."""

    __slots__ = ("job",)

    def __init__(self, job: Job) -> None:
        self.job = job

    @property
    def id(self) -> str:
        """The job id (UUID string)."""
        return self.job.id

    def __repr__(self) -> str:
        return f"AsyncJob(id={self.id!r}, target={self.job.target!r})"

    async def status(self) -> JobStatus:
        """Current status."""
        return await asyncio.to_thread(self.job.status)

    async def done(self) -> bool:
        """True once terminal."""
        return await asyncio.to_thread(self.job.done)

    async def result(self, timeout: float | None = 30.0) -> Any:
        """The output; raises like ``Job.result``."""
        return await asyncio.to_thread(self.job.result, timeout)

    async def cancel(self) -> bool:
        """Cancel if not started."""
        return await asyncio.to_thread(self.job.cancel)


class AsyncClient:
    """``Client`` with ``await``:
    ``async with AsyncClient() as client: job = await client.infer(...)``."""

    def __init__(self, settings: Settings | None = None, *, registry: Registry | None = None,
                 store: JobStoreLike | None = None, cache: ResultCacheLike | None = None,
                 publisher: JobPublisher | None = None, blobs: BlobStore | None = None,
                 background_publish: bool = True) -> None:
        self.client = Client(settings, registry=registry, store=store, cache=cache,
                             publisher=publisher, blobs=blobs,
                             background_publish=background_publish)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until every single submission made so far is published (``Client.flush``)."""
        return await asyncio.to_thread(self.client.flush, timeout)

    async def close(self) -> None:
        """Close connections."""
        await asyncio.to_thread(self.client.close)

    async def infer(self, model: str, input: Any, params: dict[str, Any] | None = None, *,
                    priority: int = 0, deadline: Deadline = None,
                    idempotency_key: str | None = None, tenant: str | None = None) -> AsyncJob:
        """See ``Client.infer``."""
        name_submitter()
        job = await asyncio.to_thread(self.client.infer, model, input, params, priority=priority,
                                      deadline=deadline, idempotency_key=idempotency_key,
                                      tenant=tenant)
        return AsyncJob(job)

    async def preprocess(self, op: str, input: Any, params: dict[str, Any] | None = None, *,
                         priority: int = 0, deadline: Deadline = None,
                         idempotency_key: str | None = None,
                         tenant: str | None = None) -> AsyncJob:
        """See ``Client.preprocess``."""
        name_submitter()
        job = await asyncio.to_thread(self.client.preprocess, op, input, params,
                                      priority=priority, deadline=deadline,
                                      idempotency_key=idempotency_key, tenant=tenant)
        return AsyncJob(job)

    async def infer_many(self, model: str, inputs: Iterable[Any],
                         params: dict[str, Any] | None = None, *, priority: int = 0,
                         deadline: Deadline = None, tenant: str | None = None) -> list[AsyncJob]:
        """See ``Client.infer_many``: one job per input, in input order."""
        jobs = await asyncio.to_thread(self.client.infer_many, model, list(inputs), params,
                                       priority=priority, deadline=deadline, tenant=tenant)
        return [AsyncJob(job) for job in jobs]

    async def preprocess_many(self, op: str, inputs: Iterable[Any],
                              params: dict[str, Any] | None = None, *, priority: int = 0,
                              deadline: Deadline = None,
                              tenant: str | None = None) -> list[AsyncJob]:
        """See ``Client.preprocess_many``."""
        jobs = await asyncio.to_thread(self.client.preprocess_many, op, list(inputs), params,
                                       priority=priority, deadline=deadline, tenant=tenant)
        return [AsyncJob(job) for job in jobs]

    async def submit_many(self, target: str, inputs: Iterable[Any],
                          params: dict[str, Any] | None = None, *, priority: int = 0,
                          deadline: Deadline = None,
                          tenant: str | None = None) -> list[AsyncJob]:
        """See ``Client.submit_many``: ``infer_many`` or ``preprocess_many``, whichever
        ``target`` is registered as."""
        jobs = await asyncio.to_thread(self.client.submit_many, target, list(inputs), params,
                                       priority=priority, deadline=deadline, tenant=tenant)
        return [AsyncJob(job) for job in jobs]

    async def map(self, target: str, inputs: Iterable[Any], params: dict[str, Any] | None = None,
                  *, progress: bool = False, timeout: float | None = None, priority: int = 0,
                  tenant: str | None = None) -> list[Any]:
        """See ``Client.map``: the outputs in input order."""
        return await asyncio.to_thread(self.client.map, target, list(inputs), params,
                                       progress=progress, timeout=timeout, priority=priority,
                                       tenant=tenant)

    async def pipeline(self, steps: Sequence[str], input: Any,
                       params: dict[str, dict[str, Any]] | None = None, *, priority: int = 0,
                       deadline: Deadline = None, tenant: str | None = None) -> AsyncJob:
        """See ``Client.pipeline``: one job that runs ``steps`` in order on the workers."""
        name_submitter()
        job = await asyncio.to_thread(self.client.pipeline, list(steps), input, params,
                                      priority=priority, deadline=deadline, tenant=tenant)
        return AsyncJob(job)

    async def pipeline_many(self, steps: Sequence[str], inputs: Iterable[Any],
                            params: dict[str, dict[str, Any]] | None = None, *,
                            priority: int = 0, deadline: Deadline = None,
                            tenant: str | None = None) -> list[AsyncJob]:
        """See ``Client.pipeline_many``: ``pipeline`` for many inputs, one job each, inserted
        and published packed."""
        jobs = await asyncio.to_thread(self.client.pipeline_many, list(steps), list(inputs),
                                       params, priority=priority, deadline=deadline,
                                       tenant=tenant)
        return [AsyncJob(job) for job in jobs]

    async def imap(self, target: str, inputs: Iterable[Any],
                   params: dict[str, Any] | None = None, *, timeout: float | None = None,
                   priority: int = 0, tenant: str | None = None) -> AsyncIterator[Any]:
        """See ``Client.imap``: outputs in input order, as they become available."""
        iterator = self.client.imap(target, list(inputs), params, timeout=timeout,
                                    priority=priority, tenant=tenant)
        sentinel = object()
        while True:
            item = await asyncio.to_thread(next, iterator, sentinel)
            if item is sentinel:
                return
            yield item

    async def get(self, job_id: str) -> AsyncJob:
        """See ``Client.get``."""
        return AsyncJob(await asyncio.to_thread(self.client.get, job_id))

    async def as_completed(self, jobs: Sequence[AsyncJob],
                           timeout: float | None = None) -> AsyncIterator[AsyncJob]:
        """Async iterator over jobs as they finish; ``JobTimeout`` past ``timeout``."""
        by_id = {job.id: job for job in jobs}
        iterator = self.client.as_completed([job.job for job in jobs], timeout)
        sentinel = object()
        while True:
            finished = await asyncio.to_thread(next, iterator, sentinel)
            if finished is sentinel:
                return
            assert isinstance(finished, Job)
            yield by_id[finished.id]

    async def results_of(self, jobs: Sequence[AsyncJob],
                         timeout: float | None = 300.0) -> list[Any]:
        """See ``Client.results_of``: the results in order, read in one round trip once every
        job has ended (``JobTimeout`` past ``timeout``); raises for the first job that failed,
        was cancelled or expired."""
        return await asyncio.to_thread(self.client.results_of, [job.job for job in jobs],
                                       timeout)

    async def models(self) -> list[ModelInfo]:
        """See ``Client.models``."""
        return await asyncio.to_thread(self.client.models)
