"""Group commit for single submissions made concurrently from several threads.

Each ``infer()`` on its own costs a Redis lookup, an INSERT and a confirmed publish, round trips
that dominate when many threads submit one job each. Calls that arrive while another thread is
flushing are gathered and flushed together: one lookup, one INSERT, one message per queue. A lone
caller flushes at once, so it waits for nobody; a caller only waits for a flush already under way.

Under load the thread that flushes first gathers: when other threads have submitted in the last
``RECENT_S``, it waits up to ``GATHER_S`` for as many callers as there are such threads. Without
it, the threads that a flush has just answered are still on their way back (their next call's
encoding, under the GIL) when the next flush starts, and with 4 threads a flush carried 2 jobs
on average: every job paid half a commit and half a cache lookup.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

#: Threads that submitted this recently are counted as still submitting (a flush waits for them).
RECENT_S = 0.005
#: The longest a flush waits for those threads' next calls.
GATHER_S = 0.002


class _Slot(Generic[Item, Result]):
    __slots__ = ("done", "error", "item", "result")

    def __init__(self, item: Item) -> None:
        self.item = item
        self.done = False
        self.result: Result | None = None
        self.error: BaseException | None = None


class GroupSubmitter(Generic[Item, Result]):
    """Runs ``flush(items) -> results`` (one result per item, same order) for batches of
    concurrent ``submit`` calls; the calling threads take turns doing the flushing."""

    def __init__(self, flush: Callable[[list[Item]], Sequence[Result]]) -> None:
        self._flush = flush
        lock = threading.Lock()
        self._cond = threading.Condition(lock)
        self._pending: list[_Slot[Item, Result]] = []
        self._flushing = False
        self._gathering = threading.Condition(lock)  # a flush gathering callers waits here
        self._gatherer = False
        self._seen: dict[int, float] = {}  # thread ident -> its last submit (monotonic)
        self.flushes = 0

    def submit(self, item: Item) -> Result:
        """Flush ``item`` (with whatever else is waiting) and return its result, or raise the
        error its flush raised."""
        slot: _Slot[Item, Result] = _Slot(item)
        now = time.monotonic()
        with self._cond:
            self._seen[threading.get_ident()] = now
            self._pending.append(slot)
            if self._gatherer:
                self._gathering.notify()
            while not slot.done:
                if self._flushing:
                    self._cond.wait()
                    continue
                self._flushing = True
                self._gather(now)
                batch, self._pending = self._pending, []
                self._cond.release()
                try:
                    self._run(batch)
                finally:
                    self._cond.acquire()
                    self._flushing = False
                    self._cond.notify_all()
        if slot.error is not None:
            raise slot.error
        assert slot.result is not None
        return slot.result

    def _gather(self, now: float) -> None:
        """Called holding the lock, as this thread starts a flush: wait until the threads seen
        submitting in the last ``RECENT_S`` have each added a call, at most until ``GATHER_S``
        after this thread's own call came in (``now``): a caller that already waited for an
        earlier flush does not wait again."""
        recent = [ident for ident, seen in self._seen.items() if now - seen < RECENT_S]
        if len(recent) < len(self._seen):
            self._seen = {ident: self._seen[ident] for ident in recent}
        if len(self._pending) >= len(recent):
            return
        deadline = now + GATHER_S
        self._gatherer = True
        try:
            while len(self._pending) < len(recent):
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._gathering.wait(left)
        finally:
            self._gatherer = False

    def _run(self, batch: list[_Slot[Item, Result]]) -> None:
        self.flushes += 1
        try:
            results = self._flush([slot.item for slot in batch])
        except BaseException as exc:
            for slot in batch:
                slot.error, slot.done = exc, True
            return
        for slot, result in zip(batch, results, strict=True):
            slot.result, slot.done = result, True
