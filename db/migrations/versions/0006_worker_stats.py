"""worker_stats: each process's measured speed per model, for the backlog in seconds

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # One row per (process, model), upserted every few seconds by the process's ServiceTimes
    # hook: the autoscaler and KEDA's query turn queued jobs into seconds with it.
    op.create_table(
        "worker_stats",
        sa.Column("worker", sa.String(255), primary_key=True),
        sa.Column("model", sa.String(128), primary_key=True),
        sa.Column("pool", sa.String(16), nullable=False),
        sa.Column("jobs", sa.Float, nullable=False),
        sa.Column("busy_s", sa.Float, nullable=False),
        sa.Column("cold_start_s", sa.Float),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
    )


def downgrade() -> None:
    op.drop_table("worker_stats")
