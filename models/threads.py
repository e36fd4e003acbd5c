"""Torch's intra-op thread count for the calls of one thread, without importing torch.

A gpu-pool worker on a CPU runs a batch as one single-threaded call per core side by side
(``workers.runtime.batch_parallelism``). A flush of one job has nothing to share out, and one
thread would leave the other cores idle while the job waits: at low load that is the whole
latency. Torch keeps the count per thread (OpenMP's per-thread setting: another thread's calls
keep theirs), so the thread that runs a lone batch can use every core for it and go back after.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


def set_torch_threads(count: int) -> None:
    """This thread's torch calls use ``count`` threads from now on (where torch is loaded)."""
    torch = sys.modules.get("torch")
    if torch is not None and count >= 1:
        torch.set_num_threads(count)


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Calls made on this thread inside the block use ``count`` torch threads (nothing changes
    where torch is not loaded: a model that does not use it, or none yet)."""
    torch = sys.modules.get("torch")
    if torch is None or count < 1:
        yield
        return
    before = torch.get_num_threads()
    set_torch_threads(count)
    try:
        yield
    finally:
        set_torch_threads(before)
