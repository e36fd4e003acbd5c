"""workers.redelivery: a redelivered message is looked at before its jobs are claimed. Only a run
lost with a dead worker is taken over (an attempt, split off, run alone, fenced on that worker);
jobs nobody ran are ordinary deliveries (no attempt, no split, no batch of their own); a later
pipeline step that had not begun is continued, not taken over (with the in-memory doubles)."""

from __future__ import annotations

from typing import Any

from aidist.jobs import JobStatus
from aidist.testing import InMemoryStore
from db import ClaimRequest
from tests.unit.doubles import Harness, Message, Timers
from workers.batching import BatchPolicy, MessageBatcher
from workers.executor import execute


def _batcher(harness: Harness, timers: Timers) -> MessageBatcher:
    return MessageBatcher(lambda: harness.runtime, BatchPolicy(max_jobs=10), timers.call_after)


def _redelivered(entries: list[dict[str, Any]], log: list[str], name: str) -> Message:
    message = Message(([entries], {}, {}), log, name)
    message.delivery_info = {"redelivered": True}
    return message


def _published(harness: Harness) -> list[list[dict[str, Any]]]:
    return [message.entries for _, message in harness.broker.take()]


def test_a_redelivered_message_nobody_ran_joins_the_batches_and_spends_no_attempt(
        harness: Harness) -> None:
    # a warm shutdown or a broker restart handed it back unopened
    log: list[str] = []
    timers = Timers()
    batcher = _batcher(harness, timers)
    entries = [harness.entry("recorder", text) for text in ("a", "b")]
    batcher.add(_redelivered(entries, log, "back"))
    fresh = [harness.entry("recorder", "c")]
    batcher.add(Message(([fresh], {}, {}), log, "new"))
    timers.fire()
    assert _published(harness) == []  # not split
    assert harness.recorder.calls == [(["a", "b", "c"], {})]  # one batch with other messages
    assert [harness.store.attempts[e["id"]] for e in entries] == [1, 1]
    assert sorted(log) == ["ack back", "ack new"]


def test_a_redelivered_message_whose_jobs_all_ended_is_acked_without_a_claim(
        harness: Harness) -> None:
    log: list[str] = []
    entries = [harness.entry("recorder", text) for text in ("a", "b")]
    for entry in entries:
        harness.store.set_state(entry["id"], status=JobStatus.SUCCEEDED, worker="stopped")
    _batcher(harness, Timers()).add(_redelivered(entries, log, "done"))
    assert log == ["ack done"]
    assert harness.store.claim_calls == [] and harness.recorder.calls == []


def test_only_a_run_lost_with_its_worker_is_split_off_and_taken_over(harness: Harness) -> None:
    log: list[str] = []
    timers = Timers()
    batcher = _batcher(harness, timers)
    lost, queued, done = (harness.entry("recorder", text) for text in ("lost", "queued", "done"))
    harness.store.set_state(lost["id"], status=JobStatus.RUNNING, attempts=1, worker="killed")
    harness.store.set_state(done["id"], status=JobStatus.SUCCEEDED, attempts=1, worker="killed")
    batcher.add(_redelivered([lost, queued, done], log, "back"))
    assert log == ["ack back"] and harness.recorder.calls == []
    alone, rest = _published(harness)
    assert [(e["id"], e.get("takeover")) for e in alone] == [(lost["id"], True)]
    assert [(e["id"], e.get("takeover")) for e in rest] == [(queued["id"], None)]
    for name, copy in (("alone", alone), ("rest", rest)):
        batcher.add(Message(([copy], {}, {}), log, name))
    timers.fire()
    assert harness.recorder.calls == [(["lost"], {}), (["queued"], {})]  # the lost one alone
    assert harness.store.attempts[lost["id"]] == 2  # the one run that was lost: one re-run
    assert harness.store.attempts[queued["id"]] == 1
    assert harness.store.attempts[done["id"]] == 1


def test_a_redelivered_job_nobody_ran_runs_on_the_cpu_pool_with_its_message_mates(
        harness: Harness) -> None:
    entries = [harness.entry("recorder", text) for text in ("a", "b")]
    report = execute(harness.runtime, entries, redelivered=True)
    assert report.succeeded == 2 and _published(harness) == []
    assert harness.recorder.calls == [(["a", "b"], {})]
    assert [harness.store.attempts[e["id"]] for e in entries] == [1, 1]


def test_a_redelivered_pipeline_step_that_had_not_begun_is_continued(harness: Harness) -> None:
    # the step waited in a worker's prefetch window; the process that ran the step before it
    # is alive and done with it, and the job's row still names it
    entry = harness.entry("recorder", "step two")
    harness.store.set_state(entry["id"], status=JobStatus.RUNNING, attempts=1, worker="cpu-1")
    harness.cache.put_alive("cpu-1", 60)
    report = execute(harness.runtime, [{**entry, "step": 1, "attempt": 1}], redelivered=True)
    assert report.held == frozenset() and report.succeeded == 1  # not held by that process
    assert harness.store.attempts[entry["id"]] == 1  # continuing is not a new attempt


def test_a_redelivered_pipeline_step_lost_with_its_worker_is_one_re_run(
        harness: Harness) -> None:
    entry = harness.entry("recorder", "step two")
    harness.store.set_state(entry["id"], status=JobStatus.RUNNING, attempts=1, step=1,
                            worker="gpu-killed")
    report = execute(harness.runtime, [{**entry, "step": 1, "attempt": 1}], redelivered=True)
    assert report.succeeded == 1 and harness.store.attempts[entry["id"]] == 2


def test_a_takeover_takes_a_run_only_from_the_worker_it_saw_dead() -> None:
    store = InMemoryStore()
    job_id = store.add(status=JobStatus.RUNNING, attempts=1, worker="dead")
    # a second copy of the message came back too, and its worker took the run over first
    (taken,) = store.claim([ClaimRequest(job_id, takeover=True, holder="dead")], "b")
    assert taken.attempt == 2
    assert store.claim([ClaimRequest(job_id, takeover=True, holder="dead")], "c") == []
    assert store.get(job_id).worker == "b" and store.get(job_id).attempts == 2


def test_a_takeover_of_a_step_that_had_not_begun_spends_no_attempt() -> None:
    store = InMemoryStore()
    job_id = store.add(status=JobStatus.RUNNING, attempts=1, worker="cpu-1")  # at step 0
    (continued,) = store.claim([ClaimRequest(job_id, step=1, attempt=1, takeover=True)], "gpu")
    assert continued.attempt == 1
    (again,) = store.claim([ClaimRequest(job_id, step=1, attempt=1, takeover=True,
                                         holder="gpu")], "gpu-2")
    assert again.attempt == 2  # the step's own run, lost: taken over


def test_runs_tell_status_step_and_worker() -> None:
    store = InMemoryStore()
    job_id = store.add(status=JobStatus.RUNNING, attempts=1, step=1, worker="w")
    (run,) = store.runs([job_id, "not-a-uuid"]).values()
    assert (run.status, run.step, run.worker) == (JobStatus.RUNNING, 1, "w")
