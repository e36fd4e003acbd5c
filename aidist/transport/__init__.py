"""The transport layer: the one place that speaks AMQP.

Names and topology (``topology``), confirmed publishing of job messages (``publisher``) and broker
administration (``admin``: queue depth, dead-letter declarations, purge and delete, raw publishes).
The client and the workers both go through it; no other module of the product imports kombu, amqp
or pika (Celery's own consumer machinery in ``workers`` aside), which an import-linter contract in
``make lint`` checks.
"""

from aidist.transport.admin import (
    QueueStats,
    declare_dead_letters,
    delete_namespace,
    publish_raw,
    purge,
    queue_stats,
)
from aidist.transport.interfaces import JobPublisher
from aidist.transport.publisher import Publisher, task_message
from aidist.transport.topology import (
    dead_letter_exchange,
    dead_letter_queue,
    job_queue,
    jobs_exchange,
    queue_arguments,
    queue_name,
)

__all__ = [
    "JobPublisher",
    "Publisher",
    "QueueStats",
    "dead_letter_exchange",
    "dead_letter_queue",
    "declare_dead_letters",
    "delete_namespace",
    "job_queue",
    "jobs_exchange",
    "publish_raw",
    "purge",
    "queue_arguments",
    "queue_name",
    "queue_stats",
    "task_message",
]
