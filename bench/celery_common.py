"""What the plain-Celery baselines share: configuration from the environment, queue names, the
ready signal of a worker process, and loading MiniLM the same way aidist does.

Imported by the worker apps (``bench.celery_naive`` in the main venv, ``bench.celery_batches_app``
in ``bench/.venv-batches`` with an older Celery) and by the bench driver: it imports only Celery,
kombu and the standard library at module level.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from celery import Celery
from kombu.entity import Exchange, Queue

ENV_BROKER = "BENCH_BROKER_URL"
ENV_RESULTS = "BENCH_RESULT_URL"
ENV_PREFIX = "BENCH_PREFIX"
ENV_READY_DIR = "BENCH_READY_DIR"
ENV_LOAD_MODEL = "BENCH_LOAD_MODEL"
ENV_TORCH_THREADS = "BENCH_TORCH_THREADS"
ENV_PREFETCH = "BENCH_PREFETCH_MULTIPLIER"
ENV_FLUSH_EVERY = "BENCH_FLUSH_EVERY"
ENV_FLUSH_INTERVAL = "BENCH_FLUSH_INTERVAL"

NAIVE_EMBED = "bench.naive.embed"
NAIVE_NORMALIZE = "bench.naive.normalize"
BATCHES_EMBED = "bench.batches.embed"


def queue_for(prefix: str, task_name: str) -> str:
    """The queue of one baseline task, inside the run's namespace (``<prefix>.bench.naive...``)."""
    return f"{prefix}.{task_name}"


def baseline_queues(prefix: str) -> list[str]:
    """Every queue (and same-named exchange) the baselines may create, for clean-up."""
    return [queue_for(prefix, name) for name in (NAIVE_EMBED, NAIVE_NORMALIZE, BATCHES_EMBED)]


def configure(app: Celery, *, broker_url: str, result_url: str, prefix: str,
              tasks: list[str], prefetch_multiplier: int | None = None) -> None:
    """Plain Celery as its documentation sets it up: JSON, a Redis result backend; plus what keeps
    a bench run isolated (queue names and result keys under ``prefix``) and quiet (no remote
    control queues)."""
    queues = [
        Queue(  # type: ignore[no-untyped-call]
            queue_for(prefix, name),
            Exchange(queue_for(prefix, name), type="direct"),  # type: ignore[no-untyped-call]
            routing_key=queue_for(prefix, name),
        )
        for name in tasks
    ]
    conf: dict[str, Any] = {
        "broker_url": broker_url,
        "result_backend": result_url,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_backend_transport_options": {"global_keyprefix": f"{prefix}:"},
        "result_expires": 3600,
        "task_queues": queues,
        "task_routes": {name: {"queue": queue_for(prefix, name)} for name in tasks},
        "task_default_queue": queue_for(prefix, tasks[0]),
        "worker_enable_remote_control": False,
        "worker_hijack_root_logger": True,
        "broker_connection_retry_on_startup": True,
    }
    if prefetch_multiplier is not None:
        conf["worker_prefetch_multiplier"] = prefetch_multiplier
    app.conf.update(conf)


def configure_from_env(app: Celery, tasks: list[str]) -> None:
    """``configure`` from the ``BENCH_*`` variables the driver sets for a worker (defaults: the
    local services, so ``celery -A`` also works by hand)."""
    prefetch = os.environ.get(ENV_PREFETCH)
    configure(
        app,
        broker_url=os.environ.get(ENV_BROKER, "amqp://guest:guest@127.0.0.1:5672//"),
        result_url=os.environ.get(ENV_RESULTS, "redis://127.0.0.1:6379/0"),
        prefix=os.environ.get(ENV_PREFIX, "bench"),
        tasks=tasks,
        prefetch_multiplier=int(prefetch) if prefetch else None,
    )


def load_minilm(threads: int) -> Any:
    """The aidist MiniLM runner (``models.minilm.load``), warmed up; ``threads`` torch threads."""
    from models import LoadContext
    from models.minilm import load

    runner = load(LoadContext(device="cpu", torch_threads=threads))
    runner(["warm up the model"], {})
    return runner


def mark_ready() -> None:
    """Tell the driver this worker process is ready (its model is loaded)."""
    directory = os.environ.get(ENV_READY_DIR)
    if directory:
        Path(directory, f"{os.getpid()}.ready").touch()
