"""The Postgres engine every store shares, and the one place driver errors become aidist's:
``ServiceUnavailable`` for a server that cannot be reached, ``ConfigError`` for a database that
was never migrated, ``StoreError`` for any other failed statement (``__cause__`` kept)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, create_engine, make_url
from sqlalchemy.exc import DBAPIError, OperationalError, ProgrammingError, SQLAlchemyError

from aidist.config import redact_url
from aidist.errors import AidistError, ConfigError, ServiceUnavailable, StoreError

SERVICE = "PostgreSQL"
# A host that vanishes mid-transaction (power lost, link cut: no FIN reaches the server) leaves
# its session open and its row locks held until the server's TCP keepalive gives up, two hours by
# default: every other worker's claim of those rows waits that long. Every aidist transaction is
# a few statements with nothing slow between them (a sweeper's confirmed publish, a prune's blob
# deletes at most), so the server may end a session idle inside a transaction this long.
IDLE_IN_TRANSACTION_S = 60


def create_store_engine(database_url: str, connect_timeout_s: float = 5.0) -> Engine:
    """An engine with a short connect timeout and pre-ping, so a dead server fails fast, and
    sessions the server ends when left idle in a transaction, so a dead client's locks go."""
    options = str(make_url(database_url).query.get("options") or "")
    if "idle_in_transaction_session_timeout" not in options:  # the URL's own choice wins
        options = f"{options} -c idle_in_transaction_session_timeout=" \
                  f"{IDLE_IN_TRANSACTION_S * 1000}".strip()
    return create_engine(
        database_url,
        pool_pre_ping=True,
        pool_size=5,
        max_overflow=10,
        connect_args={"connect_timeout": max(1, int(connect_timeout_s)), "options": options},
    )


def engine_url(engine: Engine) -> str:
    """The engine's URL with its password redacted, for messages."""
    return redact_url(engine.url.render_as_string(hide_password=False))


@contextmanager
def transaction(engine: Engine) -> Iterator[Connection]:
    """One transaction on a pooled connection, with driver errors mapped to aidist's."""
    try:
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


def first_line(exc: BaseException) -> str:
    """The driver's message without its traceback-like detail lines."""
    source = getattr(exc, "orig", None) or exc
    return (str(source).strip().splitlines() or [type(source).__name__])[0]
