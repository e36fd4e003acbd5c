"""producers.grouping: concurrent single submissions share a flush; a lone one never waits."""

from __future__ import annotations

import threading

import pytest

from producers import grouping
from producers.grouping import GroupSubmitter
from tests.unit.doubles import wait_until


def test_lone_submit_flushes_at_once() -> None:
    batches: list[list[int]] = []

    def flush(items: list[int]) -> list[int]:
        batches.append(items)
        return [item * 10 for item in items]

    group: GroupSubmitter[int, int] = GroupSubmitter(flush)
    assert group.submit(1) == 10
    assert group.submit(2) == 20
    assert batches == [[1], [2]]


def test_callers_arriving_during_a_flush_share_the_next_one() -> None:
    release = threading.Event()
    batches: list[list[int]] = []

    def flush(items: list[int]) -> list[int]:
        batches.append(items)
        if len(batches) == 1:
            release.wait(10)
        return [item * 10 for item in items]

    group: GroupSubmitter[int, int] = GroupSubmitter(flush)
    results: dict[int, int] = {}

    def call(item: int) -> None:
        results[item] = group.submit(item)

    first = threading.Thread(target=call, args=(0,))
    first.start()
    assert wait_until(lambda: len(batches) == 1)
    others = [threading.Thread(target=call, args=(item,)) for item in (1, 2, 3)]
    for thread in others:
        thread.start()
    assert wait_until(lambda: len(group._pending) == 3)
    release.set()
    for thread in [first, *others]:
        thread.join(10)
    assert batches[0] == [0] and sorted(batches[1]) == [1, 2, 3] and len(batches) == 2
    assert results == {0: 0, 1: 10, 2: 20, 3: 30}


def test_a_failed_flush_raises_in_every_caller_of_that_flush() -> None:
    def flush(items: list[int]) -> list[int]:
        raise ConnectionError("broker down")

    group: GroupSubmitter[int, int] = GroupSubmitter(flush)
    with pytest.raises(ConnectionError, match="broker down"):
        group.submit(1)
    group._flush = lambda items: [7 for _ in items]
    assert group.submit(2) == 7  # the submitter is usable again


def _recording_group() -> tuple[GroupSubmitter[int, int], list[list[int]]]:
    """A submitter whose flushes are recorded and answer each item times ten."""
    batches: list[list[int]] = []

    def flush(items: list[int]) -> list[int]:
        batches.append(items)
        return [item * 10 for item in items]

    return GroupSubmitter(flush), batches


def test_under_load_a_flush_waits_briefly_for_the_other_submitting_threads(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # So long a gathering that only the other thread's call can end it within the deadline.
    monkeypatch.setattr(grouping, "RECENT_S", 600.0)
    monkeypatch.setattr(grouping, "GATHER_S", 600.0)
    group, batches = _recording_group()
    assert group.submit(1) == 10  # a lone thread: at once
    results: dict[int, int] = {}
    other = threading.Thread(target=lambda: results.update({2: group.submit(2)}))
    other.start()  # this thread submitted recently: the other's flush waits for its next call
    assert wait_until(lambda: group._gatherer)
    assert batches == [[1]]
    assert group.submit(3) == 30
    other.join(10)
    assert batches == [[1], [2, 3]] and results == {2: 20}


def test_a_gathering_flush_goes_without_a_thread_that_does_not_call_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(grouping, "RECENT_S", 600.0)
    monkeypatch.setattr(grouping, "GATHER_S", 0.01)
    group, batches = _recording_group()
    assert group.submit(1) == 10
    results: dict[int, int] = {}
    other = threading.Thread(target=lambda: results.update({2: group.submit(2)}))
    other.start()
    other.join(10)
    assert batches == [[1], [2]] and results == {2: 20}
