"""``InMemoryStack``: a real ``Client`` and a real worker executor over the in-memory doubles.

What runs is aidist's own code (the client's validation, cache lookup, recording and publishing,
its waiting; the executor's claims, batches, pipelines and notices); only Postgres, Redis and
RabbitMQ are replaced. Workers do not run on their own: ``run_queued`` delivers what is waiting
on the broker to the executor, in this thread, so a test decides when jobs run and sees every
state in between (``worker_thread`` runs them from a thread instead, for calls that wait)::

    stack = InMemoryStack()
    client = stack.client()
    job = client.infer("toy-classifier", "hi")
    stack.run_queued()
    job.result(timeout=1)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from aidist.config import Settings
from aidist.errors import PoisonMessage
from aidist.testing.blobs import InMemoryBlobStore
from aidist.testing.broker import InMemoryBroker, Published
from aidist.testing.cache import InMemoryCache
from aidist.testing.store import InMemoryStore
from models import LoadContext, Registry, build_registry
from producers.client import Client
from workers.executor import BatchReport, execute
from workers.runtime import WorkerRuntime
from workers.sweeper import sweep_once

log = logging.getLogger("aidist.testing")
DEFAULT_WORKER = "in-memory-worker"


class InMemoryStack:
    """One store, cache, broker and blob store in memory, the settings and registry they serve,
    and the clients and the worker runtime built on them.

    Settings default to ``Settings()`` (the environment, as ``Client()`` reads it) and the
    registry to the built-ins plus ``settings.plugins``; pass your own for a hermetic test. The
    doubles may be passed in too (a subclass that records more, a shared journal).
    """

    def __init__(self, settings: Settings | None = None, *, registry: Registry | None = None,
                 store: InMemoryStore | None = None, cache: InMemoryCache | None = None,
                 broker: InMemoryBroker | None = None, blobs: InMemoryBlobStore | None = None,
                 journal: list[str] | None = None,
                 worker_name: str = DEFAULT_WORKER, context: LoadContext | None = None) -> None:
        self.settings = settings if settings is not None else Settings()
        self.registry = registry if registry is not None else build_registry(
            self.settings.plugins, max_input_chars=self.settings.max_input_chars)
        self.journal: list[str] = journal if journal is not None else []
        self.store = store if store is not None else InMemoryStore(journal=self.journal)
        self.cache = cache if cache is not None else InMemoryCache(
            self.settings.namespace, journal=self.journal)
        self.broker = broker if broker is not None else InMemoryBroker()
        self.blobs = blobs if blobs is not None else InMemoryBlobStore(journal=self.journal)
        self.worker_name = worker_name
        self.context = context if context is not None else LoadContext()
        self.reports: list[BatchReport] = []
        self.dead_letters: list[tuple[str, Published]] = []
        self._runtime: WorkerRuntime | None = None
        self._lock = threading.Lock()

    def client(self) -> Client:
        """A new ``Client`` (its own client id and reply list) over this stack. It publishes a
        single submission before ``infer`` returns, so the test sees its message at once."""
        return Client(self.settings, registry=self.registry, store=self.store, cache=self.cache,
                      publisher=self.broker, blobs=self.blobs, background_publish=False)

    def runtime(self) -> WorkerRuntime:
        """The stack's worker runtime, built on first use; models load once, on first run."""
        with self._lock:
            if self._runtime is None:
                self._runtime = WorkerRuntime(
                    settings=self.settings,
                    registry=self.registry,
                    store=self.store,
                    cache=self.cache,
                    context=self.context,
                    name=self.worker_name,
                    publisher=self.broker,
                    blobs=self.blobs,
                )
            return self._runtime

    def run_queued(self, max_rounds: int = 100) -> int:
        """Deliver every waiting message to the executor, round after round (a pipeline's next
        step, forwarded by the executor, lands on the broker for the next round) until the
        broker is empty or ``max_rounds`` rounds have run; returns how many messages ran.

        Each run's ``BatchReport`` is appended to ``reports``. A message the worker would
        dead-letter (poison, or every job of it without a row or out of attempts) goes to
        ``dead_letters``. Messages still waiting after the last round stay on the broker."""
        runtime = self.runtime()
        ran = 0
        for _ in range(max_rounds):
            taken = self.broker.take()
            if not taken:
                break
            for queue, message in taken:
                ran += 1
                try:
                    report = execute(runtime, message.entries)
                except PoisonMessage as exc:
                    log.error("dead-lettering a poison message of %s: %s", queue, exc)
                    self.dead_letters.append((queue, message))
                    continue
                self.reports.append(report)
                if (report.missing and len(report.missing) == report.received) or (
                        report.gave_up and len(report.gave_up) == report.received):
                    self.dead_letters.append((queue, message))
        return ran

    @contextmanager
    def worker_thread(self, poll_s: float = 0.005) -> Iterator[None]:
        """Run what is queued from a daemon thread while the block runs, for calls that wait
        for their jobs (``Client.map``, ``imap``, a result recomputed through the queue). What
        the thread raised is raised when the block ends."""
        stop = threading.Event()
        errors: list[BaseException] = []

        def loop() -> None:
            while not stop.is_set():
                try:
                    ran = self.run_queued()
                except BaseException as exc:
                    errors.append(exc)
                    return
                if not ran:
                    stop.wait(poll_s)

        thread = threading.Thread(target=loop, name="aidist-in-memory-worker", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=60)
        if errors:
            raise errors[0]

    def sweep(self, older_than_s: float = 0.0) -> int:
        """Do what a worker's sweeper does (``workers.sweeper.sweep_once``): settle the jobs that
        followed an ended one, expire queued jobs past their deadline, publish the queued jobs
        whose message was never confirmed (older than ``older_than_s``); returns how many were
        published."""
        return sweep_once(self.settings, self.store, self.broker.publish, older_than_s)

    def close(self) -> None:
        """Close the runtime's pool of model-call threads (the doubles keep their contents)."""
        if self._runtime is not None:
            self._runtime.close()

