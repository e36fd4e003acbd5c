"""Retrying one I/O step of a flush while its service is unreachable, all steps of one flush
sharing one time budget."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from tenacity import (
    RetryCallState,
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential_jitter,
)

from aidist.errors import ServicesDown, ServiceUnavailable

log = logging.getLogger("aidist.worker")
T = TypeVar("T")


class ServiceRetry:
    """Runs one I/O step at a time, retried with exponential backoff and jitter while Postgres,
    Redis or RabbitMQ is unreachable, all steps of one flush sharing one time budget. Retrying a
    step, not the whole flush, means a database that restarts after the model ran costs a wait,
    not a second run of the model."""

    def __init__(self, budget_s: float) -> None:
        self.deadline = time.monotonic() + budget_s

    def __call__(self, call: Callable[[], T]) -> T:
        try:  # the usual case, without tenacity's set-up (~15 µs a step, five steps a flush)
            return call()
        except ServiceUnavailable as exc:
            log.warning("a flush waits for a service (try 1): %s", exc)
        retrying = Retrying(
            retry=retry_if_exception_type(ServiceUnavailable),
            wait=wait_exponential_jitter(multiplier=0.1, max=3.0),
            stop=stop_after_delay(max(self.deadline - time.monotonic(), 0.0)),
            before_sleep=_log_retry,
            reraise=False,
        )
        try:
            return retrying(call)
        except RetryError as exc:
            error = exc.last_attempt.exception()
            raise ServicesDown(str(error)) from error


def _log_retry(state: RetryCallState) -> None:
    """One line per retried step, so a flush that waited on a service says so and why."""
    error = state.outcome.exception() if state.outcome is not None else None
    log.warning("a flush waits for a service (try %d, %.1fs so far): %s",
                state.attempt_number + 1, state.seconds_since_start or 0.0, error)
