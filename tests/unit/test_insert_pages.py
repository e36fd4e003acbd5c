"""db.store.insert_pages: an insert is cut by rows and by payload bytes, never splitting a row
and never leaving one out."""

from __future__ import annotations

import uuid

from aidist.jobs import JobKind
from db.records import NewJob
from db.store import insert_pages


def _jobs(*sizes: int | None) -> list[NewJob]:
    return [NewJob(str(uuid.uuid4()), JobKind.INFER, "toy", "v", f"k{i}",
                   None if size is None else b"x" * size) for i, size in enumerate(sizes)]


def test_pages_hold_at_most_the_rows_and_the_bytes() -> None:
    jobs = _jobs(4, 4, None, 4, 9, 1, 1, 1)
    pages = insert_pages(jobs, rows=3, payload_bytes=8)
    assert [[job.cache_key for job in page] for page in pages] == [
        ["k0", "k1", "k2"], ["k3"], ["k4"], ["k5", "k6", "k7"]]  # k4 alone is over 8 bytes
    assert [job for page in pages for job in page] == jobs


def test_one_page_when_everything_fits() -> None:
    jobs = _jobs(1, 2, 3)
    assert insert_pages(jobs) == [jobs]
