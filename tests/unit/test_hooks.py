"""workers.hooks: every flush passes its hooks, a failing hook never fails a flush, and the
built-in duties (the watchdog here) plug in as hooks."""

from __future__ import annotations

from typing import Any

import pytest

from aidist.errors import ServicesDown, ServiceUnavailable
from aidist.jobs import JobStatus
from db import Claim, ClaimRequest
from tests.unit.doubles import Harness
from workers import executor
from workers.hooks import BatchReport, Flush, Hooks, ProcessView, WorkerHook
from workers.watchdog import Watchdog


class Recording(WorkerHook):
    def __init__(self) -> None:
        self.seen: list[tuple[str, Any]] = []

    def process_started(self, process: ProcessView) -> None:
        self.seen.append(("process", process.name))

    def flush_started(self, flush: Flush) -> None:
        self.seen.append(("started", flush.jobs))

    def flush_ended(self, flush: Flush, report: BatchReport | None) -> None:
        self.seen.append(("ended", None if report is None else report.succeeded))


class Broken(WorkerHook):
    def flush_started(self, flush: Flush) -> None:
        raise RuntimeError("a metrics bug")

    def flush_ended(self, flush: Flush, report: BatchReport | None) -> None:
        raise RuntimeError("a metrics bug")


def test_a_flush_passes_every_hook_with_its_report(harness: Harness) -> None:
    recording = Recording()
    harness.runtime.hooks = Hooks([recording])
    entries = [harness.entry("recorder", text) for text in ("a", "b", "c", "d")]
    report = harness.run(entries)
    assert recording.seen == [("started", 4), ("ended", 4)]
    assert {o.id for o in report.outcomes} == {e["id"] for e in entries}
    assert {o.status for o in report.outcomes} == {JobStatus.SUCCEEDED}


def test_a_failing_hook_is_logged_and_the_flush_goes_on(harness: Harness,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    recording = Recording()
    harness.runtime.hooks = Hooks([Broken(), recording])
    entry = harness.entry("recorder", "a")
    report = harness.run([entry])
    assert report.succeeded == 1
    assert harness.store.status[entry["id"]] is JobStatus.SUCCEEDED
    assert recording.seen == [("started", 1), ("ended", 1)]  # the hook after it still ran
    assert "worker hook Broken.flush_started failed" in caplog.text


def test_a_flush_that_raises_ends_with_no_report(harness: Harness,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    recording = Recording()
    harness.runtime.hooks = Hooks([recording])

    def claim_down(requests: list[ClaimRequest], worker: str, max_attempts: int = 8
                   ) -> list[Claim]:
        raise ServiceUnavailable("PostgreSQL", "postgresql://db", "connection refused")

    monkeypatch.setattr(harness.store, "claim", claim_down)
    monkeypatch.setattr(executor, "SERVICE_RETRY_S", 0.0)
    with pytest.raises(ServicesDown):
        harness.run([harness.entry("recorder", "a")])
    assert recording.seen == [("started", 1), ("ended", None)]


def test_the_watchdog_watches_each_flush_as_a_hook(harness: Harness) -> None:
    overruns: list[str] = []
    watchdog = Watchdog(3600.0, lambda what, _: overruns.append(what))
    watching: list[int] = []

    class Probe(WorkerHook):
        def flush_started(self, flush: Flush) -> None:
            watching.append(watchdog.watching)

    harness.runtime.hooks = Hooks([watchdog, Probe()])
    harness.run([harness.entry("recorder", "a")])
    assert watching == [1]  # watched while the flush ran
    assert watchdog.watching == 0  # and no longer after it
    assert overruns == []
