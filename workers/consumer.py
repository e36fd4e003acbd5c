"""Celery's consumer with two changes: an undecodable message is dead-lettered, not dropped, and
a warm shutdown lets the gpu pool's running batches finish before the consumer stops.

Stock Celery acks a message it cannot decode (to avoid a redelivery loop), which silently loses
it. Rejecting without requeue routes it through the queue's dead-letter exchange to
``{namespace}.dead``, where an operator can look at it. Overriding the one callback is the hook
Celery offers for this.

The batches run on threads of their own, which Celery's warm shutdown knows nothing of. Their
wait belongs here, at the start of the consumer's ``stop``: on the main thread outside the
signal handler (which only tells the batching strategy to start nothing new), with the broker
connection still open for their acks. Celery selects this class through ``worker_consumer``.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.worker.consumer import Consumer

from aidist.jobs import RUN_JOBS_TASK
from workers.batching import BatchingStrategy

log = logging.getLogger("aidist.worker")


class AidistConsumer(Consumer):  # type: ignore[misc]
    """Rejects undecodable messages to the dead-letter exchange; finishes running batches
    before it stops."""

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        log.error("dead-lettering an undecodable message (content type %s): %r",
                  message.content_type, exc)
        message.reject(requeue=False)

    def stop(self) -> None:
        task = self.app.tasks.get(RUN_JOBS_TASK)
        strategy = getattr(task, "Strategy", None)
        if isinstance(strategy, BatchingStrategy):
            strategy.finish()
        super().stop()
