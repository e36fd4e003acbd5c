"""The plans Postgres keeps for the hot statements, on a young table: the ones a fresh database
gets in its first minutes (a table of a few rows, analyzed once before anything succeeded), kept
while the table grows. Each test has a scratch database with autovacuum off on ``jobs``, so only
the test decides when the table is analyzed."""

from __future__ import annotations

import re
from typing import Any

import pytest
from sqlalchemy import Engine, text

from aidist.jobs import JobStatus
from db import setup as db_setup
from db.engine import create_store_engine
from db.records import ClaimRequest, Outcome
from db.statements import CLAIM
from db.store import JobStore
from tests.integration.conftest import NewJobFactory

pytestmark = pytest.mark.integration


def _young_store(url: str, **engine_options: Any) -> JobStore:
    db_setup.upgrade(url)
    store = JobStore(create_store_engine(url, **engine_options))
    with store.engine.begin() as connection:
        connection.execute(text("ALTER TABLE jobs SET (autovacuum_enabled = off)"))
    return store


def _generic_plan(engine: Engine, statement: str) -> str:
    """The plan Postgres makes for ``statement`` (psycopg's ``%(name)s`` style) when it plans
    it once for any parameters, as it does for a statement prepared on a connection."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    numbered = re.sub(r"%\((\w+)\)s", number, statement)
    with engine.begin() as connection:
        connection.execute(text("SET LOCAL plan_cache_mode = force_generic_plan"))
        connection.exec_driver_sql(f"PREPARE probe AS {numbered}")
        nulls = ", ".join("NULL" for _ in names)
        plan = "\n".join(connection.exec_driver_sql(f"EXPLAIN EXECUTE probe({nulls})").scalars())
        connection.exec_driver_sql("DEALLOCATE probe")
    return plan


def _finish_all(store: JobStore, ids: list[str], result: bytes | None = None) -> None:
    claims = store.claim([ClaimRequest(job_id) for job_id in ids], "w")
    store.finish([Outcome(c.id, c.attempt, JobStatus.SUCCEEDED, result=result) for c in claims])


def test_the_twin_probe_reads_the_result_index_whatever_the_statistics_say(
        scratch_database_url: str, new_job: NewJobFactory) -> None:
    # Analyzed while nothing had succeeded, `status = 'succeeded'` looked rare, and the probe
    # read every succeeded row through ix_jobs_ended (migration 0012).
    store = _young_store(scratch_database_url)
    try:
        store.insert_jobs([new_job() for _ in range(300)])
        with store.engine.begin() as connection:
            connection.execute(text("ANALYZE jobs"))
        done = [new_job() for _ in range(300)]
        store.insert_jobs(done)
        _finish_all(store, [job.id for job in done], result=b"\x01")
        plan = _generic_plan(store.engine, CLAIM)
        twin = plan[plan.index("SubPlan 2"):]
        assert "ix_jobs_ended" not in plan
        assert "ix_jobs_result_key" in twin.splitlines()[1], plan
    finally:
        store.close()


def _finish_plan(store: JobStore, new_job: NewJobFactory) -> str:
    """FINISH's plan as the store's connection holds it after 16 one-job finishes on a table
    of 16 rows, and 20,000 more rows since (not analyzed)."""
    jobs = [new_job() for _ in range(16)]
    store.insert_jobs(jobs)
    for job in jobs:  # one thread: every call takes the pool's one connection
        _finish_all(store, [job.id])
    store.insert_jobs([new_job() for _ in range(20_000)])
    with store.engine.connect() as connection:  # the same pooled connection, checked out again
        (name,) = connection.execute(text(
            "SELECT name FROM pg_prepared_statements WHERE statement LIKE '%%WITH done AS%%'")
        ).scalars()
        count = len(connection.execute(text(
            "SELECT parameter_types FROM pg_prepared_statements WHERE name = :name"),
            {"name": name}).scalar_one())
        nulls = ", ".join("NULL" for _ in range(count))
        return "\n".join(connection.exec_driver_sql(f"EXPLAIN EXECUTE {name}({nulls})").scalars())


def test_a_plan_made_on_a_few_rows_is_kept_while_the_table_grows(
        scratch_database_url: str, new_job: NewJobFactory) -> None:
    # What the engine's replanning is for: without it, the finish reads the whole table.
    store = _young_store(scratch_database_url, replan_first_s=None)
    try:
        plan = _finish_plan(store, new_job)
        assert "Seq Scan on jobs" in plan, plan
    finally:
        store.close()


def test_a_connection_plans_again_as_it_ages_so_the_table_it_sees_is_todays(
        scratch_database_url: str, new_job: NewJobFactory) -> None:
    store = _young_store(scratch_database_url, replan_first_s=0.0)  # due at every checkout
    try:
        plan = _finish_plan(store, new_job)
        assert "Seq Scan on jobs" not in plan, plan
        assert "jobs_pkey" in plan
    finally:
        store.close()
