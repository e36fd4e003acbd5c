"""db.engine against the real Postgres: pooled connections are pinged only after sitting idle,
and single statements run without BEGIN / COMMIT."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, text

from aidist.config import Settings
from aidist.errors import ServiceUnavailable
from db.engine import create_store_engine, transaction

pytestmark = pytest.mark.integration


def _backend_pid(engine: Engine) -> int:
    with transaction(engine, single=True) as connection:
        return int(connection.execute(text("SELECT pg_backend_pid()")).scalar_one())


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


def test_a_connection_in_steady_use_is_not_pinged_and_a_drop_fails_one_call(
        settings: Settings) -> None:
    engine = create_store_engine(settings.database_url, ping_after_idle_s=3600.0)
    try:
        dropped = _backend_pid(engine)
        _kill(settings, dropped)
        with pytest.raises(ServiceUnavailable):
            _backend_pid(engine)
        assert _backend_pid(engine) != dropped  # the pool was invalidated: the next call works
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
