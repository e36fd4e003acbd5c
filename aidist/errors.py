"""The one exception tree of aidist.

Every failure a user can cause or meet is an ``AidistError`` subclass whose message says what to do.
Driver errors (kombu/pika, redis, SQLAlchemy) are wrapped, never leaked, with ``__cause__`` kept so
the original traceback is one ``raise ... from`` away.
"""

from __future__ import annotations


class AidistError(Exception):
    """Root of every error aidist raises on purpose."""


class ConfigError(AidistError):
    """Settings are missing or inconsistent."""


class InvalidInput(AidistError, ValueError):
    """The input or params of a submission are not acceptable; nothing was written or sent."""


class MessageTooLarge(InvalidInput):
    """One job's entry would not fit in a message under ``AIDIST_MAX_MESSAGE_BYTES``; nothing was
    written or sent. Jobs that fit are packed into as many messages as they need; a single job
    bigger than the limit must travel by reference (the blob store) or the limit be raised."""


class UnknownModel(AidistError, LookupError):
    """The model or preprocessing op is not registered; nothing was written or sent."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        self.known = sorted(known)
        super().__init__(
            f"unknown model or op {name!r}; registered: {', '.join(self.known) or '(none)'}. "
            "Register it with models.register or list them with `aidist models`."
        )


class UnknownJob(AidistError, LookupError):
    """No job with this id exists in the job store."""


class ServiceUnavailable(AidistError, ConnectionError):
    """A backing service (RabbitMQ, Redis, PostgreSQL) cannot be reached."""

    def __init__(self, service: str, url: str, reason: str) -> None:
        self.service = service
        self.url = url
        self.reason = reason
        super().__init__(
            f"{service} is unavailable at {url}: {reason}. "
            f"Start {service} or point the setting at a running one (see `aidist --help`)."
        )


class JobError(AidistError):
    """Base of errors about one job's outcome; carries the job id."""

    def __init__(self, job_id: str, message: str) -> None:
        self.job_id = job_id
        super().__init__(message)


class JobFailed(JobError):
    """The job ran and failed; ``error`` holds the worker's error text."""

    def __init__(self, job_id: str, error: str) -> None:
        self.error = error
        super().__init__(job_id, f"job {job_id} failed: {error}")


class JobCancelled(JobError):
    """The job was cancelled before it produced a result."""

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id, f"job {job_id} was cancelled")


class JobExpired(JobError):
    """The job's deadline passed before a worker ran it."""

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id, f"job {job_id} expired: its deadline passed before it ran")


class JobTimeout(JobError, TimeoutError):
    """Waiting for the job's result took longer than the caller allowed; the job goes on."""

    def __init__(self, job_id: str, timeout: float, status: str) -> None:
        self.timeout = timeout
        self.status = status
        super().__init__(
            job_id,
            f"job {job_id} not finished after {timeout:g}s (status: {status}); it keeps going: "
            "call result() again with a longer timeout, or cancel() it",
        )


class ResultUnavailable(JobError):
    """The job succeeded, its result left the cache, and it cannot be recomputed as it was."""

    def __init__(self, job_id: str) -> None:
        super().__init__(
            job_id,
            f"job {job_id} succeeded but its result has left the cache and cannot be recomputed "
            "(its model or op changed version since, or its input was not kept); "
            "submit the input again to the current model",
        )


class IdempotencyConflict(AidistError):
    """An idempotency key was reused for a different submission (another model, op, params or
    input); the first job keeps the key. Use a new key for new work."""

    def __init__(self, key: str, job_id: str) -> None:
        self.key = key
        self.job_id = job_id
        super().__init__(
            f"idempotency key {key!r} already belongs to job {job_id}, submitted with a different "
            "model, params or input; use a new key for a new submission, or get the first job "
            "with client.get(job_id)"
        )


class StoreError(AidistError):
    """A job-store statement failed for a reason other than an unreachable server."""


class CacheError(AidistError):
    """A Redis command failed for a reason other than an unreachable server."""


class PoisonMessage(AidistError):
    """A message as a whole cannot be understood; it is dead-lettered, not retried."""


class MalformedEntry(AidistError, ValueError):
    """One job entry of a message cannot be read; its job (if it names one) is failed."""


class JobsFailed(AidistError):
    """Some jobs of a cpu-pool message ran and failed (each failure is recorded in its row). The
    task raises it after the commit so that Celery acks the message and Flower shows it as failed,
    naming the jobs; it is never raised to a client."""


class ServicesDown(AidistError):
    """A service stayed unreachable for a worker's whole retry budget: the messages go back to
    the queue."""


class ModelLoadError(AidistError):
    """A registered model could not be loaded in this worker."""


class TransientError(AidistError):
    """Raised by a model or op for a failure worth trying again (a remote service timing out, a
    device that is briefly busy). The worker retries the call with exponential backoff and
    jitter, ``AIDIST_TRANSIENT_RETRIES`` times, before failing the jobs with the last error."""
