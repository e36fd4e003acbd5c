"""coalesced jobs follow a leader

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A job identical to one already running (same cache key) does not run: it follows that
    # job and takes its end state and result when it finishes.
    op.add_column("jobs", sa.Column("follows", sa.Uuid(), nullable=True))
    op.create_index("ix_jobs_follows", "jobs", ["follows"],
                    postgresql_where=sa.text("follows IS NOT NULL"))


def downgrade() -> None:
    op.drop_index("ix_jobs_follows", table_name="jobs")
    op.drop_column("jobs", "follows")
