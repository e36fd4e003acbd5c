"""The Celery app factory: configuration, queues, the one task, and model warm-up at process
start."""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import worker_process_init, worker_shutting_down

from aidist.config import Settings
from aidist.errors import JobsFailed
from aidist.jobs import RUN_JOBS_TASK
from aidist.transport import job_queue, jobs_exchange, queue_name
from models import Registry
from workers import tasks
from workers.batching import BatchingStrategy, BatchPolicy
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


def batch_policy(settings: Settings, registry: Registry, targets: list[str],
                 side_by_side: int = 1) -> BatchPolicy:
    """The gpu pool's flush rules: each model's jobs gather ``batch_flush_batches`` of its own
    batches per flush (sorted by length into model batches, so less padding), and wait for
    company at most its own ``max_delay_ms`` (default ``AIDIST_BATCH_MAX_DELAY_MS``). Flushes
    always run off the consumer's thread, so a long batch never stops its heartbeats, control
    replies (``celery inspect``, Flower) and acks; several at once where ``batch_pipeline`` says
    so (by default where the worker makes ``side_by_side`` model calls at once, i.e. on a CPU),
    else one."""
    specs = [registry.get(target) for target in targets]
    default_s = settings.batch_max_delay_ms / 1000.0
    pipelined = (side_by_side > 1 if settings.batch_pipeline is None
                 else settings.batch_pipeline)
    return BatchPolicy(
        max_jobs=max((s.max_batch_size for s in specs), default=1) * settings.batch_flush_batches,
        # Each model's own: minilm (batches of 64) served beside a model of batches of 256 used
        # to gather 1,024 jobs a flush, so a job under load waited ~7 s on 2 cores from its
        # flush's start to its result, and results came back in bursts of 1,024.
        flush_jobs={s.name: max(s.max_batch_size, 1) * settings.batch_flush_batches
                    for s in specs},
        max_chars=settings.batch_max_chars,
        max_delay_s=default_s,
        delays={s.name: s.max_delay_ms / 1000.0 for s in specs if s.max_delay_ms is not None},
        idle_s=settings.batch_idle_ms / 1000.0,
        runners=settings.batch_runners if pipelined else 1,
    )


def create_app(settings: Settings, registry: Registry, holder: RuntimeHolder,
               warm_targets: list[str] | None = None,
               batching: BatchPolicy | None = None) -> Celery:
    """A Celery app wired to aidist: msgpack/JSON only, acks after the work is stored, a bounded
    prefetch, no result backend, durable per-target queues, and the ``aidist.run_jobs`` task.
    With ``batching`` (the gpu pool), jobs of many messages run together as one batch."""
    app = Celery("aidist", broker=settings.broker_url, set_as_current=False)
    all_queues = queues_for(settings, registry, [spec.name for spec in registry.specs()])
    app.conf.update(
        task_serializer="msgpack",
        accept_content=["msgpack", "json"],
        result_backend=None,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=(
            settings.batch_prefetch if batching else settings.prefetch_multiplier),
        worker_send_task_events=settings.task_events,
        # JSON logs (AIDIST_LOG_FORMAT=json) keep the handler workers.logs installed.
        worker_hijack_root_logger=settings.log_format == "text",
        # A task running when the broker connection drops runs to its end and commits (its ack
        # then fails and the broker redelivers the message, whose claim skips finished jobs).
        # Celery's alternative, terminating it, throws away work the model already did.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        # A host that vanishes sends no FIN: the heartbeat is how the broker notices, and hands
        # its unacked messages to the other workers (AIDIST_BROKER_HEARTBEAT_S).
        broker_heartbeat=settings.broker_heartbeat_s,
        broker_connection_retry_on_startup=True,
        # No publisher confirms on the app's connection: in a worker it carries only task
        # events and control replies, which Celery sends fire-and-forget. With confirms each
        # event flush waited a broker round trip on the consumer's thread (13 % of a gpu
        # worker's busy time with one-job messages). Jobs a worker publishes (pipeline steps,
        # the sweeper) go through aidist.transport's publisher, which confirms each message.
        task_create_missing_queues=False,
        worker_consumer="workers.consumer:AidistConsumer",
        task_queues=[job_queue(settings.namespace, name) for name in all_queues],
        task_default_queue=all_queues[0] if all_queues else "celery",
        task_default_exchange=jobs_exchange(settings.namespace).name,
        task_default_exchange_type="direct",
    )

    def run_jobs(task: Any, entries: Any) -> dict[str, int]:
        delivery = task.request.delivery_info or {}
        return tasks.run_jobs(holder, entries, bool(delivery.get("redelivered")))

    options: dict[str, Any] = {}
    if batching is not None:
        strategy = BatchingStrategy(holder.get, batching, holder.hooks)
        options["Strategy"] = strategy
        worker_shutting_down.connect(lambda **_: strategy.stop_starting(), weak=False)
    # Acked on failure: the one failure the task raises on purpose is JobsFailed (some jobs
    # failed and are recorded; Flower shows the message failed), logged without a traceback.
    # Everything else it turns into a Reject (dead-letter or requeue) itself.
    app.task(name=RUN_JOBS_TASK, ignore_result=True, bind=True, acks_on_failure_or_timeout=True,
             throws=(JobsFailed,), Request="workers.tasks:SummaryRequest", **options)(run_jobs)

    if warm_targets:
        def warm(**_: Any) -> None:
            holder.get().warm(warm_targets)

        worker_process_init.connect(warm, weak=False)
    return app
