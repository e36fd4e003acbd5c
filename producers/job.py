"""Job handles: what ``Client.infer`` and friends return."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aidist.errors import JobCancelled, JobExpired, JobFailed, JobTimeout
from aidist.jobs import JobKind, JobStatus

if TYPE_CHECKING:
    from producers.client import Client

# A cancel mark must outlive the longest batch a worker may be running (a batch past the job time
# limit ends its process anyway); a day is far beyond any sane limit and costs a few bytes.
CANCEL_MARK_TTL_S = 86_400.0


class Job:
    """A handle on one job. Cheap to create; every method asks the services for the truth."""

    __slots__ = ("_client", "cache_key", "id", "kind", "target")

    def __init__(self, client: Client, job_id: str, kind: JobKind, target: str, cache_key: str):
        self._client = client
        self.id = job_id
        self.kind = kind
        self.target = target
        self.cache_key = cache_key

    def __repr__(self) -> str:
        return f"Job(id={self.id!r}, target={self.target!r})"

    def status(self) -> JobStatus:
        """Current status: from a completion this client already saw, else from Postgres."""
        known = self._client.tracker.known(self.id)
        if known is not None:
            return known.status
        return self._client.store.get(self.id).status

    def done(self) -> bool:
        """True once the job is succeeded, failed, cancelled or expired."""
        return self.status().terminal

    def result(self, timeout: float | None = 30.0) -> Any:
        """Wait for the job and return its output. Raises ``JobFailed``, ``JobCancelled``,
        ``JobExpired``, or ``JobTimeout`` after ``timeout`` seconds (``None`` waits forever)."""
        finished = next(iter(self._client.tracker.iter_finished([self.id], timeout)), None)
        if finished is None:
            raise JobTimeout(self.id, timeout or 0.0, self.status().value)
        return self._client.results_of([self], timeout)[0]

    def cancel(self) -> bool:
        """Cancel the job unless it has finished; True if it is now cancelled. A queued job never
        runs. A running one is dropped at the next batch boundary: a model batch already running
        completes, but the job's output is neither reported nor cached, and no further pipeline
        step starts. The row in Postgres is the commit point; a mark in Redis tells the worker
        that holds the job."""
        status = self._client.store.cancel(self.id)
        if status is JobStatus.CANCELLED:
            self._client.tracker.record(self.id, status)
            self._client.cache.mark_cancelled([self.id], CANCEL_MARK_TTL_S)
        return status is JobStatus.CANCELLED


def raise_for_status(job_id: str, status: JobStatus, error: str | None) -> None:
    """Raise the error matching a terminal status that carries no result."""
    if status is JobStatus.FAILED:
        raise JobFailed(job_id, error or "unknown error")
    if status is JobStatus.CANCELLED:
        raise JobCancelled(job_id)
    if status is JobStatus.EXPIRED:
        raise JobExpired(job_id)
