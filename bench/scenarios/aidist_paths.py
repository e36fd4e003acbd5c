"""Scenarios 2, 3, 6 and 7 (aidist side): jobs through aidist's own path, with real workers
(``bench.scenarios.events`` measures 2 and 3 again with task events on and off).

``aidist worker --pool gpu`` (minilm, toy-classifier; on the CPU here) and ``--pool cpu``
(tokenize, chunk, normalize; 2 prefork processes) run as subprocesses on the run's isolated
namespace and database; one ``Client`` on the same settings submits.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from aidist.config import Settings
from aidist.demo import make_corpus
from aidist.transport import queue_name
from bench import cpu_accounting
from bench.config import Options, best_run
from bench.env import (
    READY_TIMEOUT_S,
    Workers,
    aidist_env,
    consuming,
    database_name,
    venv_script,
    wait_for,
)
from bench.task_event_probe import check_task_events
from producers import Client, Job

CPU_POOL_PROCESSES = 2
WAIT_S = 900.0


def start_workers(settings: Settings, workers: Workers, client: Client, *,
                  task_events: bool = True, tag: str = "") -> dict[str, Any]:
    """Start both pools with ``AIDIST_TASK_EVENTS`` set explicitly (on: what aidist ships; the
    environment or a .env could say otherwise), wait until every queue has a consumer, warm
    every path once, and check on the broker that the gpu pool sends task events, or does not.
    ``tag`` tells the worker logs of one phase from another's."""
    flag = "true" if task_events else "false"
    env = {**aidist_env(settings), "AIDIST_TASK_EVENTS": flag}
    commands = [
        [venv_script("aidist"), "worker", "--pool", "gpu"],
        [venv_script("aidist"), "worker", "--pool", "cpu", "--concurrency",
         str(CPU_POOL_PROCESSES)],
    ]
    for name, argv in zip(("aidist-gpu", "aidist-cpu"), commands, strict=True):
        workers.start(f"{name}{tag}", argv, env)
    queues = [queue_name(settings.namespace, spec.kind, spec.name)
              for spec in client.registry.specs()]
    wait_for(consuming(settings.broker_url, queues), timeout=READY_TIMEOUT_S,
             what="aidist workers to consume", workers=workers, interval=0.25)
    salt = uuid.uuid4().hex[:8]  # a later phase's warm-up is not answered from the cache
    warm = [f"{text} [warm-up {salt}]" for text in make_corpus(32, 99)]
    client.map("minilm", warm, timeout=WAIT_S)
    client.map("toy-classifier", warm[:8], timeout=WAIT_S)
    client.map("normalize", warm[:16], timeout=WAIT_S)
    for text in warm[8:12]:
        client.infer("minilm", f"{text} (single warm-up)").result(timeout=WAIT_S)
    seen = check_task_events(client, workers, expected=task_events)
    return {"commands": [f"AIDIST_TASK_EVENTS={flag} "
                         + " ".join(Path(a).name if i == 0 else a for i, a in enumerate(c))
                         for c in commands],
            "task_events": task_events, "task_events_seen": seen["task_events"]}


def packed(client: Client, options: Options) -> dict[str, Any]:
    """Scenario 2: ``client.map("minilm", sentences)``, from the call to the last result."""
    runs = [packed_once(client, make_corpus(options.sizes.packed,
                                            options.seed_of("packed", repeat)))
            for repeat in range(options.repeats)]
    return best_run(runs) | {"api": "client.map", "pack_size": client.settings.pack_size}


def packed_once(client: Client, sentences: list[str]) -> dict[str, Any]:
    """One packed measurement: ``client.map("minilm", sentences)``, call to last result."""
    started = time.perf_counter()
    vectors = client.map("minilm", sentences, timeout=WAIT_S)
    seconds = time.perf_counter() - started
    _check_vectors(vectors, len(sentences))
    return {"items": len(sentences), "seconds": seconds, "per_s": len(sentences) / seconds}


def single(client: Client, options: Options) -> dict[str, Any]:
    """Scenario 3: independent ``client.infer`` calls from ``options.producers`` threads sharing
    one Client (it is documented thread-safe: one publisher connection under a lock, pooled
    Redis and Postgres). Each thread submits its share, then waits on each job's ``result()``."""
    runs = [single_once(client, make_corpus(options.sizes.single,
                                             options.seed_of("single", repeat)),
                         options.producers)
            for repeat in range(options.repeats)]
    return best_run(runs) | {
        "producers": options.producers,
        "api": f"client.infer + job.result(), {options.producers} threads, one shared Client"}


def single_once(client: Client, sentences: list[str], count: int) -> dict[str, Any]:
    """One single-message measurement: ``count`` threads, first submit to last result."""
    shares = [sentences[i::count] for i in range(count)]
    gate = threading.Barrier(count + 1)
    submitted = [0.0] * count
    outputs: list[list[Any]] = [[] for _ in range(count)]
    errors: list[BaseException] = []

    def produce(index: int) -> None:
        try:
            gate.wait()
            jobs = [client.infer("minilm", text) for text in shares[index]]
            submitted[index] = time.perf_counter()
            outputs[index] = [job.result(timeout=WAIT_S) for job in jobs]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=produce, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    started = time.perf_counter()
    gate.wait()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    if errors:
        raise errors[0]
    _check_vectors([v for part in outputs for v in part], len(sentences))
    return {"items": len(sentences), "seconds": seconds, "per_s": len(sentences) / seconds,
            "submit_s": max(submitted) - started}


def tiny(client: Client, texts: list[list[str]], workers: Workers) -> dict[str, Any]:
    """Scenario 6, aidist side: ``client.map("normalize", texts)`` (Postgres state per job), once
    per list of texts, with the CPU every process spent per job (``bench.cpu_accounting``; the
    workers: both pools, as both run)."""
    from models.ops import normalize_text

    runs, accounts = [], []
    pids = [worker.process.pid for worker in workers.started]
    database = database_name(client.settings)
    for batch in texts:
        before = cpu_accounting.begin(pids, database)
        started = time.perf_counter()
        outputs = client.map("normalize", batch, timeout=WAIT_S)
        seconds = time.perf_counter() - started
        accounts.append(cpu_accounting.end(before, pids, database, len(batch)))
        if outputs[:200] != [normalize_text(t) for t in batch[:200]]:
            raise AssertionError("aidist normalize returned something else than normalize_text")
        runs.append({"items": len(batch), "seconds": seconds, "per_s": len(batch) / seconds})
    return best_run(runs) | {"api": "client.map", "processes": CPU_POOL_PROCESSES,
                             "cpu_us_per_job": cpu_accounting.least(accounts)}


def latency(client: Client, options: Options) -> dict[str, Any]:
    """Scenario 7: one job at a time. ``infer("toy-classifier", text).result()``, then the same
    texts again (answered from the Redis cache); ``infer("minilm", sentence).result()`` (the real
    model at low load); ``preprocess("normalize", text).result()`` (a tiny op on the cpu pool,
    against bare Celery's round trip of the same op, measured in that worker's phase)."""
    texts = latency_texts(options)

    def one(text: str) -> Job:
        job = client.infer("toy-classifier", text)
        job.result(timeout=60)
        return job

    def embed(text: str) -> Job:
        job = client.infer("minilm", text)
        job.result(timeout=60)
        return job

    def normalize(text: str) -> Job:
        job = client.preprocess("normalize", text)
        job.result(timeout=60)
        return job

    miss_ms, miss_jobs = _timed(one, texts)
    hit_ms, hit_jobs = _timed(one, texts)
    minilm_ms, _ = _timed(embed, minilm_latency_texts(options))
    op_ms, _ = _timed(normalize, op_latency_texts(options))
    first = client.store.get_many([job.id for job in miss_jobs]).values()
    again = client.store.get_many([job.id for job in hit_jobs]).values()
    return {
        "miss": summary(miss_ms) | {"cache_hits": sum(r.cache_hit for r in first)},
        "hit": summary(hit_ms) | {"cache_hits": sum(r.cache_hit for r in again)},
        "minilm": summary(minilm_ms) | {"api": 'client.infer("minilm", s).result()'},
        "normalize": summary(op_ms) | {"api": 'client.preprocess("normalize", t).result()'},
        "model": "toy-classifier",
    }


def latency_texts(options: Options) -> list[str]:
    """The toy-classifier's one-at-a-time inputs (unseen by the cache)."""
    return [f"{text} [latency {i}]" for i, text in
            enumerate(make_corpus(options.sizes.latency, options.seed_of("latency")))]


def minilm_latency_texts(options: Options) -> list[str]:
    """The one-at-a-time minilm sentences: through aidist, and in-process to the model alone
    (``bench.scenarios.inprocess``), so what the queue adds is their difference."""
    return [f"{text} (minilm)" for text in latency_texts(options)]


def op_latency_texts(options: Options) -> list[str]:
    """The texts of the one-at-a-time ``normalize`` measurements (aidist's and bare Celery's):
    unseen by aidist's cache, like every latency input."""
    return [f"  {text.upper()}\t [op latency {i}]  " for i, text in
            enumerate(make_corpus(options.sizes.latency, options.seed_of("latency", 1)))]


def _timed(call: Callable[[str], Job], texts: list[str]) -> tuple[list[float], list[Job]]:
    """Milliseconds of each ``call``, one after the other, and the jobs."""
    took: list[float] = []
    jobs: list[Job] = []
    for text in texts:
        started = time.perf_counter()
        jobs.append(call(text))
        took.append((time.perf_counter() - started) * 1000.0)
    return took, jobs


def summary(values_ms: list[float]) -> dict[str, float]:
    """Percentiles of one-at-a-time round trips (bare Celery's too)."""
    values = np.asarray(values_ms)
    return {"n": len(values_ms), "p50_ms": float(np.percentile(values, 50)),
            "p90_ms": float(np.percentile(values, 90)),
            "p99_ms": float(np.percentile(values, 99)), "mean_ms": float(values.mean()),
            "max_ms": float(values.max())}


def _check_vectors(vectors: list[Any], expected: int) -> None:
    if len(vectors) != expected or any(np.shape(v) != (384,) for v in vectors):
        raise AssertionError(f"expected {expected} vectors of 384 floats, got {len(vectors)}")


def tiny_texts(options: Options, repeat: int = 0) -> list[str]:
    """Distinct, messy texts for ``normalize`` (the same for aidist and bare Celery)."""
    return [f"  {text.upper()}\t\u00a0 ({i})  \x07" for i, text in
            enumerate(make_corpus(options.sizes.tiny, options.seed_of("tiny", repeat)))]
