"""indexes that keep queued and running rows apart from finished ones

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# (`status IN (...)` as Postgres writes it back: the test of schema and migrations compares)
TERMINAL = ("status = ANY (ARRAY['succeeded'::text, 'failed'::text, 'cancelled'::text, "
            "'expired'::text])")


def upgrade() -> None:
    # On a table of a million finished jobs, ANALYZE's sample holds next to no queued or running
    # row, so the planner takes `status = 'queued'` or `'running'` for one row. With
    # ix_jobs_status_created covering every status it then answered the claim, the finish and
    # the claim's lookup of a running twin by reading *every* queued or running row through
    # that index (and every dead version of one not yet vacuumed) instead of probing the
    # primary key or the cache key: a claim of 128 jobs took 116 ms behind 50,000 queued jobs
    # instead of 2 ms (README, Performance). Two partial indexes replace it; neither is implied
    # by a hot statement's `status = ...`, so those statements are left with the primary key.
    #  - ix_jobs_ended: finished rows by (status, created_at): `jobs ls --status`, the prune.
    #  - ix_jobs_unfinished: queued and running rows (finished_at IS NULL is true of those and
    #    of no other): the backlog and the autoscaler's counts, which say finished_at IS NULL.
    op.drop_index("ix_jobs_status_created", table_name="jobs")
    op.create_index("ix_jobs_ended", "jobs", ["status", "created_at"],
                    postgresql_where=sa.text(TERMINAL))
    op.create_index("ix_jobs_unfinished", "jobs", ["status", "created_at"],
                    postgresql_where=sa.text("finished_at IS NULL"))
    # A follower keeps `follows` after it ends, so ix_jobs_follows grew with every coalesced job
    # ever, and the finish's and the sweeper's follower lookups read it whole: only running
    # followers are ever looked up (and the prune asks whether one follows a row it deletes).
    op.drop_index("ix_jobs_follows", table_name="jobs")
    op.create_index("ix_jobs_running_followers", "jobs", ["follows"],
                    postgresql_where=sa.text("status = 'running' AND follows IS NOT NULL"))


def downgrade() -> None:
    op.drop_index("ix_jobs_running_followers", table_name="jobs")
    op.create_index("ix_jobs_follows", "jobs", ["follows"],
                    postgresql_where=sa.text("follows IS NOT NULL"))
    op.drop_index("ix_jobs_unfinished", table_name="jobs")
    op.drop_index("ix_jobs_ended", table_name="jobs")
    op.create_index("ix_jobs_status_created", "jobs", ["status", "created_at"])
