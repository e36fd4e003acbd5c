"""SQLAlchemy 2 schema of the job store. Alembic migrations in db/migrations mirror it."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    Float,
    Identity,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    Table,
    Text,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from aidist.jobs import JobKind, JobStatus


class Base(DeclarativeBase):
    """Declarative base of aidist's tables."""


def _enum(enum_type: type[JobKind] | type[JobStatus], name: str) -> Enum:
    # Stored as short strings with a CHECK constraint: adding a state later is a plain migration.
    return Enum(
        enum_type,
        name=name,
        native_enum=False,
        length=16,
        create_constraint=True,
        values_callable=lambda members: [m.value for m in members],
    )


class JobRow(Base):
    """One row per job: the durable record of what was asked and what became of it."""

    __tablename__ = "jobs"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    kind: Mapped[JobKind] = mapped_column(_enum(JobKind, "job_kind"))
    target: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(128))
    params: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    cache_key: Mapped[str] = mapped_column(String(64))
    payload: Mapped[bytes | None] = mapped_column(LargeBinary)
    status: Mapped[JobStatus] = mapped_column(_enum(JobStatus, "job_status"))
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    cache_hit: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    priority: Mapped[int] = mapped_column(SmallInteger, server_default=text("0"))
    tenant: Mapped[str | None] = mapped_column(String(128))
    idempotency_key: Mapped[str | None] = mapped_column(String(256))
    deadline: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    worker: Mapped[str | None] = mapped_column(String(255))
    error: Mapped[str | None] = mapped_column(Text)
    step: Mapped[int] = mapped_column(SmallInteger, server_default=text("0"))
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    result: Mapped[bytes | None] = mapped_column(LargeBinary)
    follows: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    # content keys of the blobs its payload and result refer to (NULL: none), for prune
    blob_keys: Mapped[list[str] | None] = mapped_column(ARRAY(Text))

    __table_args__ = (
        # Finished rows and unfinished ones in separate indexes (migration 0009 says why).
        Index("ix_jobs_ended", "status", "created_at",
              postgresql_where=text("status = ANY (ARRAY['succeeded'::text, 'failed'::text, "
                                    "'cancelled'::text, 'expired'::text])")),
        Index("ix_jobs_unfinished", "status", "created_at",
              postgresql_where=text("finished_at IS NULL")),
        Index("ix_jobs_result_key", "cache_key",  # durable results only: migrations 0010, 0012
              postgresql_where=text("result IS NOT NULL")),
        Index("ix_jobs_unsent", "created_at",
              postgresql_where=text("status = 'queued' AND sent_at IS NULL")),
        Index("ix_jobs_running_followers", "follows",
              postgresql_where=text("status = 'running' AND follows IS NOT NULL")),
        Index("ix_jobs_running_key", "cache_key",
              postgresql_where=text("status = 'running' AND follows IS NULL")),
        Index("ix_jobs_queued_deadline", "deadline",
              postgresql_where=text("status = 'queued' AND deadline IS NOT NULL")),
        Index("ix_jobs_blob_keys", "blob_keys", postgresql_using="gin",
              postgresql_where=text("blob_keys IS NOT NULL")),
        Index(
            "ux_jobs_idempotency",
            text("coalesce(tenant, '')"),
            "idempotency_key",
            unique=True,
            postgresql_where=text("idempotency_key IS NOT NULL"),
        ),
    )


# The declarative __table__ is typed as FromClause; for a mapped class it is always a Table.
jobs_table = cast(Table, JobRow.__table__)


class JobEventRow(Base):
    """One transition of one job (queued, each claim of a run, its end), with its time. Written
    only by the triggers on ``jobs`` that migration 0007 creates, from each statement's transition
    tables: a row per job whose status, attempt, step or worker the statement changed. No foreign
    key to ``jobs`` (it would cost an index probe per event on the hot path)."""

    __tablename__ = "job_events"

    seq: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16))
    attempt: Mapped[int] = mapped_column(Integer)
    step: Mapped[int] = mapped_column(SmallInteger)
    worker: Mapped[str | None] = mapped_column(String(255))

    __table_args__ = (Index("ix_job_events_job", "job_id", "seq"),)


job_events_table = cast(Table, JobEventRow.__table__)


class WorkerStatRow(Base):
    """One process's measured speed on one model (``db.backlog``): jobs finished, seconds busy
    finishing them, and how long the model took to load and warm up."""

    __tablename__ = "worker_stats"

    worker: Mapped[str] = mapped_column(String(255), primary_key=True)
    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    pool: Mapped[str] = mapped_column(String(16))
    jobs: Mapped[float] = mapped_column(Float)
    busy_s: Mapped[float] = mapped_column(Float)
    cold_start_s: Mapped[float | None] = mapped_column(Float)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True),
                                                 server_default=func.now())
