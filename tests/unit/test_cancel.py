"""Cancelling a running job: dropped at the next batch boundary, and the output of a batch that
was already running is neither cached, recorded, reported nor forwarded (the executor reads the
cancel marks a client's ``Job.cancel()`` leaves in Redis, here the in-memory cache)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from aidist.jobs import JobKind, JobStatus
from models import LoadContext, ModelSpec, Runner
from tests.unit.doubles import Harness


def _register_cancelling(harness: Harness, name: str) -> list[str]:
    """A model that cancels, as a client would while it runs, the job ids put in the returned
    list (so a test can cancel a job exactly while a batch is running)."""
    to_cancel: list[str] = []

    def load(context: LoadContext) -> Runner:
        def run(inputs: Sequence[Any], params: dict[str, Any]) -> list[Any]:
            for job_id in to_cancel:
                harness.store.cancel(job_id)
                harness.cache.mark_cancelled([job_id], 60.0)
            return [f"{text}!" for text in inputs]

        return run

    harness.registry.register(ModelSpec(name=name, kind=JobKind.INFER, loader=load,
                                        version=f"{name}-1", max_batch_size=8))
    return to_cancel


def _entry_in_group(harness: Harness, tag: str) -> Callable[[str], dict[str, Any]]:
    return lambda text: harness.entry("recorder", text, params={"tag": tag})


def test_a_job_cancelled_while_its_own_batch_runs_leaves_nothing(harness: Harness) -> None:
    to_cancel = _register_cancelling(harness, "canceller")
    doomed, kept = (harness.entry("canceller", text) for text in ("doomed", "kept"))
    to_cancel.append(doomed["id"])
    report = harness.run([doomed, kept])
    assert report.cancelled == 1
    assert harness.store.status[doomed["id"]] is JobStatus.CANCELLED  # the client's, untouched
    assert doomed["key"] not in harness.cache.results  # its output was not cached
    assert harness.result(kept) == "kept!"  # its batch-mate is unaffected
    assert harness.store.status[kept["id"]] is JobStatus.SUCCEEDED
    notified = [n.job_id for n in harness.cache.notices.get("client-a", [])]
    assert notified == [kept["id"]]
    assert {o.id for o in report.outcomes} == {kept["id"]}


def test_a_job_cancelled_during_an_earlier_group_is_not_run(harness: Harness) -> None:
    to_cancel = _register_cancelling(harness, "canceller")
    first = harness.entry("canceller", "first")
    later = _entry_in_group(harness, "later")("never run")
    to_cancel.append(later["id"])  # cancelled while the first group runs
    report = harness.run([first, later])
    assert report.cancelled == 1
    assert harness.recorder.inputs == []  # the later group's only job was dropped
    assert later["key"] not in harness.cache.results
    assert harness.result(first) == "first!"


def test_a_cancelled_pipeline_job_gets_no_next_step(harness: Harness) -> None:
    to_cancel = _register_cancelling(harness, "canceller")
    entry = harness.entry("canceller", "step one")
    entry["steps"] = [{"kind": "infer", "target": "recorder", "version": "rec-1", "params": {}}]
    to_cancel.append(entry["id"])
    report = harness.run([entry])
    assert report.cancelled == 1
    assert harness.broker.queued() == 0  # no continuation was published


def test_jobs_sharing_a_cancelled_jobs_input_keep_the_result(harness: Harness) -> None:
    to_cancel = _register_cancelling(harness, "canceller")
    doomed = harness.entry("canceller", "same input")
    twin = harness.entry("canceller", "same input")
    assert twin["key"] == doomed["key"]
    to_cancel.append(doomed["id"])
    harness.run([doomed, twin])
    assert harness.result(twin) == "same input!"  # the content-keyed result stays for the twin
    assert harness.store.status[twin["id"]] is JobStatus.SUCCEEDED
