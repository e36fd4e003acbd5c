"""Celery's consumer with one change: an undecodable message is dead-lettered, not dropped.

Stock Celery acks a message it cannot decode (to avoid a redelivery loop), which silently loses
it. Rejecting without requeue routes it through the queue's dead-letter exchange to
``{namespace}.dead``, where an operator can look at it. Celery selects this class through
``worker_consumer``; overriding the one callback is the hook Celery offers for this.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.worker.consumer import Consumer

log = logging.getLogger("aidist.worker")


class DeadLetteringConsumer(Consumer):  # type: ignore[misc]
    """Rejects undecodable messages to the dead-letter exchange."""

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        log.error("dead-lettering an undecodable message (content type %s): %r",
                  message.content_type, exc)
        message.reject(requeue=False)
