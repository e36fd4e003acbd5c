"""the result index is chosen by the result alone, never against ix_jobs_ended

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The claim's probe for a stored twin (and results_by_key) asked for `status = 'succeeded'
    # AND result IS NOT NULL`, which ix_jobs_ended (status, created_at) answers too. Analyzed
    # while few rows had succeeded (a young table, a first burst of queued jobs), the planner
    # took ix_jobs_ended for the more selective, and every claimed job then read every
    # succeeded row (auto_explain: 5 ms a job, 7,933 rows removed by the filter, after two
    # minutes of a fresh database). Only a succeeded row ever holds a result (the finish
    # stores one with success only, a follower copies only a succeeded leader's), so the
    # index and its readers say `result IS NOT NULL` alone, which no other index answers.
    op.drop_index("ix_jobs_result_key", table_name="jobs")
    op.create_index("ix_jobs_result_key", "jobs", ["cache_key"],
                    postgresql_where=sa.text("result IS NOT NULL"))


def downgrade() -> None:
    op.drop_index("ix_jobs_result_key", table_name="jobs")
    op.create_index("ix_jobs_result_key", "jobs", ["cache_key"],
                    postgresql_where=sa.text("status = 'succeeded' AND result IS NOT NULL"))
