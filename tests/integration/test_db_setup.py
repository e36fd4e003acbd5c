"""db.setup against the real PostgreSQL: creating, migrating and dropping a database of its own."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, inspect, make_url, text

from aidist.config import Settings
from db import setup as db_setup
from db.engine import IDLE_IN_TRANSACTION_S, create_store_engine
from db.schema import jobs_table

pytestmark = pytest.mark.integration

DESIGN_COLUMNS = {
    "id", "kind", "target", "status", "attempts", "cache_hit", "created_at", "started_at",
    "finished_at", "worker", "error",
}


def _database_exists(database_url: str) -> bool:
    server = make_url(database_url).set(database="postgres")
    engine = create_engine(server)
    try:
        with engine.connect() as connection:
            row = connection.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :name"),
                {"name": make_url(database_url).database},
            ).first()
            return row is not None
    finally:
        engine.dispose()


def test_upgrade_creates_database_once_and_is_idempotent(scratch_database_url: str) -> None:
    assert not _database_exists(scratch_database_url)
    assert db_setup.upgrade(scratch_database_url) is True
    assert _database_exists(scratch_database_url)
    assert db_setup.upgrade(scratch_database_url) is False
    assert _database_exists(scratch_database_url)


def test_upgraded_jobs_table_has_the_design_columns(scratch_database_url: str) -> None:
    db_setup.upgrade(scratch_database_url)
    engine = create_engine(scratch_database_url)
    try:
        inspector = inspect(engine)
        assert "jobs" in inspector.get_table_names()
        columns = {column["name"]: column for column in inspector.get_columns("jobs")}
        assert set(columns) >= DESIGN_COLUMNS
        assert inspector.get_pk_constraint("jobs")["constrained_columns"] == ["id"]
        for required in ("kind", "target", "status", "attempts", "cache_hit", "created_at"):
            assert columns[required]["nullable"] is False, required
        assert {"step", "sent_at", "result"} <= set(columns)  # fencing, outbox, durable results
        for optional in ("started_at", "finished_at", "worker", "error", "sent_at", "result"):
            assert columns[optional]["nullable"] is True, optional
        with engine.connect() as connection:
            revision = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
        assert revision == "0012"
    finally:
        engine.dispose()


def _predicate(where: object) -> str | None:
    """A partial index's predicate with Postgres' casts and parentheses dropped, for comparing."""
    if where is None:
        return None
    bare = str(where).lower().replace("::character varying", "").replace("::text", "")
    return " ".join(bare.replace("(", "").replace(")", "").split())


def test_migrations_create_exactly_the_indexes_the_schema_declares(
        scratch_database_url: str) -> None:
    # db/schema.py and db/migrations describe the same table: an index added to one of them
    # alone, or with another predicate, is the drift this catches.
    db_setup.upgrade(scratch_database_url)
    engine = create_engine(scratch_database_url)
    try:
        migrated = {index["name"]: index for index in inspect(engine).get_indexes("jobs")}
    finally:
        engine.dispose()
    declared = {index.name: index for index in jobs_table.indexes}
    assert set(migrated) == set(declared)
    for name, index in declared.items():
        found = migrated[name]
        assert bool(found["unique"]) == index.unique, name
        assert _predicate(found["dialect_options"].get("postgresql_where")) == _predicate(
            index.dialect_options["postgresql"]["where"]), name
        columns = [column.name for column in index.columns]
        assert [c for c in found["column_names"] if c is not None] == columns, name


def test_create_database_without_migrations_has_no_jobs_table(scratch_database_url: str) -> None:
    assert db_setup.create_database(scratch_database_url) is True
    assert db_setup.create_database(scratch_database_url) is False
    engine = create_engine(scratch_database_url)
    try:
        assert "jobs" not in inspect(engine).get_table_names()
    finally:
        engine.dispose()


def test_drop_database_removes_it_and_tolerates_a_missing_one(scratch_database_url: str) -> None:
    db_setup.upgrade(scratch_database_url)
    assert _database_exists(scratch_database_url)
    db_setup.drop_database(scratch_database_url)
    assert not _database_exists(scratch_database_url)
    db_setup.drop_database(scratch_database_url)  # IF EXISTS: a second drop is harmless
    assert not _database_exists(scratch_database_url)


def test_the_server_ends_a_session_left_idle_in_a_transaction(settings: Settings) -> None:
    """A host that vanishes mid-transaction must not hold its row locks for the two hours of
    TCP keepalive: every aidist session asks the server to end it once idle in a transaction."""
    engine = create_store_engine(settings.database_url)
    try:
        with engine.connect() as connection:
            shown = connection.execute(text("SHOW idle_in_transaction_session_timeout"))
            assert shown.scalar_one() == f"{IDLE_IN_TRANSACTION_S // 60}min"
    finally:
        engine.dispose()
