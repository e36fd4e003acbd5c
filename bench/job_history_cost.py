"""What the job history (migration 0007's triggers on ``jobs``) costs the hot path.

Times ``JobStore.claim`` + ``JobStore.finish`` of N jobs in batches (what a worker does per batch),
and the submit side's ``insert_jobs`` + ``mark_sent``, with the schema at 0006 (no history) and at
0007 (triggers), alternating between the two in rounds so drift on the machine hits both alike;
prints each round and the ratio of medians. A database of its own, dropped at the end.

    .venv/bin/python -m bench.job_history_cost [--jobs 10000] [--batch 128] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from alembic import command
from sqlalchemy import make_url, text

from aidist.config import Settings
from aidist.jobs import JobKind, JobStatus
from db import setup as db_setup
from db.records import ClaimRequest, NewJob, Outcome
from db.store import JobStore

WITHOUT, WITH = "0006", "0007"


@contextmanager
def scratch_database() -> Iterator[str]:
    """A database nobody else uses, dropped afterwards."""
    url = make_url(Settings().database_url).set(database=f"aidist_histcost_{uuid.uuid4().hex[:8]}")
    rendered = url.render_as_string(hide_password=False)
    try:
        yield rendered
    finally:
        db_setup.drop_database(rendered)


def measure(store: JobStore, jobs: int, batch: int) -> dict[str, float]:
    """Seconds of submitting (insert + mark_sent) and of working (claim + finish) ``jobs`` jobs,
    ``batch`` at a time, on an emptied table."""
    with store.engine.begin() as connection:
        tables = connection.execute(text(
            "SELECT string_agg(tablename, ', ') FROM pg_tables "
            "WHERE tablename IN ('jobs', 'job_events')")).scalar_one()
        connection.execute(text(f"TRUNCATE {tables}"))
    rows = [NewJob(str(uuid.uuid4()), JobKind.INFER, "toy-classifier", "v", uuid.uuid4().hex,
                   b"payload") for _ in range(jobs)]
    batches = [rows[i:i + batch] for i in range(0, jobs, batch)]
    started = time.perf_counter()
    for part in batches:
        store.insert_jobs(part)
        store.mark_sent([job.id for job in part])
    submitted = time.perf_counter()
    with store.engine.begin() as connection:
        connection.execute(text("ANALYZE jobs"))
    begun = time.perf_counter()
    for part in batches:
        claims = store.claim([ClaimRequest(job.id) for job in part], "bench-worker")
        store.finish([Outcome(c.id, c.attempt, JobStatus.SUCCEEDED, result=b"r") for c in claims])
    worked = time.perf_counter()
    return {"submit_s": submitted - started, "work_s": worked - begun}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="Print the numbers as JSON too.")
    args = parser.parse_args()
    runs: dict[str, list[dict[str, float]]] = {WITHOUT: [], WITH: []}
    with scratch_database() as url:
        db_setup.upgrade(url)
        config = db_setup.alembic_config(url)
        store = JobStore.connect(url)
        try:
            measure(store, min(args.jobs, 1000), args.batch)  # warm-up, not counted
            for round_no in range(args.rounds):
                order = (WITHOUT, WITH) if round_no % 2 == 0 else (WITH, WITHOUT)
                for revision in order:
                    if revision == WITHOUT:
                        command.downgrade(config, WITHOUT)
                    else:
                        command.upgrade(config, WITH)
                    store.engine.dispose()  # fresh connections: no cached plans of the other
                    runs[revision].append(measure(store, args.jobs, args.batch))
                    print(f"round {round_no} {revision}: " + ", ".join(
                        f"{k} {v:.3f}" for k, v in runs[revision][-1].items()), flush=True)
        finally:
            store.close()
    summary: dict[str, float] = {}
    for key in ("work_s", "submit_s"):
        without = statistics.median(r[key] for r in runs[WITHOUT])
        with_history = statistics.median(r[key] for r in runs[WITH])
        summary[f"{key}_without"], summary[f"{key}_with"] = without, with_history
        summary[f"{key}_ratio"] = with_history / without
        print(f"{key}: median {without:.3f}s without history, {with_history:.3f}s with "
              f"({with_history / without:.2f}x) for {args.jobs} jobs in batches of {args.batch}")
    if args.json:
        print(json.dumps({"args": vars(args), "runs": runs, "summary": summary}))


if __name__ == "__main__":
    main()
