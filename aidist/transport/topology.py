"""Where jobs travel: queue names, the jobs exchange and the dead-letter names, shared by
producers and workers.

One durable queue per model or op, so a worker pool consumes only what it can run. Producers and
workers declare queues with exactly the same arguments (RabbitMQ refuses a mismatch).
"""

from __future__ import annotations

from typing import Any

from kombu.entity import Exchange, Queue

from aidist.jobs import JobKind


def queue_name(namespace: str, kind: JobKind, target: str) -> str:
    """One durable queue per model or op, so a pool consumes only what it can run."""
    return f"{namespace}.{kind.value}.{target}"


def dead_letter_exchange(namespace: str) -> str:
    """Exchange that rejected messages are routed to (declared with every queue)."""
    return f"{namespace}.dlx"


def dead_letter_queue(namespace: str) -> str:
    """Queue holding dead-lettered messages for inspection."""
    return f"{namespace}.dead"


def queue_arguments(namespace: str) -> dict[str, Any]:
    """Arguments every job queue is declared with; producers and workers must agree exactly."""
    return {"x-max-priority": 10, "x-dead-letter-exchange": dead_letter_exchange(namespace)}


def jobs_exchange(namespace: str) -> Exchange:
    """The durable direct exchange every job message is published to (routing key = queue)."""
    return Exchange(f"{namespace}.jobs", type="direct", durable=True)  # type: ignore[no-untyped-call]


def job_queue(namespace: str, name: str) -> Queue:
    """The kombu declaration of a job queue, bound to the jobs exchange under its own name."""
    return Queue(  # type: ignore[no-untyped-call]
        name,
        jobs_exchange(namespace),
        routing_key=name,
        durable=True,
        queue_arguments=queue_arguments(namespace),
    )
