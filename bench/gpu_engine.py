"""The worker's batching engine on a GPU, without RabbitMQ/Redis/Postgres (a bare GPU machine has
none): how much of the model's in-process speed survives the engine's own work per job (parsing
entries, grouping, tokenising, encoding results), with the store and cache replaced by in-memory
doubles of our own interfaces. What it cannot show: broker, database and cache round trips.

Writes $OUT/gpu_engine.json (or ./gpu_engine.json). Usage: python bench/gpu_engine.py [--jobs N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aidist.config import Settings
from aidist.jobs import JobEntry, JobKind, JobStatus, cache_key
from aidist.testing import InMemoryBlobStore, InMemoryBroker, InMemoryCache, InMemoryStore
from db import Claim, ClaimRequest, Notice, Outcome
from models import LoadContext, build_registry
from workers.batching import BackgroundRunner, BatchPolicy, MessageBatcher
from workers.executor import run_flush
from workers.runtime import WorkerRuntime

WORDS = ["queue", "worker", "model", "batch", "tensor", "cache", "state", "broker", "retry",
         "durable", "embed", "token", "chunk", "sentence", "vector", "latency", "cluster"]


class MemoryStore(InMemoryStore):
    """Claims every job as running (no rows to insert first); finishing is counted, not stored,
    so the figure is the engine's own work."""

    def __init__(self) -> None:
        super().__init__()
        self.finished = 0

    def claim(self, requests: Sequence[ClaimRequest], worker: str,
              max_attempts: int = 8) -> list[Claim]:
        return [Claim(request.id, JobStatus.RUNNING, 1) for request in requests]

    def finish_returning(self, outcomes: Sequence[Outcome]) -> set[str]:
        self.finished += len(outcomes)
        return {outcome.id for outcome in outcomes}


class MemoryCache(InMemoryCache):
    """Keeps nothing: the engine still encodes every result it would store."""

    def get_many(self, cache_keys: Sequence[str]) -> list[bytes | None]:
        return [None] * len(cache_keys)

    def put_many(self, results: Mapping[str, bytes], ttl_s: int) -> None:
        return None

    def notify(self, notices: Mapping[str, Sequence[Notice]]) -> None:
        return None


class Message:
    """What the batcher uses of a received message."""

    def __init__(self, body: Any) -> None:
        self.body = body
        self.headers: dict[str, Any] = {}

    def decode(self) -> Any:
        return self.body

    def ack(self) -> None:
        return None

    def reject(self, requeue: bool = False) -> None:
        raise AssertionError("no message should be rejected here")


def texts(count: int) -> list[str]:
    return [" ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(8 + i % 24)) + f" {i}"
            for i in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=8192)
    parser.add_argument("--device", default="cuda:0" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    registry = build_registry()
    store = MemoryStore()
    runtime = WorkerRuntime(settings=Settings(), registry=registry, store=store,
                            cache=MemoryCache(), context=LoadContext(device=args.device),
                            name="gpu-engine-bench", publisher=InMemoryBroker(),
                            blobs=InMemoryBlobStore())
    runner = runtime.runner("minilm")
    version = registry.version("minilm")
    corpus = texts(args.jobs)
    entries = [JobEntry(str(uuid.uuid4()), JobKind.INFER, "minilm", version, text,
                        cache_key(JobKind.INFER, "minilm", version, {}, text.encode()))
               for text in corpus]
    report: dict[str, Any] = {"device": args.device, "jobs": args.jobs, "torch": torch.__version__}
    if args.device.startswith("cuda"):
        report["gpu"] = torch.cuda.get_device_name(0)

    def timed(fn: Any) -> float:
        fn()  # warm-up at this shape
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        started = time.perf_counter()
        fn()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return round(args.jobs / (time.perf_counter() - started), 1)

    for batch in (64, 128, 256):
        key = str(batch)
        report.setdefault("in_process", {})[key] = timed(
            lambda b=batch: [runner(corpus[i : i + b], {}) for i in range(0, len(corpus), b)])
        # the engine cuts batches at the spec's max_batch_size: set it to the size under test
        object.__setattr__(registry.get("minilm"), "max_batch_size", batch)
        report.setdefault("engine_packed", {})[key] = timed(
            lambda b=batch: [run_flush(runtime, entries[i : i + b])
                             for i in range(0, len(entries), b)])

        def one_job_per_message(b: int = batch) -> None:
            batcher = MessageBatcher(lambda: runtime, BatchPolicy(max_jobs=b),
                                     lambda delay, fn: _Never())
            for entry in entries:
                batcher.add(Message(([[entry.to_wire()]], {}, {})))
            batcher.flush()

        report.setdefault("engine_one_job_per_message", {})[key] = timed(one_job_per_message)

        def one_job_per_message_pipelined(b: int = batch) -> None:
            runner = BackgroundRunner(lambda: runtime)
            batcher = MessageBatcher(lambda: runtime, BatchPolicy(max_jobs=b),
                                     lambda delay, fn: _Never(), background=runner)
            for entry in entries:
                batcher.add(Message(([[entry.to_wire()]], {}, {})))
                batcher.drain()
            batcher.flush()
            runner.wait_idle(600)
            batcher.drain()
            runner.stop()

        report.setdefault("engine_one_job_per_message_pipelined", {})[key] = timed(
            one_job_per_message_pipelined)
    for name in ("engine_packed", "engine_one_job_per_message",
                 "engine_one_job_per_message_pipelined"):
        report[f"{name}_vs_in_process"] = {
            b: round(report[name][b] / report["in_process"][b], 3) for b in report["in_process"]}
    out = Path(os.environ.get("OUT", ".")) / "gpu_engine.json"
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


class _Never:
    def cancel(self) -> None:
        return None


if __name__ == "__main__":
    main()
