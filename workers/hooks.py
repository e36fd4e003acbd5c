"""Worker hooks: the one place where cross-cutting duties plug into a worker.

Presence heartbeats, the outbox sweeper, alive marks, the job time limit and Flower's task events
each need a moment of the worker's life (it started consuming, a process that runs jobs came up,
a flush began or ended, a message was taken or settled). Each of them is a ``WorkerHook`` that
overrides only the moments it needs; ``workers.launch.default_hooks`` lists them, as dramatiq's
default middleware list does, and metrics and the autoscaler's signals plug in the same way.

A hook's error is logged and the worker carries on: a heartbeat that fails must not fail a batch
(the hooks that guard correctness, like the watchdog, do no I/O that could fail).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, Protocol

from aidist.jobs import JobEntry, JobStatus
from db import Claim, Outcome
from db.interfaces import ResultCacheLike

log = logging.getLogger("aidist.worker")
_tokens = itertools.count(1)


class ProcessView(Protocol):
    """What a hook may use of the process that runs jobs (``WorkerRuntime`` satisfies it)."""

    @property
    def name(self) -> str: ...

    @property
    def cache(self) -> ResultCacheLike: ...


@dataclass(frozen=True, slots=True)
class BatchReport:
    """What one flush (the jobs of one message, or of many gathered by the batcher) did."""

    received: int
    ran: int
    succeeded: int
    failed: int
    skipped: int
    expired: int
    missing: frozenset[str] = frozenset()  # ids with no row at all: not run, dead-lettered
    gave_up: frozenset[str] = frozenset()  # failed out of attempts: their message dead-lettered
    coalesced: int = 0  # identical to a job running elsewhere: they take its end, not a run
    held: frozenset[str] = frozenset()  # redelivered, but still running on a live worker: wait
    # cancelled while claimed here: not run, or their result thrown away
    cancelled_ids: frozenset[str] = frozenset()
    outcomes: tuple[Outcome, ...] = field(default=(), compare=False)  # terminal states recorded
    # For the metrics (``workers.metrics``), not compared: what the claim returned (attempts,
    # queue wait, expired or out of attempts), the jobs that took a result stored meanwhile
    # (cache hits) and those that ran through their model (misses).
    claims: tuple[Claim, ...] = field(default=(), compare=False)
    from_cache: frozenset[str] = field(default=frozenset(), compare=False)
    computed: frozenset[str] = field(default=frozenset(), compare=False)

    @property
    def cancelled(self) -> int:
        return len(self.cancelled_ids)

    @property
    def failed_ids(self) -> list[str]:
        """Jobs that ran and failed (recorded in their rows), sorted."""
        return sorted(o.id for o in self.outcomes if o.status is JobStatus.FAILED)


@dataclass(frozen=True, slots=True)
class Flush:
    """One run of the executor over a set of job entries, as the hooks see it."""

    entries: Sequence[JobEntry]
    token: int = field(default_factory=lambda: next(_tokens))

    @property
    def jobs(self) -> int:
        return len(self.entries)


class WorkerHook:
    """A duty that runs at some moments of a worker's life; every method is a no-op here.

    ``worker_started``/``worker_stopping`` run in the worker's main process (the one Celery's
    signals reach: the solo gpu worker, or the prefork parent of the cpu pool);
    ``process_started`` and the flush and message moments run in each process that runs jobs.
    """

    def worker_started(self) -> None:
        """The worker consumes its queues now (Celery's ``worker_ready``)."""

    def worker_stopping(self) -> None:
        """Warm shutdown began. Runs inside Celery's SIGTERM handler: set flags, take no lock,
        do no I/O."""

    def process_started(self, process: ProcessView) -> None:
        """A process that runs jobs has built its connections (once per process: a forked
        child gets its own call)."""

    def model_loaded(self, target: str, seconds: float) -> None:
        """A model or op loaded and warmed up in this process, in ``seconds`` (a cold start)."""

    def consumer_ready(self, consumer: Any) -> None:
        """Celery's consumer built the batching handler (gpu pool; again after a reconnect)."""

    def flush_started(self, flush: Flush) -> None:
        """A flush's jobs are about to be claimed and run."""

    def flush_ended(self, flush: Flush, report: BatchReport | None) -> None:
        """A flush ended: with its report, or ``None`` if it raised (the messages are then
        requeued or dead-lettered)."""

    def message_event(self, event: str, message: Any, fields: dict[str, Any]) -> None:
        """A batched message was received, started, succeeded, failed or retried (Celery's
        task event names, without the ``task-`` prefix)."""

    def messages_handled(self) -> None:
        """The batcher is through with a group of message events (a flush handed over, a
        batch settled): a hook that gathers something per message sends it now."""


class Hooks:
    """The hooks of one worker, called in order; what a hook raises is logged, not raised."""

    def __init__(self, hooks: Iterable[WorkerHook] = ()) -> None:
        self.hooks: list[WorkerHook] = list(hooks)

    def __iter__(self) -> Iterator[WorkerHook]:
        return iter(self.hooks)

    def _each(self, method: str, *args: Any) -> None:
        for hook in self.hooks:
            try:
                getattr(hook, method)(*args)
            except Exception:
                log.exception("worker hook %s.%s failed", type(hook).__name__, method)


    def worker_started(self) -> None:
        self._each("worker_started")

    def worker_stopping(self) -> None:
        for hook in self.hooks:  # in a signal handler: not even logging.exception's lock
            with suppress(Exception):
                hook.worker_stopping()

    def process_started(self, process: ProcessView) -> None:
        self._each("process_started", process)

    def model_loaded(self, target: str, seconds: float) -> None:
        self._each("model_loaded", target, seconds)

    def consumer_ready(self, consumer: Any) -> None:
        self._each("consumer_ready", consumer)

    def message_event(self, event: str, message: Any, **fields: Any) -> None:
        self._each("message_event", event, message, fields)

    def messages_handled(self) -> None:
        self._each("messages_handled")

    @contextmanager
    def flush(self, entries: Sequence[JobEntry]) -> Iterator[list[BatchReport]]:
        """Around one flush: ``flush_started`` before, ``flush_ended`` after (also when the
        flush raises). The caller appends the flush's report to the yielded list."""
        current = Flush(entries)
        self._each("flush_started", current)
        reports: list[BatchReport] = []
        try:
            yield reports
        finally:
            self._each("flush_ended", current, reports[0] if reports else None)
