"""producers.waiting.CompletionTracker with several threads waiting on one reply list: one reads
it at a time, and a thread whose notice another thread's read brought learns it at once."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

import pytest

from aidist.jobs import JobKind, JobStatus
from aidist.testing import InMemoryCache, InMemoryStore
from db import Notice
from db.records import NewJob
from producers import waiting
from producers.waiting import CompletionTracker

WAIT_S = 10.0


def _until(condition: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    pause = threading.Event()  # never set
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not in {WAIT_S} s"
        pause.wait(0.001)


def _tracker(monkeypatch: pytest.MonkeyPatch, **waits: float
             ) -> tuple[InMemoryCache, InMemoryStore, CompletionTracker]:
    """A tracker on in-memory doubles, with ``producers.waiting``'s timings set to ``waits``."""
    for name, seconds in waits.items():
        monkeypatch.setattr(waiting, name, seconds)
    cache, store = InMemoryCache(), InMemoryStore()
    return cache, store, CompletionTracker(cache, store, cache.reply_key("client"))


def _finished_row(store: InMemoryStore) -> str:
    row = NewJob(id=str(uuid.uuid4()), kind=JobKind.INFER, target="t", version="1",
                 cache_key="k", payload=None, status=JobStatus.SUCCEEDED)
    store.insert_jobs([row])  # finished with no notice: a wait learns it from Postgres alone
    return row.id


def test_a_notice_read_by_another_thread_ends_a_wait_at_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Waits so long that only the hand-over can end B's wait within the test's deadline (before
    # it, B blocked on the reader's turn, then on the next notice, up to these).
    cache, _, tracker = _tracker(monkeypatch, POLL_START_S=600.0, NOTICE_WAIT_MAX_S=600.0)
    reply_to = tracker.reply_to
    got: dict[str, list[str]] = {"a": [], "b": []}

    def wait_on(name: str, job_id: str) -> None:
        got[name] = [f.job_id for f in tracker.iter_finished([job_id], timeout_s=None)]

    a = threading.Thread(target=wait_on, args=("a", "job-x"), daemon=True)
    a.start()
    _until(lambda: tracker._reading, "A reads the reply list")
    b = threading.Thread(target=wait_on, args=("b", "job-y"), daemon=True)
    b.start()
    cache.notify({reply_to: [Notice("job-y", JobStatus.SUCCEEDED.value)]})  # only B's job
    b.join(WAIT_S)
    assert not b.is_alive() and got["b"] == ["job-y"]
    assert a.is_alive()  # A still waits for its own job's notice
    cache.notify({reply_to: [Notice("job-x", JobStatus.FAILED.value, "boom")]})
    a.join(WAIT_S)
    assert got["a"] == ["job-x"]
    finished = tracker.known("job-x")
    assert finished is not None and finished.error == "boom"


def test_a_long_lived_client_keeps_a_bounded_number_of_statuses() -> None:
    cache, store = InMemoryCache(), InMemoryStore()
    tracker = CompletionTracker(cache, store, cache.reply_key("client"), known_max=10)
    old_id = _finished_row(store)
    tracker.record(old_id, JobStatus.SUCCEEDED)
    later = [f"job-{i}" for i in range(30)]
    for job_id in later:
        tracker.record(job_id, JobStatus.SUCCEEDED)
    assert len(tracker._finished) <= 10 and len(tracker._order) <= 10
    assert tracker.known(later[-1]) is not None
    assert tracker.known(old_id) is None  # forgotten...
    # ...so a wait on it asks Postgres (here its double), and still ends
    assert [f.job_id for f in tracker.iter_finished([old_id], timeout_s=WAIT_S)] == [old_id]
    # and what is learned after the forgetting is found as before
    waiter = tracker.iter_finished(["job-new"], timeout_s=WAIT_S)
    tracker.record("job-new", JobStatus.FAILED, "boom")
    assert [(f.job_id, f.error) for f in waiter] == [("job-new", "boom")]


def test_a_quiet_reply_list_sends_a_wait_to_postgres_soon(
        monkeypatch: pytest.MonkeyPatch) -> None:
    _, store, tracker = _tracker(monkeypatch, POLL_START_S=0.01, POLL_MAX_S=600.0)
    job_id = _finished_row(store)
    assert [f.job_id for f in tracker.iter_finished([job_id], timeout_s=WAIT_S)] == [job_id]
    assert tracker.polls == 1


def test_notices_of_other_jobs_put_off_asking_postgres(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Notices are coming, so a job without one is taken to be still queued in a busy queue:
    # before, each wait asked Postgres after POLL_START_S; now only after POLL_MAX_S.
    cache, store, tracker = _tracker(monkeypatch, POLL_START_S=0.01, POLL_MAX_S=600.0)
    reply_to = tracker.reply_to
    cache.notify({reply_to: [Notice("job-a", JobStatus.SUCCEEDED.value)]})
    assert [f.job_id for f in tracker.iter_finished(["job-a"], timeout_s=WAIT_S)] == ["job-a"]
    job_id = _finished_row(store)
    waiter = tracker.iter_finished([job_id], timeout_s=0.3)
    # found by the final look when the wait's time is up, with no poll before it
    assert [f.job_id for f in waiter] == [job_id]
    assert tracker.polls == 0
