"""Scenario 1, the in-process limit: ``models.minilm.load`` called directly, no queue at all.

The same runner the gpu-pool worker uses, on the CPU, over the same sentences, in both ways a
process can spread one model over the cores:

- one call at a time, torch using a thread per core inside each operator (torch's default), at
  batch 1, 8, 32, 64, 128;
- one call per core side by side, each on its own slice of the sentences with one torch thread
  (what an aidist worker does on a CPU for a ``thread_safe`` model), at batch 32, 64, 128.

The fastest of ``--repeat`` rounds per row; the best row is "the limit" every queue path is
judged against, so a queue path is measured against the model's best in-process strategy, not
against a weaker one.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

from aidist.demo import make_corpus
from bench.config import BATCH_SIZES, SIDE_BY_SIDE_SIZES, Options


def run(options: Options) -> dict[str, Any]:
    import torch

    from models import LoadContext
    from models.minilm import load

    sentences = make_corpus(options.sizes.inprocess, options.seed_of("inprocess"))
    cores = os.cpu_count() or 1
    started = time.perf_counter()
    runner = load(LoadContext(device="cpu"))
    load_s = time.perf_counter() - started

    def one_call(size: int) -> None:
        torch.set_num_threads(cores)
        for start in range(0, len(sentences), size):
            runner(sentences[start : start + size], {})

    def side_by_side(size: int) -> None:
        torch.set_num_threads(1)
        batches = [sentences[start : start + size] for start in range(0, len(sentences), size)]

        def work(part: list[list[str]]) -> None:
            for batch in part:
                runner(batch, {})

        threads = [threading.Thread(target=work, args=(batches[i::cores],)) for i in range(cores)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    rows: dict[str, Callable[[], None]] = {str(size): lambda s=size: one_call(s)
                                           for size in BATCH_SIZES}
    if cores > 1:
        rows |= {f"{size} x{cores}": lambda s=size: side_by_side(s)
                 for size in SIDE_BY_SIDE_SIZES}
    for size in BATCH_SIZES:
        runner(sentences[:size], {})  # warm this shape
    took: dict[str, list[float]] = {key: [] for key in rows}
    for _ in range(options.repeats):  # rounds interleave the rows: a burst of outside load
        for key, measure in rows.items():  # slows one round of each, not every round of one
            started = time.perf_counter()
            measure()
            took[key].append(time.perf_counter() - started)
    torch.set_num_threads(cores)
    by_batch: dict[str, dict[str, Any]] = {}
    for key, seconds in took.items():
        by_batch[key] = {"seconds": min(seconds), "per_s": len(sentences) / min(seconds),
                         "runs_per_s": [round(len(sentences) / s, 2) for s in seconds]}
        print(f"  in-process batch {key:>6}: {len(sentences) / min(seconds):8.1f} sentences/s",
              flush=True)
    best = max(by_batch, key=lambda key: by_batch[key]["per_s"])
    return {
        "items": len(sentences),
        "load_s": load_s,
        "by_batch": by_batch,
        "best_batch": best,
        "side_by_side_calls": cores,
        "per_s": by_batch[best]["per_s"],
        "repeats": options.repeats,
    }
