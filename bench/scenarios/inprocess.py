"""Scenario 1, the in-process limit: ``models.minilm.load`` called directly, no queue at all, and
sentence-transformers' own ``encode`` on the same weights and sentences.

Both run in both ways a process can spread one model over the cores:

- one call at a time, torch using a thread per core inside each operator (torch's default), at
  batch 1, 8, 32, 64, 128;
- one call per core side by side, each on its own slice of the sentences with one torch thread
  (what an aidist worker does on a CPU for a ``thread_safe`` model), at batch 32, 64, 128;
- and, for the latency scenario, the runner on one sentence at a time (its minilm sentences),
  the model's own share of a lone job's round trip.

The sentences are sorted by length (characters) once, before any row runs. ``encode`` sorts its
input by length before it cuts batches, and the gpu-pool worker sorts each flush by length before
it cuts batches (``workers.model_runs``), so the runner rows get length-sorted batches too:
otherwise the runner would pad other batches than ``encode`` does for the same sentences, and the
two would not be compared on the same work. Each side-by-side ``encode`` call gets exactly the
sentences of the runner's batches on its thread, so both are handed the same batches (what the
runner does inside one, its sub-batches by token count, is its own: ``models.minilm``).

The fastest of ``--repeat`` rounds per row; the best row of all (runner or ``encode``) is "the
limit" every queue path is judged against, so a queue path is measured against the model's best
in-process strategy, not against a weaker one, nor against the project's own runner alone.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from aidist.demo import make_corpus
from bench.config import BATCH_SIZES, SIDE_BY_SIDE_SIZES, Options
from bench.scenarios import aidist_paths

#: Key prefix of the sentence-transformers rows in ``by_batch`` (``"st encode 64 x2"``).
ST_PREFIX = "st encode "


def _side_by_side(parts: Sequence[Any], work: Callable[[Any], object]) -> None:
    """``work`` on every part, each on a thread of its own, all at once."""
    threads = [threading.Thread(target=work, args=(part,)) for part in parts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def run(options: Options) -> dict[str, Any]:
    import torch
    from sentence_transformers import SentenceTransformer

    from models import LoadContext
    from models.minilm import load
    from models.weights import minilm_dir

    sentences = sorted(make_corpus(options.sizes.inprocess, options.seed_of("inprocess")), key=len)
    cores = os.cpu_count() or 1
    started = time.perf_counter()
    runner = load(LoadContext(device="cpu"))  # sets HF_HUB_OFFLINE: encode loads offline too
    load_s = time.perf_counter() - started
    model = SentenceTransformer(str(minilm_dir()), device="cpu", local_files_only=True)

    def batches(size: int) -> list[list[str]]:
        return [sentences[start : start + size] for start in range(0, len(sentences), size)]

    def encode(part: list[str], size: int) -> None:
        model.encode(part, batch_size=size, normalize_embeddings=True, convert_to_numpy=True,
                     show_progress_bar=False)

    def one_call(size: int) -> None:
        torch.set_num_threads(cores)
        for batch in batches(size):
            runner(batch, {})

    def one_encode(size: int) -> None:
        torch.set_num_threads(cores)
        encode(sentences, size)

    def side_by_side(size: int) -> None:
        torch.set_num_threads(1)
        every = batches(size)
        _side_by_side([every[i::cores] for i in range(cores)],
                      lambda part: [runner(batch, {}) for batch in part])

    def encode_side_by_side(size: int) -> None:
        torch.set_num_threads(1)
        every = batches(size)  # the runner's batches of each thread, joined: the same batches
        _side_by_side([[s for batch in every[i::cores] for s in batch] for i in range(cores)],
                      lambda part: encode(part, size))

    rows: dict[str, Callable[[], None]] = {}
    for size in BATCH_SIZES:
        rows[str(size)] = partial(one_call, size)
        if size in SIDE_BY_SIDE_SIZES:  # encode at the sizes that can be the limit only
            rows[f"{ST_PREFIX}{size}"] = partial(one_encode, size)
    if cores > 1:
        for size in SIDE_BY_SIDE_SIZES:
            rows[f"{size} x{cores}"] = partial(side_by_side, size)
            rows[f"{ST_PREFIX}{size} x{cores}"] = partial(encode_side_by_side, size)
    for size in BATCH_SIZES:  # warm this shape, on both
        runner(sentences[:size], {})
        encode(sentences[:size], size)
    took: dict[str, list[float]] = {key: [] for key in rows}
    for _ in range(options.repeats):  # rounds interleave the rows: a burst of outside load
        for key, measure in rows.items():  # slows one round of each, not every round of one
            started = time.perf_counter()
            measure()
            took[key].append(time.perf_counter() - started)
    torch.set_num_threads(cores)  # what a worker gives a lone batch
    alone = _one_at_a_time(runner, aidist_paths.minilm_latency_texts(options))
    print(f"  in-process one sentence at a time: p50 {alone['p50_ms']:.2f} ms", flush=True)
    by_batch: dict[str, dict[str, Any]] = {}
    for key, seconds in took.items():
        by_batch[key] = {"seconds": min(seconds), "per_s": len(sentences) / min(seconds),
                         "runs_per_s": [round(len(sentences) / s, 2) for s in seconds]}
        print(f"  in-process {key:>16}: {len(sentences) / min(seconds):8.1f} sentences/s",
              flush=True)
    ratios = _runner_vs_encode(by_batch)
    print("  runner / encode: " + ", ".join(f"{key} {ratio:.3f}" for key, ratio in ratios.items()),
          flush=True)
    best = max(by_batch, key=lambda key: by_batch[key]["per_s"])
    return {
        "items": len(sentences),
        "load_s": load_s,
        "by_batch": by_batch,
        "best_batch": best,
        "side_by_side_calls": cores,
        "per_s": by_batch[best]["per_s"],
        "runner_vs_encode": ratios,
        "repeats": options.repeats,
        "one_at_a_time": alone,
    }


def _one_at_a_time(runner: Callable[[list[str], dict[str, Any]], object],
                   sentences: list[str]) -> dict[str, float]:
    """Milliseconds of the runner on one sentence, one after the other: the latency scenario's
    minilm sentences, so aidist's one-at-a-time p50 minus this is what the queue adds."""
    took = []
    for sentence in sentences:
        started = time.perf_counter()
        runner([sentence], {})
        took.append((time.perf_counter() - started) * 1000.0)
    return aidist_paths.summary(took)


def _runner_vs_encode(by_batch: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Runner rate / ``encode`` rate per row both have (``"64"``, ``"64 x2"``): 1.0 or more
    means the project's runner is at least as fast as sentence-transformers on those batches."""
    return {key: round(row["per_s"] / by_batch[ST_PREFIX + key]["per_s"], 3)
            for key, row in by_batch.items() if ST_PREFIX + key in by_batch}
