"""Starting a worker the way ``aidist worker`` does: pick the queues of a pool, wait for the
services (declaring the dead-letter topology), build the app, hand over to Celery's worker main
loop."""

from __future__ import annotations

import logging
import os
import socket

from celery.signals import worker_ready, worker_shutting_down

from aidist.config import Settings
from aidist.errors import ConfigError
from aidist.transport import Publisher
from db import JobStore, ResultCache
from models import build_registry
from workers.alive import AliveMarks
from workers.app import batch_policy, create_app, pool_targets, queues_for
from workers.hooks import Hooks, WorkerHook
from workers.periodic import PeriodicDuty
from workers.presence import WorkerPresence
from workers.runtime import RuntimeHolder
from workers.service_times import ServiceTimes
from workers.startup import wait_for_services
from workers.sweeper import sweeper
from workers.task_events import TaskEvents
from workers.watchdog import Watchdog

POOLS = ("gpu", "cpu")
log = logging.getLogger("aidist.worker")


def worker_argv(pool: str, queues: list[str], concurrency: int, hostname: str,
                loglevel: str) -> list[str]:
    """Celery worker arguments: the GPU pool is one solo process (no fork, so CUDA is initialised
    only in the process that uses it); the CPU pool forks ``concurrency`` children."""
    argv = ["worker", "-Q", ",".join(queues), "-n", hostname, "--loglevel", loglevel,
            "--without-gossip", "--without-mingle"]
    if pool == "gpu":
        argv += ["-P", "solo"]
    else:
        argv += ["-P", "prefork", "-c", str(concurrency)]
    return argv


def default_hooks(settings: Settings, pool: str, presence: WorkerPresence) -> list[WorkerHook]:
    """Every cross-cutting duty of a worker, in the order they run: in each process that runs
    jobs, the alive mark, the job time limit and the service times (the autoscaler's speed
    figures); for batched messages, Flower's task events; in the worker's main process, the
    presence heartbeat and the outbox sweeper."""
    return [
        AliveMarks(),
        Watchdog(settings.job_time_limit_s),
        ServiceTimes(settings, pool),
        TaskEvents(),
        PeriodicDuty("aidist-presence", presence.beat, retry_s=1.0),
        sweeper(settings, JobStore.connect(settings.database_url, settings.connect_timeout_s),
                Publisher(settings.broker_url, settings.namespace,
                          settings.connect_timeout_s).publish),
    ]


def load_models(settings: Settings, holder: RuntimeHolder, targets: list[str]
                ) -> tuple[list[str], dict[str, str]]:
    """Load and warm up a gpu worker's models in this process, before it consumes: (the ready
    ones, the ones that failed with their errors). A model that failed leaves its queue to
    workers that can run it."""
    # Where one model call uses a torch thread per core (a GPU, or a model that is not
    # thread_safe), its OpenMP threads share the cores with the consumer, the broker and the
    # databases: spinning while they wait for a core steals it from them (measured: +15-25%
    # single-message on 2 cores with passive waiting, at ~20% of the model's own speed;
    # side-by-side calls with one torch thread each avoid both). Set before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    runtime = holder.get()
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
               loglevel: str = "info") -> None:
    """Run a worker in this process until it is told to stop (SIGTERM: warm shutdown)."""
    if pool not in POOLS:
        raise ConfigError(f"pool must be one of {POOLS}, got {pool!r}")
    if pool == "gpu" and concurrency not in (None, 1):
        raise ConfigError("a gpu pool worker is one process per device: start one per --device")
    registry = build_registry(settings.plugins, max_input_chars=settings.max_input_chars)
    targets = pool_targets(registry, pool, models)
    if not targets:
        raise ConfigError(f"no model or op to serve in pool {pool!r} (models={models})")
    # Celery sets up logging only once its worker starts; model loading and waits come first.
    logging.basicConfig(level=loglevel.upper(),
                        format="[%(asctime)s: %(levelname)s/MainProcess] %(message)s")
    # A supervisor may start this worker while a service restarts: wait for them (this also
    # declares the dead-letter topology), bounded by AIDIST_WORKER_STARTUP_WAIT_S.
    wait_for_services(settings)
    placement = device or settings.device
    node = hostname or f"{pool}-{os.getpid()}@{socket.gethostname()}"
    presence = WorkerPresence(
        settings,
        ResultCache.connect(settings.redis_url, settings.namespace, settings.connect_timeout_s),
        node=node, pool=pool, device=placement if pool == "gpu" else "cpu",
        queue_of=dict(zip(targets, queues_for(settings, registry, targets), strict=True)),
        # late-bound: the app exists by the time a grace period ends
        consume=lambda queue: app.control.add_consumer(queue, destination=[node], reply=False),
    )
    hooks = Hooks(default_hooks(settings, pool, presence))
    holder = RuntimeHolder(settings, device=placement, dtype=dtype,
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
    app.worker_main(worker_argv(pool, queues_for(settings, registry, ready), workers, node,
                                loglevel))
