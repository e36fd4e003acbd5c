"""A daemon thread that runs one step again and again, for a worker's background duties (presence
heartbeats, the outbox sweeper, alive marks), and the hook that runs one while the worker
consumes."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from aidist.errors import AidistError
from workers.hooks import WorkerHook

log = logging.getLogger("aidist.worker")


class Periodic:
    """Calls ``step`` until ``stop()``; ``step`` returns the seconds to wait before the next call.
    An ``AidistError`` (a service briefly down) is logged and the step tried again after
    ``retry_s``."""

    def __init__(self, name: str, step: Callable[[], float], retry_s: float = 5.0) -> None:
        self.name = name
        self.step = step
        self.retry_s = retry_s
        self._stopped = False  # a plain flag: stop() runs in a signal handler, so it takes no lock
        self._pause = threading.Event()  # only ever waited on, by the thread itself
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        """Begin."""
        self._thread.start()

    def stop(self) -> None:
        """Stop after the current step. Safe in a signal handler (Celery calls it from its SIGTERM
        handler, which a second SIGTERM can re-enter)."""
        self._stopped = True

    def _loop(self) -> None:
        while not self._stopped:
            try:
                wait = self.step()
            except AidistError as exc:
                log.warning("%s failed (will retry): %s", self.name, exc)
                wait = self.retry_s
            self._pause.wait(wait)


class PeriodicDuty(WorkerHook):
    """A worker hook that runs ``step`` on a ``Periodic`` thread from the moment the worker
    consumes until its warm shutdown begins (presence heartbeats, the sweeper)."""

    def __init__(self, name: str, step: Callable[[], float], retry_s: float = 5.0) -> None:
        self.loop = Periodic(name, step, retry_s)

    def worker_started(self) -> None:
        self.loop.start()

    def worker_stopping(self) -> None:
        self.loop.stop()
