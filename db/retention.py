"""Retention: finished jobs leave the database after ``AIDIST_RETENTION_S``, with their history
(``job_events``) and the blobs no remaining row references, so the tables stay bounded.

Deletion goes in batches, each one short transaction: up to ``batch`` finished rows whose job
ended (and was created) before the cutoff are locked with ``FOR UPDATE SKIP LOCKED`` (a row
something else holds is left for a later batch, nothing waits), deleted with their events in
one statement, and the blob keys those rows carried come back. A row is never taken while a
running job follows it (a coalesced twin that has still to take its end from this row; the
sweeper settles those first), and a queued or running job is never taken at all: only a
terminal status can be deleted, and a terminal status never changes back.

Blobs: the keys of the deleted rows that no other row still carries (``blob_keys &&``, the GIN
index of migration 0008) go to the ``delete_blobs`` callable before the transaction commits, so
a blob store that fails rolls the batch back and the rows (with their keys) stay for the next
pass: no blob is ever orphaned by a failed delete. Only one prune runs at a time per database
(a transaction-level advisory lock): two at once could each see the other's not yet deleted row
still referencing a key both removed a reference to, and neither would delete the blob. A
sweeper that finds the lock taken skips its prune for that pass; ``aidist db prune`` waits.
A new job that is about to reference a blob (its client stored or refreshed the blob, then
writes its row) is protected by the blob store: ``delete_blobs`` spares blobs written within a
grace period (``BlobStore.delete(keys, older_than_s)``, see ``blob_deleter``). A pruner given no
``delete_blobs`` leaves every row that references a blob where it is.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, text

from db.blob_base import BlobStore
from db.engine import transaction
from db.s3_blobs import REFRESH_S

#: Rows one prune transaction deletes (with their ~3 history rows each).
PRUNE_BATCH = 1000

#: A blob referenced by a deleted row is spared if it was written or refreshed this recently:
#: a client stores a large input's blob first and writes its row after, so a blob that a row
#: about to be written references may look unreferenced for that moment.
BLOB_GRACE_S = 2 * REFRESH_S  # S3 refreshes a reused blob once it is REFRESH_S old

#: Deletes the blobs of these keys (sparing recent ones); returns how many it deleted.
DeleteBlobs = Callable[[Sequence[str]], int]

_LOCK_KEY = int.from_bytes(hashlib.blake2b(b"aidist-prune", digest_size=8).digest(), "big",
                           signed=True)

# ``doomed`` is MATERIALIZED so the LIMIT and the row locks are taken once (as in
# JobStore.expire_overdue). ``created_at < cutoff`` is implied by ``finished_at < cutoff``
# (a job ends after it is created); with ``ORDER BY status, created_at`` it makes the scan read
# ix_jobs_ended (status, created_at) from the oldest end, whatever the statistics say. Without
# the order, a table mostly past the cutoff (the first prune of an old database) got a
# sequential scan, which every later batch repeats over the rows the earlier ones deleted; the
# index scan marks those entries dead as it passes them, and the next batch skips them.
DELETE_BATCH = text(
    """
    WITH doomed AS MATERIALIZED (
        SELECT id FROM jobs
        WHERE status IN ('succeeded', 'failed', 'cancelled', 'expired')
          AND created_at < now() - make_interval(secs => :age)
          AND finished_at < now() - make_interval(secs => :age)
          AND NOT EXISTS (SELECT 1 FROM jobs AS follower
                          WHERE follower.follows = jobs.id AND follower.status = 'running')
          AND (CAST(:with_blobs AS boolean) OR jobs.blob_keys IS NULL)
        ORDER BY status, created_at
        LIMIT :batch
        FOR UPDATE SKIP LOCKED
    ), gone AS (
        DELETE FROM jobs USING doomed WHERE jobs.id = doomed.id
        RETURNING jobs.id, jobs.blob_keys
    ), history AS (
        DELETE FROM job_events USING gone WHERE job_events.job_id = gone.id
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM gone) AS jobs, (SELECT count(*) FROM history) AS events,
           ARRAY(SELECT DISTINCT key FROM gone, unnest(gone.blob_keys) AS key) AS blob_keys
    """
)

STILL_REFERENCED = text(
    "SELECT DISTINCT key FROM jobs, unnest(jobs.blob_keys) AS key "
    "WHERE jobs.blob_keys && CAST(:keys AS text[]) AND key = ANY(CAST(:keys AS text[]))"
)


@dataclass(frozen=True, slots=True)
class Pruned:
    """What a prune deleted: job rows, their history rows, blobs; ``busy`` if another prune
    held the lock, so this one did nothing."""

    jobs: int = 0
    events: int = 0
    blobs: int = 0
    busy: bool = False

    def __add__(self, other: Pruned) -> Pruned:
        return Pruned(self.jobs + other.jobs, self.events + other.events,
                      self.blobs + other.blobs, other.busy)


class JobPruner:
    """Deletes finished jobs older than a retention (shares the job store's engine). Without
    ``delete_blobs`` it leaves alone every row that references a blob, so it never orphans
    one."""

    def __init__(self, engine: Engine, delete_blobs: DeleteBlobs | None = None) -> None:
        self.engine = engine
        self.delete_blobs = delete_blobs

    def prune_batch(self, older_than_s: float, batch: int = PRUNE_BATCH, *,
                    wait: bool = False) -> Pruned:
        """One transaction: up to ``batch`` finished jobs that ended more than
        ``older_than_s`` ago, their history, and the blobs only they referenced. With
        ``wait`` it waits for another prune's batch to commit; without, it returns ``busy``."""
        with transaction(self.engine) as connection:
            if not _lock(connection, wait):
                return Pruned(busy=True)
            row = connection.execute(DELETE_BATCH, {
                "age": older_than_s, "batch": batch,
                "with_blobs": self.delete_blobs is not None}).one()
            keys = sorted(row.blob_keys or ())
            unreferenced = _unreferenced(connection, keys)
            blobs = 0
            if unreferenced and self.delete_blobs is not None:  # (None: no row had keys)
                # Inside the transaction: if the blob store fails, the rows stay, keys and all.
                blobs = self.delete_blobs(unreferenced)
            return Pruned(int(row.jobs), int(row.events), blobs)

    def prune(self, older_than_s: float, *, batch: int = PRUNE_BATCH, limit: int | None = None,
              wait: bool = False, progress: Callable[[Pruned], None] | None = None) -> Pruned:
        """Batches of ``prune_batch`` until nothing is left to delete, ``limit`` jobs are
        deleted, or (without ``wait``) another prune holds the lock; ``progress`` sees the
        running total after each batch."""
        total = Pruned()
        while limit is None or total.jobs < limit:
            size = batch if limit is None else min(batch, limit - total.jobs)
            done = self.prune_batch(older_than_s, size, wait=wait)
            total = total + done
            if progress is not None:
                progress(total)
            if done.busy or done.jobs < size:
                break
        return total


def blob_deleter(blobs: BlobStore, grace_s: float = BLOB_GRACE_S) -> DeleteBlobs:
    """``delete_blobs`` for a ``JobPruner``: deletes from ``blobs``, sparing what was written
    or refreshed in the last ``grace_s`` seconds."""
    return lambda keys: blobs.delete(keys, older_than_s=grace_s)


def _lock(connection: Connection, wait: bool) -> bool:
    if wait:
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
        return True
    return bool(connection.execute(text("SELECT pg_try_advisory_xact_lock(:key)"),
                                   {"key": _LOCK_KEY}).scalar_one())


def _unreferenced(connection: Connection, keys: list[str]) -> list[str]:
    """Those of ``keys`` that no remaining row carries."""
    if not keys:
        return []
    referenced = set(connection.execute(STILL_REFERENCED, {"keys": keys}).scalars())
    return [key for key in keys if key not in referenced]
