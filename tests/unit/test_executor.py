"""workers.executor and workers.runtime running jobs: batches, bad inputs, model loading, results,
notices (with the in-memory doubles of tests.unit.doubles)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from tenacity import wait_none

from aidist import codec
from aidist.errors import ModelLoadError, PoisonMessage, TransientError
from aidist.jobs import JobKind, JobStatus
from db import ClaimRequest, Notice
from models import LoadContext, ModelSpec, Runner
from tests.unit.doubles import TTL_S, Harness
from workers import model_runs
from workers.executor import NOTICE_RESULT_MAX, BatchReport, parse_entries


def test_one_bad_input_fails_only_its_own_job(harness: Harness) -> None:
    texts = ["a", "bb", "boom", "cccc"]
    entries = [harness.entry("flaky", text) for text in texts]
    report = harness.run(entries)

    assert report == BatchReport(received=4, ran=4, succeeded=3, failed=1, skipped=0, expired=0)
    bad = harness.outcome(entries[2])
    assert bad.status is JobStatus.FAILED
    assert bad.error is not None
    assert "ValueError" in bad.error
    assert "flaky model refuses 'boom'" in bad.error
    for entry, text in zip(entries, texts, strict=True):
        if text == "boom":
            assert entry["key"] not in harness.cache.results
            continue
        assert harness.outcome(entry).status is JobStatus.SUCCEEDED
        assert harness.outcome(entry).error is None
        assert harness.result(entry) == len(text)
    assert set(harness.cache.results) == {e["key"] for e in entries if e["input"] != "boom"}
    assert harness.cache.ttls == [TTL_S]
    assert {job_id: harness.store.status[job_id] for job_id in harness.store.status} == {
        e["id"]: (JobStatus.FAILED if e["input"] == "boom" else JobStatus.SUCCEEDED)
        for e in entries
    }


def test_claims_are_made_once_for_the_message_under_the_worker_name(harness: Harness) -> None:
    entries = [harness.entry("flaky", text) for text in ("a", "b")]
    harness.run(entries)
    assert harness.store.claim_calls == [([e["id"] for e in entries], "test-worker")]


def test_notices_are_grouped_by_reply_to(harness: Harness) -> None:
    a1 = harness.entry("flaky", "one", reply_to="client-a")
    a2 = harness.entry("flaky", "boom", reply_to="client-a")
    b1 = harness.entry("flaky", "two", reply_to="client-b")
    silent = harness.entry("flaky", "three", reply_to=None)
    harness.run([a1, b1, a2, silent])

    assert set(harness.cache.notices) == {"client-a", "client-b"}
    by_id = {n.job_id: n for notices in harness.cache.notices.values() for n in notices}
    assert set(by_id) == {a1["id"], a2["id"], b1["id"]}
    assert [n.job_id for n in harness.cache.notices["client-b"]] == [b1["id"]]
    assert {n.job_id for n in harness.cache.notices["client-a"]} == {a1["id"], a2["id"]}
    # a small result rides in its notice: the cached bytes themselves
    assert by_id[a1["id"]] == Notice(a1["id"], "succeeded", None,
                                     harness.cache.results[a1["key"]])
    assert by_id[b1["id"]] == Notice(b1["id"], "succeeded", None,
                                     harness.cache.results[b1["key"]])
    assert by_id[a2["id"]].result is None
    assert by_id[a2["id"]].status == "failed"
    assert by_id[a2["id"]].error == harness.outcome(a2).error
    assert harness.outcome(silent).status is JobStatus.SUCCEEDED


def test_a_result_over_the_notice_limit_is_left_in_the_cache_only(harness: Harness) -> None:
    small = harness.entry("recorder", "s")
    large = harness.entry("recorder", "L" * (NOTICE_RESULT_MAX + 1))
    harness.run([small, large])
    by_id = {n.job_id: n for n in harness.cache.notices["client-a"]}
    assert by_id[small["id"]].result == harness.cache.results[small["key"]]
    assert by_id[large["id"]].result is None
    assert harness.cache.results[large["key"]]  # read from there


def test_an_expired_job_is_not_run_and_gets_an_expired_notice(harness: Harness) -> None:
    live = harness.entry("recorder", "live")
    late = harness.entry("recorder", "late", expired=True)
    report = harness.run([live, late])

    assert harness.recorder.inputs == ["live"]
    assert late["id"] not in harness.store.finished  # the claim already made it expired
    assert harness.store.status[late["id"]] is JobStatus.EXPIRED
    assert late["key"] not in harness.cache.results
    assert Notice(late["id"], "expired", None) in harness.cache.notices["client-a"]
    assert report.expired == 1
    assert report.ran == 1


def test_version_mismatch_fails_the_jobs_without_loading(harness: Harness) -> None:
    stale = [harness.entry("recorder", text, version="rec-0") for text in ("a", "b")]
    current = harness.entry("flaky", "ok")
    report = harness.run([*stale, current])

    for entry in stale:
        outcome = harness.outcome(entry)
        assert outcome.status is JobStatus.FAILED
        assert outcome.error is not None
        assert "version mismatch" in outcome.error
        assert "rec-0" in outcome.error
        assert "rec-1" in outcome.error
    assert harness.recorder.loads == 0
    assert harness.outcome(current).status is JobStatus.SUCCEEDED
    assert report.failed == 2


def test_unknown_target_fails_its_jobs(harness: Harness) -> None:
    entry = harness.entry("flaky", "text")
    entry["target"] = "not-registered"
    harness.run([entry])
    outcome = harness.outcome(entry)
    assert outcome.status is JobStatus.FAILED
    assert outcome.error is not None
    assert "not-registered" in outcome.error


def test_unloadable_model_fails_its_jobs_with_the_load_error(harness: Harness) -> None:
    broken = [harness.entry("unloadable", text) for text in ("a", "b")]
    fine = harness.entry("flaky", "fine")
    harness.run([*broken, fine])

    for entry in broken:
        outcome = harness.outcome(entry)
        assert outcome.status is JobStatus.FAILED
        assert outcome.error is not None
        assert "weights file is corrupt" in outcome.error
    assert "unloadable" in harness.runtime.load_errors
    assert "unloadable" not in harness.runtime.runners
    assert harness.outcome(fine).status is JobStatus.SUCCEEDED


def test_a_failed_load_is_remembered_and_not_retried(harness: Harness) -> None:
    loads: list[int] = []

    def broken_loader(context: LoadContext) -> Runner:
        loads.append(1)
        raise RuntimeError("CUDA out of memory (on purpose)")

    harness.registry.register(ModelSpec(name="broken", kind=JobKind.INFER,
                                        loader=broken_loader, version="broken-1"))
    first = harness.entry("broken", "a")
    harness.run([first])
    second = harness.entry("broken", "b")
    harness.run([second])

    assert len(loads) == 1
    for entry in (first, second):
        outcome = harness.outcome(entry)
        assert outcome.status is JobStatus.FAILED
        assert outcome.error is not None
        assert "CUDA out of memory (on purpose)" in outcome.error
    with pytest.raises(ModelLoadError, match="on purpose"):
        harness.runtime.runner("broken")
    assert len(loads) == 1


def test_runner_is_loaded_once_and_reused(harness: Harness) -> None:
    first = harness.runtime.runner("recorder")
    assert harness.runtime.runner("recorder") is first
    harness.run([harness.entry("recorder", "a")])
    assert harness.recorder.loads == 1


def test_a_failing_warmup_counts_as_a_failed_load(harness: Harness) -> None:
    loads: list[int] = []

    def loader(context: LoadContext) -> Runner:
        loads.append(1)

        def run(inputs: Sequence[Any], params: dict[str, Any]) -> list[Any]:
            raise RuntimeError("kernel crashed")

        return run

    harness.registry.register(ModelSpec(name="cold", kind=JobKind.INFER, loader=loader,
                                        version="cold-1", warmup_inputs=("warm",)))
    with pytest.raises(ModelLoadError, match="failed to load or warm up: kernel crashed"):
        harness.runtime.runner("cold")
    with pytest.raises(ModelLoadError):
        harness.runtime.runner("cold")
    assert len(loads) == 1


def test_warm_loads_what_it_can(harness: Harness) -> None:
    harness.runtime.warm(["unloadable", "recorder", "flaky"])
    assert set(harness.runtime.runners) == {"recorder", "flaky"}
    assert set(harness.runtime.load_errors) == {"unloadable"}


def test_close_closes_store_and_cache(harness: Harness) -> None:
    harness.runtime.close()
    assert sorted(harness.events) == ["cache.close", "store.close"]


def test_states_with_their_durable_results_come_before_redis(harness: Harness) -> None:
    # Results ride in their rows (durable_results, the default): the statement goes first,
    # then the results and the notices to Redis in one round trip.
    harness.run([harness.entry("flaky", "a"), harness.entry("flaky", "boom")])
    assert harness.events == ["claim", "finish", "put_many", "notify"]


def test_without_durable_results_redis_is_written_before_state(harness: Harness) -> None:
    # With no copy in the row, a client that sees succeeded must find its result in Redis.
    harness.runtime.settings = harness.runtime.settings.model_copy(
        update={"durable_results": False})
    harness.run([harness.entry("flaky", "a"), harness.entry("flaky", "boom")])
    assert harness.events == ["claim", "put_many", "finish", "notify"]


def test_a_run_taken_over_meanwhile_caches_and_notifies_nothing(harness: Harness) -> None:
    # The finish's fence on the attempt decides: another delivery took the run over while this
    # one ran, so this run's result is neither cached nor announced (the other run's will be).
    taken: list[str] = []

    def load(context: LoadContext) -> Runner:
        def run(inputs: Sequence[Any], params: dict[str, Any]) -> list[Any]:
            harness.store.claim([ClaimRequest(job_id, takeover=True) for job_id in taken],
                                "other-worker")
            return [f"{text}!" for text in inputs]

        return run

    harness.registry.register(ModelSpec(name="overtaken", kind=JobKind.INFER, loader=load,
                                        version="overtaken-1"))
    entry = harness.entry("overtaken", "a")
    taken.append(entry["id"])
    report = harness.run([entry])
    assert harness.events[-1] == "finish"  # nothing went to Redis
    assert harness.cache.results == {} and harness.cache.notices == {}
    assert report.cancelled == 0
    record = harness.store.get(entry["id"])
    assert (record.status, record.worker, record.attempts) == (JobStatus.RUNNING,
                                                                "other-worker", 2)


def test_batches_respect_max_batch_size_and_group_by_params(harness: Harness) -> None:
    plain = [harness.entry("recorder", f"p{i}") for i in range(7)]
    tagged = [harness.entry("recorder", f"t{i}", params={"tag": "x"}) for i in range(2)]
    harness.run([plain[0], tagged[0], *plain[1:], tagged[1]])

    assert [len(inputs) for inputs, params in harness.recorder.calls if not params] == [3, 3, 1]
    assert [inputs for inputs, params in harness.recorder.calls if params] == [["t0", "t1"]]
    assert all(p in ({}, {"tag": "x"}) for _, p in harness.recorder.calls)
    assert harness.result(plain[6]) == "p6:"
    assert harness.result(tagged[1]) == "t1:x"


def test_wrong_output_count_falls_back_to_one_by_one(harness: Harness) -> None:
    def loader(context: LoadContext) -> Runner:
        def run(inputs: Sequence[Any], params: dict[str, Any]) -> list[Any]:
            return [text.upper() for text in inputs][:1]

        return run

    harness.registry.register(ModelSpec(name="short", kind=JobKind.INFER, loader=loader,
                                        version="short-1"))
    entries = [harness.entry("short", text) for text in ("ab", "cd", "ef")]
    report = harness.run(entries)
    assert report.succeeded == 3
    assert [harness.result(e) for e in entries] == ["AB", "CD", "EF"]


def _register_returning(harness: Harness, name: str, value: Any) -> None:
    def loader(context: LoadContext) -> Runner:
        def run(inputs: Sequence[Any], params: dict[str, Any]) -> list[Any]:
            return [value if text == "odd" else text for text in inputs]

        return run

    harness.registry.register(ModelSpec(name=name, kind=JobKind.INFER, loader=loader,
                                        version=f"{name}-1"))


def test_an_unencodable_output_fails_only_its_job(harness: Harness) -> None:
    _register_returning(harness, "weird", object())
    odd = harness.entry("weird", "odd")
    normal = harness.entry("weird", "normal")
    harness.run([odd, normal])
    outcome = harness.outcome(odd)
    assert outcome.status is JobStatus.FAILED
    assert outcome.error is not None
    assert "cannot be encoded" in outcome.error
    assert odd["key"] not in harness.cache.results
    assert harness.result(normal) == "normal"


def test_an_object_array_output_is_not_reported_as_success(harness: Harness) -> None:
    _register_returning(harness, "objects", np.array(["a", 1], dtype=object))
    odd = harness.entry("objects", "odd")
    harness.run([odd])
    assert harness.outcome(odd).status is JobStatus.FAILED


def test_array_outputs_are_stored_as_typed_binary(harness: Harness) -> None:
    vector = np.linspace(0, 1, 8, dtype=np.float32)
    _register_returning(harness, "vectors", vector)
    odd = harness.entry("vectors", "odd")
    harness.run([odd])
    stored = harness.result(odd)
    assert stored.dtype == np.float32
    np.testing.assert_array_equal(stored, vector)


def test_malformed_entries_that_name_a_job_are_failed(harness: Harness) -> None:
    good = harness.entry("flaky", "good")
    job_id = str(uuid.uuid4())
    harness.store.add(job_id)
    broken = {"v": 1, "id": job_id, "kind": "infer", "input": "x"}  # no target, version, key
    report = harness.run([good, broken])

    outcome = harness.store.finished[job_id]
    assert outcome.status is JobStatus.FAILED
    assert outcome.error is not None
    assert "malformed job entry" in outcome.error
    assert "target" in outcome.error
    assert harness.outcome(good).status is JobStatus.SUCCEEDED
    assert report.received == 2
    assert report.failed == 1


def test_a_message_of_only_malformed_entries_is_not_poison(harness: Harness) -> None:
    job_id = str(uuid.uuid4())
    harness.store.add(job_id)
    harness.run([{"v": 99, "id": job_id}])
    assert harness.store.finished[job_id].status is JobStatus.FAILED
    assert "version" in (harness.store.finished[job_id].error or "")


@pytest.mark.parametrize(
    "raw",
    [[], "junk", None, {"v": 1}, [{"nope": 1}], [1, "two"], [{"v": 1, "id": 5}], [["id", "x"]]],
    ids=["empty", "str", "none", "dict", "no-id", "scalars", "int-id", "pairs"],
)
def test_unreadable_messages_are_poison_and_touch_nothing(harness: Harness, raw: Any) -> None:
    with pytest.raises(PoisonMessage):
        harness.run(raw)
    assert harness.events == []


def test_parse_entries_splits_good_and_malformed() -> None:
    good = {"v": 1, "id": "a", "kind": "infer", "target": "t", "version": "1", "input": "x",
            "key": "k"}
    entries, problems = parse_entries([good, {"id": "b", "v": 1}, {"no": "id"}])
    assert [e.id for e in entries] == ["a"]
    assert set(problems) == {"b"}
    assert problems["b"].startswith("malformed job entry:")


def _register_transient(harness: Harness, failures: int) -> list[int]:
    calls: list[int] = []

    def load(context: LoadContext) -> Runner:
        def run(inputs: Sequence[Any], params: dict[str, Any]) -> list[Any]:
            calls.append(len(inputs))
            if len(calls) <= failures:
                raise TransientError("remote tokenizer timed out")
            return [text.upper() for text in inputs]

        return run

    harness.registry.register(ModelSpec(name="transient", kind=JobKind.INFER, loader=load,
                                        version="t-1", max_batch_size=8))
    return calls


def test_a_transient_error_is_retried_with_backoff_then_succeeds(
        harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_runs, "TRANSIENT_WAIT", wait_none())
    calls = _register_transient(harness, failures=2)
    entries = [harness.entry("transient", text) for text in ("a", "b")]
    assert harness.run(entries).succeeded == 2
    assert calls == [2, 2, 2]  # the whole batch, tried again twice
    assert [harness.result(e) for e in entries] == ["A", "B"]


def test_a_transient_error_that_persists_fails_the_batch_once(
        harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_runs, "TRANSIENT_WAIT", wait_none())
    calls = _register_transient(harness, failures=1000)
    entries = [harness.entry("transient", text) for text in ("a", "b")]
    report = harness.run(entries)
    assert report.failed == 2
    assert calls == [2] * (harness.runtime.settings.transient_retries + 1)  # no item-by-item
    assert "remote tokenizer timed out" in (harness.outcome(entries[0]).error or "")


def test_only_jobs_whose_twin_succeeded_are_looked_up_before_their_run(harness: Harness) -> None:
    # With durable results the claim says which jobs have an identical job that succeeded
    # since they were submitted; a flush with none makes no round trip before it runs.
    harness.run([harness.entry("recorder", text) for text in ("a", "b")])
    assert harness.cache.looks == []
    twin = harness.entry("recorder", "done elsewhere")
    harness.store.add(target="recorder", cache_key=twin["key"], status=JobStatus.SUCCEEDED,
                      result=codec.encode("from the twin"))
    harness.cache.put_many({twin["key"]: codec.encode("from the twin")}, 60)
    other = harness.entry("recorder", "new")
    report = harness.run([twin, other])
    assert harness.cache.looks == [[twin["key"]]]
    assert report.from_cache == {twin["id"]} and report.computed == {other["id"]}
    assert harness.result(twin) == "from the twin"


def test_without_durable_results_every_job_is_looked_up(harness: Harness) -> None:
    harness.runtime.settings = harness.runtime.settings.model_copy(
        update={"durable_results": False})
    entries = [harness.entry("recorder", text) for text in ("a", "b")]
    harness.run(entries)
    assert [sorted(keys) for keys in harness.cache.looks] == [sorted(e["key"] for e in entries)]
