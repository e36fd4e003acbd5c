"""index of queued jobs by deadline

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The sweeper expires queued jobs past their deadline even when no worker consumes their
    # queue: this keeps that scan to the few queued rows that have a deadline, not the table.
    op.create_index("ix_jobs_queued_deadline", "jobs", ["deadline"],
                    postgresql_where=sa.text("status = 'queued' AND deadline IS NOT NULL"))


def downgrade() -> None:
    op.drop_index("ix_jobs_queued_deadline", table_name="jobs")
