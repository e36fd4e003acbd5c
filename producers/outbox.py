"""Marking published jobs sent, in the background and in bulk.

A job's row leaves the outbox (``sent_at``) once its message is confirmed; rows never marked are
what the sweeper publishes (see workers/sweeper.py). Marking inline would cost every submit one more
database round trip, so published ids are collected here and marked by one UPDATE every half
second. Should the client die before that, the sweeper publishes those jobs again after
``AIDIST_SWEEP_AFTER_S`` only if they are still queued then; the claim fencing runs each job once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from aidist.errors import ServiceUnavailable
from db.interfaces import JobStoreLike

log = logging.getLogger("aidist.client")
MARK_EVERY_S = 0.5


class SentMarker:
    """Collects published job ids and marks them sent from a daemon thread (started on first
    use); ``close()`` marks what is left."""

    def __init__(self, store: JobStoreLike, every_s: float = MARK_EVERY_S) -> None:
        self.store = store
        self.every_s = every_s
        self._pending: list[str] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None

    def add(self, job_ids: Sequence[str]) -> None:
        """Queue ids whose messages the broker confirmed."""
        if not job_ids:
            return
        with self._lock:
            self._pending.extend(job_ids)
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._loop, name="aidist-sent-marker",
                                                daemon=True)
                self._thread.start()

    def flush(self) -> None:
        """Mark everything queued so far, now."""
        with self._lock:
            pending, self._pending = self._pending, []
        if not pending:
            return
        try:
            self.store.mark_sent(pending)
        except ServiceUnavailable:
            # The messages are out and will run; the sweeper may send them again later, and the
            # claim fencing makes sure each job still runs once.
            log.warning("could not mark %d published jobs as sent", len(pending))

    def _loop(self) -> None:
        while not self._closed:
            self._wake.wait(self.every_s)
            self.flush()

    def close(self) -> None:
        """Stop the thread and mark what is left."""
        self._closed = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.flush()
