"""step fencing, outbox marker, durable results

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Which pipeline step holds the job: a duplicate or stale step message is fenced on it.
    op.add_column("jobs", sa.Column("step", sa.SmallInteger(), nullable=False,
                                    server_default=sa.text("0")))
    # Set once the job's first message is confirmed by the broker: queued rows without it are
    # the outbox the sweeper publishes (the client died, or the broker failed, in between).
    op.add_column("jobs", sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True))
    # A copy of the result, so a flushed or restarted Redis loses nothing for good.
    op.add_column("jobs", sa.Column("result", sa.LargeBinary(), nullable=True))
    op.create_index("ix_jobs_unsent", "jobs", ["created_at"],
                    postgresql_where=sa.text("status = 'queued' AND sent_at IS NULL"))


def downgrade() -> None:
    op.drop_index("ix_jobs_unsent", table_name="jobs")
    op.drop_column("jobs", "result")
    op.drop_column("jobs", "sent_at")
    op.drop_column("jobs", "step")
