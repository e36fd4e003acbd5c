"""Where models load: once per process, in the process that runs jobs, never in a forking parent."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest

from aidist.config import Settings
from aidist.processes import wait_or_kill
from producers import Client
from tests.conftest import WorkerProcess, start_worker

pytestmark = pytest.mark.e2e

LOADED = re.compile(r"loaded (\S+) on \S+ \(device (\S+), pid (\d+)[,)]")


def _loads(worker: WorkerProcess) -> list[tuple[str, str, int]]:
    return [(m.group(1), m.group(2), int(m.group(3))) for m in LOADED.finditer(worker.log())]


def test_cpu_pool_loads_ops_in_forked_children_not_the_parent(
        workers: dict[str, WorkerProcess], client: Client) -> None:
    client.map("tokenize", [f"load check {i}" for i in range(20)], timeout=60)
    worker = workers["cpu"]
    loads = _loads(worker)
    pids = {pid for _, _, pid in loads}
    assert loads, worker.log()[-2000:]
    assert worker.process.pid not in pids  # the parent that forks never loads a model
    for pid in pids:  # each child loads each op once
        names = [name for name, _, p in loads if p == pid]
        assert sorted(names) == sorted(set(names))


def test_gpu_pool_is_one_process_that_loads_each_model_once(
        workers: dict[str, WorkerProcess], client: Client) -> None:
    client.map("toy-classifier", [f"gpu pool check {i}" for i in range(10)], timeout=60)
    worker = workers["gpu"]
    loads = _loads(worker)
    assert {pid for _, _, pid in loads} == {worker.process.pid}  # solo pool: no fork at all
    names = [name for name, _, _ in loads]
    assert "minilm" in names and "toy-classifier" in names
    assert sorted(names) == sorted(set(names))
    assert all(device == "cpu" for _, device, _ in loads)  # no GPU on this machine


def test_worker_shuts_down_cleanly_on_repeated_sigterm(settings: Settings,
                                                       tmp_path: Path) -> None:
    """An operator (or a supervisor) may send SIGTERM twice: the worker must not hang (the second
    signal may turn the warm shutdown into Celery's cold one; unacked messages are redelivered)."""
    worker = start_worker(settings, "gpu", tmp_path, "--models", "toy-classifier",
                          serving=["toy-classifier"])
    worker.process.send_signal(signal.SIGTERM)
    worker.process.send_signal(signal.SIGTERM)
    code = wait_or_kill(worker.process, timeout=60)
    assert code in (0, -signal.SIGTERM), worker.log()[-2000:]  # -SIGKILL: it hung and was killed
