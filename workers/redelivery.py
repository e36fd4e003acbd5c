"""A redelivered message, looked at before any of its jobs is claimed.

RabbitMQ marks a message redelivered whenever it hands it out again: its worker was killed (or
ended by the watchdog), but also when a warm shutdown, a broker restart or a lost connection gave
back messages that were never opened, or whose jobs have finished or are still running. Treating
every such job as a takeover spent an attempt on jobs nothing had run, split every returned
message into single-job messages run one by one, and held a pipeline's later step for as long as
the process that ran its previous step lived. So a redelivery reads its jobs' rows first (the one
extra round trip, paid only by a redelivery) and only a run lost with a dead worker is taken over.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from aidist.jobs import JobEntry, JobStatus
from aidist.transport import queue_name
from workers.runtime import WorkerRuntime

__all__ = ["Redelivery", "look_again", "split_lost"]

log = logging.getLogger("aidist.worker")


@dataclass(frozen=True, slots=True)
class Redelivery:
    """A redelivered message's jobs as their rows say now (``look_again``). A job in neither
    ``lost`` nor ``held`` is run by nobody: never claimed (a warm shutdown or a broker restart
    handed its message back unopened), finished, claimed by this very process, or a pipeline
    step that had not begun; its delivery is an ordinary one."""

    lost: Mapping[str, str] = field(default_factory=dict)  # id -> dead worker its run died with
    held: frozenset[str] = frozenset()  # running on a live worker: that run goes on
    done: frozenset[str] = frozenset()  # terminal: nothing is left to do


def look_again(runtime: WorkerRuntime, entries: Sequence[JobEntry]) -> Redelivery:
    """Sort a redelivered message's jobs by their rows (one read of the store, one of the alive
    marks): only a run at the entry's step on another worker counts, and it is lost if that
    worker's alive mark is gone (killed, or ended by the watchdog), held if the mark is fresh
    (a broker restart or a partition took the message from a worker whose batch goes on)."""
    runs = runtime.store.runs([entry.id for entry in entries])
    holders: dict[str, str] = {}
    for entry in entries:
        run = runs.get(entry.id)
        if (run is not None and run.status is JobStatus.RUNNING and run.step == entry.step
                and run.worker is not None and run.worker != runtime.name):
            holders[entry.id] = run.worker
    alive = runtime.cache.alive_among(sorted(set(holders.values()))) if holders else set()
    held = frozenset(job_id for job_id, worker in holders.items() if worker in alive)
    for job_id in sorted(held):
        log.info("job %s is still running on %s: its redelivered message waits", job_id,
                 holders[job_id])
    return Redelivery(
        lost={job_id: worker for job_id, worker in holders.items() if worker not in alive},
        held=held,
        done=frozenset(job_id for job_id, run in runs.items() if run.status.terminal))


def split_lost(runtime: WorkerRuntime, entries: Sequence[JobEntry], found: Redelivery) -> bool:
    """A redelivered message of several jobs, one of which at least had its run lost with its
    worker, is republished (and the caller acks the original): each lost or held job in a
    message of its own marked ``takeover`` (looked at again when it comes: if one killed the
    worker, only it keeps coming back, alone, until its attempts run out), the jobs nobody ran
    together in ordinary messages, finished ones not at all. True if split."""
    if len(entries) < 2:
        return False
    namespace, pack = runtime.settings.namespace, runtime.settings.pack_size
    alone = [entry for entry in entries if entry.id in found.lost or entry.id in found.held]
    for entry in alone:
        runtime.forward(queue_name(namespace, entry.kind, entry.target),
                        [entry.taking_over().to_wire()])
    others: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for entry in entries:
        if entry.id not in found.lost and entry.id not in found.held and (
                entry.id not in found.done):
            others[queue_name(namespace, entry.kind, entry.target)].append(
                replace(entry, takeover=False).to_wire())
    packed = 0
    for queue, wires in others.items():
        for start in range(0, len(wires), pack):
            runtime.forward(queue, wires[start : start + pack])
            packed += 1
    log.warning("split a redelivered message into %d single-job messages (runs lost with their "
                "worker, or held) and %d message(s) of the %d job(s) nobody ran", len(alone),
                packed, sum(map(len, others.values())))
    return True
