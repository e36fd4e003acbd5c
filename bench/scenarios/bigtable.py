"""Scenario ``bigtable``: the same small workload on an empty ``jobs`` table and on one holding a
million finished jobs (``bench.bigtable_data``), and the ratio; then ``EXPLAIN (ANALYZE,
BUFFERS)`` of every hot statement on the big table, with a burst of queued jobs the statistics
have not seen.

The workload, each part on fresh inputs (nothing answered from the cache):

- ``map``: ``client.map("toy-classifier", texts)`` through a real gpu-pool worker (packed
  messages, batched claims and finishes);
- ``single``: ``client.infer("toy-classifier", text).result()`` one at a time: per-job submit,
  claim, finish and the client's status read, as latency;
- ``store``: the worker's statements without the worker, through ``JobStore``: a backlog of jobs
  inserted 128 at a time (+ ``mark_sent``), then claimed and finished 128 at a time (+ the
  client's ``finished_among``), so the database's share is measured without the rest's noise.

Everything runs on a database of the scenario's own (created, migrated, ANALYZEd when empty, and
dropped at the end), so the big table never slows another scenario.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import make_url, text

from aidist.config import Settings
from aidist.demo import make_corpus
from aidist.ids import new_job_id
from aidist.jobs import JobKind, JobStatus
from aidist.transport import queue_name
from bench.bigtable_data import explain, load_finished_jobs, table_sizes
from bench.config import Options
from bench.env import READY_TIMEOUT_S, aidist_env, consuming, phase, venv_script, wait_for
from db import setup as db_setup
from db.records import ClaimRequest, NewJob, Outcome
from db.store import JobStore
from producers import Client

MODEL = "toy-classifier"
BATCH = 128
WAIT_S = 600.0
#: (map jobs, single jobs, store backlog, EXPLAIN burst) of a full and a --quick run.
WORKLOAD = {False: (2000, 200, 10_000, 10_000), True: (1000, 100, 5000, 10_000)}


def run(settings: Settings, options: Options, log_dir: Path) -> dict[str, Any]:
    """Empty table, then a million finished jobs: the workload on each, the ratios, the plans."""
    url = make_url(settings.database_url)
    own = Settings(**{**settings.model_dump(), "database_url": url.set(
        database=f"{url.database}_big").render_as_string(hide_password=False)})
    db_setup.upgrade(own.database_url)
    store = JobStore.connect(own.database_url)
    try:
        return _measure_both(own, store, options, log_dir)
    finally:
        store.close()
        db_setup.drop_database(own.database_url)


def _measure_both(settings: Settings, store: JobStore, options: Options,
                  log_dir: Path) -> dict[str, Any]:
    """Both tables' workloads (best of ``options.repeats`` each) with one worker that stays up
    throughout, the big table loaded in between; then the plans."""
    sizes = WORKLOAD[options.quick]
    rows = options.sizes.bigtable
    with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("ANALYZE jobs"))
    with Client(settings) as client, phase(log_dir) as workers:
        workers.start("aidist-gpu-bigtable",
                      [venv_script("aidist"), "worker", "--pool", "gpu", "--models", MODEL],
                      aidist_env(settings))
        wait_for(consuming(settings.broker_url,
                           [queue_name(settings.namespace, JobKind.INFER, MODEL)]),
                 timeout=READY_TIMEOUT_S, what="the bigtable worker to consume",
                 workers=workers, interval=0.25)
        client.map(MODEL, [f"warm-up {uuid.uuid4().hex} {i}" for i in range(64)], timeout=WAIT_S)
        empty = _best([_workload(client, store, options, sizes, f"empty-{repeat}")
                       for repeat in range(options.repeats)])
        print(f"[bigtable] empty table: {_line(empty)}", flush=True)
        started = time.perf_counter()
        loaded = load_finished_jobs(store.engine, rows)
        load_s = time.perf_counter() - started
        print(f"[bigtable] loaded {rows:,} finished jobs in {load_s:.1f}s: {loaded}", flush=True)
        big = _best([_workload(client, store, options, sizes, f"big-{repeat}")
                     for repeat in range(options.repeats)])
        print(f"[bigtable] {rows:,} finished jobs: {_line(big)}", flush=True)
    plans = explain(store.engine, backlog=sizes[3])
    with store.engine.connect() as connection:
        after = table_sizes(connection)
    return {
        "rows": rows, "load_s": load_s, "table": loaded, "table_after": after,
        "empty": empty, "big": big,
        "ratios": {name: big[name] / empty[name] for name in RATES if empty.get(name)},
        "explain_backlog": sizes[3],
        "plans": plans,
        "table_scans": {name: plan["table_scans"] for name, plan in plans.items()
                        if plan["table_scans"]},
    }


#: The rates compared, big table / empty table: below 1 the big table is slower.
RATES = ("map_per_s", "single_per_s", "store_submit_per_s", "store_work_per_s")


def _workload(client: Client, store: JobStore, options: Options, sizes: tuple[int, ...],
              tag: str) -> dict[str, float]:
    map_count, single_count, backlog, _ = sizes
    salt = f"{tag}-{uuid.uuid4().hex[:8]}"
    texts = [f"{t} [{salt} {i}]" for i, t in enumerate(make_corpus(map_count, options.seed))]
    started = time.perf_counter()
    outputs = client.map(MODEL, texts, timeout=WAIT_S)
    map_s = time.perf_counter() - started
    if len(outputs) != map_count:
        raise AssertionError(f"map returned {len(outputs)} results for {map_count} inputs")
    took = []
    for i in range(single_count):
        begun = time.perf_counter()
        client.infer(MODEL, f"single {salt} {i}").result(timeout=WAIT_S)
        took.append(time.perf_counter() - begun)
    submit_s, work_s = _store_cycle(store, backlog)
    return {
        "map_jobs": map_count, "map_s": map_s, "map_per_s": map_count / map_s,
        "single_jobs": single_count, "single_per_s": single_count / sum(took),
        "single_p50_ms": float(np.percentile(took, 50) * 1000),
        "single_p90_ms": float(np.percentile(took, 90) * 1000),
        "store_jobs": backlog, "store_submit_per_s": backlog / submit_s,
        "store_work_per_s": backlog / work_s,
    }


def _best(runs: list[dict[str, float]]) -> dict[str, Any]:
    """Each rate's fastest and each latency's lowest of the repeats (outside load only ever
    slows a run down), with every repeat's numbers alongside."""
    best = {key: (min if key.endswith("_ms") else max)(run[key] for run in runs)
            for key in runs[0]}
    return {**best, "repeats": len(runs),
            "runs": [{key: round(run[key], 2) for key in (*RATES, "single_p50_ms")}
                     for run in runs]}


def _store_cycle(store: JobStore, count: int) -> tuple[float, float]:
    """Seconds to submit ``count`` jobs (insert + mark_sent, 128 at a time, with ids as the
    client makes them), then to work them off as a worker does (claim, finish, and the client's
    finished_among, 128 at a time)."""
    jobs = [NewJob(new_job_id(), JobKind.INFER, MODEL, "bench", uuid.uuid4().hex,
                   b"\xa8bigtable") for _ in range(count)]
    batches = [jobs[i:i + BATCH] for i in range(0, count, BATCH)]
    started = time.perf_counter()
    for part in batches:
        store.insert_jobs(part)
        store.mark_sent([job.id for job in part])
    submitted = time.perf_counter()
    for part in batches:
        claims = store.claim([ClaimRequest(job.id) for job in part], "gpu-9@bigtable")
        store.finish([Outcome(c.id, c.attempt, JobStatus.SUCCEEDED, result=b"\x91\xcb" + bytes(8))
                      for c in claims])
        store.finished_among([job.id for job in part])
    return submitted - started, time.perf_counter() - submitted


def _line(measured: dict[str, float]) -> str:
    return (f"map {measured['map_per_s']:,.0f} jobs/s, single p50 "
            f"{measured['single_p50_ms']:.1f} ms, store submit "
            f"{measured['store_submit_per_s']:,.0f}/s, claim+finish "
            f"{measured['store_work_per_s']:,.0f}/s")
