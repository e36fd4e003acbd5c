"""Scenario 1, the in-process limit: ``models.minilm.load`` called directly, no queue at all.

The same runner the gpu-pool worker uses, on the CPU with one torch thread per core, at several
batch sizes over the same sentences, the fastest of ``--repeat`` rounds per size. The best rate is
"the limit" every queue path is judged against.
"""

from __future__ import annotations

import time
from typing import Any

from aidist.demo import make_corpus
from bench.config import BATCH_SIZES, Options


def run(options: Options) -> dict[str, Any]:
    from models import LoadContext
    from models.minilm import load

    sentences = make_corpus(options.sizes.inprocess, options.seed_of("inprocess"))
    started = time.perf_counter()
    runner = load(LoadContext(device="cpu"))
    load_s = time.perf_counter() - started
    took: dict[int, list[float]] = {size: [] for size in BATCH_SIZES}
    for size in BATCH_SIZES:
        runner(sentences[:size], {})  # warm this shape
    for _ in range(options.repeats):  # rounds interleave the sizes: a burst of outside load
        for size in BATCH_SIZES:      # slows one round of each, not every round of one
            started = time.perf_counter()
            for start in range(0, len(sentences), size):
                runner(sentences[start : start + size], {})
            took[size].append(time.perf_counter() - started)
    by_batch: dict[str, dict[str, Any]] = {}
    for size, seconds in took.items():
        by_batch[str(size)] = {"seconds": min(seconds), "per_s": len(sentences) / min(seconds),
                               "runs_per_s": [round(len(sentences) / s, 2) for s in seconds]}
        print(f"  in-process batch {size:>3}: {len(sentences) / min(seconds):8.1f} sentences/s",
              flush=True)
    best = max(by_batch, key=lambda key: by_batch[key]["per_s"])
    return {
        "items": len(sentences),
        "load_s": load_s,
        "by_batch": by_batch,
        "best_batch": int(best),
        "per_s": by_batch[best]["per_s"],
        "repeats": options.repeats,
    }
