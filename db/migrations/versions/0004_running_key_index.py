"""index of running jobs by cache key

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The claim looks up a running twin of every job it starts (coalescing): this keeps that
    # lookup one small index probe, whatever the table's size or the planner's statistics.
    op.create_index("ix_jobs_running_key", "jobs", ["cache_key"],
                    postgresql_where=sa.text("status = 'running' AND follows IS NULL"))


def downgrade() -> None:
    op.drop_index("ix_jobs_running_key", table_name="jobs")
