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
from dataclasses import dataclass, field, replace
from typing import Any

from aidist.config import Settings
from aidist.errors import AidistError, ModelLoadError
from db import JobStore, ResultCache
from models import LoadContext, Registry, Runner, build_registry
from producers.publisher import Publisher
from workers.periodic import Periodic
from workers.watchdog import Watchdog

log = logging.getLogger("aidist.worker")


@dataclass
class WorkerRuntime:
    """Per-process dependencies of the executor, injected rather than global."""

    settings: Settings
    registry: Registry
    store: JobStore
    cache: ResultCache
    context: LoadContext
    name: str
    runners: dict[str, Runner] = field(default_factory=dict)
    load_errors: dict[str, str] = field(default_factory=dict)
    dtype_override: str | None = None
    publisher: Publisher | None = None
    watchdog: Watchdog = field(init=False)

    def __post_init__(self) -> None:
        self.watchdog = Watchdog(self.settings.job_time_limit_s)

    def forward(self, queue: str, entries: list[dict[str, Any]]) -> None:
        """Publish pipeline continuations (confirmed) to the next step's queue."""
        if self.publisher is None:
            self.publisher = Publisher(self.settings.broker_url, self.settings.namespace,
                                       self.settings.connect_timeout_s)
        self.publisher.publish(queue, entries)

    def runner(self, target: str) -> Runner:
        """The loaded runner of ``target``, loading it on first use; ``ModelLoadError`` if it
        cannot load (remembered, so a broken model is not reloaded for every batch)."""
        found = self.runners.get(target)
        if found is not None:
            return found
        if target in self.load_errors:
            raise ModelLoadError(self.load_errors[target])
        spec = self.registry.get(target)
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
        log.info("loaded %s on %s (device %s, pid %d)", target, self.name, self.context.device,
                 os.getpid())
        self.runners[target] = runner
        return runner

    def warm(self, targets: list[str]) -> None:
        """Load and warm up each target now; a failure is logged and the others still load."""
        for target in targets:
            try:
                self.runner(target)
            except AidistError:
                continue

    def close(self) -> None:
        """Close connections."""
        self.store.close()
        self.cache.close()
        if self.publisher is not None:
            self.publisher.close()


ALIVE_EVERY_S = 1.0
ALIVE_TTL_S = 5.0


def announce_alive(runtime: WorkerRuntime) -> Periodic:
    """Keep this process's alive mark in Redis fresh from a daemon thread: while it lives, a
    job it runs is not taken over by a redelivery elsewhere (a broker restart redelivers the
    messages of jobs still running); once it dies, the mark expires within ``ALIVE_TTL_S``."""

    def beat() -> float:
        runtime.cache.put_alive(runtime.name, ALIVE_TTL_S)
        return ALIVE_EVERY_S

    alive = Periodic("aidist-alive", beat, retry_s=ALIVE_EVERY_S)
    alive.start()
    return alive


class RuntimeHolder:
    """Builds the runtime on first use in each process (a forked child builds its own)."""

    def __init__(self, settings: Settings, *, device: str, dtype: str | None = None) -> None:
        self.settings = settings
        self.device = device
        self.dtype = dtype
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._runtime: WorkerRuntime | None = None

    def get(self) -> WorkerRuntime:
        """This process's runtime (built, and its alive mark started, on first use here)."""
        with self._lock:
            if self._runtime is None or self._pid != os.getpid():
                self._runtime = self._build()
                self._pid = os.getpid()
                announce_alive(self._runtime)
            return self._runtime

    def _build(self) -> WorkerRuntime:
        settings = self.settings
        return WorkerRuntime(
            settings=settings,
            registry=build_registry(settings.plugins, max_input_chars=settings.max_input_chars),
            store=JobStore.connect(settings.database_url, settings.connect_timeout_s),
            cache=ResultCache.connect(settings.redis_url, settings.namespace,
                                      settings.connect_timeout_s),
            context=LoadContext(device=self.device, torch_threads=settings.torch_threads),
            dtype_override=self.dtype,
            # Unique per process start, even where a restarted container gets the same host name
            # and pid: the claim fencing tells a worker's own runs from a dead one's by it.
            name=f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}",
        )
