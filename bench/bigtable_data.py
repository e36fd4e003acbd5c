"""The ``bigtable`` scenario's data and plans: a million finished jobs loaded in a few set-based
statements, and ``EXPLAIN (ANALYZE, BUFFERS)`` of every statement a hot path runs.

The rows look like what aidist keeps at its default retention of 7 days: spread over the last 6
days (so the workers' prune has nothing to delete, as in a steady state), mostly
``toy-classifier``/``minilm``/``normalize`` jobs with real-sized payloads and results, 94%
succeeded, 3% failed with an error, 2% cancelled, 1% expired, some cache hits and coalesced
followers, a few tenants, pipelines, idempotency keys and blob references, and up to three
history rows each (queued, running, the end). The
triggers of ``jobs`` are off while loading (``session_replication_role = replica``, a
superuser's setting: the bench's Postgres user is one), the history is written by a second
INSERT, and ``ANALYZE`` runs after both, so the planner sees real statistics.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, text

from aidist.ids import new_job_id
from aidist.jobs import JobKind, JobStatus
from db.array_literals import text_array
from db.backlog import keda_query
from db.records import ClaimRequest, NewJob, Outcome
from db.retention import DELETE_BATCH, STILL_REFERENCED
from db.statements import CLAIM, FINISH, INSERT_JOBS, MARK_SENT, SETTLE_FOLLOWERS
from db.store import claim_params, finish_params, insert_params

PIPELINE_PARAMS = ('{"steps": [{"kind": "preprocess", "target": "chunk", "version": "v1", '
                   '"params": {}}, {"kind": "infer", "target": "minilm", "version": "v1", '
                   '"params": {}}]}')


def _created(i: str) -> str:
    """SQL of the creation time of the ``i``-th loaded job: spread over the last 6 days."""
    return f"now() - interval '6 days' * (({i})::float8 / :count) - interval '1 hour'"


def _job_id(i: str) -> str:
    """SQL of the id of the ``i``-th loaded job: a version-7 UUID (``aidist.ids``) of its
    creation time, with random-looking bits from ``md5``."""
    created = _created(i)
    bits = f"md5(:salt || '-' || ({i}))"
    return (f"(lpad(to_hex((extract(epoch FROM {created}) * 1000)::bigint), 12, '0') || '7' "
            f"|| substr({bits}, 1, 3) || '8' || substr({bits}, 4, 15))::uuid")


LOAD_JOBS = text(
    f"""
    INSERT INTO jobs (id, kind, target, version, params, cache_key, payload, status, attempts,
                      cache_hit, priority, tenant, idempotency_key, deadline, created_at,
                      started_at, finished_at, worker, error, step, sent_at, result, follows,
                      blob_keys)
    SELECT {_job_id("i")},
           CASE WHEN i % 10 < 3 THEN 'preprocess' ELSE 'infer' END,
           CASE WHEN i % 50 = 0 THEN 'chunk>minilm'
                WHEN i % 10 < 3 THEN 'normalize'
                WHEN i % 10 < 7 THEN 'minilm' ELSE 'toy-classifier' END,
           'v' || (i % 3),
           CASE WHEN i % 50 = 0
                THEN '{PIPELINE_PARAMS}'::jsonb
                ELSE '{{}}'::jsonb END,
           encode(sha256(int8send(i - 10 * (i % 50 = 11)::int + :salt)), 'hex'),
           convert_to(repeat(md5(i::text), 2 + i % 6), 'UTF8'),
           s.status,
           CASE WHEN s.status IN ('cancelled', 'expired') THEN 0 ELSE 1 + (i % 97 = 0)::int END,
           s.status = 'succeeded' AND i % 10 = 1,
           (i % 4 = 0)::int,
           CASE WHEN i % 5 = 0 THEN 'tenant-' || (i % 7) END,
           CASE WHEN i % 20 = 0 THEN 'idem-' || i || '-' || :salt END,
           CASE WHEN s.status = 'expired' THEN t.created + interval '30 seconds' END,
           t.created,
           CASE WHEN s.status IN ('succeeded', 'failed') THEN t.created + interval '1 second' END,
           t.created + interval '2 seconds',
           CASE WHEN s.status IN ('succeeded', 'failed') THEN 'gpu-' || (1 + i % 4) || '@bench' END,
           CASE WHEN s.status = 'failed' THEN 'ValueError: the model raised on input ' || i END,
           CASE WHEN i % 50 = 0 AND s.status = 'succeeded' THEN 1 ELSE 0 END,
           t.created,
           CASE WHEN s.status = 'succeeded'
                THEN convert_to(repeat(md5((i * 7)::text), 4), 'UTF8') END,
           CASE WHEN i % 50 = 11 AND s.status = 'succeeded' THEN {_job_id("i - 10")} END,
           CASE WHEN i % 1000 = 7 THEN ARRAY[encode(sha256(int8send(-i - :salt)), 'hex')] END
    FROM generate_series(1, :count) AS i,
         LATERAL (SELECT CASE WHEN i % 100 < 94 THEN 'succeeded' WHEN i % 100 < 97 THEN 'failed'
                              WHEN i % 100 < 99 THEN 'cancelled' ELSE 'expired' END AS status)
             AS s,
         LATERAL (SELECT {_created("i")} AS created) AS t
    """
)

LOAD_EVENTS = text(
    """
    INSERT INTO job_events (job_id, at, status, attempt, step, worker)
    SELECT id, created_at, 'queued', 0, 0, NULL FROM jobs WHERE cache_hit = false
    UNION ALL
    SELECT id, started_at, 'running', attempts, step, worker FROM jobs
        WHERE started_at IS NOT NULL
    UNION ALL
    SELECT id, finished_at, status, attempts, step, worker FROM jobs
    """
)


def load_finished_jobs(engine: Engine, count: int) -> dict[str, float]:
    """Insert ``count`` finished jobs and their history (triggers off), then ANALYZE; returns
    the table sizes after."""
    salt = uuid.uuid4().int % 1_000_000_000
    with engine.begin() as connection:
        connection.execute(text("SET LOCAL session_replication_role = replica"))
        connection.execute(text("SET LOCAL synchronous_commit = off"))
        connection.execute(LOAD_JOBS, {"count": count, "salt": salt})
        connection.execute(LOAD_EVENTS)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM (ANALYZE) jobs"))
        connection.execute(text("VACUUM (ANALYZE) job_events"))
        return table_sizes(connection)


def table_sizes(connection: Connection) -> dict[str, float]:
    """Rows and MB (with indexes) of ``jobs`` and ``job_events``."""
    sizes: dict[str, float] = {}
    for table in ("jobs", "job_events"):
        rows = connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
        size = connection.execute(
            text(f"SELECT pg_total_relation_size('{table}')")).scalar_one()
        sizes[f"{table}_rows"] = float(rows)
        sizes[f"{table}_mb"] = round(size / 2**20, 1)
    return sizes


@dataclass(frozen=True, slots=True)
class HotStatement:
    """A statement a hot path runs, with parameters like the ones it runs with."""

    name: str
    sql: str
    params: dict[str, Any]
    driver: bool = False  # psycopg's %(name)s style, run as the store runs it (exec_driver_sql)


def _ids(connection: Connection, where: str, limit: int) -> list[uuid.UUID]:
    return list(connection.execute(text(
        f"SELECT id FROM jobs WHERE {where} LIMIT {limit}")).scalars())


def hot_statements(connection: Connection, fresh: Sequence[uuid.UUID],
                   running: Sequence[uuid.UUID]) -> list[HotStatement]:
    """The statements of submitting, claiming, finishing, waiting and sweeping, with real ids:
    ``fresh`` are queued rows the caller inserted, ``running`` rows it claimed."""
    old = _ids(connection, "status = 'succeeded'", 128)
    blob_keys = list(connection.execute(text(
        "SELECT blob_keys[1] FROM jobs WHERE blob_keys IS NOT NULL LIMIT 100")).scalars())
    keys = list(connection.execute(text(
        "SELECT cache_key FROM jobs WHERE id = ANY(:ids)"), {"ids": list(fresh)[:64]}).scalars())
    batch = list(fresh)
    claim = claim_params([ClaimRequest(str(i)) for i in batch], "gpu-9@plans", 8)
    finish = finish_params([Outcome(str(i), 1, JobStatus.SUCCEEDED, result=b"r" * 200)
                            for i in running])
    fresh_ids = {"ids": batch}
    new_rows = insert_params([NewJob(new_job_id(), JobKind.INFER, "toy-classifier", "v1",
                                     uuid.uuid4().hex, b"\x00") for _ in range(128)])
    return [
        HotStatement("insert 128 jobs (client submit)", INSERT_JOBS, new_rows, driver=True),
        HotStatement("mark_sent (MARK_SENT)", MARK_SENT, {"ids": text_array(batch)},
                     driver=True),
        HotStatement("claim 128 (CLAIM)", CLAIM, claim, driver=True),
        HotStatement("finish 128 (FINISH)", FINISH, finish, driver=True),
        HotStatement("cancel (job.cancel())",
                     "UPDATE jobs SET status = 'cancelled', finished_at = now() WHERE id = :id "
                     "AND status IN ('queued', 'running') RETURNING status", {"id": batch[0]}),
        HotStatement("fail_unsent (publish failed)",
                     "UPDATE jobs SET status = 'failed', error = 'x', finished_at = now() "
                     "WHERE id = ANY(:ids) AND status = 'queued'", fresh_ids),
        HotStatement("finished_among (client wait)",
                     "SELECT id, status, error FROM jobs WHERE id = ANY(:ids) AND status IN "
                     "('succeeded', 'failed', 'cancelled', 'expired')", {"ids": old}),
        HotStatement("get_many (job.status())",
                     "SELECT * FROM jobs WHERE id = ANY(:ids)", {"ids": old[:1]}),
        HotStatement("results_by_key (durable result read)",
                     "SELECT DISTINCT ON (cache_key) cache_key, result FROM jobs "
                     "WHERE cache_key = ANY(:keys) AND status = 'succeeded' "
                     "AND result IS NOT NULL", {"keys": keys}),
        HotStatement("holders (redelivery)",
                     "SELECT id, worker FROM jobs WHERE id = ANY(:ids) AND status = 'running' "
                     "AND worker IS NOT NULL AND worker <> 'x'", {"ids": list(running)}),
        HotStatement("settle_followers (sweeper)", str(SETTLE_FOLLOWERS), {}),
        HotStatement("expire_overdue (sweeper)",
                     "WITH overdue AS MATERIALIZED (SELECT id FROM jobs WHERE status = 'queued' "
                     "AND deadline IS NOT NULL AND deadline < now() ORDER BY deadline "
                     "LIMIT 1000 FOR UPDATE SKIP LOCKED) UPDATE jobs SET status = 'expired', "
                     "finished_at = now() FROM overdue WHERE jobs.id = overdue.id "
                     "AND jobs.status = 'queued' RETURNING jobs.id", {}),
        HotStatement("sweep_unsent (sweeper)",
                     "SELECT id FROM jobs WHERE status = 'queued' AND sent_at IS NULL "
                     "AND payload IS NOT NULL AND created_at < now() - make_interval(secs => 30) "
                     "ORDER BY created_at LIMIT 1000 FOR UPDATE SKIP LOCKED", {}),
        HotStatement("backlog (autoscaler, KEDA)", keda_query(
            ["minilm", "toy-classifier", "normalize", "chunk", "tokenize"], 0.05), {}),
        HotStatement("prune 1000, nothing old (sweeper)", str(DELETE_BATCH),
                     {"age": 40 * 86400.0, "batch": 1000, "with_blobs": True}),
        HotStatement("prune 1000 of 1 day's age (sweeper)", str(DELETE_BATCH),
                     {"age": 86400.0, "batch": 1000, "with_blobs": True}),
        HotStatement("prune: blobs still referenced", str(STILL_REFERENCED),
                     {"keys": blob_keys}),
        HotStatement("running_by_worker (autoscaler)",
                     "SELECT worker, count(*) AS n FROM jobs WHERE finished_at IS NULL "
                     "AND status = 'running' AND worker IS NOT NULL GROUP BY worker", {}),
    ]


SCAN = re.compile(r"Seq Scan on (jobs|job_events)\b")

SET_UP = text(
    """
    WITH fresh AS (
        INSERT INTO jobs (id, kind, target, version, cache_key, payload, status, sent_at)
        SELECT gen_random_uuid(), 'infer', 'toy-classifier', 'v1', md5(random()::text),
               '\\x00'::bytea, CASE WHEN g <= 128 + :backlog THEN 'queued' ELSE 'running' END,
               CASE WHEN g > 128 THEN now() END
        FROM generate_series(1, 256 + :backlog) AS g
        RETURNING id, status, sent_at)
    SELECT id, status FROM fresh WHERE sent_at IS NULL OR status = 'running'
    """
)


def explain(engine: Engine, backlog: int = 0) -> dict[str, dict[str, Any]]:
    """``EXPLAIN (ANALYZE, BUFFERS)`` of each hot statement, each in a transaction of its own
    that first inserts 128 queued and 128 running jobs for it to work on, and ``backlog`` more
    queued ones behind them (a burst the statistics have not seen), and is rolled back
    afterwards (ANALYZE runs the writes). Per statement: the plan's lines, its execution time,
    and the tables it scans whole."""
    plans: dict[str, dict[str, Any]] = {}
    with engine.connect() as connection, engine.connect().execution_options(
            isolation_level="AUTOCOMMIT") as maintenance:
        count = len(_statements(connection, backlog))
        connection.rollback()
        for index in range(count):
            # The rows the last transaction inserted and rolled back are dead entries in the
            # indexes; VACUUM them, so no statement pays for its predecessor's set-up.
            maintenance.execute(text("VACUUM jobs"))
            with connection.begin() as transaction:
                statement = _statements(connection, backlog)[index]
                sql = f"EXPLAIN (ANALYZE, BUFFERS) {statement.sql}"
                result = (connection.exec_driver_sql(sql, statement.params) if statement.driver
                          else connection.execute(text(sql), statement.params))
                lines = [row[0] for row in result]
                transaction.rollback()
            took = next((float(m.group(1)) for line in lines
                         if (m := re.search(r"Execution Time: ([\d.]+) ms", line))), None)
            plans[statement.name] = {
                "execution_ms": took, "plan": lines,
                "table_scans": sorted({m.group(1) for line in lines if (m := SCAN.search(line))})}
    return plans


def _statements(connection: Connection, backlog: int) -> list[HotStatement]:
    rows = connection.execute(SET_UP, {"backlog": backlog}).all()
    fresh = [r.id for r in rows if r.status == "queued"]
    running = [r.id for r in rows if r.status == "running"]
    connection.execute(text("UPDATE jobs SET attempts = 1, worker = 'gpu-9@plans', "
                            "started_at = now() WHERE id = ANY(:ids)"), {"ids": running})
    return hot_statements(connection, fresh, running)
