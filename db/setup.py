"""Create the database if missing and run the Alembic migrations (``aidist db upgrade``)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.exc import OperationalError

from aidist.config import redact_url
from aidist.errors import ServiceUnavailable

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def _server_engine(database_url: str, connect_timeout_s: float):  # type: ignore[no-untyped-def]
    url = make_url(database_url).set(database="postgres")
    return create_engine(
        url,
        isolation_level="AUTOCOMMIT",
        connect_args={"connect_timeout": max(1, int(connect_timeout_s))},
    )


def create_database(database_url: str, connect_timeout_s: float = 5.0) -> bool:
    """Create the URL's database unless it exists; returns True if it was created."""
    name = make_url(database_url).database
    engine = _server_engine(database_url, connect_timeout_s)
    try:
        with engine.connect() as connection:
            exists = connection.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
            ).first()
            if exists:
                return False
            connection.execute(text(f'CREATE DATABASE "{name}"'))
            return True
    except OperationalError as exc:
        raise ServiceUnavailable(
            "PostgreSQL", redact_url(database_url), str(exc.orig).strip()
        ) from exc
    finally:
        engine.dispose()


def drop_database(database_url: str, connect_timeout_s: float = 5.0) -> None:
    """Drop the URL's database (used by tests to clean up their own database)."""
    name = make_url(database_url).database
    engine = _server_engine(database_url, connect_timeout_s)
    try:
        with engine.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        engine.dispose()


def alembic_config(database_url: str) -> Config:
    """An Alembic config pointing at db/migrations and the given URL (no alembic.ini needed)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


@contextmanager
def _upgrade_lock(database_url: str, connect_timeout_s: float) -> Iterator[None]:
    """Hold a PostgreSQL advisory lock named after the target database, taken in the server's
    ``postgres`` database (the target may not exist yet), for as long as the block runs."""
    name = make_url(database_url).database or ""
    key = int.from_bytes(hashlib.blake2b(f"aidist-upgrade:{name}".encode(), digest_size=8)
                         .digest(), "big", signed=True)
    engine = _server_engine(database_url, connect_timeout_s)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
    except OperationalError as exc:
        raise ServiceUnavailable(
            "PostgreSQL", redact_url(database_url), str(exc.orig).strip()
        ) from exc
    finally:
        engine.dispose()


def upgrade(database_url: str, connect_timeout_s: float = 5.0) -> bool:
    """Create the database if needed, then migrate to head; returns True if it was created.

    Safe to run from several processes at once (a Procfile's lines, a migrate job beside a
    rollout): they take turns on an advisory lock, so one creates and migrates and the others
    find the database at head."""
    with _upgrade_lock(database_url, connect_timeout_s):
        created = create_database(database_url, connect_timeout_s)
        try:
            command.upgrade(alembic_config(database_url), "head")
        except OperationalError as exc:
            raise ServiceUnavailable(
                "PostgreSQL", redact_url(database_url), str(exc.orig).strip()
            ) from exc
    return created
