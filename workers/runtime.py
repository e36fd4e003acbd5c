"""What a worker process holds: its connections and the models it has loaded.

Built lazily in the process that runs jobs, never in a parent that forks: a prefork child gets its
own connections and its own model copy, and a GPU worker (solo pool) initialises CUDA in the one
process that uses it.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from aidist.config import Settings
from aidist.errors import AidistError, ModelLoadError
from aidist.transport import JobPublisher, Publisher
from db import JobStore, ResultCache
from db.blob_base import BlobStore
from db.blobs import open_blob_store_for
from db.interfaces import JobStoreLike, ResultCacheLike
from models import LoadContext, ModelSpec, Registry, Runner, build_registry
from models.threads import set_torch_threads
from workers.hooks import Hooks

log = logging.getLogger("aidist.worker")
Batch = TypeVar("Batch")
Result = TypeVar("Result")


def batch_parallelism(settings: Settings, device: str, specs: Sequence[ModelSpec]
                      ) -> tuple[int, int]:
    """(model calls side by side, torch threads per call) for a worker serving ``specs``.

    On a CPU, one single-threaded call per core over slices of the batch beats one call over
    the whole batch with a thread per core: torch's OpenMP threads meet at a barrier after every
    operator, and on cores shared with the consumer, the broker and the databases each barrier
    waits for the slowest thread (spinning steals those cores, sleeping adds wake-ups). Measured
    on 2 cores: +15-25% packed, +20% single-message through the queue (README, Performance).
    Only for models that declare ``thread_safe``; on a GPU one call at a time.
    """
    cores = os.cpu_count() or 1
    threads = settings.batch_threads
    if threads == 0:
        on_cpu = device.partition(":")[0] == "cpu"
        threads = cores if on_cpu and specs and all(spec.thread_safe for spec in specs) else 1
    return threads, settings.torch_threads or max(1, cores // threads)


class InFlight:
    """Job ids that a run of this process holds right now (flushes run on several threads)."""

    def __init__(self) -> None:
        self._ids: set[str] = set()
        self._lock = threading.Lock()

    @contextmanager
    def taking(self, job_ids: Sequence[str]) -> Iterator[frozenset[str]]:
        """Hold ``job_ids`` for the block; yields those another run here already holds (they
        are not taken, and stay that run's)."""
        with self._lock:
            busy = frozenset(job_id for job_id in job_ids if job_id in self._ids)
            mine = [job_id for job_id in job_ids if job_id not in busy]
            self._ids.update(mine)
        try:
            yield busy
        finally:
            with self._lock:
                self._ids.difference_update(mine)


@dataclass
class WorkerRuntime:
    """Per-process dependencies of the executor, injected rather than global."""

    settings: Settings
    registry: Registry
    store: JobStoreLike
    cache: ResultCacheLike
    context: LoadContext
    name: str
    publisher: JobPublisher
    blobs: BlobStore
    hooks: Hooks = field(default_factory=Hooks)
    runners: dict[str, Runner] = field(default_factory=dict)
    load_errors: dict[str, str] = field(default_factory=dict)
    dtype_override: str | None = None
    batch_threads: int = 1
    in_flight: InFlight = field(default_factory=InFlight)
    _pools: dict[str, ThreadPoolExecutor] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def map_batches(self, run: Callable[[Batch], Result], batches: list[Batch],
                    threads: int) -> list[Result]:
        """``run`` over ``batches``, in order: on up to ``threads`` (at most ``batch_threads``)
        pool threads side by side, or on this thread when one would do."""
        if len(batches) == 1 and threads > 1 and self.batch_threads > 1:
            # One batch (a lone job at low load) has nothing to share out: it runs with every
            # core's torch threads, always on the same thread (``_pool``).
            return [self._pool("lone").submit(run, batches[0]).result()]
        if min(threads, self.batch_threads) <= 1 or len(batches) <= 1:
            return [run(batch) for batch in batches]
        return list(self._pool("side by side").map(run, batches))

    def _pool(self, kind: str) -> ThreadPoolExecutor:
        """The model-call threads: ``side by side`` (``batch_threads`` of them, one torch
        thread each) or ``lone`` (one, with every core's torch threads). Each thread sets its
        torch threads once, when it starts, and keeps them.

        Lone batches keep to one thread because of how OpenMP (libgomp) waits: a thread that
        runs torch with n threads gets a team of n - 1 OpenMP threads of its own, and once a
        process holds more OpenMP threads than cores, every team's threads stop spinning
        between operators and sleep, so each operator of a forward pays their wake-up. Lone
        batches on whichever runner thread had the flush made one team per runner thread: a
        lone minilm sentence ran no faster on two threads than on one (measured on 2 cores:
        17-18 ms, using 1.37 cores, against 12-13 ms with one such team in the process, using
        1.97)."""
        with self._lock:
            pool = self._pools.get(kind)
            if pool is None:
                lone = kind == "lone"
                pool = ThreadPoolExecutor(
                    1 if lone else self.batch_threads,
                    thread_name_prefix="aidist-lone" if lone else "aidist-model",
                    initializer=set_torch_threads,
                    initargs=((self.batch_threads if lone else 1)
                              * max(self.context.torch_threads, 1),))
                self._pools[kind] = pool
            return pool

    def forward(self, queue: str, entries: list[dict[str, Any]]) -> None:
        """Publish pipeline continuations and split redeliveries (confirmed) to a job queue."""
        self.publisher.publish(queue, entries)

    def runner(self, target: str) -> Runner:
        """The loaded runner of ``target``, loading it on first use; ``ModelLoadError`` if it
        cannot load (remembered, so a broken model is not reloaded for every batch)."""
        found = self.runners.get(target)
        if found is not None:
            return found
        with self._lock:  # flushes on two runner threads load a model once, not twice
            return self._load(target)

    def _load(self, target: str) -> Runner:
        found = self.runners.get(target)
        if found is not None:
            return found
        if target in self.load_errors:
            raise ModelLoadError(self.load_errors[target])
        spec = self.registry.get(target)
        started = time.perf_counter()
        try:
            context = replace(self.context, dtype=self.dtype_override or spec.dtype)
            runner = spec.load(context)
            if spec.warmup_inputs:
                runner(list(spec.warmup_inputs), {})
        except AidistError as exc:
            self.load_errors[target] = str(exc)
            log.error("model %s is not ready on %s: %s", target, self.name, exc)
            raise
        except Exception as exc:
            message = f"model {target!r} failed to load or warm up: {exc}"
            self.load_errors[target] = message
            log.error("model %s is not ready on %s: %s", target, self.name, message)
            raise ModelLoadError(message) from exc
        log.info("loaded %s on %s (device %s, pid %d, %d torch threads per call, %s)", target,
                 self.name, self.context.device, os.getpid(), self.context.torch_threads,
                 f"{self.batch_threads} calls side by side" if spec.thread_safe
                 else "one call at a time")
        if self.batch_threads > 1 and not spec.thread_safe:
            log.warning("model %s is not thread_safe: its batches run one at a time, each on %d "
                        "torch threads; set AIDIST_BATCH_THREADS=1 if it is this worker's main "
                        "model", target, self.context.torch_threads)
        self.runners[target] = runner
        self.hooks.model_loaded(target, time.perf_counter() - started)
        return runner

    def warm(self, targets: list[str]) -> None:
        """Load and warm up each target now; a failure is logged and the others still load."""
        for target in targets:
            try:
                self.runner(target)
            except AidistError:
                continue

    def close(self) -> None:
        """Close connections and the model-call threads."""
        for pool in self._pools.values():
            pool.shutdown(wait=False)
        self.store.close()
        self.cache.close()
        self.publisher.close()
        self.blobs.close()


class RuntimeHolder:
    """Builds the runtime on first use in each process (a forked child builds its own)."""

    def __init__(self, settings: Settings, *, device: str, dtype: str | None = None,
                 targets: Sequence[str] = (), hooks: Hooks | None = None,
                 node: str | None = None) -> None:
        self.settings = settings
        self.node = node or socket.gethostname()
        self.device = device
        self.dtype = dtype
        self.targets = tuple(targets)
        self.hooks = hooks if hooks is not None else Hooks()
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._runtime: WorkerRuntime | None = None

    def get(self) -> WorkerRuntime:
        """This process's runtime, built on first use here; the hooks' ``process_started``
        runs then (alive marks, the watchdog's thread)."""
        with self._lock:
            if self._runtime is None or self._pid != os.getpid():
                self._runtime = self._build()
                self._pid = os.getpid()
                self.hooks.process_started(self._runtime)
            return self._runtime

    def _build(self) -> WorkerRuntime:
        settings = self.settings
        registry = build_registry(settings.plugins, max_input_chars=settings.max_input_chars)
        batch_threads, torch_threads = batch_parallelism(
            settings, self.device, [registry.get(target) for target in self.targets])
        return WorkerRuntime(
            settings=settings,
            registry=registry,
            store=JobStore.connect(settings.database_url, settings.connect_timeout_s),
            cache=ResultCache.connect(settings.redis_url, settings.namespace,
                                      settings.connect_timeout_s),
            context=LoadContext(device=self.device, torch_threads=torch_threads),
            publisher=Publisher(settings.broker_url, settings.namespace,
                                settings.connect_timeout_s),
            blobs=open_blob_store_for(settings),
            hooks=self.hooks,
            batch_threads=batch_threads,
            dtype_override=self.dtype,
            # The Celery node name (what Flower and `celery inspect` show), then what makes it
            # unique per process start, even where a restarted container gets the same host
            # name and pid: the claim fencing tells a worker's own runs from a dead one's by it.
            name=f"{self.node}:{os.getpid()}:{secrets.token_hex(3)}",
        )
