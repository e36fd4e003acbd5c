"""Reading the results of finished jobs, from the nearest place that has them: the completion
notice (a small result rides in it), Redis, the durable copy in Postgres, or, for a result lost
everywhere, a recompute through the queue."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from aidist.errors import ResultUnavailable
from db.blob_base import BlobStore
from db.blobs import dereference
from db.interfaces import JobStoreLike, ResultCacheLike
from producers.job import Job
from producers.waiting import CompletionTracker

Recompute = Callable[[Sequence[Job], float | None], dict[str, bytes]]


class ResultReader:
    """The encoded results of jobs that have succeeded, in order."""

    def __init__(self, tracker: CompletionTracker, cache: ResultCacheLike, store: JobStoreLike,
                 blobs: BlobStore, recompute: Recompute, *, result_ttl_s: int) -> None:
        self.tracker = tracker
        self.cache = cache
        self.store = store
        self.blobs = blobs
        self.recompute = recompute
        self.result_ttl_s = result_ttl_s

    def read(self, jobs: Sequence[Job], timeout: float | None) -> list[bytes]:
        """One entry per job; ``ResultUnavailable`` for one that cannot be had (its model
        version changed since it ran, and the result is gone)."""
        raw: list[bytes | None] = [self.tracker.take_result(job.id) for job in jobs]
        unread = [index for index, data in enumerate(raw) if data is None]
        if unread:  # not brought by a notice (large, a cache hit, or learned by polling)
            # A large result is a reference in Redis and in the row: read from the blob store
            # (a blob gone since counts as a result that left the cache).
            fetched = dereference(self.blobs, self.cache.get_many(
                [jobs[index].cache_key for index in unread]))
            for index, data in zip(unread, fetched, strict=True):
                raw[index] = data
        if any(data is None for data in raw):
            durable = self.store.results_by_key(
                [job.cache_key for job, data in zip(jobs, raw, strict=True) if data is None])
            if durable:
                self.cache.put_many(durable, self.result_ttl_s)
                raw = self._fill(jobs, raw, durable)
        missing = [job for job, data in zip(jobs, raw, strict=True) if data is None]
        if missing:
            raw = self._fill(jobs, raw, self.recompute(missing, timeout))
        out: list[bytes] = []
        for job, data in zip(jobs, raw, strict=True):
            if data is None:
                raise ResultUnavailable(job.id)
            out.append(data)
        return out

    def _fill(self, jobs: Sequence[Job], raw: list[bytes | None],
              found: dict[str, bytes]) -> list[bytes | None]:
        """``raw`` with its gaps filled from ``found`` (cache key -> result, references read
        from the blob store)."""
        readable = dict(zip(found, dereference(self.blobs, list(found.values())), strict=True))
        return [readable.get(job.cache_key) if data is None else data
                for job, data in zip(jobs, raw, strict=True)]
