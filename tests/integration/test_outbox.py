"""producers.outbox.SentMarker against the real job store: published ids leave the outbox."""

from __future__ import annotations

import pytest

from db.store import JobStore
from producers.outbox import SentMarker
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
    marker = SentMarker(store, every_s=0.05)
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
