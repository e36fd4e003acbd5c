"""db.engine against the real Postgres: pooled connections are pinged only after sitting idle,
single statements run without BEGIN / COMMIT, and the hot path's driver cursor maps errors and
hands its connection back as it found it."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import Engine, text

from aidist.config import Settings
from aidist.errors import ConfigError, ServiceUnavailable, StoreError
from db.engine import create_store_engine, driver_cursor, transaction

pytestmark = pytest.mark.integration


def _backend_pid(engine: Engine) -> int:
    with transaction(engine, single=True) as connection:
        return int(connection.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _driver_backend_pid(engine: Engine) -> int:
    with driver_cursor(engine) as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        row = cursor.fetchone()
        assert row is not None
        return int(row[0])


def _kill(settings: Settings, pid: int) -> None:
    other = create_store_engine(settings.database_url)
    try:
        with transaction(other, single=True) as connection:
            assert connection.execute(text("SELECT pg_terminate_backend(:pid)"),
                                      {"pid": pid}).scalar_one()
    finally:
        other.dispose()


def test_an_idle_connection_the_server_dropped_is_replaced_unseen(settings: Settings) -> None:
    engine = create_store_engine(settings.database_url, ping_after_idle_s=0.0)  # always idle
    try:
        dropped = _backend_pid(engine)
        _kill(settings, dropped)
        assert _backend_pid(engine) != dropped  # the ping failed, the pool opened another
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend_pid", [_backend_pid, _driver_backend_pid],
                         ids=["sqlalchemy", "driver cursor"])
def test_a_connection_in_steady_use_is_not_pinged_and_a_drop_fails_one_call(
        settings: Settings, backend_pid: Callable[[Engine], int]) -> None:
    engine = create_store_engine(settings.database_url, ping_after_idle_s=3600.0)
    try:
        dropped = backend_pid(engine)
        _kill(settings, dropped)
        with pytest.raises(ServiceUnavailable) as raised:
            backend_pid(engine)
        assert raised.value.__cause__ is not None
        assert backend_pid(engine) != dropped  # the pool was invalidated: the next call works
    finally:
        engine.dispose()


def test_a_single_statement_block_runs_outside_a_transaction(settings: Settings) -> None:
    engine = create_store_engine(settings.database_url)
    query = text("SELECT txid_current()")
    try:
        with transaction(engine, single=True) as connection:
            # each statement is its own transaction: no BEGIN was sent
            assert connection.execute(query).scalar_one() != connection.execute(query).scalar_one()
        with transaction(engine) as connection:
            assert connection.execute(query).scalar_one() == connection.execute(query).scalar_one()
    finally:
        engine.dispose()


def test_the_driver_cursor_runs_in_autocommit_and_leaves_the_pool_transactional(
        settings: Settings) -> None:
    engine = create_store_engine(settings.database_url, ping_after_idle_s=3600.0)
    try:
        with driver_cursor(engine) as cursor:
            cursor.execute("SELECT txid_current()")
            first_txid = cursor.fetchone()
            cursor.execute("SELECT txid_current()")
            assert cursor.fetchone() != first_txid  # each statement its own transaction
        with transaction(engine) as connection:  # the same pooled connection, transactional
            query = text("SELECT txid_current()")
            assert connection.execute(query).scalar_one() == connection.execute(query).scalar_one()
    finally:
        engine.dispose()


def test_driver_errors_become_aidists(settings: Settings) -> None:
    engine = create_store_engine(settings.database_url)
    try:
        with pytest.raises(ConfigError, match="aidist db upgrade"), driver_cursor(engine) as cursor:
            cursor.execute("SELECT * FROM no_such_table_here")
        with pytest.raises(StoreError, match="job store statement failed") as raised, \
                driver_cursor(engine) as cursor:
            cursor.execute("SELECT CAST('not a uuid' AS uuid)")
        assert raised.value.__cause__ is not None
        assert _driver_backend_pid(engine) > 0  # a failed statement leaves the pool usable
    finally:
        engine.dispose()
    unreachable = create_store_engine(settings.database_url.replace(":5432", ":1"),
                                      connect_timeout_s=2)
    try:
        with pytest.raises(ServiceUnavailable), driver_cursor(unreachable):
            pass
    finally:
        unreachable.dispose()
