"""Starting a worker the way ``aidist worker`` does: pick the queues of a pool, wait for the
services (declaring the dead-letter topology), build the app, hand over to Celery's worker main
loop."""

from __future__ import annotations

import atexit
import logging
import os
from contextlib import suppress

from celery.signals import worker_ready, worker_shutting_down

from aidist.config import Settings
from aidist.errors import AidistError, ConfigError
from aidist.transport import Publisher
from db import JobStore, ResultCache
from db.blobs import open_blob_store_for
from db.retention import JobPruner, blob_deleter
from models import build_registry
from workers.alive import AliveMarks
from workers.app import batch_policy, create_app, pool_targets, queues_for
from workers.hooks import Hooks, WorkerHook
from workers.logs import configure_logging
from workers.metrics import WorkerEndpoint, WorkerMetrics
from workers.periodic import PeriodicDuty
from workers.presence import WorkerPresence, claim_node_name
from workers.runtime import RuntimeHolder
from workers.service_times import ServiceTimes
from workers.startup import wait_for_services
from workers.sweeper import sweeper
from workers.task_events import TaskEvents
from workers.watchdog import Watchdog

POOLS = ("gpu", "cpu")
log = logging.getLogger("aidist.worker")


def worker_argv(pool: str, queues: list[str], concurrency: int, hostname: str,
                loglevel: str, *, quiet: bool = False) -> list[str]:
    """Celery worker arguments: the GPU pool is one solo process (no fork, so CUDA is initialised
    only in the process that uses it); the CPU pool forks ``concurrency`` children."""
    argv = [*(["--quiet"] if quiet else []), "worker", "-Q", ",".join(queues), "-n", hostname,
            "--loglevel", loglevel, "--without-gossip", "--without-mingle"]
    if pool == "gpu":
        # -c 1: Celery multiplies the prefetch by the concurrency, which a solo pool otherwise
        # takes as the core count (512 unacked messages on 2 cores, 4,096 on 16, not the
        # AIDIST_BATCH_PREFETCH of 256 the settings say).
        argv += ["-P", "solo", "-c", "1"]
    else:
        argv += ["-P", "prefork", "-c", str(concurrency)]
    return argv


def default_hooks(settings: Settings, pool: str, presence: WorkerPresence,
                  metrics: WorkerMetrics | None = None) -> list[WorkerHook]:
    """Every cross-cutting duty of a worker, in the order they run: in each process that runs
    jobs, the alive mark, the job time limit, the service times (the autoscaler's speed
    figures) and, where the worker serves them, the Prometheus metrics; for batched messages,
    Flower's task events; in the worker's main process, the presence heartbeat and the outbox
    sweeper (which also prunes finished jobs past their retention)."""
    store = JobStore.connect(settings.database_url, settings.connect_timeout_s)
    return [
        AliveMarks(),
        Watchdog(settings.job_time_limit_s),
        ServiceTimes(settings, pool),
        *([metrics] if metrics is not None else []),
        TaskEvents(),
        PeriodicDuty("aidist-presence", presence.beat, retry_s=1.0),
        sweeper(settings, store, Publisher(settings.broker_url, settings.namespace,
                                           settings.connect_timeout_s).publish,
                JobPruner(store.engine, blob_deleter(open_blob_store_for(settings)))),
    ]


def openmp_wait(batch_threads: int) -> tuple[str, str]:
    """How torch's OpenMP threads wait between operators in a gpu worker (an environment
    variable and its value; one the environment sets already wins).

    Where every model call uses a torch thread per core (a GPU, or a model that is not
    thread_safe), those threads share the cores with the consumer, the broker and the
    databases: spinning while they wait for a core steals it from them (measured: +15-25%
    single-message on 2 cores with passive waiting, at ~20% of the model's own speed), so they
    sleep at once (``OMP_WAIT_POLICY=PASSIVE``). Where calls run side by side with one torch
    thread each, the only OpenMP threads are those of the thread that runs lone batches
    (``WorkerRuntime._pool``), at low load: sleeping at once there made a lone job pay a
    wake-up at every operator, as slow on two threads as on one. They spin briefly
    (``GOMP_SPINCOUNT``: 10,000 turns, well under a millisecond), which spans the gaps between
    operators but not the idle time after the batch (measured on 2 cores, one minilm sentence
    10 ms apart: 13.2-15.1 ms and 25.0-29.6 ms of CPU per job, against 18.0-19.1 ms and
    24.6-25.9 ms passive, and 15.5-17.3 ms but 38-41 ms of CPU with libgomp's default spin)."""
    if batch_threads > 1:
        return "GOMP_SPINCOUNT", "10000"
    return "OMP_WAIT_POLICY", "PASSIVE"


def load_models(settings: Settings, holder: RuntimeHolder, targets: list[str]
                ) -> tuple[list[str], dict[str, str]]:
    """Load and warm up a gpu worker's models in this process, before it consumes: (the ready
    ones, the ones that failed with their errors). A model that failed leaves its queue to
    workers that can run it."""
    runtime = holder.get()
    name, value = openmp_wait(runtime.batch_threads)
    os.environ.setdefault(name, value)  # before torch loads: OpenMP reads it once
    runtime.warm(targets)
    not_ready = {t: runtime.load_errors[t] for t in targets if t in runtime.load_errors}
    ready = [t for t in targets if t not in not_ready]
    for target, error in not_ready.items():
        log.error("not ready for %s: %s; its jobs wait for a worker that can run them, or "
                  "fail with this error after %.0fs", target, error,
                  settings.load_failure_grace_s)
    if not ready:
        raise ConfigError(f"no model of pool gpu could load here: {not_ready}")
    return ready, not_ready


def run_worker(settings: Settings, *, pool: str, models: list[str] | None = None,
               concurrency: int | None = None, device: str | None = None,
               dtype: str | None = None, hostname: str | None = None,
               loglevel: str = "info", metrics_port: int | None = None,
               metrics_host: str = "127.0.0.1", no_auth: bool = False) -> None:
    """Run a worker in this process until it is told to stop (SIGTERM: warm shutdown); with a
    metrics port (or ``AIDIST_WORKER_METRICS_PORT``), serving ``/metrics`` and ``/healthz``."""
    if pool not in POOLS:
        raise ConfigError(f"pool must be one of {POOLS}, got {pool!r}")
    if pool == "gpu" and concurrency not in (None, 1):
        raise ConfigError("a gpu pool worker is one process per device: start one per --device")
    registry = build_registry(settings.plugins, max_input_chars=settings.max_input_chars)
    targets = pool_targets(registry, pool, models)
    if not targets:
        raise ConfigError(f"no model or op to serve in pool {pool!r} (models={models})")
    # Celery sets up logging only once its worker starts; model loading and waits come first.
    configure_logging(settings.log_format, loglevel)
    port = metrics_port if metrics_port is not None else settings.worker_metrics_port
    endpoint = None
    if port is not None:  # before any metric exists and before Celery forks (workers.multiproc)
        endpoint = WorkerEndpoint.start(settings, pool=pool, targets=targets, host=metrics_host,
                                        port=port, no_auth=no_auth)
        atexit.register(endpoint.close)
    # A supervisor may start this worker while a service restarts: wait for them (this also
    # declares the dead-letter topology), bounded by AIDIST_WORKER_STARTUP_WAIT_S.
    wait_for_services(settings)
    placement = device or settings.device
    cache = ResultCache.connect(settings.redis_url, settings.namespace, settings.connect_timeout_s)
    node = hostname or claim_node_name(cache, pool, settings.namespace)
    presence = WorkerPresence(
        settings,
        cache,
        node=node, pool=pool, device=placement if pool == "gpu" else "cpu",
        queue_of=dict(zip(targets, queues_for(settings, registry, targets), strict=True)),
        # late-bound: the app exists by the time a grace period ends
        consume=lambda queue: app.control.add_consumer(queue, destination=[node], reply=False),
    )
    hooks = Hooks(default_hooks(settings, pool, presence,
                                endpoint.metrics if endpoint is not None else None))
    holder = RuntimeHolder(settings, device=placement, dtype=dtype, node=node,
                           targets=targets if pool == "gpu" else (), hooks=hooks)
    ready, not_ready = (load_models(settings, holder, targets) if pool == "gpu"
                        else (targets, {}))
    presence.serving(ready, not_ready)
    batching = (batch_policy(settings, registry, ready, holder.get().batch_threads)
                if pool == "gpu" else None)
    app = create_app(settings, registry, holder, warm_targets=ready, batching=batching)
    worker_ready.connect(lambda **_: hooks.worker_started(), weak=False)
    worker_shutting_down.connect(lambda **_: hooks.worker_stopping(), weak=False)
    workers = concurrency or os.cpu_count() or 1
    try:
        app.worker_main(worker_argv(pool, queues_for(settings, registry, ready), workers, node,
                                    loglevel, quiet=settings.log_format == "json"))
    finally:
        with suppress(AidistError):  # the name frees itself in seconds anyway
            cache.drop_presence(node)
