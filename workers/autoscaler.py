"""``aidist autoscale``: a foreground supervisor that keeps a pool's ``aidist worker`` processes on
this host at what the backlog needs.

Every ``AIDIST_AUTOSCALE_POLL_S`` it reads the pool's backlog from Postgres (``db.backlog``: jobs,
not messages, and seconds at the speed the workers measured), asks ``workers.scaling.Scaler`` how
many workers that needs, and starts or stops workers to match, with one log line per change. It
starts workers as an operator would (``aidist worker --pool P``, each with its own node name),
and stops them drain-safe: the idle ones first (no running job in Postgres), each with SIGTERM, so
a worker finishes or requeues what it holds (no job lost, no attempt burned). A worker that dies
on its own is replaced on the next decision. SIGTERM to the supervisor stops every worker it
started the same way and waits for them, leaving no process behind.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Gauge

from aidist.config import Settings
from aidist.errors import AidistError, ConfigError
from aidist.processes import children_of
from db import JobStore, ResultCache
from db.backlog import BacklogStore, PoolBacklog
from db.interfaces import ResultCacheLike
from models import build_registry
from workers.app import pool_targets
from workers.metrics_http import serve_metrics
from workers.scaling import Decision, ScalePolicy, Scaler

log = logging.getLogger("aidist.autoscale")
STOP_GRACE_S = 120.0  # a worker told to stop gets this long to drain before SIGKILL


@dataclass
class ManagedWorker:
    """One ``aidist worker`` process this supervisor started."""

    node: str
    process: subprocess.Popen[bytes]
    started_at: float
    ready_at: float | None = None
    stopping_since: float | None = None

    @property
    def pid(self) -> int:
        return self.process.pid


@dataclass
class ScalingMetrics:
    """The supervisor's gauges, in a registry of their own (served at ``/metrics``)."""

    pool: str
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        labels = ["pool"]
        self.backlog_jobs = Gauge("aidist_backlog_jobs", "Queued and running jobs of the pool",
                                  labels, registry=self.registry)
        self.backlog_seconds = Gauge(
            "aidist_backlog_seconds", "Seconds of work the backlog is for one worker, at the "
            "measured speed, with a first worker's cold start", labels, registry=self.registry)
        self.desired = Gauge("aidist_desired_workers", "Workers the backlog needs", labels,
                             registry=self.registry)
        self.workers = Gauge("aidist_workers", "Workers running (not stopping)", labels,
                             registry=self.registry)
        self.ready = Gauge("aidist_workers_ready", "Workers running that have loaded their "
                           "models and consume", labels, registry=self.registry)
        for gauge in (self.backlog_jobs, self.backlog_seconds, self.desired, self.workers,
                      self.ready):
            gauge.labels(self.pool).set(0)  # present from the first scrape on

    def show(self, backlog: PoolBacklog, decision: Decision, running: list[ManagedWorker]
             ) -> None:
        self.backlog_jobs.labels(self.pool).set(backlog.jobs)
        self.backlog_seconds.labels(self.pool).set(backlog.seconds)
        self.desired.labels(self.pool).set(decision.desired)
        self.workers.labels(self.pool).set(len(running))
        self.ready.labels(self.pool).set(sum(1 for w in running if w.ready_at is not None))


class Autoscaler:
    """The supervisor loop of one pool on this host."""

    def __init__(self, settings: Settings, *, pool: str, scaler: Scaler, models: Sequence[str],
                 backlog: BacklogStore, presences: ResultCacheLike,
                 worker_args: Sequence[str] = (), metrics: ScalingMetrics | None = None) -> None:
        self.settings = settings
        self.pool = pool
        self.scaler = scaler
        self.models = list(models)
        self.backlog = backlog
        self.presences = presences
        self.worker_args = list(worker_args)
        self.metrics = metrics
        self.workers: list[ManagedWorker] = []
        self.host = socket.gethostname()
        self._stop = threading.Event()
        self._last: tuple[int, int] | None = None

    # -- the loop ---------------------------------------------------------------------------------

    def run(self) -> None:
        """Decide and act every poll until ``stop()``; then stop every worker and wait."""
        log.info("autoscaling pool %s (%s) between %d and %d workers, target %gs of backlog "
                 "each", self.pool, ",".join(self.models), self.scaler.policy.min_workers,
                 self.scaler.policy.max_workers, self.scaler.policy.target_seconds)
        try:
            while not self._stop.is_set():
                try:
                    self.step(time.monotonic())
                except AidistError as exc:  # a service briefly down: keep the workers, retry
                    log.warning("cannot read the backlog now (%s); keeping %d workers", exc,
                                len(self.running()))
                self._stop.wait(self.settings.autoscale_poll_s)
        finally:
            self.shutdown()

    def stop(self) -> None:
        """Ask the loop to end (safe in a signal handler)."""
        self._stop.set()

    def step(self, now: float) -> Decision:
        """One reading, one decision, the starts and stops it asks for."""
        self._reap(now)
        self._notice_ready(now)
        backlog = self.backlog.backlog(self.models, self.settings.autoscale_seconds_per_job)
        running = self.running()
        decision = self.scaler.decide(now, backlog, len(running))
        if decision.desired != len(running) or self._last is None:
            log.info("pool %s: %s: %d -> %d workers (backlog %.1fs, cold start %.1fs)",
                     self.pool, decision.reason, len(running), decision.desired,
                     backlog.seconds, backlog.cold_start_s)
        self._last = (len(running), decision.desired)
        if decision.desired > len(running):
            for _ in range(decision.desired - len(running)):
                self._start(now)
        elif decision.desired < len(running):
            for worker in self._idlest(running)[: len(running) - decision.desired]:
                self._stop_worker(worker, now)
        if self.metrics is not None:
            self.metrics.show(backlog, decision, self.running())
        return decision

    def running(self) -> list[ManagedWorker]:
        """Workers started and not told to stop."""
        return [w for w in self.workers if w.stopping_since is None]

    # -- starting and stopping --------------------------------------------------------------------

    def _start(self, now: float) -> ManagedWorker:
        taken = {w.node for w in self.workers}
        slot = next(i for i in range(1, len(taken) + 2)
                    if f"{self.pool}-auto{i}@{self.host}" not in taken)
        node = f"{self.pool}-auto{slot}@{self.host}"
        command = [sys.executable, "-m", "aidist.cli", "worker", "--pool", self.pool,
                   "--hostname", node, "--models", ",".join(self.models), *self.worker_args]
        env = {**os.environ, **self.settings.as_env()}
        # One metrics port per host: the workers it starts would all try the same one.
        env.pop("AIDIST_WORKER_METRICS_PORT", None)
        process = subprocess.Popen(command, env=env)
        worker = ManagedWorker(node, process, now)
        self.workers.append(worker)
        log.info("started worker %s (pid %d)", node, process.pid)
        return worker

    def _idlest(self, running: list[ManagedWorker]) -> list[ManagedWorker]:
        """Workers by the jobs they run now (Postgres), fewest first; newest first on a tie
        (a worker still loading has nothing in hand)."""
        busy = self.backlog.running_by_worker()
        def load(worker: ManagedWorker) -> int:
            pids = {worker.pid} | children_of(worker.pid)
            return sum(count for name, count in busy.items()
                       if _pid_of(name) in pids and name.startswith(f"{worker.node}:"))
        return sorted(running, key=lambda w: (load(w), -w.started_at))

    def _stop_worker(self, worker: ManagedWorker, now: float) -> None:
        log.info("stopping worker %s (pid %d): SIGTERM, it drains what it holds", worker.node,
                 worker.pid)
        worker.stopping_since = now
        if worker.process.poll() is None:
            worker.process.send_signal(signal.SIGTERM)

    def _reap(self, now: float) -> None:
        """Forget workers that exited; SIGKILL one that overstays its drain."""
        for worker in list(self.workers):
            code = worker.process.poll()
            if code is None:
                if worker.stopping_since is not None and now - worker.stopping_since > STOP_GRACE_S:
                    log.error("worker %s did not stop within %.0fs: SIGKILL", worker.node,
                              STOP_GRACE_S)
                    worker.process.kill()
                continue
            self.workers.remove(worker)
            if worker.stopping_since is None:
                log.error("worker %s exited on its own (code %s); it will be replaced if the "
                          "backlog still needs it", worker.node, code)
            else:
                log.info("worker %s stopped (code %s) after %.1fs", worker.node, code,
                         now - worker.stopping_since)

    def _notice_ready(self, now: float) -> None:
        waiting = [w for w in self.workers if w.ready_at is None and w.stopping_since is None]
        if not waiting:
            return
        announced = {str(p.get("node")): p for p in self.presences.presences()}
        for worker in waiting:
            presence = announced.get(worker.node)
            if presence is not None and presence.get("ready"):
                worker.ready_at = now
                log.info("worker %s ready %.1fs after its start", worker.node,
                         now - worker.started_at)

    def shutdown(self) -> None:
        """Stop every worker (SIGTERM, drain) and wait for all of them."""
        now = time.monotonic()
        for worker in self.running():
            self._stop_worker(worker, now)
        deadline = time.monotonic() + STOP_GRACE_S
        for worker in list(self.workers):
            left = max(deadline - time.monotonic(), 0.1)
            try:
                worker.process.wait(timeout=left)
            except subprocess.TimeoutExpired:
                log.error("worker %s did not stop in time: SIGKILL", worker.node)
                worker.process.kill()
                worker.process.wait()
            self.workers.remove(worker)
        log.info("autoscaler for pool %s stopped; no worker left", self.pool)


def _pid_of(runtime_name: str) -> int:
    """The pid inside a runtime name ``node:pid:token`` (0 if it has none)."""
    parts = runtime_name.split(":")
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else 0


def run_autoscaler(settings: Settings, *, pool: str, models: Sequence[str] | None,
                   policy: ScalePolicy, worker_args: Sequence[str] = (),
                   metrics_port: int | None = None, metrics_host: str = "127.0.0.1",
                   no_auth: bool = False) -> None:
    """``aidist autoscale``: run the supervisor in the foreground until SIGTERM or SIGINT."""
    logging.basicConfig(level=logging.INFO,
                        format="[%(asctime)s: %(levelname)s/autoscale] %(message)s")
    registry = build_registry(settings.plugins, max_input_chars=settings.max_input_chars)
    targets = pool_targets(registry, pool, list(models) if models else None)
    if not targets:
        raise ConfigError(f"no model or op to serve in pool {pool!r} (models={models})")
    metrics = ScalingMetrics(pool)
    server = None
    if metrics_port is not None:
        server = serve_metrics(metrics.registry, host=metrics_host, port=metrics_port,
                               credentials=settings.metrics_basic_auth, no_auth=no_auth)
    store = JobStore.connect(settings.database_url, settings.connect_timeout_s)
    cache = ResultCache.connect(settings.redis_url, settings.namespace,
                                settings.connect_timeout_s)
    scaler = Autoscaler(settings, pool=pool, scaler=Scaler(policy), models=targets,
                        backlog=BacklogStore(store.engine), presences=cache,
                        worker_args=worker_args, metrics=metrics)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: scaler.stop())
    try:
        scaler.run()
    finally:
        if server is not None:
            server.close()
        store.close()
        cache.close()
