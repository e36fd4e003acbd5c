"""Group commit for single submissions made concurrently from several threads.

Each ``infer()`` on its own costs a Redis lookup, an INSERT and a confirmed publish, round trips
that dominate when many threads submit one job each. Calls that arrive while another thread is
flushing are gathered and flushed together: one lookup, one INSERT, one message per queue. A lone
caller flushes at once, so it waits for nobody; a caller only waits for a flush already under way.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


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
        self._cond = threading.Condition()
        self._pending: list[_Slot[Item, Result]] = []
        self._flushing = False
        self.flushes = 0

    def submit(self, item: Item) -> Result:
        """Flush ``item`` (with whatever else is waiting) and return its result, or raise the
        error its flush raised."""
        slot: _Slot[Item, Result] = _Slot(item)
        with self._cond:
            self._pending.append(slot)
            while not slot.done:
                if self._flushing:
                    self._cond.wait()
                    continue
                self._flushing = True
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
