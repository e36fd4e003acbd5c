"""The bench's EXPLAIN of every hot statement (``bench.bigtable_data.explain``) runs against a
real, migrated database: the statements it explains are the store's own, with the store's own
parameters, so a change of a statement's parameter style cannot break the bench unnoticed."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine

from bench.bigtable_data import explain
from db import setup as db_setup

pytestmark = pytest.mark.integration


def test_every_hot_statement_is_explained_with_a_time(scratch_database_url: str) -> None:
    db_setup.upgrade(scratch_database_url)
    engine = create_engine(scratch_database_url)
    try:
        plans = explain(engine, backlog=10)
    finally:
        engine.dispose()
    assert {"insert 128 jobs (client submit)", "claim 128 (CLAIM)", "finish 128 (FINISH)"} <= set(
        plans)
    assert all(plan["execution_ms"] is not None for plan in plans.values()), [
        name for name, plan in plans.items() if plan["execution_ms"] is None]
