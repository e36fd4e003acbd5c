"""Scenarios 4, 5, 6 and 7 (Celery side): the plain-Celery baselines, each with its own worker.

Every baseline submits with Celery's natural bulk API, ``group(task.s(x) for x in xs)``, and waits
with ``GroupResult.get()`` (a native join on the Redis result backend); the low-load round trip
(scenario 7) is ``task.delay(x).get()``, one at a time. Workers run on queues and
result keys under the run's namespace, and are stopped (SIGTERM) when their scenario ends.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from celery import Celery, group

from aidist.config import Settings
from aidist.demo import make_corpus
from bench import batches_env, cpu_accounting
from bench import celery_common as common
from bench.config import REPO, Options, best_run
from bench.env import (
    READY_TIMEOUT_S,
    Workers,
    consuming,
    database_name,
    phase,
    ready_files,
    venv_script,
    wait_for,
)
from bench.scenarios.aidist_paths import summary

CELERY_PROCESSES = 2
WAIT_S = 900.0
WARM_ITEMS = 16


def _env(settings: Settings, ready_dir: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        common.ENV_BROKER: settings.broker_url,
        common.ENV_RESULTS: settings.redis_url,
        common.ENV_PREFIX: settings.namespace,
        common.ENV_READY_DIR: str(ready_dir),
        "PYTHONPATH": str(REPO),
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


def _worker_argv(celery: str, module: str, queue: str, name: str, pool: list[str]) -> list[str]:
    return [celery, "-A", module, "worker", *pool, "-Q", queue, "-n", f"{name}@%h",
            "--without-gossip", "--without-mingle", "--without-heartbeat"]


def _naive_app(settings: Settings) -> Any:
    from bench import celery_naive

    common.configure(celery_naive.app, broker_url=settings.broker_url,
                     result_url=settings.redis_url, prefix=settings.namespace,
                     tasks=[common.NAIVE_EMBED, common.NAIVE_NORMALIZE])
    return celery_naive


def _run_group(task: Any, items: list[str]) -> tuple[list[Any], dict[str, Any]]:
    """Submit one task per item as a group and wait for every result; (results, timings)."""
    started = time.perf_counter()
    result = group(task.s(item) for item in items).apply_async()
    submit_s = time.perf_counter() - started
    outputs = list(result.get(timeout=WAIT_S))
    seconds = time.perf_counter() - started
    return outputs, {"items": len(items), "seconds": seconds, "per_s": len(items) / seconds,
                     "submit_s": submit_s}


def _embed_runs(task: Any, options: Options, scenario: str, count: int) -> dict[str, Any]:
    runs = []
    for repeat in range(options.repeats):
        sentences = make_corpus(count, options.seed_of(scenario, repeat))
        vectors, timing = _run_group(task, sentences)
        _check_vectors(vectors, len(sentences))
        runs.append(timing)
    return best_run(runs)


def _start_and_warm(workers: Workers, name: str, argv: list[str], env: dict[str, str], *,
                    settings: Settings, queue: str, ready_dir: Path, processes: int,
                    warm_task: Any) -> None:
    workers.start(name, argv, env)
    wait_for(ready_files(ready_dir, processes), timeout=READY_TIMEOUT_S,
             what=f"{name} to load", workers=workers, interval=0.25)
    wait_for(consuming(settings.broker_url, [queue]), timeout=READY_TIMEOUT_S,
             what=f"{name} to consume", workers=workers, interval=0.25)
    _run_group(warm_task, [f"warm-up sentence number {i}" for i in range(WARM_ITEMS)])


def naive(settings: Settings, options: Options, log_dir: Path) -> dict[str, Any]:
    """Scenario 4: one Celery task per sentence, prefork with 2 processes, each with the model."""
    module = _naive_app(settings)
    queue = common.queue_for(settings.namespace, common.NAIVE_EMBED)
    pool = ["-P", "prefork", "-c", str(CELERY_PROCESSES)]
    argv = _worker_argv(venv_script("celery"), "bench.celery_naive", queue, "naive-embed", pool)
    with tempfile.TemporaryDirectory(prefix="bench-ready-") as ready, phase(log_dir) as workers:
        env = _env(settings, Path(ready), **{common.ENV_LOAD_MODEL: "1",
                                             common.ENV_TORCH_THREADS: "1"})
        _start_and_warm(workers, "celery-naive-embed", argv, env, settings=settings,
                        queue=queue, ready_dir=Path(ready), processes=CELERY_PROCESSES,
                        warm_task=module.embed)
        measured = _embed_runs(module.embed, options, "naive", options.sizes.naive)
    return measured | {"processes": CELERY_PROCESSES, "torch_threads_each": 1,
                       "worker": _shown(argv)}


def batches(settings: Settings, options: Options, log_dir: Path) -> dict[str, Any]:
    """Scenario 5: celery-batches (flush_every / flush_interval), one process with the model."""
    try:
        batches_env.ensure()
    except (batches_env.BatchesEnvError, OSError, subprocess.SubprocessError) as exc:
        return {"status": "unavailable",
                "error": f"celery-batches venv could not be built: {exc}"}
    app = Celery("bench_batches_client", set_as_current=False)
    common.configure(app, broker_url=settings.broker_url, result_url=settings.redis_url,
                     prefix=settings.namespace, tasks=[common.BATCHES_EMBED])

    @app.task(name=common.BATCHES_EMBED, typing=False)  # type: ignore[untyped-decorator]
    def embed(text: str) -> None:  # the producer's handle; the worker runs the Batches task
        raise NotImplementedError

    queue = common.queue_for(settings.namespace, common.BATCHES_EMBED)
    pool = (["-P", "solo"] if options.batches_pool == "solo"
            else ["-P", "prefork", "-c", "1"])
    prefetch = 2 * options.flush_every
    argv = _worker_argv(str(batches_env.celery_script()), "bench.celery_batches_app", queue,
                        "batches", pool)
    with tempfile.TemporaryDirectory(prefix="bench-ready-") as ready, phase(log_dir) as workers:
        env = _env(settings, Path(ready), **{
            common.ENV_FLUSH_EVERY: str(options.flush_every),
            common.ENV_FLUSH_INTERVAL: str(options.flush_interval),
            common.ENV_PREFETCH: str(prefetch),
            common.ENV_TORCH_THREADS: "0",
        })
        _start_and_warm(workers, "celery-batches", argv, env, settings=settings, queue=queue,
                        ready_dir=Path(ready), processes=1, warm_task=embed)
        measured = _embed_runs(embed, options, "batches", options.sizes.batches)
    return measured | {
        "flush_every": options.flush_every,
        "flush_interval_s": options.flush_interval,
        "pool": options.batches_pool,
        "prefetch_multiplier": prefetch,
        "worker": _shown(argv),
        "venv": [batches_env.TORCH, *batches_env.PINS],
    }


def start_normalize(settings: Settings, workers: Workers, ready_dir: Path) -> dict[str, Any]:
    """Scenario 6's and 7's bare-Celery worker: one ``normalize_text`` task per text, prefork with
    2 processes, no model, Redis result backend; started and warmed in the caller's phase, which
    runs ``tiny`` and ``one_at_a_time`` on it."""
    module = _naive_app(settings)
    queue = common.queue_for(settings.namespace, common.NAIVE_NORMALIZE)
    pool = ["-P", "prefork", "-c", str(CELERY_PROCESSES)]
    argv = _worker_argv(venv_script("celery"), "bench.celery_naive", queue, "naive-normalize",
                        pool)
    env = _env(settings, ready_dir, **{common.ENV_LOAD_MODEL: "0"})
    _start_and_warm(workers, "celery-naive-normalize", argv, env, settings=settings,
                    queue=queue, ready_dir=ready_dir, processes=CELERY_PROCESSES,
                    warm_task=module.normalize)
    return {"processes": CELERY_PROCESSES, "worker": _shown(argv)}


def tiny(settings: Settings, workers: Workers, texts: list[list[str]]) -> dict[str, Any]:
    """Scenario 6, Celery side: ``group(normalize.s(t) ...).get()`` once per list of texts on the
    started worker, with the CPU every process spent per job (``bench.cpu_accounting``)."""
    from models.ops import normalize_text

    module = _naive_app(settings)
    pids = [worker.process.pid for worker in workers.started]
    database = database_name(settings)
    runs, accounts = [], []
    for batch in texts:
        before = cpu_accounting.begin(pids, database)
        outputs, timing = _run_group(module.normalize, batch)
        accounts.append(cpu_accounting.end(before, pids, database, len(batch)))
        if outputs[:200] != [normalize_text(t) for t in batch[:200]]:
            raise AssertionError("Celery normalize returned something else than normalize_text")
        runs.append(timing)
    return best_run(runs) | {"processes": CELERY_PROCESSES, "api": "group(...).get()",
                             "cpu_us_per_job": cpu_accounting.least(accounts)}


def one_at_a_time(settings: Settings, texts: list[str]) -> dict[str, Any]:
    """Scenario 7, Celery side: ``normalize.delay(t).get()``, one round trip after the other, on
    the started worker: what aidist's ``preprocess("normalize", t).result()`` is set against."""
    from models.ops import normalize_text

    module = _naive_app(settings)
    took: list[float] = []
    for text in texts:
        started = time.perf_counter()
        output = module.normalize.delay(text).get(timeout=60)
        took.append((time.perf_counter() - started) * 1000.0)
        if output != normalize_text(text):
            raise AssertionError("Celery normalize returned something else than normalize_text")
    return {"normalize": summary(took) | {"api": "normalize.delay(t).get()"}}


def _shown(argv: list[str]) -> str:
    return " ".join(["celery", *argv[1:]])


def _check_vectors(vectors: list[Any], expected: int) -> None:
    if len(vectors) != expected or any(np.shape(v) != (384,) for v in vectors):
        raise AssertionError(f"expected {expected} vectors of 384 floats, got {len(vectors)}")
