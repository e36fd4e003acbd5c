"""The scaling signal: how many jobs wait for each model, how long they will take at the speed
workers measured, and the SQL that KEDA runs to scale a pool on it.

Backlog is counted in **jobs**, from Postgres: queued and running rows per model (a pipeline's
row counts towards the model of its current step). Counting AMQP messages would be wrong by up to
``AIDIST_PACK_SIZE`` times (one message carries many jobs) and blind to prefetched and running
work. Speed comes from ``worker_stats``: each process that runs jobs writes, every few seconds,
how many jobs of each model it finished and how long it was busy doing so (wall time with at least
one flush running, so two overlapping flushes are not counted twice), and how long the model took
to load and warm up. Backlog seconds = the sum of jobs x seconds per job, plus the slowest cold
start of the pool's models while anything waits (a worker not yet running needs it before its
first job).

The same query text serves the local supervisor (``aidist autoscale``) and KEDA's ``postgresql``
trigger (``keda_query``): the manifest in ``docker/k8s/`` embeds its rendered text, and a test
checks that the two are the same and runs it against a real Postgres with a known backlog.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, text

from aidist.errors import ConfigError
from db.engine import transaction

STATS_FRESH_S = 600  # worker_stats rows older than this are ignored (their worker is gone)
_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


@dataclass(frozen=True, slots=True)
class ModelBacklog:
    """What waits for one model, and how fast one worker process runs it."""

    model: str
    queued: int
    running: int
    seconds_per_job: float  # measured per busy process; the default until measured
    cold_start_s: float  # measured model load + warm-up; 0 until measured
    measured: bool

    @property
    def jobs(self) -> int:
        return self.queued + self.running

    @property
    def seconds(self) -> float:
        return self.jobs * self.seconds_per_job


@dataclass(frozen=True, slots=True)
class PoolBacklog:
    """A pool's backlog: per model, and summed as the scaling signal."""

    models: tuple[ModelBacklog, ...]

    @property
    def jobs(self) -> int:
        return sum(m.jobs for m in self.models)

    @property
    def queued(self) -> int:
        return sum(m.queued for m in self.models)

    @property
    def running(self) -> int:
        return sum(m.running for m in self.models)

    @property
    def cold_start_s(self) -> float:
        return max((m.cold_start_s for m in self.models), default=0.0)

    @property
    def seconds(self) -> float:
        """Seconds of work for one process, with the cold start while anything waits."""
        work = sum(m.seconds for m in self.models)
        return work + (self.cold_start_s if self.jobs else 0.0)


@dataclass(frozen=True, slots=True)
class ServiceStat:
    """One process's measurement of one model: jobs finished, busy seconds, load time."""

    worker: str
    model: str
    pool: str
    jobs: float  # decayed: recent jobs weigh more
    busy_s: float
    cold_start_s: float | None


def _literal_list(models: Sequence[str]) -> str:
    if not models:
        raise ConfigError("a backlog query needs at least one model or op")
    for name in models:
        if not _NAME.match(name):
            raise ConfigError(f"model name {name!r} cannot be put in a backlog query")
    return ", ".join(f"'{name}'" for name in sorted(set(models)))


def _per_model_sql(models: Sequence[str], default_seconds_per_job: float) -> str:
    """One row per model that has work waiting: queued, running, seconds per job, cold start.
    ``finished_at IS NULL`` (true of every queued or running row, of no other) is what lets it
    read ``ix_jobs_unfinished``, the index of those rows only (migration 0009)."""
    return f"""
WITH backlog AS (
    SELECT CASE WHEN position('>' IN jobs.target) > 0
                THEN jobs.params -> 'steps' -> (jobs.step::int) ->> 'target'
                ELSE jobs.target END AS model,
           count(*) FILTER (WHERE jobs.status = 'queued') AS queued,
           count(*) FILTER (WHERE jobs.status = 'running') AS running
    FROM jobs
    WHERE jobs.finished_at IS NULL AND jobs.status IN ('queued', 'running')
    GROUP BY 1
), speed AS (
    SELECT model, sum(busy_s) / nullif(sum(jobs), 0) AS seconds_per_job,
           max(cold_start_s) AS cold_start_s
    FROM worker_stats
    WHERE updated_at > now() - interval '{STATS_FRESH_S} seconds'
    GROUP BY model
)
SELECT backlog.model, backlog.queued, backlog.running,
       coalesce(speed.seconds_per_job, {float(default_seconds_per_job)!r}) AS seconds_per_job,
       coalesce(speed.cold_start_s, 0.0) AS cold_start_s,
       speed.seconds_per_job IS NOT NULL AS measured
FROM backlog LEFT JOIN speed ON speed.model = backlog.model
WHERE backlog.model IN ({_literal_list(models)})"""


def keda_query(models: Sequence[str], default_seconds_per_job: float) -> str:
    """The pool's backlog in seconds of one worker process, as one number: what KEDA's
    ``postgresql`` trigger runs (``targetQueryValue`` = the seconds one worker should have
    ahead of it; KEDA asks for ceil(value / target) replicas). Literals only: KEDA passes no
    parameters."""
    inner = _per_model_sql(models, default_seconds_per_job).strip()
    return (
        "SELECT coalesce(sum((m.queued + m.running) * m.seconds_per_job), 0)"
        " + CASE WHEN coalesce(sum(m.queued + m.running), 0) > 0"
        " THEN coalesce(max(m.cold_start_s), 0) ELSE 0 END AS backlog_seconds"
        f" FROM ({inner}) AS m"
    )


RECORD = text(
    """
    INSERT INTO worker_stats (worker, model, pool, jobs, busy_s, cold_start_s, updated_at)
    SELECT s.worker, s.model, s.pool, s.jobs, s.busy_s, s.cold_start_s, now()
    FROM unnest(CAST(:workers AS text[]), CAST(:models AS text[]), CAST(:pools AS text[]),
                CAST(:jobs AS double precision[]), CAST(:busy AS double precision[]),
                CAST(:cold AS double precision[]))
         AS s(worker, model, pool, jobs, busy_s, cold_start_s)
    ON CONFLICT (worker, model) DO UPDATE SET
        jobs = EXCLUDED.jobs, busy_s = EXCLUDED.busy_s, pool = EXCLUDED.pool,
        cold_start_s = coalesce(EXCLUDED.cold_start_s, worker_stats.cold_start_s),
        updated_at = now()
    """
)


class BacklogStore:
    """Reads the backlog and writes the workers' measurements (shares the job store's engine)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _begin(self) -> AbstractContextManager[Connection]:
        return transaction(self.engine)

    def backlog(self, models: Sequence[str], default_seconds_per_job: float) -> PoolBacklog:
        """Queued and running jobs of ``models`` with their measured speed (one query)."""
        with self._begin() as connection:
            rows = connection.execute(
                text(_per_model_sql(models, default_seconds_per_job))).all()
        found = {row.model: ModelBacklog(row.model, int(row.queued), int(row.running),
                                         float(row.seconds_per_job), float(row.cold_start_s),
                                         bool(row.measured))
                 for row in rows}
        return PoolBacklog(tuple(found[m] for m in sorted(found)))

    def backlog_seconds(self, models: Sequence[str], default_seconds_per_job: float) -> float:
        """What ``keda_query`` returns."""
        with self._begin() as connection:
            value = connection.execute(
                text(keda_query(models, default_seconds_per_job))).scalar_one()
        return float(value)

    def running_by_worker(self) -> dict[str, int]:
        """Running jobs per worker runtime name (to stop idle workers first)."""
        with self._begin() as connection:
            rows = connection.execute(text(
                "SELECT worker, count(*) AS n FROM jobs WHERE finished_at IS NULL "
                "AND status = 'running' AND worker IS NOT NULL GROUP BY worker")).all()
        return {row.worker: int(row.n) for row in rows}

    def record(self, stats: Sequence[ServiceStat]) -> None:
        """Upsert processes' measurements (one statement)."""
        if not stats:
            return
        with self._begin() as connection:
            connection.execute(RECORD, {
                "workers": [s.worker for s in stats], "models": [s.model for s in stats],
                "pools": [s.pool for s in stats], "jobs": [s.jobs for s in stats],
                "busy": [s.busy_s for s in stats], "cold": [s.cold_start_s for s in stats],
            })

    def prune_stats(self, older_than_s: float = STATS_FRESH_S) -> int:
        """Delete measurements of processes that stopped writing them."""
        with self._begin() as connection:
            result = connection.execute(text(
                "DELETE FROM worker_stats WHERE updated_at < now() - make_interval(secs => :s)"
            ), {"s": older_than_s})
        return int(result.rowcount or 0)
