"""job_events: every transition of every job, written by triggers on jobs

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# One row per job whose status, attempt, step or worker a statement on ``jobs`` changed, written
# by statement-level triggers from the statement's transition tables: set-based (one INSERT per
# statement, whatever the batch size), in the same statement and transaction as the state write
# (no extra round trip), and no code path that writes ``jobs`` can forget it. A claim taken again
# by its own worker changes none of the four and records nothing; ``mark_sent`` neither. ``at``
# is now(), the transaction's time, the same clock as the row's started_at/finished_at.
# Transition tables allow one event per trigger, hence two triggers; and no column list (UPDATE
# OF ...), hence the IS DISTINCT FROM filter.
FUNCTIONS = """
CREATE FUNCTION job_events_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_events (job_id, at, status, attempt, step, worker)
    SELECT n.id, now(), n.status, n.attempts, n.step, n.worker FROM new_jobs AS n;
    RETURN NULL;
END $$;

CREATE FUNCTION job_events_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_events (job_id, at, status, attempt, step, worker)
    SELECT n.id, now(), n.status, n.attempts, n.step, n.worker
    FROM new_jobs AS n JOIN old_jobs AS o ON o.id = n.id
    WHERE (n.status, n.attempts, n.step, n.worker)
          IS DISTINCT FROM (o.status, o.attempts, o.step, o.worker);
    RETURN NULL;
END $$;
"""

TRIGGERS = """
CREATE TRIGGER jobs_events_insert AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION job_events_inserted();

CREATE TRIGGER jobs_events_update AFTER UPDATE ON jobs
    REFERENCING OLD TABLE AS old_jobs NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION job_events_updated();
"""


def upgrade() -> None:
    # No foreign key to jobs: it would cost an index probe per event on the hot path, and a
    # job's history may outlive its row (whoever deletes jobs deletes their events too).
    op.create_table(
        "job_events",
        sa.Column("seq", sa.BigInteger(), sa.Identity(always=False), primary_key=True),
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("step", sa.SmallInteger(), nullable=False),
        sa.Column("worker", sa.String(255), nullable=True),
    )
    op.create_index("ix_job_events_job", "job_events", ["job_id", "seq"])
    op.execute(FUNCTIONS)
    op.execute(TRIGGERS)


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS jobs_events_update ON jobs")
    op.execute("DROP TRIGGER IF EXISTS jobs_events_insert ON jobs")
    op.execute("DROP FUNCTION IF EXISTS job_events_updated()")
    op.execute("DROP FUNCTION IF EXISTS job_events_inserted()")
    op.drop_table("job_events")  # and its index
