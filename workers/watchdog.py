"""The job time limit: a run that overstays it ends the worker process.

A model call that hangs (a deadlocked kernel, a stuck download, an endless loop in user code) cannot
be interrupted from Python, and a hung worker holds its messages unacked until RabbitMQ's
``consumer_timeout`` (30 minutes) closes the channel. So a watchdog thread ends the process once a
run passes ``job_time_limit_s``: its unacked messages go back to the queue at once, are split into
one message per job, and the job that hangs keeps coming back alone until its attempt budget runs
out, when it is failed with the reason. A supervisor (Celery's prefork parent for the cpu pool;
systemd, Kubernetes or compose ``restart:`` for a gpu worker) starts a fresh process.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from workers.hooks import BatchReport, Flush, WorkerHook

log = logging.getLogger("aidist.worker")
EXIT_OVERRUN = 75  # EX_TEMPFAIL: the process is fine to restart


def end_process(what: str, limit_s: float) -> None:
    """Log why, flush the logs, and end the process without cleanup (a hung call would block
    any orderly shutdown)."""
    log.critical("%s ran past the job time limit (%.0fs, AIDIST_JOB_TIME_LIMIT_S): ending this "
                 "worker process so its messages go to a fresh run", what, limit_s)
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(EXIT_OVERRUN)


class Watchdog(WorkerHook):
    """Watches every flush (several at once where flushes run on several threads) from one
    daemon thread of this process, as a worker hook; ``guard`` watches any other block."""

    def __init__(self, limit_s: float,
                 on_overrun: Callable[[str, float], None] = end_process) -> None:
        self.limit_s = limit_s
        self.on_overrun = on_overrun
        self._runs: dict[object, tuple[float, str]] = {}  # token -> (deadline, what)
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._tick = threading.Event()  # only ever waited on, by the watchdog thread

    @property
    def watching(self) -> int:
        """How many runs are being watched now."""
        with self._lock:
            return len(self._runs)

    def flush_started(self, flush: Flush) -> None:
        self._watch(flush.token, f"a batch of {flush.jobs} jobs")

    def flush_ended(self, flush: Flush, report: BatchReport | None) -> None:
        self._unwatch(flush.token)

    @contextmanager
    def guard(self, what: str) -> Iterator[None]:
        """Watch the run inside the block."""
        token = object()
        self._watch(token, what)
        try:
            yield
        finally:
            self._unwatch(token)

    def _watch(self, token: object, what: str) -> None:
        with self._lock:
            self._start()
            self._runs[token] = (time.monotonic() + self.limit_s, what)

    def _unwatch(self, token: object) -> None:
        with self._lock:
            self._runs.pop(token, None)

    def _start(self) -> None:
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()  # a forked child starts a watchdog of its own
        threading.Thread(target=self._loop, name="aidist-watchdog", daemon=True).start()

    def _loop(self) -> None:
        check_s = min(1.0, self.limit_s / 10)
        while True:
            self._tick.wait(check_s)
            now = time.monotonic()
            with self._lock:
                overdue = [what for deadline, what in self._runs.values() if now > deadline]
            if overdue:
                self.on_overrun(overdue[0], self.limit_s)
                return
