"""The Celery app factory: configuration, queues, the one task, and model warm-up at process
start."""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import worker_process_init

from aidist.config import Settings
from aidist.jobs import RUN_JOBS_TASK
from aidist.routing import job_queue, jobs_exchange, queue_name
from models import Registry
from workers import tasks
from workers.runtime import RuntimeHolder


def pool_targets(registry: Registry, pool: str, only: list[str] | None = None) -> list[str]:
    """Names a pool serves: specs of that pool, narrowed to ``only`` if given."""
    names = [spec.name for spec in registry.specs() if spec.pool == pool]
    if only:
        for name in only:
            registry.get(name)  # UnknownModel for a typo, listing what exists
        names = [name for name in names if name in only]
    return names


def queues_for(settings: Settings, registry: Registry, targets: list[str]) -> list[str]:
    """Queue names of the given targets."""
    return [queue_name(settings.namespace, registry.get(t).kind, t) for t in targets]


def create_app(settings: Settings, registry: Registry, holder: RuntimeHolder,
               warm_targets: list[str] | None = None) -> Celery:
    """A Celery app wired to aidist: msgpack/JSON only, acks after the work is stored, a bounded
    prefetch, no result backend, durable per-target queues, and the ``aidist.run_jobs`` task."""
    app = Celery("aidist", broker=settings.broker_url, set_as_current=False)
    all_queues = queues_for(settings, registry, [spec.name for spec in registry.specs()])
    app.conf.update(
        task_serializer="msgpack",
        accept_content=["msgpack", "json"],
        result_backend=None,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # An unexpected task error rejects the message to the dead-letter queue instead of acking
        # it away: nothing is lost, an operator can inspect and replay it.
        task_acks_on_failure_or_timeout=False,
        worker_prefetch_multiplier=settings.prefetch_multiplier,
        worker_send_task_events=True,
        worker_hijack_root_logger=True,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"confirm_publish": True},
        task_create_missing_queues=False,
        worker_consumer="workers.consumer:DeadLetteringConsumer",
        task_queues=[job_queue(settings.namespace, name) for name in all_queues],
        task_default_queue=all_queues[0] if all_queues else "celery",
        task_default_exchange=jobs_exchange(settings.namespace).name,
        task_default_exchange_type="direct",
    )

    def run_jobs(entries: Any) -> dict[str, int]:
        return tasks.run_jobs(holder, entries)

    app.task(name=RUN_JOBS_TASK, ignore_result=True)(run_jobs)

    if warm_targets:
        def warm(**_: Any) -> None:
            holder.get().warm(warm_targets)

        worker_process_init.connect(warm, weak=False)
    return app
