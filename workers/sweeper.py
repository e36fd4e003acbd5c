"""The outbox sweeper: publishes queued jobs whose message was never confirmed sent, and expires
queued jobs past their deadline.

A client writes a job's row, then publishes its message, then marks the row sent. If the client
dies, or the broker fails, between the write and the confirm, the row is there but no message
is: nothing would ever run the job. Every worker runs this sweeper (a worker hook); it finds such
rows older than ``sweep_after_s`` and publishes them (rows are locked with SKIP LOCKED, so several
workers never publish the same one at once). Should a message be published twice after all (the
client's publish went through but it died before marking the row), the claim fencing runs the job
once. A queued job past its deadline is expired here too: a claim would expire it, but only once
a worker takes its message, and with no worker on its queue its client would wait for ever.
Each pass then prunes (``db.retention``): finished jobs older than ``AIDIST_RETENTION_S`` go,
at most ``AIDIST_PRUNE_PER_SWEEP`` of them per pass, so a backlog of old rows is worked off over
several passes and never holds the sweeper long; a sweeper that finds another worker's prune
running skips its own for that pass.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from aidist import codec
from aidist.config import Settings
from aidist.jobs import JobEntry, message_packs, recorded_steps
from aidist.transport import queue_name
from db import UnsentJob
from db.interfaces import JobStoreLike
from db.retention import JobPruner, Pruned
from workers.periodic import PeriodicDuty

log = logging.getLogger("aidist.sweeper")
SWEEP_LIMIT = 1000

Publish = Callable[[str, list[dict[str, Any]], int], Any]


def entry_of(job: UnsentJob) -> JobEntry:
    """The first message entry of a recorded job (no reply list: its client may be gone; a
    client still waiting falls back to reading Postgres)."""
    first, *rest = recorded_steps(job.kind, job.target, job.version, job.params)
    return JobEntry(job.id, first.kind, first.target, first.version, codec.decode(job.payload),
                    job.cache_key, first.params, None, steps=tuple(rest))


def sweep_once(settings: Settings, store: JobStoreLike, publish: Publish,
               older_than_s: float | None = None) -> int:
    """Expire queued jobs past their deadline (a worker's claim would, but only once a worker
    takes their message), then publish every unsent queued job older than ``older_than_s``
    (default ``settings.sweep_after_s``); returns how many were published."""

    def publish_rows(rows: list[UnsentJob]) -> Sequence[str]:
        outgoing: dict[tuple[str, int], list[tuple[JobEntry, int]]] = defaultdict(list)
        for row in rows:
            try:
                entry = entry_of(row)
            except (ValueError, TypeError) as exc:  # a row no release of ours wrote
                log.error("cannot rebuild the message of job %s: %s", row.id, exc)
                continue
            queue = queue_name(settings.namespace, entry.kind, entry.target)
            outgoing[(queue, row.priority)].append((entry, len(row.payload)))
        sent: list[str] = []
        for (queue, priority), entries in outgoing.items():
            # packed as the client packs: by count and by bytes (AIDIST_MAX_MESSAGE_BYTES)
            for pack in message_packs([size for _, size in entries], settings.pack_size,
                                      settings.max_message_bytes):
                chosen = [entry for entry, _ in entries[pack]]
                publish(queue, [entry.to_wire() for entry in chosen], priority)
                sent.extend(entry.id for entry in chosen)
        return sent

    settled = store.settle_followers()
    if settled:
        log.info("settled %d coalesced jobs whose leader had ended", settled)
    # Before publishing: an overdue job gets no message, and one nobody consumes still ends.
    expired = 0
    while True:
        batch = store.expire_overdue(SWEEP_LIMIT)
        expired += batch
        if batch < SWEEP_LIMIT:
            break
    if expired:
        log.info("expired %d queued jobs past their deadline", expired)
    age = settings.sweep_after_s if older_than_s is None else older_than_s
    total = 0
    while True:
        published = store.sweep_unsent(age, SWEEP_LIMIT, publish_rows)
        total += published
        if published < SWEEP_LIMIT:
            break
    if total:
        log.warning("published %d queued jobs that had no message (their client or the broker "
                    "failed between writing and sending them)", total)
    return total


def prune_once(settings: Settings, pruner: JobPruner) -> Pruned:
    """A sweeper pass's prune: up to ``settings.prune_per_sweep`` finished jobs that ended over
    ``settings.retention_s`` ago (nothing if that is 0, or if another prune is running)."""
    if settings.retention_s <= 0:
        return Pruned()
    pruned = pruner.prune(settings.retention_s, limit=settings.prune_per_sweep)
    if pruned.jobs:
        log.info("pruned %d finished jobs that ended over %gs ago, with %d history rows and "
                 "%d blobs", pruned.jobs, settings.retention_s, pruned.events, pruned.blobs)
    return pruned


def sweeper(settings: Settings, store: JobStoreLike, publish: Publish,
            pruner: JobPruner | None = None) -> PeriodicDuty:
    """A worker hook that runs ``sweep_once`` (and ``prune_once``, given a ``pruner``) every
    ``sweep_interval_s`` while the worker consumes."""

    def step() -> float:
        sweep_once(settings, store, publish)
        if pruner is not None:
            prune_once(settings, pruner)
        return settings.sweep_interval_s

    return PeriodicDuty("aidist-sweeper", step, retry_s=settings.sweep_interval_s)
