"""A worker's Prometheus metrics: what its flushes did, recorded by a hook in every process that
runs jobs, and served from the worker's main process at ``/metrics`` (with ``/healthz``).

The cpu pool is a Celery prefork worker: its jobs run in forked children, and a scrape reaches
the parent. So every worker runs prometheus-client in multiprocess mode: each process writes its
values to files of its own (by pid) in a directory that belongs to this worker alone, and the
parent's scrape adds them up (``MultiProcessCollector``). A registry per child would show 1/N of
the work, a different 1/N each scrape. The solo gpu pool takes the same path (one process).

What the series mean (``exported_series()`` lists their names):

- ``aidist_jobs_total{pool,target,status}``: the terminal states this worker recorded: succeeded
  and failed runs, jobs the claim found past their deadline (expired) or out of attempts
  (failed), jobs cancelled while claimed here. A job coalesced onto an identical running one
  ends with its leader's finish, uncounted here (``aidist_jobs_coalesced_total`` counts them).
- ``aidist_job_run_seconds{pool,target}``: per job that ended in a flush, the wall time of that
  flush, from its claim to its commit (what the row's ``started_at`` .. ``finished_at`` spans).
- ``aidist_job_queue_wait_seconds{pool,target}``: per first claim (step 0, attempt 1), the time
  from the row's insert to the claim, both on Postgres's clock (``Claim.queued_s``).
- ``aidist_batch_size{target}``: per flush and target, the jobs it ran through that model (cache
  hits excluded): the batch the batcher gathered, before the model splits it into its calls.
- ``aidist_cache_hits_total{target}`` / ``aidist_cache_misses_total{target}``: claimed jobs that
  took a result another run had stored meanwhile / that ran their model.
- ``aidist_jobs_coalesced_total``; ``aidist_job_retries_total`` (claims that started a new
  attempt after an earlier one); ``aidist_dead_lettered_total``: jobs given up for the dead-letter
  queue: out of attempts, or with no row at all (never run blind). A poison message (one with no
  readable job) never reaches a flush: RabbitMQ's ``{namespace}.dead`` queue counts those.
- ``aidist_model_load_seconds{target}``: the slowest load and warm-up among the live processes.
- ``aidist_worker_ready{target}``: 1 while the worker consumes and every process that runs jobs
  has the target warm (what ``/healthz`` answers 200 for).
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter as Tally
from collections.abc import Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from aidist.config import Settings
from aidist.jobs import JobEntry, JobStatus
from workers.hooks import BatchReport, Flush, ProcessView, WorkerHook
from workers.metrics_http import MetricsServer, serve_metrics
from workers.multiproc import MetricsDir

# From 5 ms (a normalize) to 30 min (past the job time limit): not the web defaults, which end
# at 10 s.
SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   120.0, 300.0, 600.0, 1200.0, 1800.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
READY = "aidist_worker_ready"
STATUSES = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.EXPIRED)
UNKNOWN_TARGET = "unknown"  # a malformed entry that still named its job: no target to read


class WorkerMetrics(WorkerHook):
    """Records each flush's report. The metric objects live in ``registry`` (read it directly
    in one process); in multiprocess mode their values also go to the worker's files."""

    def __init__(self, pool: str, targets: Sequence[str] = (), *,
                 directory: MetricsDir | None = None,
                 registry: CollectorRegistry | None = None) -> None:
        self.pool = pool
        self.targets = tuple(targets)
        self.directory = directory
        self.registry = registry if registry is not None else CollectorRegistry()
        self.consuming = False  # set in the main process (Celery's worker_ready)
        self.stopping = False
        self._started: dict[int, float] = {}
        self._lock = threading.Lock()
        at = self.registry
        self.jobs = Counter("aidist_jobs_total", "Jobs this worker ended, by terminal status",
                            ["pool", "target", "status"], registry=at)
        self.run_seconds = Histogram(
            "aidist_job_run_seconds", "Per job ended: wall time of its flush, claim to commit",
            ["pool", "target"], buckets=SECONDS_BUCKETS, registry=at)
        self.queue_wait = Histogram(
            "aidist_job_queue_wait_seconds", "Per first claim: seconds from insert to claim",
            ["pool", "target"], buckets=SECONDS_BUCKETS, registry=at)
        self.batch_size = Histogram(
            "aidist_batch_size", "Per flush and target: jobs it ran through the model",
            ["target"], buckets=BATCH_BUCKETS, registry=at)
        self.hits = Counter("aidist_cache_hits_total", "Claimed jobs that took a stored result",
                            ["target"], registry=at)
        self.misses = Counter("aidist_cache_misses_total", "Claimed jobs that ran their model",
                              ["target"], registry=at)
        self.coalesced = Counter("aidist_jobs_coalesced_total",
                                 "Jobs that took the end of an identical running job",
                                 registry=at)
        self.retries = Counter("aidist_job_retries_total",
                               "Claims that started a new attempt after an earlier one",
                               registry=at)
        self.dead_lettered = Counter(
            "aidist_dead_lettered_total",
            "Jobs given up for the dead-letter queue: out of attempts, or with no row",
            registry=at)
        # livemax: a child that exits (or is SIGKILLed and reaped) takes its value with it, so
        # the figure is the live processes' slowest cold start, never a dead one's.
        self.load_seconds = Gauge("aidist_model_load_seconds",
                                  "Model load and warm-up, slowest of the live processes",
                                  ["target"], multiprocess_mode="livemax", registry=at)
        for target in self.targets:  # present from the first scrape on, at 0
            for status in STATUSES:
                self.jobs.labels(pool, target, status.value)
            self.run_seconds.labels(pool, target)
            self.queue_wait.labels(pool, target)
            self.batch_size.labels(target)
            self.hits.labels(target)
            self.misses.labels(target)

    # -- main process -----------------------------------------------------------------------------

    def worker_started(self) -> None:
        self.consuming = True

    def worker_stopping(self) -> None:
        self.stopping = True

    # -- each process that runs jobs --------------------------------------------------------------

    def process_started(self, process: ProcessView) -> None:
        if self.directory is not None:  # a reused pid must not inherit a dead process's gauges
            self.directory.forget(os.getpid())

    def model_loaded(self, target: str, seconds: float) -> None:
        self.load_seconds.labels(target).set(seconds)

    def flush_started(self, flush: Flush) -> None:
        with self._lock:
            self._started[flush.token] = time.monotonic()

    def flush_ended(self, flush: Flush, report: BatchReport | None) -> None:
        now = time.monotonic()
        with self._lock:
            started = self._started.pop(flush.token, now)
        if report is not None:  # a flush that raised ended nothing: its messages go back
            self.record(flush, report, now - started)

    def record(self, flush: Flush, report: BatchReport, seconds: float) -> None:
        """Count one flush's report; ``seconds`` is its wall time."""
        entries: dict[str, JobEntry] = {}
        for entry in flush.entries:
            entries.setdefault(entry.id, entry)

        def target(job_id: str) -> str:
            found = entries.get(job_id)
            return found.target if found is not None else UNKNOWN_TARGET

        ended = {outcome.id for outcome in report.outcomes}
        for outcome in report.outcomes:
            self.jobs.labels(self.pool, target(outcome.id), outcome.status.value).inc()
            self.run_seconds.labels(self.pool, target(outcome.id)).observe(seconds)
        for claim in report.claims:
            claimed = entries.get(claim.id)
            if claimed is None:
                continue
            if claimed.step == 0 and claim.attempt == 1:
                self.queue_wait.labels(self.pool, claimed.target).observe(claim.queued_s)
            if claim.status is JobStatus.RUNNING and claim.attempt > max(claimed.attempt, 1):
                self.retries.inc()  # a later step carries its attempt: only a new one counts
            if claim.follows is None and claim.id not in ended and claim.status in (
                    JobStatus.EXPIRED, JobStatus.FAILED):  # ended by the claim itself
                self.jobs.labels(self.pool, claimed.target, claim.status.value).inc()
        for job_id in report.cancelled_ids:
            self.jobs.labels(self.pool, target(job_id), JobStatus.CANCELLED.value).inc()
        for name, count in Tally(target(i) for i in report.from_cache).items():
            self.hits.labels(name).inc(count)
        for name, count in Tally(target(i) for i in report.computed).items():
            self.misses.labels(name).inc(count)
            self.batch_size.labels(name).observe(count)
        if report.coalesced:
            self.coalesced.inc(report.coalesced)
        if report.gave_up or report.missing:
            self.dead_lettered.inc(len(report.gave_up) + len(report.missing))


class Readiness:
    """``/healthz`` and ``aidist_worker_ready``, worked out at each request in the main process:
    the worker consumes (Celery's ``worker_ready``, not stopping) and every process that runs
    jobs (the prefork children, or the solo process itself) has loaded and warmed each target.
    What a process has loaded is read from its own ``aidist_model_load_seconds`` file."""

    def __init__(self, metrics: WorkerMetrics, directory: MetricsDir, *, prefork: bool) -> None:
        self.metrics = metrics
        self.directory = directory
        self.prefork = prefork

    def warm(self) -> dict[int, set[str]]:
        """Targets loaded, per process that runs jobs now."""
        pids = self.directory.children() if self.prefork else {os.getpid()}
        return {pid: self.directory.loaded(pid, "aidist_model_load_seconds") for pid in pids}

    def check(self) -> tuple[bool, str]:
        """(ready, why): what ``/healthz`` answers."""
        ready, reason = self._state()
        return all(ready.values()) and bool(ready), reason

    def _state(self) -> tuple[dict[str, bool], str]:
        targets = self.metrics.targets
        if self.metrics.stopping:
            return dict.fromkeys(targets, False), "stopping (warm shutdown)"
        if not self.metrics.consuming:
            return dict.fromkeys(targets, False), "starting: loading models, not consuming yet"
        warm = self.warm()
        if not warm:
            return dict.fromkeys(targets, False), "no process runs jobs yet"
        cold = {t: sorted(pid for pid, loaded in warm.items() if t not in loaded)
                for t in targets}
        ready = {t: not pids for t, pids in cold.items()}
        if all(ready.values()):
            return ready, f"consuming; {', '.join(targets)} warm in {len(warm)} process(es)"
        return ready, "not warm: " + "; ".join(
            f"{t} (pid {', '.join(map(str, pids))})" for t, pids in cold.items() if pids)

    def collect(self) -> Iterable[Metric]:
        ready, _ = self._state()
        family = GaugeMetricFamily(READY, "1 while the worker consumes with the target warm "
                                   "in every process that runs jobs", labels=["target"])
        for target, up in ready.items():
            family.add_metric([target], 1.0 if up else 0.0)
        yield family


class _Scrape:
    """What a scrape of the worker collects: every process's files, then readiness."""

    def __init__(self, directory: MetricsDir, readiness: Readiness) -> None:
        self.directory = directory
        self.readiness = readiness

    def collect(self) -> Iterable[Metric]:
        yield from self.directory.collect()
        yield from self.readiness.collect()


class WorkerEndpoint:
    """A worker's ``/metrics`` and ``/healthz``: the multiprocess directory, the hook that
    records into it, and the server (a daemon thread of the main process)."""

    def __init__(self, directory: MetricsDir, metrics: WorkerMetrics, server: MetricsServer
                 ) -> None:
        self.directory = directory
        self.metrics = metrics
        self.server = server

    @classmethod
    def start(cls, settings: Settings, *, pool: str, targets: Sequence[str], host: str,
              port: int, no_auth: bool = False) -> WorkerEndpoint:
        """Turn multiprocess mode on (before the hook's metrics exist and before Celery forks),
        then serve; basic auth from ``AIDIST_METRICS_BASIC_AUTH``, ``no_auth`` on loopback."""
        directory = MetricsDir.create()
        try:
            metrics = WorkerMetrics(pool, targets, directory=directory)
            readiness = Readiness(metrics, directory, prefork=pool == "cpu")
            registry = CollectorRegistry()
            registry.register(_Scrape(directory, readiness))
            server = serve_metrics(registry, host=host, port=port,
                                   credentials=settings.metrics_basic_auth, no_auth=no_auth,
                                   healthy=readiness.check)
        except BaseException:
            directory.close()
            raise
        return cls(directory, metrics, server)

    def close(self) -> None:
        """Stop serving and remove the directory (a no-op in a forked child)."""
        if os.getpid() == self.directory.owner:
            self.server.close()
        self.directory.close()


def series_names(registry: CollectorRegistry) -> set[str]:
    """The names a registry's metrics are scraped under (a counter's with ``_total``; a
    histogram's base name, without ``_bucket``/``_sum``/``_count``)."""
    return {f"{m.name}_total" if m.type == "counter" else m.name for m in registry.collect()}


def exported_series() -> set[str]:
    """Every series name a worker's ``/metrics`` serves (for the dashboard and alert checks)."""
    return series_names(WorkerMetrics("gpu").registry) | {READY}
