"""Torch's intra-op thread count for the calls of one thread, without importing torch.

A gpu-pool worker on a CPU runs a batch as one single-threaded call per core side by side
(``workers.runtime.batch_parallelism``). A flush of one job has nothing to share out, and one
thread would leave the other cores idle while the job waits: at low load that is the whole
latency. Torch keeps the count per thread (OpenMP's per-thread setting: another thread's calls
keep theirs), so the thread that runs lone batches uses every core for them while the others
use one each.
"""

from __future__ import annotations

import sys


def set_torch_threads(count: int) -> None:
    """This thread's torch calls use ``count`` threads from now on (where torch is loaded)."""
    torch = sys.modules.get("torch")
    if torch is not None and count >= 1:
        torch.set_num_threads(count)
