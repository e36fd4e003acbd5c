"""producers.waiting.CompletionTracker with several threads waiting on one reply list: one reads
it at a time, and a thread whose notice another thread's read brought learns it at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from aidist.jobs import JobStatus
from aidist.testing import InMemoryCache, InMemoryStore
from db import Notice
from producers import waiting
from producers.waiting import CompletionTracker

WAIT_S = 10.0


def _until(condition: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    pause = threading.Event()  # never set
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not in {WAIT_S} s"
        pause.wait(0.001)


def test_a_notice_read_by_another_thread_ends_a_wait_at_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Waits so long that only the hand-over can end B's wait within the test's deadline (before
    # it, B blocked on the reader's turn, then on the next notice, up to these).
    monkeypatch.setattr(waiting, "POLL_START_S", 600.0)
    monkeypatch.setattr(waiting, "NOTICE_WAIT_MAX_S", 600.0)
    cache, store = InMemoryCache(), InMemoryStore()
    reply_to = cache.reply_key("client")
    tracker = CompletionTracker(cache, store, reply_to)
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
