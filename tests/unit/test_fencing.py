"""workers.executor's exactly-once side: which deliveries may run a job (duplicates, redeliveries,
pipeline steps, jobs held by a live worker, rows that do not exist), coalescing of identical jobs,
attempt budgets and cancellation (with the in-memory doubles of tests.unit.doubles)."""

from __future__ import annotations

from typing import Any

import pytest

from aidist import codec
from aidist.jobs import JobStatus
from tests.unit.doubles import Harness
from workers.executor import BatchReport, execute


def test_a_finished_job_is_skipped_not_run(harness: Harness) -> None:
    fresh = harness.entry("recorder", "fresh")
    done = harness.entry("recorder", "already done", known=False)
    report = harness.run([fresh, done])

    assert harness.recorder.inputs == ["fresh"]
    assert done["id"] not in harness.store.finished
    assert done["key"] not in harness.cache.results
    assert all(n.job_id != done["id"] for n in harness.cache.notices["client-a"])
    assert report.skipped == 1
    assert report.ran == 1


def test_a_redelivered_message_does_not_run_jobs_twice(harness: Harness) -> None:
    entries = [harness.entry("recorder", text) for text in ("x", "y")]
    harness.run(entries)
    report = harness.run(entries)
    assert harness.recorder.inputs == ["x", "y"]
    assert report == BatchReport(received=2, ran=0, succeeded=0, failed=0, skipped=2, expired=0)


def test_a_redelivery_takes_over_the_run_of_a_lost_worker(harness: Harness) -> None:
    entry = harness.entry("flaky", "again")
    harness.store.add(entry["id"], status=JobStatus.RUNNING, attempts=2,
                      worker="lost-worker")  # its mark is gone
    execute(harness.runtime, [entry], redelivered=True)
    assert harness.outcome(entry).attempt == 3
    assert harness.store.status[entry["id"]] is JobStatus.SUCCEEDED


def test_a_duplicate_first_delivery_of_a_running_job_does_not_run_it(harness: Harness) -> None:
    entry = harness.entry("recorder", "held elsewhere")
    harness.store.add(entry["id"], status=JobStatus.RUNNING, attempts=1)  # another worker has it
    report = harness.run([entry])
    assert report.skipped == 1 and report.ran == 0
    assert harness.recorder.calls == []
    assert harness.store.status[entry["id"]] is JobStatus.RUNNING
    assert harness.store.attempts[entry["id"]] == 1


def test_a_pipeline_step_runs_only_for_the_run_that_forwarded_it(harness: Harness) -> None:
    entry = harness.entry("recorder", "step two")
    harness.store.add(entry["id"], status=JobStatus.RUNNING, attempts=2)
    stale = {**entry, "step": 1, "attempt": 1}  # forwarded by attempt 1, since taken over
    assert harness.run([stale]).skipped == 1
    assert harness.recorder.calls == []
    current = {**entry, "step": 1, "attempt": 2}
    assert harness.run([current]).succeeded == 1
    assert harness.outcome(entry).attempt == 2  # continuing a pipeline is not a new attempt
    assert harness.run([current]).skipped == 1  # the same step delivered twice runs once
    assert harness.recorder.inputs == ["step two"]


def test_a_job_whose_result_is_already_stored_does_not_run_again(harness: Harness) -> None:
    first = harness.entry("recorder", "same text")
    harness.run([first])
    twin = harness.entry("recorder", "same text")  # submitted while the first one was running
    report = harness.run([twin])
    assert report.succeeded == 1
    assert harness.recorder.inputs == ["same text"]
    assert harness.store.status[twin["id"]] is JobStatus.SUCCEEDED
    assert harness.outcome(twin).result == harness.cache.results[twin["key"]]


def test_succeeded_outcomes_carry_a_durable_copy_of_the_result(harness: Harness) -> None:
    entry = harness.entry("recorder", "keep me")
    harness.run([entry])
    stored = harness.outcome(entry).result
    assert stored is not None and codec.decode(stored) == "keep me:"


def test_a_job_out_of_attempts_fails_without_running(harness: Harness) -> None:
    entry = harness.entry("recorder", "crashes its worker every time")
    harness.store.set_state(entry["id"], attempts=harness.runtime.settings.max_attempts)
    report = harness.run([entry])
    assert harness.recorder.calls == []  # never run again
    assert harness.store.status[entry["id"]] is JobStatus.FAILED
    assert report.ran == 0
    (notice,) = harness.cache.notices["client-a"]
    assert notice.status == "failed" and "gave up after" in (notice.error or "")


def test_identical_jobs_in_one_batch_run_once(harness: Harness) -> None:
    twins = [harness.entry("recorder", "same input") for _ in range(3)]
    other = harness.entry("recorder", "different")
    report = harness.run([*twins, other])
    assert sorted(harness.recorder.inputs) == ["different", "same input"]
    assert report.succeeded == 4
    assert {harness.store.status[e["id"]] for e in [*twins, other]} == {JobStatus.SUCCEEDED}
    assert len(harness.cache.notices["client-a"]) == 4


def test_a_job_cancelled_while_running_gets_no_notice_and_stays_cancelled(
        harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    kept, cancelled = harness.entry("recorder", "kept"), harness.entry("recorder", "dropped")
    original = harness.store.claim

    def claim_then_cancel(requests: Any, worker: str, max_attempts: int = 8) -> Any:
        claims = original(requests, worker, max_attempts)
        harness.store.set_state(cancelled["id"], status=JobStatus.CANCELLED)  # cancel() meanwhile
        return claims

    monkeypatch.setattr(harness.store, "claim", claim_then_cancel)
    harness.run([kept, cancelled])
    assert harness.store.status[cancelled["id"]] is JobStatus.CANCELLED
    assert [n.job_id for n in harness.cache.notices["client-a"]] == [kept["id"]]


def test_jobs_without_a_row_are_reported_missing_not_run(harness: Harness) -> None:
    ghost = harness.entry("recorder", "nobody wrote my row", known=False)
    report = harness.run([ghost])
    assert report.missing == {ghost["id"]}
    assert harness.recorder.calls == []


def test_a_redelivery_waits_while_the_job_runs_on_a_live_worker(harness: Harness) -> None:
    entry = harness.entry("recorder", "still running elsewhere")
    harness.store.add(entry["id"], status=JobStatus.RUNNING, attempts=1)
    harness.store.set_state(entry["id"], worker="other-worker")
    harness.cache.put_alive("other-worker", 60)  # a broker restart redelivered it mid-run
    report = execute(harness.runtime, [entry], redelivered=True)
    assert report.held == {entry["id"]}
    assert harness.recorder.calls == [] and harness.store.attempts[entry["id"]] == 1
    harness.cache.expire_alive("other-worker")  # that worker died: its mark expired
    report = execute(harness.runtime, [entry], redelivered=True)
    assert report.held == frozenset() and report.succeeded == 1
    assert harness.store.attempts[entry["id"]] == 2
