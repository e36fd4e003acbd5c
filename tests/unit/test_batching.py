"""workers.batching: messages gathered into one batch run, acked only after it, with in-memory
doubles of our store/cache (from test_executor) and of a received message."""

from __future__ import annotations

from typing import Any

import pytest

from aidist.config import Settings
from aidist.errors import ServiceUnavailable
from aidist.jobs import JobKind, JobStatus
from models import ModelSpec
from tests.unit.doubles import Harness, Message, Timers
from workers import batching, executor, runners
from workers.app import batch_policy
from workers.batching import BatchPolicy, MessageBatcher


def _batcher(harness: Harness, timers: Timers, **policy: Any) -> MessageBatcher:
    return MessageBatcher(lambda: harness.runtime, BatchPolicy(**policy), timers.call_after)


def _message(harness: Harness, log: list[str], name: str, *texts: str,
             target: str = "recorder") -> tuple[Message, list[dict[str, Any]]]:
    entries = [harness.entry(target, text) for text in texts]
    return Message(([entries], {}, {}), log, name), entries


def test_jobs_of_several_messages_run_as_one_model_call(harness: Harness) -> None:
    log: list[str] = []
    timers = Timers()
    batcher = _batcher(harness, timers, max_jobs=10)
    first, e1 = _message(harness, log, "m1", "a")
    second, e2 = _message(harness, log, "m2", "b")
    batcher.add(first)
    batcher.add(second)
    assert log == [] and harness.recorder.calls == []  # held, waiting for more
    timers.fire()
    assert harness.recorder.calls == [(["a", "b"], {})]  # recorder's max batch is 3
    assert log == ["ack m1", "ack m2"]
    assert {harness.store.status[e["id"]] for e in e1 + e2} == {JobStatus.SUCCEEDED}
    assert harness.store.claim_calls == [([e1[0]["id"], e2[0]["id"]], "test-worker")]


def test_acks_come_after_results_and_state_are_stored(harness: Harness) -> None:
    log = harness.events  # one timeline for store, cache and acks
    timers = Timers()
    batcher = _batcher(harness, timers, max_jobs=2)
    message, _ = _message(harness, log, "m1", "a", "b")
    batcher.add(message)  # 2 jobs reach max_jobs: flushed at once
    assert log == ["claim", "finish", "put_many", "notify", "ack m1"]


def test_flush_on_size_budget(harness: Harness) -> None:
    log: list[str] = []
    timers = Timers()
    batcher = _batcher(harness, timers, max_jobs=100, max_chars=10)
    batcher.add(_message(harness, log, "m1", "x" * 6)[0])
    assert log == []
    batcher.add(_message(harness, log, "m2", "y" * 6)[0])
    assert log == ["ack m1", "ack m2"]
    assert timers.live == []  # the pending timer was cancelled by the flush


def test_timer_waits_idle_gap_but_never_past_max_delay(harness: Harness,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(batching.time, "monotonic", lambda: now[0])
    log: list[str] = []
    timers = Timers()
    batcher = _batcher(harness, timers, max_jobs=100, idle_s=0.002, max_delay_s=0.010)
    batcher.add(_message(harness, log, "m1", "a")[0])
    assert timers.live == [0.002]
    now[0] += 0.009
    batcher.add(_message(harness, log, "m2", "b")[0])
    assert timers.live == [pytest.approx(0.001)]  # capped by the oldest message's max delay


def test_each_model_waits_at_most_its_own_delay(harness: Harness,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(batching.time, "monotonic", lambda: now[0])
    log: list[str] = []
    timers = Timers()
    batcher = _batcher(harness, timers, max_jobs=100, idle_s=1.0, max_delay_s=0.050,
                       delays={"flaky": 0.005})
    batcher.add(_message(harness, log, "m1", "a")[0])  # recorder: the default 50 ms
    assert timers.live == [pytest.approx(0.050)]
    now[0] += 0.010
    batcher.add(_message(harness, log, "m2", "b", target="flaky")[0])  # flaky: its own 5 ms
    assert timers.live == [pytest.approx(0.005)]
    now[0] += 0.001
    batcher.add(_message(harness, log, "m3", "c")[0])  # flaky's deadline is still the earliest
    assert timers.live == [pytest.approx(0.004)]
    timers.fire()
    assert log == ["ack m1", "ack m2", "ack m3"]


def test_each_model_gathers_its_own_batches_per_flush(harness: Harness) -> None:
    """A flush gathers a few batches of its own model, not of the largest-batch model served
    beside it; a buffer holding two models' jobs flushes at the smaller size."""
    harness.registry.register(ModelSpec(name="wide", kind=JobKind.INFER,
                                        loader=harness.recorder.load, version="w-1",
                                        max_batch_size=8))
    harness.registry.register(ModelSpec(name="narrow", kind=JobKind.INFER,
                                        loader=harness.recorder.load, version="n-1",
                                        max_batch_size=2))
    policy = batch_policy(Settings(batch_flush_batches=2), harness.registry, ["wide", "narrow"])
    assert policy.flush_jobs == {"wide": 16, "narrow": 4}
    timers = Timers()
    batcher = MessageBatcher(lambda: harness.runtime, policy, timers.call_after)
    log: list[str] = []
    batcher.add(_message(harness, log, "m1", "a", "b", "c", target="narrow")[0])
    assert log == []  # 3 of narrow's 4
    batcher.add(_message(harness, log, "m2", "d", target="narrow")[0])
    assert log == ["ack m1", "ack m2"]  # 4: flushed without a timer
    batcher.add(_message(harness, log, "m3", *"efghijkl", target="wide")[0])
    assert log == ["ack m1", "ack m2"]  # 8 of wide's 16: held
    batcher.add(_message(harness, log, "m4", "m", target="narrow")[0])
    assert log == ["ack m1", "ack m2", "ack m3", "ack m4"]  # narrow's 4 is the limit now


def test_batch_policy_keeps_each_models_own_delay(harness: Harness) -> None:
    harness.registry.register(ModelSpec(name="patient", kind=JobKind.INFER,
                                        loader=harness.recorder.load, version="p-1",
                                        max_delay_ms=200))
    policy = batch_policy(Settings(batch_max_delay_ms=10), harness.registry,
                          ["recorder", "patient"])
    assert policy.delays == {"patient": 0.2}
    assert policy.max_delay_s == pytest.approx(0.010)  # recorder has no delay of its own
    assert policy.delay_of([]) == pytest.approx(0.010)


def test_poison_message_is_rejected_alone_and_others_still_run(harness: Harness) -> None:
    log: list[str] = []
    timers = Timers()
    batcher = _batcher(harness, timers, max_jobs=10)
    good, entries = _message(harness, log, "good", "a")
    batcher.add(Message("not a protocol-2 body", log, "junk"))
    batcher.add(Message(([[]], {}, {}), log, "empty"))
    batcher.add(Message(([1, 2], {}, {}), log, "two-args"))
    batcher.add(good)
    timers.fire()
    assert log == ["reject junk requeue=False", "reject empty requeue=False",
                   "reject two-args requeue=False", "ack good"]
    assert harness.store.status[entries[0]["id"]] is JobStatus.SUCCEEDED


def test_the_same_job_in_two_messages_runs_once(harness: Harness) -> None:
    log: list[str] = []
    timers = Timers()
    batcher = _batcher(harness, timers, max_jobs=10)
    message, entries = _message(harness, log, "m1", "once")
    batcher.add(message)
    batcher.add(Message(([entries], {}, {}), log, "m1-again"))
    timers.fire()
    assert harness.recorder.inputs == ["once"]
    assert log == ["ack m1", "ack m1-again"]


def test_service_down_requeues_every_held_message(harness: Harness,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(executor, "SERVICE_RETRY_S", 0.0)

    def down(job_ids: Any, worker: str, max_attempts: int = 8) -> Any:
        raise ServiceUnavailable("PostgreSQL", "postgresql://x", "connection refused")

    monkeypatch.setattr(harness.store, "claim", down)
    log: list[str] = []
    timers = Timers()
    batcher = _batcher(harness, timers, max_jobs=10)
    batcher.add(_message(harness, log, "m1", "a")[0])
    batcher.add(_message(harness, log, "m2", "b")[0])
    timers.fire()
    assert log == ["reject m1 requeue=True", "reject m2 requeue=True"]


def test_background_runner_runs_batches_off_the_consumer_thread(harness: Harness) -> None:
    log: list[str] = []
    timers = Timers()
    runner = runners.BackgroundRunner(lambda: harness.runtime)
    batcher = MessageBatcher(lambda: harness.runtime, BatchPolicy(max_jobs=2), timers.call_after,
                             background=runner)
    first, e1 = _message(harness, log, "m1", "a", "b")
    batcher.add(first)  # full: handed to the runner, not run here
    second, e2 = _message(harness, log, "m2", "c", "d")
    batcher.add(second)
    assert runner.wait_idle(10)
    assert log == []  # acks happen only when the consumer thread drains
    batcher.drain()
    assert log == ["ack m1", "ack m2"]
    assert {harness.store.status[e["id"]] for e in e1 + e2} == {JobStatus.SUCCEEDED}
    runner.stop()


def test_a_message_whose_jobs_have_no_row_is_dead_lettered_and_others_acked(
        harness: Harness) -> None:
    log: list[str] = []
    timers = Timers()
    batcher = _batcher(harness, timers, max_jobs=10)
    good, _ = _message(harness, log, "good", "real")
    ghost = Message(([[harness.entry("recorder", "ghost", known=False)]], {}, {}), log, "ghost")
    batcher.add(good)
    batcher.add(ghost)
    timers.fire()
    assert sorted(log) == ["ack good", "reject ghost requeue=False"]
    assert harness.recorder.inputs == ["real"]


def test_an_ack_on_a_lost_connection_is_logged_not_raised(harness: Harness) -> None:
    class DeadChannel(Message):
        def ack(self) -> None:
            raise ConnectionResetError("connection lost (broker restart)")

    timers = Timers()
    batcher = _batcher(harness, timers, max_jobs=10)
    entry = harness.entry("recorder", "stored before the broker went away")
    batcher.add(DeadChannel(([[entry]], {}, {}), [], "m"))
    timers.fire()  # must not raise into Celery's consumer
    assert harness.store.status[entry["id"]] is JobStatus.SUCCEEDED


def test_a_job_out_of_attempts_is_failed_and_its_message_dead_lettered(harness: Harness) -> None:
    log: list[str] = []
    timers = Timers()
    batcher = _batcher(harness, timers, max_jobs=10)
    message, (entry,) = _message(harness, log, "poison", "kills its worker")
    harness.store.add(entry["id"], status=JobStatus.RUNNING, attempts=8,
                      worker="dead-worker")  # died 8 times already
    message.delivery_info = {"redelivered": True}
    batcher.add(message)
    timers.fire()
    assert log == ["reject poison requeue=False"]
    assert harness.store.status[entry["id"]] is JobStatus.FAILED
    assert harness.recorder.calls == []


def test_a_redelivered_job_running_on_a_live_worker_is_parked_then_settled(
        harness: Harness) -> None:
    log: list[str] = []
    timers = Timers()
    batcher = _batcher(harness, timers, max_jobs=10)
    message, (entry,) = _message(harness, log, "again", "long job")
    harness.store.add(entry["id"], status=JobStatus.RUNNING, attempts=1)
    harness.store.set_state(entry["id"], worker="other-worker")
    harness.cache.put_alive("other-worker", 60)
    message.delivery_info = {"redelivered": True}
    batcher.add(message)
    assert log == [] and timers.live == [batching.PARK_S]  # neither acked nor run: parked
    timers.fire()
    assert log == [] and timers.live == [batching.PARK_S]  # still running there
    harness.store.set_state(entry["id"], status=JobStatus.SUCCEEDED)  # the other worker committed
    timers.fire()
    assert log == ["ack again"]
    assert harness.recorder.calls == []
