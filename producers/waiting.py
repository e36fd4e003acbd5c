"""Learning that jobs finished: completion notices from Redis first, Postgres polling as the
fallback.

Workers push a notice per job onto the submitting client's reply list after the state commit; a
small result rides in it, so reading it needs no second round trip. A job
handle from ``client.get(id)`` (someone else's job) has no notices, so its waits poll Postgres with
a backoff; so does every wait now and then, which covers jobs cancelled or expired without a
worker.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from aidist.errors import ServiceUnavailable
from aidist.jobs import JobStatus
from db import Notice
from db.interfaces import JobStoreLike, ResultCacheLike

POLL_START_S = 0.2
POLL_MAX_S = 2.0
NOTICE_WAIT_MAX_S = 0.5
# Small results that came in completion notices, and cache hits' results from the submit's own
# lookup, kept until read (``take_result``). Bounded: a caller that never reads its results costs
# at most this much; past it the oldest are dropped (reading one of those takes a round trip to
# Redis instead).
NOTICE_RESULTS_MAX_BYTES = 64 * 1024 * 1024
# Terminal statuses kept (a few hundred bytes each): a long-lived client (a web server's) learns
# one per job it submits, for ever. Past the bound the oldest are forgotten, a tenth at a time; a
# wait on one of those asks Postgres (one poll, after ``POLL_START_S``).
KNOWN_MAX = 100_000


@dataclass(frozen=True, slots=True)
class Finished:
    """A job reached a terminal status."""

    job_id: str
    status: JobStatus
    error: str | None


class CompletionTracker:
    """Terminal statuses this client has learned, and the one reader of its reply list."""

    def __init__(self, cache: ResultCacheLike, store: JobStoreLike, reply_to: str,
                 known_max: int = KNOWN_MAX) -> None:
        self.cache = cache
        self.store = store
        self.reply_to = reply_to
        self.known_max = known_max
        self._finished: dict[str, Finished] = {}
        self._order: list[str] = []  # ids in the order they were learned, for cheap scans
        self._forgotten = 0  # how many were dropped from the front of ``_order``: a cursor (a
        # place in the order) counts from the first status ever learned
        self._state_lock = threading.Lock()
        # Notified whenever a status is learned, and when the reader is done: a thread waiting
        # for its turn to read wakes as soon as another thread's read brought something.
        self._learned = threading.Condition(self._state_lock)
        self._reading = False  # one thread at a time reads the reply list
        self._outage = threading.Event()  # never set: a pause while Redis is unreachable
        self.polls = 0  # how many times a wait asked Postgres before its time was up (tests)
        self._notice_at = -POLL_MAX_S  # when the last notice came (monotonic)
        self._results: OrderedDict[str, bytes] = OrderedDict()  # job id -> result in hand
        self._result_bytes = 0

    def record(self, job_id: str, status: JobStatus, error: str | None = None,
               result: bytes | None = None) -> None:
        """Remember a terminal status learned some other way (cache hit, cancel), and the
        result bytes if they are in hand (a cache hit's: read with no second round trip)."""
        with self._learned:
            self._learn(job_id, status, error, result)
            self._learned.notify_all()

    def _learn(self, job_id: str, status: JobStatus, error: str | None,
               result: bytes | None) -> None:
        """Under ``_state_lock``."""
        if job_id not in self._finished:
            self._order.append(job_id)
            if len(self._order) > self.known_max:
                self._forget_oldest(len(self._order) - self.known_max + self.known_max // 10)
        self._finished[job_id] = Finished(job_id, status, error)
        if result is not None:
            self._keep_result(job_id, result)

    def _forget_oldest(self, count: int) -> None:
        """Under ``_state_lock``: drop the ``count`` statuses learned first."""
        for job_id in self._order[:count]:
            self._finished.pop(job_id, None)
        del self._order[:count]
        self._forgotten += count

    def _end(self) -> int:
        """Under ``_state_lock``: the cursor after the last status learned."""
        return self._forgotten + len(self._order)

    def take_result(self, job_id: str) -> bytes | None:
        """The result bytes a notice (or a cache hit's lookup) brought for ``job_id`` (once:
        read, they are dropped)."""
        with self._state_lock:
            data = self._results.pop(job_id, None)
            if data is not None:
                self._result_bytes -= len(data)
            return data

    def _keep_result(self, job_id: str, data: bytes) -> None:
        """Under ``_state_lock``."""
        old = self._results.pop(job_id, None)
        self._result_bytes += len(data) - (len(old) if old is not None else 0)
        self._results[job_id] = data
        while self._result_bytes > NOTICE_RESULTS_MAX_BYTES:
            _, dropped = self._results.popitem(last=False)
            self._result_bytes -= len(dropped)

    def unfinished(self, job_ids: Sequence[str]) -> list[str]:
        """Those of ``job_ids`` whose end this client has not learned (or has forgotten)."""
        with self._state_lock:
            return [job_id for job_id in job_ids if job_id not in self._finished]

    def known(self, job_id: str) -> Finished | None:
        """The terminal status of ``job_id`` if this client has learned it."""
        with self._state_lock:
            return self._finished.get(job_id)

    def _read_notices(self, timeout_s: float, cursor: int) -> None:
        """Read the reply list for up to ``timeout_s``, one thread at a time; return at once
        when something was learned since ``cursor`` (the caller's place in ``_order``), also
        while waiting for another thread's read: a thread whose notice that read brought looks
        at it then, instead of blocking for the next notice after it."""
        deadline = time.monotonic() + timeout_s
        with self._learned:
            while self._end() == cursor:
                if not self._reading:
                    self._reading = True
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self._learned.wait(remaining)
            else:
                return
        notices: list[Notice] = []
        try:
            notices = self.cache.wait_notices(self.reply_to, timeout_s)
        except ServiceUnavailable:
            # Redis is restarting: wait it out here; Postgres polling still brings completions.
            self._outage.wait(timeout_s)
        finally:
            with self._learned:
                self._reading = False
                if notices:
                    self._notice_at = time.monotonic()
                for notice in notices:
                    self._learn(notice.job_id, JobStatus(notice.status), notice.error,
                                notice.result)
                self._learned.notify_all()

    def _poll_store(self, job_ids: Sequence[str], final: bool = False) -> None:
        """Read terminal statuses from Postgres. While it is unreachable a wait goes on (a
        restarting database costs time, not the wait), except for the ``final`` poll."""
        try:
            for start in range(0, len(job_ids), 10_000):
                chunk = job_ids[start : start + 10_000]
                for job_id, status, error in self.store.finished_among(chunk):
                    self.record(job_id, status, error)
        except ServiceUnavailable:
            if final:
                raise

    def _learned_since(self, cursor: int) -> tuple[list[str], int]:
        """Ids learned since ``cursor`` (those still kept), and the cursor after them."""
        with self._state_lock:
            return self._order[max(cursor - self._forgotten, 0):], self._end()

    def _cursor(self) -> int:
        with self._state_lock:
            return self._end()

    def iter_finished(self, job_ids: Sequence[str], timeout_s: float | None) -> Iterator[Finished]:
        """Yield each job as it becomes terminal, in completion order. Stops early (without
        raising) when ``timeout_s`` passes; the caller sees which ids were not yielded.

        Completion notices are the fast path; Postgres is asked only when no notice has brought
        progress for a while (jobs finished by other means, or notices lost), with backoff:
        after ``POLL_START_S``, doubling up to ``POLL_MAX_S``, or after ``POLL_MAX_S`` while
        notices of other jobs keep coming. A client waiting on jobs far back in a busy queue
        asked Postgres about them every 0.2-0.4 s of each wait, a round trip per wait that only
        confirmed they had not finished."""
        pending = set(job_ids)
        cursor = self._cursor()  # first: a status learned during the look below shows after it
        for job_id in job_ids:
            finished = self.known(job_id)
            if finished is not None and job_id in pending:
                pending.discard(job_id)
                yield finished
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        poll_every = POLL_START_S
        last_progress = time.monotonic()
        while pending:
            learned, cursor = self._learned_since(cursor)
            progressed = False
            for job_id in learned:
                if job_id in pending:
                    pending.discard(job_id)
                    progressed = True
                    finished = self.known(job_id)
                    assert finished is not None
                    yield finished
            if not pending:
                return
            now = time.monotonic()
            if progressed:
                last_progress = now
                poll_every = POLL_START_S
            if deadline is not None and now >= deadline:
                self._poll_store(sorted(pending), final=True)
                learned, cursor = self._learned_since(cursor)
                for job_id in learned:
                    if job_id in pending:
                        pending.discard(job_id)
                        finished = self.known(job_id)
                        assert finished is not None
                        yield finished
                return
            # Notices coming for other jobs: the reply list works and these jobs are still
            # queued or running (a busy queue), so Postgres is asked less often.
            every = poll_every if now - self._notice_at >= POLL_MAX_S else POLL_MAX_S
            if now - last_progress >= every:
                self._poll_store(sorted(pending))
                self.polls += 1
                poll_every = min(poll_every * 2, POLL_MAX_S)
                last_progress = time.monotonic()
                continue
            wait = min(NOTICE_WAIT_MAX_S, last_progress + every - now)
            if deadline is not None:
                wait = min(wait, deadline - now)
            self._read_notices(max(wait, 0.01), cursor)
