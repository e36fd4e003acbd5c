"""Publishing recorded jobs: packed, confirmed, retried while the broker restarts, and what
becomes of their rows when it cannot be reached or refuses a message.

The rows are the commit point. A job whose message never went out stays queued and unsent, and
a worker's sweeper publishes it once the broker is back; a message the broker refuses fails its
jobs, recorded in the store and told to their waiters. The client publishes batch submissions
here on the caller's thread (``publish_now``); its background sender publishes single ones
through ``publish`` and ``refused``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential_jitter

from aidist.config import Settings
from aidist.errors import ServiceUnavailable
from aidist.jobs import JobStatus, message_packs
from aidist.transport import JobPublisher
from db.interfaces import JobStoreLike
from producers.outbox import SentMarker
from producers.submission import Outgoing, by_destination
from producers.waiting import CompletionTracker

log = logging.getLogger("aidist.client")


class RecordedJobPublisher:
    """Sends recorded jobs through ``publisher`` (``pack_size`` jobs, at most
    ``max_message_bytes``, a message), marks what went out through ``sent`` and fails what the
    broker refused in ``store``, telling ``tracker``'s waiters."""

    def __init__(self, settings: Settings, publisher: JobPublisher, store: JobStoreLike,
                 sent: SentMarker, tracker: CompletionTracker) -> None:
        self.settings = settings
        self.publisher = publisher
        self.store = store
        self.sent = sent
        self.tracker = tracker

    def publish(self, queue: str, entries: list[dict[str, Any]], sizes: Sequence[int],
                priority: int) -> None:
        """Publish packed, each message confirmed; a broker that fails mid-submit (a restart)
        is retried with backoff for ``publish_retry_s`` (a duplicate from a lost confirm is
        harmless: the claim fencing runs each job once)."""
        for pack in message_packs(sizes, self.settings.pack_size,
                                  self.settings.max_message_bytes):
            try:  # a broker that answers needs no retry loop (~25 µs of set-up a message)
                self.publisher.publish(queue, entries[pack], priority)
            except ServiceUnavailable:
                retrying = Retrying(retry=retry_if_exception_type(ServiceUnavailable),
                                    wait=wait_exponential_jitter(multiplier=0.1, max=2.0),
                                    stop=stop_after_delay(self.settings.publish_retry_s),
                                    reraise=True)
                retrying(self.publisher.publish, queue, entries[pack], priority)

    def publish_now(self, outgoing: list[Outgoing]) -> None:
        """Publish recorded jobs before returning, per queue and priority."""
        sent: set[str] = set()
        for (queue, priority), items in by_destination(outgoing).items():
            entries = [item.entry for item in items]
            try:
                self.publish(queue, entries, [item.size for item in items], priority)
            except ServiceUnavailable as exc:
                log.warning("%d jobs recorded but not yet published (%s); a worker's sweeper "
                            "publishes them once the broker is back", len(outgoing) - len(sent),
                            exc)
                break
            except Exception:
                unsent = [item.entry["id"] for item in outgoing
                          if item.entry["id"] not in sent]
                self.store.fail_unsent(unsent, "not published: the broker refused the message")
                raise
            sent.update(entry["id"] for entry in entries)
        self.sent.add(list(sent))

    def refused(self, job_ids: list[str], error: str) -> None:
        """The broker refused the message of recorded jobs: they fail, and their waiters learn
        it here."""
        self.store.fail_unsent(job_ids, error)
        for job_id in job_ids:
            self.tracker.record(job_id, JobStatus.FAILED, error)
