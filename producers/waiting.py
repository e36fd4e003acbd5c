"""Learning that jobs finished: completion notices from Redis first, Postgres polling as the
fallback.

Workers push a notice per job onto the submitting client's reply list after the state commit. A job
handle from ``client.get(id)`` (someone else's job) has no notices, so its waits poll Postgres with
a backoff; so does every wait now and then, which covers jobs cancelled or expired without a
worker.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from aidist.jobs import JobStatus
from db import JobStore, Notice, ResultCache

POLL_START_S = 0.2
POLL_MAX_S = 2.0
NOTICE_WAIT_MAX_S = 0.5


@dataclass(frozen=True, slots=True)
class Finished:
    """A job reached a terminal status."""

    job_id: str
    status: JobStatus
    error: str | None


class CompletionTracker:
    """Terminal statuses this client has learned, and the one reader of its reply list."""

    def __init__(self, cache: ResultCache, store: JobStore, reply_to: str) -> None:
        self.cache = cache
        self.store = store
        self.reply_to = reply_to
        self._finished: dict[str, Finished] = {}
        self._state_lock = threading.Lock()
        self._reader_lock = threading.Lock()

    def record(self, job_id: str, status: JobStatus, error: str | None = None) -> None:
        """Remember a terminal status learned some other way (cache hit, cancel)."""
        with self._state_lock:
            self._finished[job_id] = Finished(job_id, status, error)

    def known(self, job_id: str) -> Finished | None:
        """The terminal status of ``job_id`` if this client has learned it."""
        with self._state_lock:
            return self._finished.get(job_id)

    def _read_notices(self, timeout_s: float) -> None:
        if not self._reader_lock.acquire(timeout=timeout_s):
            return
        try:
            notices: list[Notice] = self.cache.wait_notices(self.reply_to, timeout_s)
        finally:
            self._reader_lock.release()
        with self._state_lock:
            for notice in notices:
                self._finished[notice.job_id] = Finished(
                    notice.job_id, JobStatus(notice.status), notice.error
                )

    def _poll_store(self, job_ids: Sequence[str]) -> None:
        for start in range(0, len(job_ids), 5000):
            records = self.store.get_many(job_ids[start : start + 5000])
            for record in records.values():
                if record.status.terminal:
                    self.record(record.id, record.status, record.error)

    def iter_finished(self, job_ids: Sequence[str], timeout_s: float | None) -> Iterator[Finished]:
        """Yield each job as it becomes terminal, in completion order. Stops early (without
        raising) when ``timeout_s`` passes; the caller sees which ids were not yielded."""
        pending = dict.fromkeys(job_ids)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        poll_every = POLL_START_S
        next_poll = time.monotonic() + poll_every
        while pending:
            for job_id in list(pending):
                finished = self.known(job_id)
                if finished is not None:
                    del pending[job_id]
                    yield finished
            if not pending:
                return
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                self._poll_store(list(pending))
                for job_id in list(pending):
                    finished = self.known(job_id)
                    if finished is not None:
                        del pending[job_id]
                        yield finished
                return
            if now >= next_poll:
                self._poll_store(list(pending))
                poll_every = min(poll_every * 2, POLL_MAX_S)
                next_poll = time.monotonic() + poll_every
                continue
            wait = min(NOTICE_WAIT_MAX_S, next_poll - now)
            if deadline is not None:
                wait = min(wait, deadline - now)
            self._read_notices(max(wait, 0.01))
