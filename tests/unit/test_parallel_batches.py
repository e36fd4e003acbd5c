"""A thread-safe model's batches side by side on a CPU (``AIDIST_BATCH_THREADS``), and how a worker
picks how many and how many torch threads each call gets."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

import pytest

from aidist.config import Settings
from aidist.jobs import JobKind
from models import LoadContext, ModelSpec, Runner
from tests.unit.doubles import Harness
from workers.launch import openmp_wait
from workers.runtime import batch_parallelism

CORES = os.cpu_count() or 1


def _spec(name: str, *, thread_safe: bool, loader: Any = "m:load") -> ModelSpec:
    return ModelSpec(name=name, kind=JobKind.INFER, loader=loader, version="v1",
                     max_batch_size=4, thread_safe=thread_safe)


class Meeting:
    """A model whose calls wait for each other at a barrier: with ``parties`` calls at once they
    all pass; called one at a time, the barrier times out and the call raises."""

    def __init__(self, parties: int) -> None:
        self.barrier = threading.Barrier(parties, timeout=10)
        self.threads: set[int] = set()
        self.sizes: list[int] = []
        self._lock = threading.Lock()

    def load(self, context: LoadContext) -> Runner:
        def run(inputs: Sequence[Any], params: dict[str, Any]) -> list[Any]:
            with self._lock:
                self.threads.add(threading.get_ident())
                self.sizes.append(len(inputs))
            if any(text == "bad" for text in inputs):
                raise ValueError("bad input")
            self.barrier.wait()
            return [f"{text}!" for text in inputs]

        return run


class ThreadLog:
    """A model that records the thread of every call."""

    def __init__(self) -> None:
        self.threads: list[int] = []

    def load(self, context: LoadContext) -> Runner:
        def run(inputs: Sequence[Any], params: dict[str, Any]) -> list[Any]:
            self.threads.append(threading.get_ident())
            return list(inputs)

        return run


def test_cpu_worker_of_thread_safe_models_runs_one_call_per_core() -> None:
    specs = [_spec("a", thread_safe=True), _spec("b", thread_safe=True)]
    assert batch_parallelism(Settings(), "cpu", specs) == (CORES, 1)


def test_one_model_that_is_not_thread_safe_keeps_one_call_with_every_core() -> None:
    specs = [_spec("a", thread_safe=True), _spec("b", thread_safe=False)]
    assert batch_parallelism(Settings(), "cpu", specs) == (1, CORES)


def test_a_gpu_runs_one_call_at_a_time() -> None:
    assert batch_parallelism(Settings(), "cuda:1", [_spec("a", thread_safe=True)]) == (1, CORES)


def test_no_served_models_means_one_call() -> None:
    assert batch_parallelism(Settings(), "cpu", []) == (1, CORES)


def test_explicit_settings_win() -> None:
    spec = [_spec("a", thread_safe=False)]
    assert batch_parallelism(Settings(batch_threads=4), "cpu", spec) == (4, max(1, CORES // 4))
    assert batch_parallelism(Settings(batch_threads=2, torch_threads=3), "cpu", spec) == (2, 3)


def _with_model(harness: Harness, name: str, loader: Any, *, thread_safe: bool,
                threads: int) -> None:
    harness.registry.register(_spec(name, thread_safe=thread_safe, loader=loader))
    harness.runtime.batch_threads = threads


def test_batches_of_a_thread_safe_model_run_side_by_side(harness: Harness) -> None:
    meeting = Meeting(parties=2)
    _with_model(harness, "meeting", meeting.load, thread_safe=True, threads=2)
    entries = [harness.entry("meeting", f"s{i}") for i in range(8)]
    report = harness.run(entries)
    assert report.succeeded == 8  # every call passed the barrier: two ran at once
    assert len(meeting.threads) == 2
    assert sorted(meeting.sizes) == [4, 4]
    assert [harness.result(e) for e in entries] == [f"s{i}!" for i in range(8)]
    harness.runtime.close()


def test_a_small_flush_is_shared_between_the_calls(harness: Harness) -> None:
    meeting = Meeting(parties=2)
    _with_model(harness, "meeting", meeting.load, thread_safe=True, threads=2)
    report = harness.run([harness.entry("meeting", f"s{i}") for i in range(3)])
    assert report.succeeded == 3
    assert sorted(meeting.sizes) == [1, 2]  # not one call of 3 leaving a core idle
    harness.runtime.close()


def test_a_bad_input_in_a_parallel_batch_fails_only_its_job(harness: Harness) -> None:
    meeting = Meeting(parties=2)
    _with_model(harness, "meeting", meeting.load, thread_safe=True, threads=2)
    # Sorted by length, "bad" lands in the first batch (s1, bad); the other call waits at the
    # barrier for the re-runs of that batch's items one by one.
    entries = [harness.entry("meeting", text) for text in ("bad", "s1", "s22", "s33")]
    report = harness.run(entries)
    assert report.failed == 1
    assert "bad input" in (harness.outcome(entries[0]).error or "")
    assert [harness.result(e) for e in entries[1:]] == ["s1!", "s22!", "s33!"]
    harness.runtime.close()


def test_a_model_that_is_not_thread_safe_runs_on_the_worker_thread_only(
        harness: Harness) -> None:
    log = ThreadLog()
    _with_model(harness, "log", log.load, thread_safe=False, threads=4)
    report = harness.run([harness.entry("log", f"s{i}") for i in range(16)])
    assert report.succeeded == 16
    assert len(log.threads) == 4  # batches of the model's size, one after another
    assert set(log.threads) == {threading.get_ident()}


@pytest.mark.parametrize("threads", [1, 2])
def test_outputs_keep_input_order_whatever_the_threads(harness: Harness, threads: int) -> None:
    log = ThreadLog()
    _with_model(harness, "log", log.load, thread_safe=True, threads=threads)
    texts = [f"{'x' * (i % 5)}{i}" for i in range(11)]
    entries = [harness.entry("log", text) for text in texts]
    harness.run(entries)
    assert [harness.result(e) for e in entries] == texts
    harness.runtime.close()


def test_a_flush_with_nothing_valid_to_run_fails_its_jobs_not_the_worker(
        harness: Harness) -> None:
    log = ThreadLog()
    _with_model(harness, "log", log.load, thread_safe=True, threads=2)
    entries = [harness.entry("log", "")]  # empty input: invalid, checked again in the worker
    report = harness.run(entries)
    assert report.failed == 1
    assert log.threads == []


class TorchThreads:
    """A model that records how many torch threads each call gets."""

    def __init__(self) -> None:
        self.counts: list[int] = []
        self.threads: list[int] = []

    def load(self, context: LoadContext) -> Runner:
        torch = pytest.importorskip("torch")

        def run(inputs: Sequence[Any], params: dict[str, Any]) -> list[Any]:
            self.counts.append(torch.get_num_threads())
            self.threads.append(threading.get_ident())
            return list(inputs)

        return run


def test_a_lone_job_gets_every_cores_threads_and_a_shared_flush_one_each(
        harness: Harness) -> None:
    """Side by side, each call has one torch thread; a flush of one job has nothing to share,
    so its one call takes all of them (and this thread goes back to one after)."""
    torch = pytest.importorskip("torch")
    model = TorchThreads()
    _with_model(harness, "threads", model.load, thread_safe=True, threads=2)
    harness.runtime.context = LoadContext(device="cpu", torch_threads=1)
    torch.set_num_threads(1)
    pool_threads_before = torch.get_num_threads()
    harness.run([harness.entry("threads", "alone")])
    assert model.counts == [2]
    assert torch.get_num_threads() == pool_threads_before == 1
    model.counts.clear()
    harness.run([harness.entry("threads", f"s{i}") for i in range(4)])
    assert model.counts == [1, 1]  # two calls side by side, one thread each
    harness.runtime.close()


def test_lone_jobs_run_on_one_thread_whichever_runner_had_them(harness: Harness) -> None:
    """Every thread that runs torch with n threads holds n - 1 OpenMP threads; past the
    cores, OpenMP stops spinning and a lone job ran at one thread's speed. So lone batches of
    every runner thread go to the same one thread."""
    pytest.importorskip("torch")
    model = TorchThreads()
    _with_model(harness, "threads", model.load, thread_safe=True, threads=2)
    harness.runtime.context = LoadContext(device="cpu", torch_threads=1)
    runners = [threading.Thread(target=harness.run,
                                args=([harness.entry("threads", f"alone {i}")],))
               for i in range(3)]
    for runner in runners:  # one after the other, each on a thread of its own
        runner.start()
        runner.join()
    assert model.counts == [2, 2, 2]
    assert len(set(model.threads)) == 1
    assert model.threads[0] not in {runner.ident for runner in runners}
    harness.runtime.close()


def test_openmp_threads_spin_briefly_side_by_side_and_sleep_at_once_otherwise() -> None:
    assert openmp_wait(2) == ("GOMP_SPINCOUNT", "10000")  # only lone batches use OpenMP threads
    assert openmp_wait(1) == ("OMP_WAIT_POLICY", "PASSIVE")  # every call uses one per core


class Measured:
    """A model that says its inputs' lengths (``lengths``: here the number of "x"s, which
    character counts do not follow) and records the batches it is called with."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.batches: list[list[str]] = []

    def load(self, context: LoadContext) -> Runner:
        model = self

        class Run:
            def __call__(self, inputs: Sequence[Any], params: dict[str, Any]) -> list[Any]:
                model.batches.append(list(inputs))
                return [f"{text}!" for text in inputs]

            def lengths(self, inputs: Sequence[Any]) -> list[int]:
                if model.fail:
                    raise RuntimeError("no count")
                return [text.count("x") for text in inputs]

        return Run()


# Long in characters, short in "x"s, and the other way round.
MEASURED = ["aaaaaaaax", "x", "aaaaaaxxx", "xxxx", "aaaaaxx", "xx"]


def test_a_flush_is_sorted_by_the_runners_own_lengths(harness: Harness) -> None:
    model = Measured()
    _with_model(harness, "measured", model.load, thread_safe=False, threads=1)
    entries = [harness.entry("measured", text) for text in MEASURED]
    report = harness.run(entries)
    assert report.succeeded == len(MEASURED)
    assert [[text.count("x") for text in batch] for batch in model.batches] == [
        [1, 1, 2, 2], [3, 4]]  # batches of 4, by "x"s, not by characters
    assert [harness.result(e) for e in entries] == [f"{text}!" for text in MEASURED]


def test_a_runner_whose_lengths_fail_is_sorted_by_characters(harness: Harness) -> None:
    model = Measured(fail=True)
    _with_model(harness, "measured", model.load, thread_safe=False, threads=1)
    entries = [harness.entry("measured", text) for text in MEASURED]
    assert harness.run(entries).succeeded == len(MEASURED)
    assert [len(text) for batch in model.batches for text in batch] == sorted(map(len, MEASURED))
