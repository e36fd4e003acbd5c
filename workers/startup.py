"""A worker's start-up wait: RabbitMQ, PostgreSQL and Redis are reachable before it goes on.

Supervisors (``aidist autoscale``, honcho, Kubernetes) start workers at any moment, also while a
service restarts. A worker that exited on the first refused connection would leave its pool one
worker short until someone noticed, so it waits instead, the way a plain Celery worker does with
``broker_connection_retry_on_startup``: it tries each service again with exponential backoff and
jitter (tenacity), logging one line every few seconds that says which service, where (password
redacted), why, and for how long so far. ``AIDIST_WORKER_STARTUP_WAIT_S`` bounds the wait for
those who want fail-fast (0: fail at once), past which ``ServiceUnavailable`` names the service.

Once past this wait, nothing later in start-up exits on a service that drops again: Celery's own
broker connect retries on start-up (``broker_connection_retry_on_startup``, up to Celery's
``broker_connection_max_retries``, 100 tries backing off to 30 s apart), and every Redis and
Postgres step of a running worker retries (heartbeats, alive marks, claims, writes).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

from tenacity import (
    Future,
    RetryCallState,
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_never,
    wait_exponential_jitter,
)

from aidist.config import Settings
from aidist.errors import ServiceUnavailable
from aidist.transport import declare_dead_letters
from db import JobStore, ResultCache

log = logging.getLogger("aidist.worker")
SETTING = "AIDIST_WORKER_STARTUP_WAIT_S"
MAX_BACKOFF_S = 3.0  # a service that comes back is seen within this long
LOG_EVERY_S = 5.0


@dataclass(frozen=True, slots=True)
class ServiceCheck:
    """One service to wait for: ``ping`` raises ``ServiceUnavailable`` while it is out of reach
    (the error carries the service's redacted URL and the reason, for the log line)."""

    service: str
    ping: Callable[[], None]


def wait_for_services(settings: Settings) -> None:
    """Wait until RabbitMQ, PostgreSQL and Redis answer, at most ``worker_startup_wait_s``
    (``None``: as long as it takes). RabbitMQ's check declares the dead-letter topology, which the
    worker needs anyway, so a broker that answers has it declared."""
    store = JobStore.connect(settings.database_url, settings.connect_timeout_s)
    cache = ResultCache.connect(settings.redis_url, settings.namespace, settings.connect_timeout_s)

    def declare() -> None:
        declare_dead_letters(settings.broker_url, settings.namespace, settings.connect_timeout_s)

    try:
        wait_until_reachable([ServiceCheck("RabbitMQ", declare),
                              ServiceCheck("PostgreSQL", store.ping),
                              ServiceCheck("Redis", cache.ping)],
                             settings.worker_startup_wait_s)
    finally:
        store.close()
        cache.close()


def wait_until_reachable(checks: Sequence[ServiceCheck], limit_s: float | None, *,
                         clock: Callable[[], float] = time.monotonic,
                         sleep: Callable[[float], None] = time.sleep) -> None:
    """Run each check until it passes, one after the other, all within one budget of
    ``limit_s`` seconds from now (``None``: no limit); ``ServiceUnavailable`` naming the service
    and the setting once the budget is spent. ``clock`` and ``sleep`` are injectable for tests."""
    started = clock()
    for check in checks:
        _wait_for(check, started, limit_s, clock, sleep)


def _wait_for(check: ServiceCheck, started: float, limit_s: float | None,
              clock: Callable[[], float], sleep: Callable[[float], None]) -> None:
    deadline = None if limit_s is None else started + limit_s
    backoff = wait_exponential_jitter(multiplier=0.25, max=MAX_BACKOFF_S, jitter=0.25)
    logged_at: float | None = None

    def stop(state: RetryCallState) -> bool:
        return deadline is not None and clock() >= deadline

    def wait(state: RetryCallState) -> float:
        # Never sleep past the deadline: the last try happens at it, then the wait ends.
        pause = backoff(state)
        return pause if deadline is None else max(min(pause, deadline - clock()), 0.0)

    def report(state: RetryCallState) -> None:
        nonlocal logged_at
        now = clock()
        if logged_at is not None and now - logged_at < LOG_EVERY_S:
            return
        logged_at = now
        error = _error_of(state.outcome)
        bound = f"{SETTING} unset: no limit" if limit_s is None else f"{SETTING}={limit_s:g}"
        log.warning("waiting for %s at %s: %s; %.0fs so far (%s)", check.service, error.url,
                    error.reason, now - started, bound)

    retrying = Retrying(retry=retry_if_exception_type(ServiceUnavailable), wait=wait,
                        stop=stop_never if deadline is None else stop,
                        before_sleep=report, sleep=sleep, reraise=False)
    try:
        retrying(check.ping)
    except RetryError as exc:
        error = _error_of(exc.last_attempt)
        raise ServiceUnavailable(
            error.service, error.url,
            f"{error.reason}; gave up after {clock() - started:.0f}s of waiting "
            f"({SETTING}={limit_s or 0:g}; unset it to wait as long as it takes)") from error
    if logged_at is not None:
        log.info("%s is reachable after %.0fs; going on", check.service, clock() - started)


def _error_of(outcome: Future | None) -> ServiceUnavailable:
    """The error of a failed try: a ``ServiceUnavailable``, the only one the retry admits (any
    other error ends the wait at once and propagates as it is)."""
    return cast("ServiceUnavailable", outcome.exception() if outcome is not None else None)
