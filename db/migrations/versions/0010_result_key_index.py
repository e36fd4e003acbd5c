"""the cache key index covers only rows with a durable result

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # ix_jobs_cache_key held every version of every row: a job's insert, its claim and its
    # finish each wrote an entry (none of those updates can be HOT: each changes `status`, which
    # the partial indexes name). Its one reader, results_by_key (a result that left Redis),
    # asks only for succeeded rows with a result, so only those need an entry: one per job,
    # written by the finish. (The claim's lookup of a running twin has ix_jobs_running_key.)
    op.drop_index("ix_jobs_cache_key", table_name="jobs")
    op.create_index("ix_jobs_result_key", "jobs", ["cache_key"],
                    postgresql_where=sa.text("status = 'succeeded' AND result IS NOT NULL"))


def downgrade() -> None:
    op.drop_index("ix_jobs_result_key", table_name="jobs")
    op.create_index("ix_jobs_cache_key", "jobs", ["cache_key"])
