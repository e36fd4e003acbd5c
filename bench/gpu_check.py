"""GPU checks for the model side, runnable on a bare CUDA machine without RabbitMQ/Redis/Postgres.

What it checks (and writes to $OUT/gpu_check.json, or ./gpu_check.json):
1. Building the registry (what a worker parent and every client do) never initialises CUDA.
2. A child forked from such a parent loads minilm on cuda:0 and runs it (the prefork-safe path).
3. minilm on cuda:0 in float32/float16/bfloat16 equals the CPU float32 result (cosine), and
   toy-classifier on cuda:0 equals its CPU output.
4. In-process minilm throughput on the GPU by batch size (sentences/s): the physical limit that
   the queue path is later judged against.
5. Negative control: once a parent has used CUDA, a forked child cannot (why workers must never
   touch CUDA before a fork).
Usage: python bench/gpu_check.py [--sentences 4096]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models import LoadContext, build_registry, minilm, toy

WORDS = [
    "queue", "worker", "model", "batch", "tensor", "cache", "state", "broker", "retry", "durable",
    "embed", "token", "chunk", "sentence", "vector", "latency", "throughput", "cluster", "node",
    "scale", "result", "job", "deadline", "cancel",
]


def corpus(count: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(6, 40)))) for _ in range(count)]


def _child(queue: Any) -> None:
    try:
        runner = minilm.load(LoadContext(device="cuda:0"))
        vectors = runner(["forked child on the GPU"], {})
        queue.put({"ok": True, "norm": float(np.linalg.norm(vectors[0]))})
    except Exception as exc:
        queue.put({"ok": False, "error": f"{type(exc).__name__}: {exc}"})


def _fork_and_run() -> dict[str, Any]:
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    process = ctx.Process(target=_child, args=(queue,))
    process.start()
    try:
        result = queue.get(timeout=300)
    finally:
        process.join(timeout=60)
    return result


def cosine_min(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    pairs = zip(a, b, strict=True)
    return float(min(np.dot(x, y) / (np.linalg.norm(x) * np.linalg.norm(y)) for x, y in pairs))


def throughput(runner: Any, texts: list[str], batch: int) -> float:
    runner(texts[:batch], {})  # warm-up at this shape
    torch.cuda.synchronize()
    started = time.perf_counter()
    for start in range(0, len(texts), batch):
        runner(texts[start : start + batch], {})
    torch.cuda.synchronize()
    return len(texts) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sentences", type=int, default=4096)
    args = parser.parse_args()
    report: dict[str, Any] = {"torch": torch.__version__}

    build_registry()
    report["cuda_initialised_by_registry"] = torch.cuda.is_initialized()
    report["forked_child_after_clean_parent"] = _fork_and_run()
    report["device"] = torch.cuda.get_device_name(0)  # initialises CUDA: only after the fork check

    texts = corpus(args.sentences)
    sample = texts[:64]
    reference = minilm.load(LoadContext(device="cpu"))(sample, {})
    report["minilm_vs_cpu_min_cosine"] = {}
    report["minilm_sentences_per_s"] = {}
    for dtype in ("float32", "float16", "bfloat16"):
        runner = minilm.load(LoadContext(device="cuda:0", dtype=dtype))
        report["minilm_vs_cpu_min_cosine"][dtype] = cosine_min(runner(sample, {}), reference)
        rates = {}
        for batch in (1, 8, 32, 64, 128, 256):
            subset = texts[: min(len(texts), 512 if batch == 1 else len(texts))]
            rates[str(batch)] = round(throughput(runner, subset, batch), 1)
        report["minilm_sentences_per_s"][dtype] = rates
        del runner
        torch.cuda.empty_cache()

    toy_cpu = toy.load(LoadContext(device="cpu"))(sample, {})
    toy_gpu = toy.load(LoadContext(device="cuda:0"))(sample, {})
    pairs = zip(toy_gpu, toy_cpu, strict=True)
    report["toy_max_abs_diff_gpu_vs_cpu"] = float(max(np.abs(a - b).max() for a, b in pairs))
    report["memory_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    report["forked_child_after_parent_used_cuda"] = _fork_and_run()

    out_dir = Path(os.environ.get("OUT", "."))
    (out_dir / "gpu_check.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
