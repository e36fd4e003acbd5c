"""workers.runners.BackgroundRunner with two runner threads: flushes overlap, except one that must
run alone (a redelivered job), and the pipelining default follows where model calls run."""

from __future__ import annotations

import select
import threading
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any

from aidist.config import Settings
from aidist.jobs import JobKind, JobStatus
from models import LoadContext, ModelSpec, Runner
from tests.unit.doubles import Entry, Harness, Message, Timers
from workers.app import batch_policy
from workers.batching import DRAIN_EVERY_S, BatchingStrategy, BatchPolicy, MessageBatcher
from workers.executor import parse_entries
from workers.runners import BackgroundRunner, _Held

WAIT_S = 10.0


class Gate:
    """A model whose input "hold" stays inside until ``release`` is set; every call notes how
    many other calls were inside when it started."""

    def __init__(self, meet: int = 0) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.barrier = threading.Barrier(meet, timeout=WAIT_S) if meet else None
        self.inside = 0
        self.company: dict[str, int] = {}
        self.calls: list[list[Any]] = []
        self._lock = threading.Lock()

    def load(self, context: LoadContext) -> Runner:
        def run(inputs: Sequence[Any], params: dict[str, Any]) -> list[Any]:
            with self._lock:
                self.calls.append(list(inputs))
                for text in inputs:
                    self.company[text] = self.inside
                self.inside += 1
            try:
                self.entered.set()
                if self.barrier is not None:
                    self.barrier.wait()
                if "hold" in inputs:
                    self.release.wait(WAIT_S)
                return list(inputs)
            finally:
                with self._lock:
                    self.inside -= 1

        return run


def _register(harness: Harness, gate: Gate) -> None:
    harness.registry.register(ModelSpec(name="gate", kind=JobKind.INFER, loader=gate.load,
                                        version="g1", max_batch_size=8))


def _setup(harness: Harness, gate: Gate) -> tuple[BackgroundRunner, MessageBatcher]:
    _register(harness, gate)
    runner = BackgroundRunner(lambda: harness.runtime, threads=2)
    batcher = MessageBatcher(lambda: harness.runtime, BatchPolicy(max_jobs=1, runners=2),
                             Timers().call_after, background=runner)
    return runner, batcher


def _message(harness: Harness, log: list[str], name: str, text: str) -> tuple[Message, str]:
    entry = harness.entry("gate", text)
    return Message(([[entry]], {}, {}), log, name), entry["id"]


def test_two_runners_run_two_flushes_at_once(harness: Harness) -> None:
    gate = Gate(meet=2)  # each call waits for the other one: passes only if both run at once
    runner, batcher = _setup(harness, gate)
    log: list[str] = []
    first, id1 = _message(harness, log, "m1", "a")
    second, id2 = _message(harness, log, "m2", "b")
    batcher.add(first)
    batcher.add(second)
    assert runner.wait_idle(WAIT_S)
    batcher.drain()
    assert sorted(log) == ["ack m1", "ack m2"]
    assert {harness.store.status[i] for i in (id1, id2)} == {JobStatus.SUCCEEDED}
    runner.stop()


class _ReleasingCondition(threading.Condition):
    """The runner's condition: the first time a thread waits on it (the runner thread that took
    the flush that must run alone, waiting for the other to end), the held flush is let go."""

    def __init__(self, release: threading.Event) -> None:
        super().__init__()
        self._release = release

    def wait(self, timeout: float | None = None) -> bool:
        self._release.set()
        return super().wait(timeout)


def test_a_redelivered_job_runs_with_no_other_flush_beside_it(harness: Harness) -> None:
    gate = Gate()
    runner, batcher = _setup(harness, gate)
    runner._cond = _ReleasingCondition(gate.release)
    log: list[str] = []
    held, _ = _message(harness, log, "m1", "hold")
    batcher.add(held)
    assert gate.entered.wait(WAIT_S)
    again, again_id = _message(harness, log, "m2", "again")
    # its run was lost with its worker (no alive mark): it may be what killed that worker
    harness.store.set_state(again_id, status=JobStatus.RUNNING, attempts=1, worker="dead")
    again.delivery_info = {"redelivered": True}
    batcher.add(again)  # returns at once: a runner thread waits for "hold" to end
    assert runner.wait_idle(WAIT_S)
    assert gate.company["again"] == 0  # "hold" had left before it started
    assert harness.store.status[again_id] is JobStatus.SUCCEEDED
    batcher.drain()
    assert sorted(log) == ["ack m1", "ack m2"]
    runner.stop()


def test_pipelining_defaults_on_where_model_calls_run_side_by_side(harness: Harness) -> None:
    targets = ["recorder"]
    assert batch_policy(Settings(), harness.registry, targets, side_by_side=2).runners == 2
    # one runner even so: a flush never runs on the consumer's thread (heartbeats, inspect)
    assert batch_policy(Settings(), harness.registry, targets, side_by_side=1).runners == 1
    forced = Settings(batch_pipeline=True, batch_runners=3)
    assert batch_policy(forced, harness.registry, targets, side_by_side=1).runners == 3
    off = Settings(batch_pipeline=False)
    assert batch_policy(off, harness.registry, targets, side_by_side=2).runners == 1


class _Consumer:
    """What the strategy uses of Celery's consumer: its timer and event dispatcher."""

    event_dispatcher = None

    def __init__(self) -> None:
        self.timer = self

    def call_after(self, delay: float, fn: Callable[[], None]) -> Entry:
        return Entry()

    def call_repeatedly(self, every: float, fn: Callable[[], None]) -> Entry:
        return Entry()


class _Hub:
    """What the strategy uses of kombu's event loop: the readers it watches."""

    def __init__(self) -> None:
        self.readers: dict[int, Callable[[], None]] = {}

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        self.readers[fd] = callback

    def wait_readable(self, fd: int) -> None:
        """Until the loop would wake: the fd has something to read (select, with a deadline)."""
        readable, _, _ = select.select([fd], [], [], WAIT_S)
        assert readable, "the runner did not wake the loop"


class _LoopConsumer(_Consumer):
    """A consumer with an event loop, as Celery's gpu worker has, and a timer that records."""

    def __init__(self) -> None:
        super().__init__()
        self.hub = _Hub()
        self.timers = Timers()
        self.call_after = self.timers.call_after  # type: ignore[method-assign]


def test_a_batch_that_ends_wakes_the_consumers_loop_and_no_timer_polls(
        harness: Harness) -> None:
    """With an event loop, the runner thread writes to a pipe the loop watches as each batch
    ends: the loop acks it then, and hands held messages to the free runner; no drain timer
    polls while a batch is out."""
    gate = Gate()
    _register(harness, gate)
    strategy = BatchingStrategy(lambda: harness.runtime, BatchPolicy(max_jobs=64, runners=1))
    consumer = _LoopConsumer()
    on_message = strategy(SimpleNamespace(send_events=False), None, consumer)
    ((fd, on_wake),) = consumer.hub.readers.items()
    log: list[str] = []
    first, first_id = _message(harness, log, "m1", "hold")
    on_message(first, None, None, None, None)  # an idle worker: flushed at once
    assert gate.entered.wait(WAIT_S)
    second, second_id = _message(harness, log, "m2", "b")
    on_message(second, None, None, None, None)  # held: the runner is busy
    consumer.timers.fire()  # its idle wait ends with no free runner: still held
    assert consumer.timers.live == []  # and no timer looks for the running batch
    gate.release.set()
    consumer.hub.wait_readable(fd)
    on_wake()  # m1 is acked, m2 goes to the runner that freed up
    assert log == ["ack m1"]
    consumer.hub.wait_readable(fd)
    on_wake()
    assert log == ["ack m1", "ack m2"]
    assert gate.calls == [["hold"], ["b"]]
    assert harness.store.status[first_id] is JobStatus.SUCCEEDED
    assert harness.store.status[second_id] is JobStatus.SUCCEEDED
    assert select.select([fd], [], [], 0)[0] == []  # every wake-up was read
    assert consumer.timers.live == []
    assert strategy.background is not None
    strategy.background.stop()


def test_a_consumer_restart_keeps_the_same_runner_threads(harness: Harness) -> None:
    """After a broker reconnect Celery builds a new message handler; a flush that must run alone
    has to wait for batches still running from before, so the runners are the same."""
    strategy = BatchingStrategy(lambda: harness.runtime, BatchPolicy(runners=2))
    task = SimpleNamespace(send_events=False)
    strategy(task, None, _Consumer())
    strategy(task, None, _Consumer())  # the reconnect
    before, after = strategy.batchers
    assert before.background is not None
    assert after.background is before.background


def test_a_job_running_in_one_flush_is_held_in_a_flush_beside_it(harness: Harness) -> None:
    """A duplicate delivery of a job that the other runner thread is running: not claimed again
    (the worker's own claim would allow it), its message is parked, the model runs it once."""
    gate = Gate()
    _register(harness, gate)
    entry = harness.entry("gate", "hold")
    first = threading.Thread(target=harness.run, args=([entry],))
    first.start()
    assert gate.entered.wait(WAIT_S)
    report = harness.run([entry])  # the duplicate, while the first run is inside the model
    gate.release.set()
    first.join(WAIT_S)
    assert report.held == frozenset({entry["id"]})
    assert report.ran == 0
    assert gate.calls == [["hold"]]
    assert harness.store.status[entry["id"]] is JobStatus.SUCCEEDED


def test_a_warm_shutdown_finishes_the_running_batch_and_starts_no_other(
        harness: Harness) -> None:
    gate = Gate()
    _register(harness, gate)
    runner = BackgroundRunner(lambda: harness.runtime, threads=1)
    log: list[str] = []
    running, running_id = _message(harness, log, "m1", "hold")
    queued, queued_id = _message(harness, log, "m2", "later")
    runner.submit([_held(running)])
    assert gate.entered.wait(WAIT_S)
    runner.submit([_held(queued)])  # waits behind the running one
    runner.close()
    assert not runner.wait_running(0.0)  # "hold" is still inside the model
    gate.release.set()
    assert runner.wait_running(WAIT_S)
    assert runner.wait_idle(WAIT_S)  # the queued batch was dropped, not run
    assert gate.calls == [["hold"]]
    assert harness.store.status[running_id] is JobStatus.SUCCEEDED
    assert harness.store.status[queued_id] is JobStatus.QUEUED  # its message comes back
    runner.stop()


def test_the_signal_handler_waits_for_nothing_and_the_consumer_stop_acks_what_finished(
        harness: Harness) -> None:
    """Celery's SIGTERM handler may interrupt the consumer's thread while it holds the runner's
    lock (it takes it every few ms to look for finished batches); a runner thread then cannot
    hand its batch back until the handler returns. So the handler only stops new starts, and the
    wait for running batches (and their acks) comes once the consumer stops, outside it."""
    gate = Gate()
    _register(harness, gate)
    strategy = BatchingStrategy(lambda: harness.runtime, BatchPolicy(max_jobs=1, runners=1))
    on_message = strategy(SimpleNamespace(send_events=False), None, _Consumer())
    log: list[str] = []
    running, running_id = _message(harness, log, "m1", "hold")
    on_message(running, None, None, None, None)  # max_jobs=1: flushed at once, to the runner
    assert gate.entered.wait(WAIT_S)
    background = strategy.background
    assert background is not None
    with background._cond:  # the consumer's thread, interrupted inside in_flight()
        strategy.stop_starting()  # the handler: returns although the runner's lock is held
        gate.release.set()
    later, later_id = _message(harness, log, "m2", "later")
    on_message(later, None, None, None, None)  # after the signal: never started
    assert strategy.finish(WAIT_S)
    assert log == ["ack m1"]  # m2 stays unacked: the broker delivers it again
    assert gate.calls == [["hold"]]
    assert harness.store.status[running_id] is JobStatus.SUCCEEDED
    assert harness.store.status[later_id] is JobStatus.QUEUED
    background.stop()


def _held(message: Message) -> Any:
    entries, problems = parse_entries(message.decode()[0][0])
    return _Held(message, entries, problems)


def _one_runner(harness: Harness, max_jobs: int
                ) -> tuple[Gate, BackgroundRunner, Timers, MessageBatcher]:
    """A gate model, one runner thread, and a batcher on a manual clock."""
    gate = Gate()
    _register(harness, gate)
    runner = BackgroundRunner(lambda: harness.runtime, threads=1)
    timers = Timers()
    batcher = MessageBatcher(lambda: harness.runtime, BatchPolicy(max_jobs=max_jobs, runners=1),
                             timers.call_after, background=runner)
    return gate, runner, timers, batcher


def test_finished_batches_are_looked_for_only_while_one_is_in_flight(harness: Harness) -> None:
    """The consumer's timer drains the runner while a batch is out, then stops: an idle worker
    wakes for nothing."""
    gate, runner, timers, batcher = _one_runner(harness, max_jobs=1)
    assert timers.live == []  # nothing in flight: no timer
    log: list[str] = []
    message, job_id = _message(harness, log, "m1", "hold")
    batcher.add(message)  # max_jobs=1: flushed at once, to the runner thread
    assert gate.entered.wait(WAIT_S)
    assert timers.live == [DRAIN_EVERY_S]  # one drain, however many flushes are out
    timers.fire()  # still running: nothing to settle, and the drain comes again
    assert log == [] and timers.live == [DRAIN_EVERY_S]
    gate.release.set()
    assert runner.wait_idle(WAIT_S)
    timers.fire()  # settles it; nothing is in flight any more
    assert log == ["ack m1"]
    assert harness.store.status[job_id] is JobStatus.SUCCEEDED
    assert timers.live == []
    runner.stop()


def test_messages_that_come_while_every_runner_is_busy_go_out_as_one_flush(
        harness: Harness) -> None:
    """Under load, a flush is what arrived during the running batch, not what arrived during
    one idle wait: held until a runner frees up, then handed over together."""
    gate, runner, timers, batcher = _one_runner(harness, max_jobs=64)
    log: list[str] = []
    first, _ = _message(harness, log, "m1", "hold")
    batcher.add(first)
    timers.fire()  # the idle wait ends, the runner is free: flushed
    assert gate.entered.wait(WAIT_S)
    for i, text in ((2, "b"), (3, "c")):  # two idle waits end while the runner is busy
        batcher.add(_message(harness, log, f"m{i}", text)[0])
        timers.fire()  # nothing handed over: a flush of its own each, before
    assert gate.calls == [["hold"]]
    gate.release.set()
    assert runner.wait_idle(WAIT_S)
    timers.fire()  # the drain settles m1 and hands m2 and m3 to the free runner, together
    assert runner.wait_idle(WAIT_S)
    timers.fire()
    assert sorted(gate.calls) == [["b", "c"], ["hold"]]
    assert sorted(log) == ["ack m1", "ack m2", "ack m3"]
    runner.stop()


def test_a_message_reaching_an_idle_worker_runs_at_once_and_company_waits_for_the_next(
        harness: Harness) -> None:
    """No batch in flight: the message is flushed on arrival, with no idle wait (a lone job
    waits for nobody). One that comes while it runs is held, as under load."""
    gate, runner, timers, batcher = _one_runner(harness, max_jobs=64)
    log: list[str] = []
    first, _ = _message(harness, log, "m1", "hold")
    batcher.add(first)
    assert gate.entered.wait(WAIT_S)  # flushed on arrival: no timer was fired
    assert timers.live == [DRAIN_EVERY_S]  # only the drain: no idle wait was set
    batcher.add(_message(harness, log, "m2", "b")[0])
    assert sorted(timers.live) == sorted([DRAIN_EVERY_S, batcher.policy.idle_s])
    assert gate.calls == [["hold"]]  # m2 waits: a batch is in flight
    gate.release.set()
    assert runner.wait_idle(WAIT_S)
    timers.fire()  # m1 is settled; the idle wait ends and m2 goes to the free runner
    assert runner.wait_idle(WAIT_S)
    timers.fire()
    assert gate.calls == [["hold"], ["b"]]
    assert sorted(log) == ["ack m1", "ack m2"]
    runner.stop()
