"""Service times: each process that runs jobs measures how fast it runs each model, and writes it
to Postgres (``worker_stats``) every few seconds, for the autoscaler and KEDA (``db.backlog``).

Busy time is wall time with at least one flush running: where two runner threads overlap their
flushes, each flush's own duration is scaled by (union busy time / summed flush time), so a job's
share is never counted twice. Jobs and busy time decay by half every ``HALF_LIFE_S``, so the
figure follows the batch sizes the worker sees now (a light load runs small, slow-per-job
batches; a burst runs large ones). The cold start is the measured model load plus warm-up.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict

from aidist.config import Settings
from aidist.jobs import JobStatus
from db.backlog import BacklogStore, ServiceStat
from db.engine import create_store_engine
from workers.hooks import BatchReport, Flush, ProcessView, WorkerHook
from workers.periodic import Periodic

log = logging.getLogger("aidist.worker")
WRITE_EVERY_S = 5.0
HALF_LIFE_S = 120.0


class ServiceTimes(WorkerHook):
    """Measures per-model speed in this process and upserts it from a daemon thread."""

    def __init__(self, settings: Settings, pool: str, *, write_every_s: float = WRITE_EVERY_S,
                 half_life_s: float = HALF_LIFE_S) -> None:
        self.settings = settings
        self.pool = pool
        self.write_every_s = write_every_s
        self.half_life_s = half_life_s
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._jobs: dict[str, float] = defaultdict(float)
        self._raw: dict[str, float] = defaultdict(float)  # flush seconds, shared out by jobs
        self._cold: dict[str, float] = {}
        self._started: dict[int, float] = {}
        self._active = 0
        self._busy_since = 0.0
        self._union_s = 0.0  # wall time with a flush running
        self._summed_s = 0.0  # flush durations added up (more than union when they overlap)
        self._decayed_at = time.monotonic()
        self._worker = ""
        self._store: BacklogStore | None = None

    def process_started(self, process: ProcessView) -> None:
        with self._lock:
            self._reset()  # a forked child starts from nothing, with connections of its own
            self._worker = process.name
            self._store = BacklogStore(create_store_engine(self.settings.database_url,
                                                           self.settings.connect_timeout_s))
        Periodic("aidist-service-times", self.write, retry_s=self.write_every_s).start()

    def model_loaded(self, target: str, seconds: float) -> None:
        with self._lock:
            self._cold[target] = seconds

    def flush_started(self, flush: Flush) -> None:
        now = time.monotonic()
        with self._lock:
            self._started[flush.token] = now
            if self._active == 0:
                self._busy_since = now
            self._active += 1

    def flush_ended(self, flush: Flush, report: BatchReport | None) -> None:
        now = time.monotonic()
        with self._lock:
            self._decay()
            started = self._started.pop(flush.token, now)
            self._active = max(self._active - 1, 0)
            if self._active == 0:
                self._union_s += now - self._busy_since
            if report is None or not report.outcomes:
                return
            target_of = {entry.id: entry.target for entry in flush.entries}
            ran: dict[str, int] = defaultdict(int)
            for outcome in report.outcomes:
                if outcome.status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
                    ran[target_of.get(outcome.id, "")] += 1
            total = sum(ran.values())
            duration = now - started
            self._summed_s += duration
            for target, count in ran.items():
                if target:
                    self._jobs[target] += count
                    self._raw[target] += duration * count / total

    def snapshot(self) -> list[ServiceStat]:
        """This process's figures now: jobs and busy seconds per model (decayed)."""
        with self._lock:
            self._decay()
            overlap = self._union_s / self._summed_s if self._summed_s > 0 else 1.0
            models = set(self._jobs) | set(self._cold)
            return [ServiceStat(self._worker, model, self.pool,
                                self._jobs.get(model, 0.0),
                                self._raw.get(model, 0.0) * min(overlap, 1.0),
                                self._cold.get(model))
                    for model in sorted(models)]

    def _decay(self) -> None:
        now = time.monotonic()
        factor = 0.5 ** ((now - self._decayed_at) / self.half_life_s)
        self._decayed_at = now
        for table in (self._jobs, self._raw):
            for key in table:
                table[key] *= factor
        self._union_s *= factor
        self._summed_s *= factor

    def write(self) -> float:
        """Upsert the snapshot; returns the seconds until the next write."""
        stats = [s for s in self.snapshot() if s.jobs > 0 or s.cold_start_s is not None]
        if self._store is not None and stats:
            self._store.record(stats)
        return self.write_every_s
