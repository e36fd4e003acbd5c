"""Fixtures of the fault suite: each scenario gets a database, a namespace, an execution log and a
fleet of workers of its own, and every service is brought back up after it, even when it fails.
Each scenario's tally line is printed at the end of the run and written to tests/faults/out/."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from db import JobStore, ResultCache
from db import setup as db_setup
from producers import Client
from tests.conftest import delete_queues, make_settings
from tests.faults.harness import IN_FLIGHT, ExecLog, Fleet, Scenario, Tally, ensure_services

OUT = Path(__file__).resolve().parent / "out"
TALLIES: list[Tally] = []

# What every scenario runs with: one model call per flush (so a killed process's uncommitted work
# is exactly its last logged batch), a short job time limit for the hanging model, a quick sweeper.
FAULT_SETTINGS: dict[str, Any] = {
    "plugins": ["tests.plugins"],
    "max_attempts": 3,
    # One model call per flush, two flushes in flight on runner threads: a killed process has at
    # most IN_FLIGHT uncommitted calls, which the tally tells apart from double execution.
    "batch_flush_batches": 1,
    "batch_threads": 1,
    "batch_pipeline": True,
    "batch_runners": IN_FLIGHT,
    "job_time_limit_s": 3.0,
    "sweep_after_s": 2.0,
    "sweep_interval_s": 0.5,
    "publish_retry_s": 60.0,
    "load_failure_grace_s": 2.0,
    # A host whose link is cut is noticed by RabbitMQ 2-3 heartbeats later (~30 s at 10 s).
    "broker_heartbeat_s": 10.0,
}


def record(tally: Tally) -> Tally:
    """Keep a scenario's tally for the summary and the report file."""
    TALLIES.append(tally)
    OUT.mkdir(exist_ok=True)
    (OUT / "faults.json").write_text(json.dumps([asdict(t) for t in TALLIES], indent=2))
    return tally


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if TALLIES:
        terminalreporter.section("fault suite")
        for tally in TALLIES:
            terminalreporter.write_line(tally.line())


@pytest.fixture
def scenario(tmp_path: Path) -> Iterator[Scenario]:
    ensure_services()
    tag = f"f{time.time_ns() % 10**10}"
    base = make_settings()
    database_url = make_url(base.database_url).set(database=f"aidist_fault_{tag}")
    settings = make_settings(database_url=database_url.render_as_string(hide_password=False),
                             namespace=tag, **FAULT_SETTINGS)
    db_setup.upgrade(settings.database_url)
    exec_dir = tmp_path / "executions"
    exec_dir.mkdir()
    fleet = Fleet(settings, tmp_path, exec_dir)
    client = Client(settings)
    store = JobStore.connect(settings.database_url)
    world = Scenario(settings, fleet, client, store, ExecLog(exec_dir))
    try:
        yield world
    finally:
        fleet.shutdown()
        ensure_services()
        client.close()
        store.close()
        cache = ResultCache.connect(settings.redis_url, settings.namespace)
        cache.delete_namespace()
        cache.close()
        delete_queues(settings)
        db_setup.drop_database(settings.database_url)
