"""Where models load: once per process, in the process that runs jobs, never in a forking parent."""

from __future__ import annotations

import re

import pytest

from producers import Client
from tests.conftest import WorkerProcess

pytestmark = pytest.mark.e2e

LOADED = re.compile(r"loaded (\S+) on \S+ \(device (\S+), pid (\d+)\)")


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
