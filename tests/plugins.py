"""Test-only models, registered through the plugin hook (AIDIST_PLUGINS=tests.plugins).

They need no torch: ``flaky`` fails on inputs containing "boom" (to prove one bad input fails only
its own job), ``sleepy`` holds the worker for as many seconds as its input says (a workload, so
tests can observe queued and running states), ``unloadable`` never loads, and ``large-echo``
returns its bytes reversed whatever their size (inputs and outputs through the blob store).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from typing import Any

from aidist import JobKind, LoadContext, ModelSpec, Registry, Runner
from tests import typed_plugins


def load_flaky(context: LoadContext) -> Runner:
    def run(inputs: Sequence[Any], params: dict[str, Any]) -> list[Any]:
        for text in inputs:
            if "boom" in text:
                raise ValueError(f"flaky model refuses {text!r}")
        return [len(text) for text in inputs]

    return run


def load_sleepy(context: LoadContext) -> Runner:
    def run(inputs: Sequence[Any], params: dict[str, Any]) -> list[Any]:
        for text in inputs:
            time.sleep(float(text))
        return [float(text) for text in inputs]

    return run


def load_oom_on_batches(context: LoadContext) -> Runner:
    """Runs out of memory on any batch larger than 2 (like a GPU on an oversize batch)."""

    def run(inputs: Sequence[Any], params: dict[str, Any]) -> list[Any]:
        if len(inputs) > 2:
            raise RuntimeError(f"CUDA out of memory: tried a batch of {len(inputs)}")
        return [text.upper() for text in inputs]

    return run


def load_crashing(context: LoadContext) -> Runner:
    """Kills its worker process on the input "die" (like a segfault in a native library)."""

    def run(inputs: Sequence[Any], params: dict[str, Any]) -> list[Any]:
        if "die" in inputs:
            os._exit(13)
        return list(inputs)

    return run


EXEC_LOG_ENV = "AIDIST_TEST_EXEC_LOG"
PER_ITEM_S = 0.001  # a little work per item, so faults land in the middle of batches


GATE_FILE = "gate-open"
GATE_DEADLINE_S = 120.0


def wait_for_gate(directory: str | None) -> None:
    """Block until the gate file exists in ``directory`` (a deadline, never forever)."""
    if directory is None:
        raise RuntimeError(f"'gate' inputs need ${EXEC_LOG_ENV}")
    gate = os.path.join(directory, GATE_FILE)
    deadline = time.monotonic() + GATE_DEADLINE_S
    poll = threading.Event()  # never set: the pause between looks
    while not os.path.exists(gate):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the gate {gate} was not opened within {GATE_DEADLINE_S}s")
        poll.wait(0.02)


def load_logged(context: LoadContext) -> Runner:
    """Echoes ``done:<input>`` and appends every input it ran to an execution log, one file per
    process (``$AIDIST_TEST_EXEC_LOG/<pid>.log``, lines ``<call number>\t<input>``), written
    after the batch is computed: the fault suite counts model executions from it, never from
    aidist's own records. Inputs starting with "boom" raise; with "hang" never return; with
    "gate" hold their batch until the test opens the gate (creates ``<log dir>/GATE_FILE``), so
    a test can keep a batch running exactly as long as it needs to."""
    directory = os.environ.get(EXEC_LOG_ENV)
    calls = 0
    handle: int | None = None
    hung = threading.Event()  # never set
    lock = threading.Lock()  # thread-safe: a worker on a CPU runs calls side by side

    def run(inputs: Sequence[Any], params: dict[str, Any]) -> list[Any]:
        nonlocal calls, handle
        for text in inputs:
            if text.startswith("boom"):
                raise ValueError(f"logged model refuses {text!r}")
            if text.startswith("hang"):
                hung.wait()
            if text.startswith("gate"):
                wait_for_gate(directory)
        time.sleep(PER_ITEM_S * len(inputs))
        if directory:
            with lock:
                if handle is None:
                    handle = os.open(os.path.join(directory, f"{os.getpid()}.log"),
                                     os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                calls += 1
                os.write(handle, "".join(f"{calls}\t{text}\n" for text in inputs).encode())
        return [f"done:{text}" for text in inputs]

    return run


def load_large_echo(context: LoadContext) -> Runner:
    """Bytes in, the same bytes reversed out, whatever their size (blob-store tests)."""

    def run(inputs: Sequence[Any], params: dict[str, Any]) -> list[Any]:
        return [bytes(data)[::-1] for data in inputs]

    return run


def load_unloadable(context: LoadContext) -> Runner:
    raise RuntimeError("weights file is corrupt (on purpose)")


def register_models(registry: Registry) -> None:
    """Plugin hook: add the test models (and the typed ones of ``tests.typed_plugins``)."""
    typed_plugins.register_models(registry)
    registry.register(ModelSpec(name="flaky", kind=JobKind.INFER, loader=load_flaky,
                                version="flaky-1", pool="gpu", max_batch_size=16))
    registry.register(ModelSpec(name="sleepy", kind=JobKind.INFER, loader=load_sleepy,
                                version="sleepy-1", pool="gpu", max_batch_size=1))
    registry.register(ModelSpec(name="oom-on-batches", kind=JobKind.INFER,
                                loader=load_oom_on_batches, version="oom-1", pool="gpu",
                                max_batch_size=64))
    registry.register(ModelSpec(name="crashing", kind=JobKind.PREPROCESS, loader=load_crashing,
                                version="crashing-1", pool="cpu", max_batch_size=16))
    registry.register(ModelSpec(name="logged", kind=JobKind.INFER, loader=load_logged,
                                version="logged-1", pool="gpu", max_batch_size=64,
                                thread_safe=True))
    registry.register(ModelSpec(name="logged-cpu", kind=JobKind.PREPROCESS, loader=load_logged,
                                version="logged-1", pool="cpu", max_batch_size=64))
    registry.register(ModelSpec(name="unloadable", kind=JobKind.INFER, loader=load_unloadable,
                                version="unloadable-1", pool="gpu"))
    registry.register(ModelSpec(name="large-echo", kind=JobKind.INFER, loader=load_large_echo,
                                version="large-echo-1", pool="gpu", input_type="bytes",
                                max_batch_size=4))
