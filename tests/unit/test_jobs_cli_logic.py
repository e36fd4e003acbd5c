"""The pure parts of ``aidist jobs``: a tail that neither skips nor repeats transitions whose
seqs commit out of order, times given as "10m ago" or ISO, and a job's queue wait and run time
from its history."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from aidist.cli_jobs import EventFollower, parse_when, timings
from aidist.errors import InvalidInput
from aidist.jobs import JobKind, JobStatus
from db.records import JobEvent, JobRecord

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def _event(seq: int, status: JobStatus = JobStatus.QUEUED, at_s: float = 0.0, attempt: int = 0,
           step: int = 0) -> JobEvent:
    return JobEvent(seq, "job", T0 + timedelta(seconds=at_s), status, attempt, step, "w", "t")


class Table:
    """The visible part of job_events: what committed so far."""

    def __init__(self) -> None:
        self.visible: dict[int, JobEvent] = {}
        self.asked_again: list[list[int]] = []

    def commit(self, *seqs: int) -> None:
        self.visible.update({seq: _event(seq) for seq in seqs})

    def read(self, after: int, limit: int, also: Sequence[int]) -> list[JobEvent]:
        self.asked_again.append(list(also))
        seqs = sorted(s for s in self.visible if s > after or s in also)
        return [self.visible[s] for s in seqs[:limit]]


def test_a_seq_that_commits_after_a_higher_one_is_still_read_once() -> None:
    table, now = Table(), [0.0]
    follower = EventFollower(table.read, after=0, grace_s=10.0, clock=lambda: now[0])
    table.commit(1, 3)  # 2's transaction has not committed yet
    assert [e.seq for e in follower.poll()] == [1, 3]
    assert follower.poll() == []
    assert table.asked_again[-1] == [2]
    table.commit(2, 4)
    assert [e.seq for e in follower.poll()] == [2, 4]
    assert follower.poll() == []
    assert table.asked_again[-1] == []


def test_a_seq_that_never_commits_is_given_up_after_the_grace() -> None:
    table, now = Table(), [0.0]
    follower = EventFollower(table.read, after=0, grace_s=10.0, clock=lambda: now[0])
    table.commit(1, 5)
    follower.poll()
    now[0] = 9.0
    follower.poll()
    assert table.asked_again[-1] == [2, 3, 4]
    now[0] = 11.0
    follower.poll()
    assert table.asked_again[-1] == []


def test_the_follower_starts_after_its_cursor_and_reads_in_pages() -> None:
    table = Table()
    table.commit(*range(1, 8))
    follower = EventFollower(table.read, after=3, batch=2)
    assert [e.seq for e in follower.poll()] == [4, 5]
    assert [e.seq for e in follower.poll()] == [6, 7]
    assert follower.poll() == []


def test_parse_when_takes_durations_ago_and_iso_times() -> None:
    assert parse_when("10m", T0) == T0 - timedelta(minutes=10)
    assert parse_when("1.5h", T0) == T0 - timedelta(minutes=90)
    assert parse_when("2d", T0) == T0 - timedelta(days=2)
    assert parse_when("2024-05-01T10:00+02:00", T0) == datetime(2024, 5, 1, 8, 0, tzinfo=UTC)
    assert parse_when("2024-05-01T10:00", T0).tzinfo is not None  # local time
    with pytest.raises(InvalidInput, match="neither a duration"):
        parse_when("yesterday", T0)


def _record(status: JobStatus, started_s: float | None, finished_s: float | None) -> JobRecord:
    def at(s: float | None) -> datetime | None:
        return None if s is None else T0 + timedelta(seconds=s)
    return JobRecord("job", JobKind.INFER, "t", "v", "k", status, 2, False, 0, {}, None, None,
                     None, T0, at(started_s), at(finished_s), "w", None)


def test_timings_take_the_first_run_for_the_wait_and_the_last_attempt_for_the_run() -> None:
    history = [_event(1), _event(2, JobStatus.RUNNING, 2.0, attempt=1),
               _event(3, JobStatus.RUNNING, 5.0, attempt=2),
               _event(4, JobStatus.RUNNING, 6.0, attempt=2, step=1),
               _event(5, JobStatus.SUCCEEDED, 9.0, attempt=2, step=1)]
    assert timings(_record(JobStatus.SUCCEEDED, 6.0, 9.0), history) == (2.0, 4.0)
    assert timings(_record(JobStatus.QUEUED, None, None), [_event(1)]) == (None, None)
    # a row from before the history: started_at (its last claim) stands in
    assert timings(_record(JobStatus.SUCCEEDED, 1.0, 3.0), []) == (1.0, 2.0)
