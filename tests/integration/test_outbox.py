"""producers.outbox.SentMarker against the real job store: published ids leave the outbox."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from db.records import ClaimRequest
from db.store import JobStore
from producers.outbox import SentMarker, mark_after
from tests.conftest import wait_for
from tests.integration.conftest import NewJobFactory

pytestmark = pytest.mark.integration


def _unsent(store: JobStore, job_id: str) -> bool:
    found: list[str] = []
    store.sweep_unsent(0, 100_000, lambda rows: found.extend(r.id for r in rows) or [])
    return job_id in found


def test_marked_ids_leave_the_outbox_in_the_background(store: JobStore,
                                                       new_job: NewJobFactory) -> None:
    published, unpublished = new_job(), new_job()
    store.insert_jobs([published, unpublished])
    marker = SentMarker(store, every_s=0.05, after_s=0)
    marker.add([published.id])
    wait_for(lambda: not _unsent(store, published.id), timeout=30,
             message="the marker thread to mark the job sent")
    assert _unsent(store, unpublished.id)
    marker.close()


def test_close_marks_what_is_left(store: JobStore, new_job: NewJobFactory) -> None:
    job = new_job()
    store.insert_jobs([job])
    marker = SentMarker(store, every_s=3600)
    marker.add([job.id])
    marker.close()
    assert not _unsent(store, job.id)


def _sent_at_is_set(store: JobStore, job_id: str) -> bool:
    with store.engine.connect() as connection:
        return bool(connection.execute(text("SELECT sent_at IS NOT NULL FROM jobs WHERE id = :id"),
                                       {"id": job_id}).scalar())


def test_ids_wait_their_delay_and_claimed_jobs_are_not_rewritten(
        store: JobStore, new_job: NewJobFactory) -> None:
    queued, claimed = new_job(), new_job()
    store.insert_jobs([queued, claimed])
    marker = SentMarker(store, every_s=3600, after_s=3600)
    marker.add([queued.id, claimed.id])
    marker.flush(due_by=0.0)  # nothing was added that long ago
    assert not _sent_at_is_set(store, queued.id)
    assert store.claim([ClaimRequest(claimed.id)], "w")
    marker.close()  # due or not, close marks what is left
    assert _sent_at_is_set(store, queued.id)
    assert not _sent_at_is_set(store, claimed.id)  # running: the sweeper never looks at it


def test_the_delay_stays_well_inside_the_sweepers_age_limit() -> None:
    assert mark_after(30.0) == 2.0
    assert mark_after(1.0) == 0.25


def test_jobs_the_client_knows_ended_are_not_marked(store: JobStore,
                                                    new_job: NewJobFactory) -> None:
    # The client learned of ``ended`` already (here it only says so: its row is still queued,
    # which shows the marker asked the client and not the row).
    ended, pending = new_job(), new_job()
    store.insert_jobs([ended, pending])
    asked: list[list[str]] = []

    def unfinished(job_ids: list[str]) -> list[str]:
        asked.append(list(job_ids))
        return [job_id for job_id in job_ids if job_id != ended.id]

    marker = SentMarker(store, every_s=3600, unfinished=unfinished)
    marker.add([ended.id, pending.id])
    marker.close()
    assert asked == [[ended.id, pending.id]]
    assert _sent_at_is_set(store, pending.id)
    assert not _sent_at_is_set(store, ended.id)
