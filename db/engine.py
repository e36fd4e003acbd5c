"""The Postgres engine every store shares, and the one place driver errors become aidist's:
``ServiceUnavailable`` for a server that cannot be reached, ``ConfigError`` for a database that
was never migrated, ``StoreError`` for any other failed statement (``__cause__`` kept)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import psycopg
from sqlalchemy import Connection, Dialect, Engine, create_engine, event, make_url
from sqlalchemy.exc import (
    DBAPIError,
    DisconnectionError,
    OperationalError,
    ProgrammingError,
    SQLAlchemyError,
)
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

from aidist.config import redact_url
from aidist.errors import AidistError, ConfigError, ServiceUnavailable, StoreError

SERVICE = "PostgreSQL"
# A host that vanishes mid-transaction (power lost, link cut: no FIN reaches the server) leaves
# its session open and its row locks held until the server's TCP keepalive gives up, two hours by
# default: every other worker's claim of those rows waits that long. Every aidist transaction is
# a few statements with nothing slow between them (a sweeper's confirmed publish, a prune's blob
# deletes at most), so the server may end a session idle inside a transaction this long.
IDLE_IN_TRANSACTION_S = 60


# A pooled connection is pinged before use only if it sat unused this long: a server restart
# or a dropped link shows on the first use after a pause, and the pool then opens a fresh one.
# A ping on every checkout (pool_pre_ping) was one more round trip per statement on the hot path;
# a connection in steady use that breaks fails its statement instead, which callers retry
# (the worker's ServiceRetry) or see as ServiceUnavailable.
PING_AFTER_IDLE_S = 1.0


# Postgres keeps a prepared statement's generic plan for the connection's life, or until the
# table is analyzed again, and makes it from the table's size when it makes it. The hot
# statements (``db.statements``) are prepared after their fifth run: on a young table that is
# when the table is a few rows, where a sequential scan and a hash join are the cheapest plan,
# and autovacuum analyzes it again only after a minute or more. Meanwhile the table grew, and
# every claim and finish read all of it (auto_explain on a fresh database: a finish of 128 jobs
# read 21,888 rows instead of 128; Postgres CPU per single-message job 500 -> 3,800 µs over four
# rounds of 2,000 jobs, flat at 300-400 with an ANALYZE before each). So each pooled connection
# drops its plans (DISCARD PLANS: the statements stay prepared, each is planned again on its next
# run, from the table as it is then) once it is REPLAN_FIRST_S old, and again each time its age
# doubles, then every REPLAN_EVERY_MAX_S: a plan in use is never older than half the
# connection's age, and the replanning costs a few milliseconds of server CPU per 5 minutes.
REPLAN_FIRST_S = 1.0
REPLAN_EVERY_MAX_S = 300.0


def create_store_engine(database_url: str, connect_timeout_s: float = 5.0, *,
                        ping_after_idle_s: float = PING_AFTER_IDLE_S,
                        replan_first_s: float | None = REPLAN_FIRST_S) -> Engine:
    """An engine with a short connect timeout and a ping of connections that sat idle, so a dead
    server fails fast, sessions the server ends when left idle in a transaction, so a dead
    client's locks go, and plans made again as connections age, so none outlives the table size
    it was made for (``replan_first_s=None``: never; 0: at every checkout)."""
    options = str(make_url(database_url).query.get("options") or "")
    if "idle_in_transaction_session_timeout" not in options:  # the URL's own choice wins
        options = f"{options} -c idle_in_transaction_session_timeout=" \
                  f"{IDLE_IN_TRANSACTION_S * 1000}".strip()
    engine = create_engine(
        database_url,
        pool_size=5,
        max_overflow=10,
        connect_args={"connect_timeout": max(1, int(connect_timeout_s)), "options": options},
    )
    event.listen(engine, "checkin", _note_checkin)
    event.listen(engine, "checkout", partial(_ping_if_idle, engine.dialect, ping_after_idle_s))
    if replan_first_s is not None:
        event.listen(engine, "connect", partial(_schedule_replan, replan_first_s))
        event.listen(engine, "checkout", _replan_when_due)
    return engine


def _schedule_replan(first_s: float, dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
    now = time.monotonic()
    record.info["connected"] = now
    record.info["replan_at"] = now + first_s


def _replan_when_due(dbapi_connection: Any, record: ConnectionPoolEntry,
                     proxy: PoolProxiedConnection) -> None:
    """DISCARD PLANS on a connection whose replan is due (``REPLAN_FIRST_S``), in autocommit
    (the pool hands out connections outside a transaction, and leaves them so); a connection
    that does not answer is replaced, as a failed ping is."""
    due = record.info.get("replan_at")
    now = time.monotonic()
    if due is None or now < due:
        return
    age = now - record.info["connected"]
    record.info["replan_at"] = now + min(age, REPLAN_EVERY_MAX_S)
    before = dbapi_connection.autocommit
    try:
        dbapi_connection.autocommit = True
        with dbapi_connection.cursor() as cursor:
            cursor.execute("DISCARD PLANS")
        dbapi_connection.autocommit = before
    except Exception as exc:
        raise DisconnectionError(f"a pooled connection did not answer: {exc}") from exc


def _note_checkin(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
    record.info["checked_in"] = time.monotonic()


def _ping_if_idle(dialect: Dialect, idle_s: float, dbapi_connection: Any,
                  record: ConnectionPoolEntry, proxy: PoolProxiedConnection) -> None:
    """SQLAlchemy's pessimistic disconnect handling, for idle connections only: a failed ping
    raises ``DisconnectionError``, and the pool replaces the connection and tries again."""
    since = record.info.get("checked_in")
    if since is None or time.monotonic() - since < idle_s:
        return
    try:
        dialect.do_ping(dbapi_connection)
    except Exception as exc:
        raise DisconnectionError(f"a pooled connection did not answer: {exc}") from exc


def engine_url(engine: Engine) -> str:
    """The engine's URL with its password redacted, for messages."""
    return redact_url(engine.url.render_as_string(hide_password=False))


@contextmanager
def transaction(engine: Engine, *, single: bool = False) -> Iterator[Connection]:
    """One transaction on a pooled connection, with driver errors mapped to aidist's.
    ``single``: the block runs one statement, which Postgres runs as its own transaction
    (autocommit), so no BEGIN and COMMIT round trips: measured on a 3-row insert, 20 % less CPU
    on either side."""
    try:
        if single:
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
                yield connection
            return
        with engine.begin() as connection:
            yield connection
    except AidistError:
        raise
    except OperationalError as exc:
        raise ServiceUnavailable(SERVICE, engine_url(engine), first_line(exc)) from exc
    except ProgrammingError as exc:
        if "does not exist" in str(exc.orig) and "relation" in str(exc.orig):
            raise ConfigError(f"a table is missing in {engine_url(engine)} "
                              f"({first_line(exc)}); run `aidist db upgrade`") from exc
        raise StoreError(f"job store statement failed: {first_line(exc)}") from exc
    except (DBAPIError, SQLAlchemyError) as exc:
        raise StoreError(f"job store statement failed: {first_line(exc)}") from exc


@contextmanager
def driver_cursor(engine: Engine) -> Iterator[psycopg.Cursor[Any]]:
    """A psycopg cursor on one of the engine's pooled connections, in autocommit, for the hot
    path's one-statement calls (``db.store``: insert, mark sent, claim, finish), with driver errors
    mapped as ``transaction`` maps them. SQLAlchemy's ``Connection.execute`` around a statement
    cost a few hundred µs of client CPU per call (statement processing, the isolation level set
    and reset, result wrapping), as much as the rest of a lone-job insert; the pool, its idle
    ping and its connect timeout stay SQLAlchemy's. A connection that breaks is invalidated, so
    the pool opens a fresh one for the next call."""
    try:
        pooled = engine.raw_connection()
    except AidistError:
        raise
    except (OperationalError, psycopg.OperationalError) as exc:  # the pool connects unwrapped
        raise ServiceUnavailable(SERVICE, engine_url(engine), first_line(exc)) from exc
    except (SQLAlchemyError, psycopg.Error) as exc:
        raise StoreError(f"job store connection failed: {first_line(exc)}") from exc
    connection = pooled.driver_connection
    if not isinstance(connection, psycopg.Connection):
        pooled.close()
        raise ConfigError(f"{engine_url(engine)} does not use the psycopg driver; use a "
                          "postgresql+psycopg:// URL")
    try:
        connection.autocommit = True
        try:
            with connection.cursor() as cursor:
                yield cursor
        finally:
            if not connection.closed:
                connection.autocommit = False  # the pool's other users expect transactions
    except psycopg.OperationalError as exc:
        if connection.closed or connection.broken:
            pooled.invalidate(exc)
        raise ServiceUnavailable(SERVICE, engine_url(engine), first_line(exc)) from exc
    except psycopg.errors.UndefinedTable as exc:
        raise ConfigError(f"a table is missing in {engine_url(engine)} ({first_line(exc)}); "
                          "run `aidist db upgrade`") from exc
    except psycopg.Error as exc:
        raise StoreError(f"job store statement failed: {first_line(exc)}") from exc
    finally:
        pooled.close()  # back to the pool (a no-op after invalidate)


def first_line(exc: BaseException) -> str:
    """The driver's message without its traceback-like detail lines."""
    source = getattr(exc, "orig", None) or exc
    return (str(source).strip().splitlines() or [type(source).__name__])[0]
