"""The gpu pool's runner threads: flushes run here while the consumer thread takes the next
messages, and what each flush came back with (``workers.batching`` settles it)."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aidist.errors import ServicesDown
from aidist.jobs import JobEntry
from workers.executor import run_flush
from workers.runtime import WorkerRuntime

log = logging.getLogger("aidist.worker")


@dataclass(slots=True)
class _Held:
    message: Any
    entries: list[JobEntry]
    problems: dict[str, str]
    lost: Mapping[str, str] = field(default_factory=dict)  # takeovers: id -> the dead holder


@dataclass(frozen=True, slots=True)
class _Outcome:
    seconds: float = 0.0
    requeue: str | None = None
    dead: str | None = None
    missing: frozenset[str] = frozenset()
    gave_up: frozenset[str] = frozenset()
    held: frozenset[str] = frozenset()
    failed: frozenset[str] = frozenset()  # jobs that ran and failed (recorded, acked)


def execute_held(runtime: WorkerRuntime, held: list[_Held]) -> _Outcome:
    """Run the jobs of held messages as one batch (any thread); says how to settle them."""
    entries = [entry for item in held for entry in item.entries]
    problems = {k: v for item in held for k, v in item.problems.items()}
    lost = {k: v for item in held for k, v in item.lost.items()}
    started = time.perf_counter()
    try:
        report = run_flush(runtime, entries, problems, lost=lost)
    except ServicesDown as exc:
        return _Outcome(requeue=str(exc))
    except Exception:
        log.exception("dead-lettering %d messages after an unexpected error", len(held))
        return _Outcome(dead="unexpected error, dead-lettered")
    seconds = time.perf_counter() - started
    return _Outcome(seconds=seconds, missing=report.missing, gave_up=report.gave_up,
                    held=report.held, failed=frozenset(report.failed_ids) | report.gave_up)


class BackgroundRunner:
    """Threads that run flushes while the consumer thread gathers the next ones (the model never
    waits for message handling, and the consumer's loop never waits for a model). With two, one
    flush's claim and result writes overlap the other's model calls. Flushes wait their turn in
    order; one that must run alone (a redelivered job, which may be the one that killed the last
    process) waits until nothing else runs, and nothing else starts until it is done (the one
    case where the consumer's thread waits: rare, after a worker died)."""

    def __init__(self, runtime: Callable[[], WorkerRuntime], threads: int = 1,
                 on_done: Callable[[], None] | None = None) -> None:
        self.runtime = runtime
        #: Called on the runner thread after each flush ends and is counted as ended (the
        #: consumer's loop is woken by it: ``workers.wakeup``); None: the consumer looks itself.
        self.on_done = on_done
        # Not bounded here: the prefetch window bounds what the consumer holds, and a bound here
        # would block the consumer's thread (its heartbeats, acks and control replies) until a
        # flush ends.
        self._todo: queue.Queue[tuple[list[_Held], bool] | None] = queue.Queue()
        self._done: queue.Queue[tuple[list[_Held], _Outcome]] = queue.Queue()
        self._unfinished = 0  # submitted and not yet done (or dropped)
        self._running = 0  # being run by a runner thread now
        self._alone_waiting = 0  # flushes that must run alone, waiting for the others to end
        self._alone_running = False
        self._closing = False
        self._cond = threading.Condition()
        self._threads = [threading.Thread(target=self._loop, name=f"aidist-batches-{i}",
                                          daemon=True) for i in range(max(threads, 1))]
        for thread in self._threads:
            thread.start()

    def submit(self, held: list[_Held], alone: bool = False) -> None:
        """Queue a flush, and return at once. One ``alone`` starts only once every flush
        running has ended, and none starts beside it; the runner thread that takes it waits
        for that, never the consumer's thread (a runner may be held up for a minute by a
        vanished host's row locks, and the consumer must keep its heartbeats going)."""
        with self._cond:
            self._unfinished += 1
        self._todo.put((held, alone))

    def has_free_runner(self) -> bool:
        """Whether a flush handed over now would start at once."""
        with self._cond:
            return (self._unfinished < len(self._threads) and not self._alone_waiting
                    and not self._alone_running)

    def in_flight(self) -> bool:
        """Whether a submitted batch has not been handed back by ``finished`` yet."""
        with self._cond:
            return self._unfinished > 0 or not self._done.empty()

    def finished(self) -> list[tuple[list[_Held], _Outcome]]:
        """Batches done since the last call, in order."""
        out = []
        while True:
            try:
                out.append(self._done.get_nowait())
            except queue.Empty:
                return out

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every submitted batch has run; False after ``timeout`` (None: no limit)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._unfinished, timeout)

    def close(self) -> None:
        """Warm shutdown began: start no other flush (their messages are not acked, so the
        broker delivers them again). Sets a flag and nothing else, so it is safe in Celery's
        signal handler, which may have interrupted the consumer's thread inside this runner's
        lock or a queue's: waiting there would stop the runner threads from handing back."""
        self._closing = True

    @property
    def closing(self) -> bool:
        """Whether ``close`` was called."""
        return self._closing

    def wait_running(self, timeout: float) -> bool:
        """Wait until no flush is being run (after ``close``: the last ones have stored their
        results); False after ``timeout``. Takes the lock, so never from a signal handler."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._running, timeout)

    def _loop(self) -> None:
        while True:
            item = self._todo.get()
            if item is None:
                return
            held, alone = item
            with self._cond:
                if alone:
                    self._alone_waiting += 1
                    while self._running:
                        self._cond.wait()
                    self._alone_waiting -= 1
                    self._alone_running = True
                else:
                    while self._alone_running or self._alone_waiting:
                        self._cond.wait()
                self._running += 1  # counted before _closing is read: see wait_running
                start = not self._closing
            try:
                if start:
                    self._done.put((held, execute_held(self.runtime(), held)))
            finally:
                with self._cond:
                    self._running -= 1
                    self._unfinished -= 1
                    if alone:
                        self._alone_running = False
                    self._cond.notify_all()
                if self.on_done is not None:
                    self.on_done()

    def stop(self) -> None:
        """End the threads after the batches already queued."""
        for _ in self._threads:
            self._todo.put(None)
