"""Running a job again when its result has left Redis and its row keeps no durable copy.

A result can leave Redis (its TTL, eviction, a flushed or restarted Redis) while the job's row
stays: the row keeps the input and the exact model or op versions, so the client submits the
same work again as new jobs under the same cache key and reads the result that run stores. If a
model or op has changed version since, running it again would answer a different question, so
the result is unavailable instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from aidist import codec
from aidist.errors import ResultUnavailable
from aidist.jobs import recorded_steps
from db import JobRecord
from db.interfaces import JobStoreLike, ResultCacheLike
from models import Registry
from producers.job import Job, raise_for_status
from producers.submission import Plan, Request, SubmitOptions

Enqueue = Callable[[list[Request]], list[Job]]
Wait = Callable[[Sequence[Job], float | None], Iterable[Job]]


class Recomputer:
    """Recomputes lost results through the client's own submit path (``enqueue``) and waits
    for them with its own waiting (``wait``: ``Client.as_completed``)."""

    def __init__(self, store: JobStoreLike, cache: ResultCacheLike, registry: Registry,
                 enqueue: Enqueue, wait: Wait) -> None:
        self.store = store
        self.cache = cache
        self.registry = registry
        self.enqueue = enqueue
        self.wait = wait

    def __call__(self, jobs: Sequence[Job], timeout: float | None) -> dict[str, bytes]:
        """Run lost results again as new jobs of the same model version and input; returns the
        encoded results by cache key (they are back in Redis under the same keys too).
        ``ResultUnavailable`` for a job whose input or model version is gone."""
        records = self.store.get_many([job.id for job in jobs])
        payloads = self.store.payloads([job.id for job in jobs])
        requests: list[Request] = []
        for job in jobs:
            record, payload = records.get(job.id), payloads.get(job.id)
            plan = self.plan_of(record) if record is not None else None
            if record is None or payload is None or plan is None:
                raise ResultUnavailable(job.id)
            requests.append(Request(plan, codec.decode(payload), payload, record.cache_key,
                                    SubmitOptions(tenant=record.tenant)))
        again = self.enqueue(requests)
        for job in self.wait(again, timeout):
            raise_for_status(job.id, job.status(), self.store.get(job.id).error)
        found = self.cache.get_many([job.cache_key for job in again])
        lost = [job.id for job, data in zip(jobs, found, strict=True) if data is None]
        if lost:
            raise ResultUnavailable(lost[0])
        return {job.cache_key: data for job, data in zip(again, found, strict=True)
                if data is not None}

    def plan_of(self, record: JobRecord) -> Plan | None:
        """How to run a recorded job again, or None if its model or op changed version since."""
        chain = recorded_steps(record.kind, record.target, record.version, record.params)
        for step in chain:
            if step.target not in self.registry.names() or (
                    self.registry.version(step.target) != step.version):
                return None
        return Plan(kind=record.kind, label=record.target, version=record.version,
                    params=record.params, first=chain[0], rest=chain[1:])
