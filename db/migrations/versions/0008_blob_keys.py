"""jobs.blob_keys: the blobs (large inputs and outputs) a job's row references

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The content keys of the blobs a row's payload and result refer to (NULL: none, the common
    # case), so a prune can tell which blobs no remaining row references (`blob_keys && :keys`)
    # with one index scan. A partial GIN index: rows without blobs (every small job) cost the
    # hot-path INSERT nothing. Adding a nullable column without a default rewrites nothing.
    op.add_column("jobs", sa.Column("blob_keys", ARRAY(sa.Text())))
    op.create_index("ix_jobs_blob_keys", "jobs", ["blob_keys"], postgresql_using="gin",
                    postgresql_where=sa.text("blob_keys IS NOT NULL"))


def downgrade() -> None:
    op.drop_index("ix_jobs_blob_keys", table_name="jobs")
    op.drop_column("jobs", "blob_keys")
