"""aidist.ids: job ids are version-7 UUIDs that grow with the time they were made."""

from __future__ import annotations

import time
import uuid

from aidist.ids import new_job_id
from db.job_reads import is_uuid


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


def test_the_store_takes_what_uuid_reads_and_nothing_else() -> None:
    # is_uuid answers the canonical form with a regex and parses the rest: both agree with
    # uuid.UUID, which the store's id checks stood on before.
    job_id = new_job_id()
    for value in (job_id, job_id.upper(), job_id.replace("-", ""), "{" + job_id + "}"):
        assert is_uuid(value)
    for value in ("", "not-a-uuid", job_id[:-1], job_id + "0", job_id.replace("-", "_"),
                  "g" + job_id[1:], " " + job_id + "\n"):
        assert is_uuid(value) is _parses(value), value


def _parses(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True
