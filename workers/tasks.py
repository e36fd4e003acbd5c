"""The one Celery task, a thin adapter from a message to ``executor.execute``."""

from __future__ import annotations

import logging
from typing import Any

from celery.exceptions import Reject
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential_jitter,
)

from aidist.errors import ServiceUnavailable
from workers.executor import PoisonMessage, execute
from workers.runtime import RuntimeHolder

log = logging.getLogger("aidist.worker")
SERVICE_RETRY_S = 30.0


def run_jobs(holder: RuntimeHolder, entries: Any) -> dict[str, int]:
    """Run one message's jobs. A poison message is rejected without requeue (to the dead-letter
    queue); if a service stays down past ``SERVICE_RETRY_S`` the message is requeued, never
    acked."""
    runtime = holder.get()
    retrying = Retrying(
        retry=retry_if_exception_type(ServiceUnavailable),
        wait=wait_exponential_jitter(initial=0.2, max=5.0),
        stop=stop_after_delay(SERVICE_RETRY_S),
    )
    try:
        for attempt in retrying:
            with attempt:
                report = execute(runtime, entries)
    except PoisonMessage as exc:
        log.error("dead-lettering a poison message: %s", exc)
        raise Reject(str(exc), requeue=False) from exc
    except RetryError as exc:
        cause = exc.last_attempt.exception()
        log.error("requeueing a message, a service is down: %s", cause)
        raise Reject(str(cause), requeue=True) from cause
    return {
        "received": report.received,
        "succeeded": report.succeeded,
        "failed": report.failed,
        "skipped": report.skipped,
        "expired": report.expired,
    }
