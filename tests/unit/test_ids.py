"""aidist.ids: job ids are version-7 UUIDs that grow with the time they were made."""

from __future__ import annotations

import time
import uuid

from aidist.ids import new_job_id


def test_job_ids_are_version_7_uuids_of_the_current_millisecond() -> None:
    before = time.time_ns() // 1_000_000
    ids = [uuid.UUID(new_job_id()) for _ in range(1000)]
    after = time.time_ns() // 1_000_000
    assert {(u.version, u.variant) for u in ids} == {(7, uuid.RFC_4122)}
    assert all(before <= u.int >> 80 <= after for u in ids)
    assert len(set(ids)) == 1000


def test_ids_made_later_sort_after_earlier_ones() -> None:
    first = new_job_id()
    millis = time.time_ns() // 1_000_000
    while time.time_ns() // 1_000_000 == millis:  # the next millisecond, not a fixed sleep
        pass
    assert uuid.UUID(new_job_id()) > uuid.UUID(first)
