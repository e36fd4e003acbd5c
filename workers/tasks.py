"""The one Celery task, a thin adapter from a message to ``executor.execute``, and the request
class Celery keeps for it in a prefork pool."""

from __future__ import annotations

import logging
import time
from typing import Any

from celery.exceptions import Reject
from celery.worker.request import Request

from aidist.errors import JobsFailed, PoisonMessage, ServicesDown, ServiceUnavailable
from workers.executor import PARK_S, execute
from workers.runtime import RuntimeHolder
from workers.task_events import failure_text

log = logging.getLogger("aidist.worker")


def run_jobs(holder: RuntimeHolder, entries: Any, redelivered: bool = False) -> dict[str, int]:
    """Run one message's jobs. A poison message, or an unexpected error, is rejected without
    requeue (to the dead-letter queue); if a service stays down past the retry budget the message
    is requeued, never acked. A redelivered message waits while one of its jobs still runs on a
    live worker, and is split if one of its jobs' runs was lost with its worker
    (``workers.redelivery``); otherwise its jobs run as a first delivery's would. If some of its
    jobs failed (recorded in their rows) ``JobsFailed`` names them: the message is acked and
    Flower shows it failed rather than succeeded."""
    try:
        report = execute(holder.get(), entries, redelivered)
        while report.held:  # still running on a live worker (a broker restart redelivered it)
            time.sleep(PARK_S)
            report = execute(holder.get(), entries, redelivered)
    except PoisonMessage as exc:
        log.error("dead-lettering a poison message: %s", exc)
        raise Reject(str(exc), requeue=False) from exc
    except (ServicesDown, ServiceUnavailable) as exc:
        log.error("requeueing a message, a service is down: %s", exc)
        raise Reject(str(exc), requeue=True) from exc
    except Exception as exc:
        # The task acks on failure (so that JobsFailed is acked): anything unexpected is
        # dead-lettered explicitly, where an operator can inspect and replay it.
        log.exception("dead-lettering a message after an unexpected error")
        raise Reject(f"unexpected error: {exc}", requeue=False) from exc
    if report.missing and len(report.missing) == report.received:
        raise Reject("no job of this message has a row in the job store", requeue=False)
    if report.gave_up and len(report.gave_up) == report.received:
        raise Reject("out of attempts (the reason is in the job's row)", requeue=False)
    if report.failed_ids:
        raise JobsFailed(failure_text(report.failed_ids, report.received))
    return {
        "received": report.received,
        "succeeded": report.succeeded,
        "failed": report.failed,
        "skipped": report.skipped,
        "expired": report.expired,
    }


class SummaryRequest(Request):  # type: ignore[misc]
    """Celery's request for a prefork-pool message, minus its inputs: ``celery inspect
    active``/``reserved`` (and Flower's worker page, which asks them) show the argument summary
    (``[<56 jobs>]``), never the job entries, which may be private."""

    def info(self, safe: bool = False) -> dict[str, Any]:
        shown: dict[str, Any] = super().info(safe=True)
        return shown
