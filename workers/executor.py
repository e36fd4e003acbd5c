"""Running a packed message of jobs: claim, run in batches, store results, record state, notify.

Order matters for durability: results go to Redis, then the batch's state to Postgres in one
statement, then notices to the clients; only after this function returns does Celery ack the message
(acks_late). A crash anywhere before leaves the message unacked, so it is delivered again, and the
claim step skips jobs that already finished.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import numpy as np
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential_jitter,
)

from aidist import codec
from aidist.errors import PoisonMessage, ServicesDown, ServiceUnavailable
from aidist.jobs import JobEntry, JobStatus, canonical_params
from aidist.transport import queue_name
from db import ClaimRequest, Notice, Outcome
from workers.model_runs import run_group
from workers.runtime import WorkerRuntime

log = logging.getLogger("aidist.worker")




@dataclass(frozen=True, slots=True)
class BatchReport:
    """What one message's run did, for logs and tests."""

    received: int
    ran: int
    succeeded: int
    failed: int
    skipped: int
    expired: int
    missing: frozenset[str] = frozenset()  # ids with no row at all: not run, dead-lettered
    gave_up: frozenset[str] = frozenset()  # failed out of attempts: their message dead-lettered
    coalesced: int = 0  # identical to a job running elsewhere: they take its end, not a run
    held: frozenset[str] = frozenset()  # redelivered, but still running on a live worker: wait


def parse_entries(raw: Any) -> tuple[list[JobEntry], dict[str, str]]:
    """Entries of a message, plus (job id -> error) for malformed entries that still name a job,
    so those jobs are failed rather than left queued. A message with nothing usable is poison."""
    if not isinstance(raw, list) or not raw:
        raise PoisonMessage(f"non-empty job list expected, got {type(raw).__name__}")
    entries: list[JobEntry] = []
    problems: dict[str, str] = {}
    for item in raw:
        try:
            entries.append(JobEntry.from_wire(item))
        except ValueError as exc:
            job_id = item.get("id") if isinstance(item, dict) else None
            if isinstance(job_id, str):
                problems[job_id] = f"malformed job entry: {exc}"
    if not entries and not problems:
        raise PoisonMessage("no job entry in the message can be read")
    return entries, problems


def _plain(value: Any) -> Any:
    """A step's output as message-safe data for the next step (arrays become lists)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value




SERVICE_RETRY_S = 30.0
PARK_S = 1.0  # how often a redelivered job still running on a live worker is looked at again
T = TypeVar("T")
IO = Callable[[Callable[[], T]], T]


def _direct(call: Callable[[], T]) -> T:
    return call()


class ServiceRetry:
    """Runs one I/O step at a time, retried with exponential backoff and jitter while Postgres,
    Redis or RabbitMQ is unreachable, all steps of one run sharing one time budget. Retrying a
    step, not the whole run, means a database that restarts after the model ran costs a wait,
    not a second run of the model."""

    def __init__(self, budget_s: float) -> None:
        self.deadline = time.monotonic() + budget_s

    def __call__(self, call: Callable[[], T]) -> T:
        retrying = Retrying(
            retry=retry_if_exception_type(ServiceUnavailable),
            wait=wait_exponential_jitter(multiplier=0.1, max=3.0),
            stop=stop_after_delay(max(self.deadline - time.monotonic(), 0.0)),
            reraise=False,
        )
        try:
            return retrying(call)
        except RetryError as exc:
            error = exc.last_attempt.exception()
            raise ServicesDown(str(error)) from error


def run_retrying(runtime: WorkerRuntime, entries: Sequence[JobEntry],
                 problems: dict[str, str] | None = None,
                 budget_s: float | None = None) -> BatchReport:
    """``run_entries`` with each of its I/O steps retried while a service is unreachable;
    ``ServicesDown`` once ``budget_s`` (default ``SERVICE_RETRY_S``) has passed, and the caller
    requeues the messages. Retrying is safe: claims are fenced and a finished job is never
    claimed again. The run is watched: past ``job_time_limit_s`` the process ends."""
    retry = ServiceRetry(SERVICE_RETRY_S if budget_s is None else budget_s)
    with runtime.watchdog.guard(f"a batch of {len(entries)} jobs"):
        return run_entries(runtime, entries, problems, io=retry)


def split_redelivered(runtime: WorkerRuntime, entries: Sequence[JobEntry]) -> bool:
    """A redelivered message of several jobs is republished as one message per job (and the
    caller acks the original): if one of its jobs killed the worker, only that job keeps coming
    back (until its attempts run out) and its message-mates run normally. True if split."""
    if len(entries) < 2:
        return False
    for entry in entries:
        runtime.forward(queue_name(runtime.settings.namespace, entry.kind, entry.target),
                        [entry.taking_over().to_wire()])
    log.warning("split a redelivered message into %d single-job messages", len(entries))
    return True


def execute(runtime: WorkerRuntime, raw_entries: Any, redelivered: bool = False) -> BatchReport:
    """Run every job of one message. Raises ``PoisonMessage`` for a message that is unusable."""
    entries, problems = parse_entries(raw_entries)
    if redelivered:
        if not problems and split_redelivered(runtime, entries):
            return BatchReport(received=len(entries), ran=0, succeeded=0, failed=0,
                               skipped=len(entries), expired=0)
        entries = [entry.taking_over() for entry in entries]
    return run_retrying(runtime, entries, problems)


def run_entries(runtime: WorkerRuntime, entries: Sequence[JobEntry],
                problems: dict[str, str] | None = None, io: IO[Any] = _direct) -> BatchReport:
    """Run parsed entries, possibly gathered from several messages: one claim, grouped batches,
    one results pipeline, one state statement, one notice pipeline. An id present twice (the same
    job delivered twice) runs once. Each I/O step goes through ``io`` (a retry policy)."""
    problems = problems or {}
    unique: dict[str, JobEntry] = {}
    for entry in entries:
        unique.setdefault(entry.id, entry)
    held: frozenset[str] = io(lambda: _held_elsewhere(runtime, list(unique.values())))
    # A job another flush of this process is running now (a duplicate delivery landing in the
    # other runner thread) is held too: its message waits, and then finds the job finished.
    with runtime.in_flight.taking([i for i in unique if i not in held]) as running_here:
        return _run_unheld(runtime, unique, problems, io, held | running_here)


def _run_unheld(runtime: WorkerRuntime, unique: dict[str, JobEntry], problems: dict[str, str],
                io: IO[Any], held: frozenset[str]) -> BatchReport:
    entries = [entry for entry in unique.values() if entry.id not in held]
    ids = [e.id for e in entries] + [i for i in problems if i not in unique]
    requests = [ClaimRequest(e.id, e.step, e.attempt, e.takeover) for e in entries]
    requests += [ClaimRequest(i, takeover=True) for i in problems if i not in unique]
    claims = {c.id: c for c in io(lambda: runtime.store.claim(
        requests, runtime.name, runtime.settings.max_attempts))}
    durable = runtime.settings.durable_results
    missing: frozenset[str] = frozenset()
    unclaimed = [job_id for job_id in ids if job_id not in claims]
    if unclaimed:  # finished, held by another run, or never recorded: only the last is poison
        known: set[str] = io(lambda: runtime.store.existing(unclaimed))
        missing = frozenset(job_id for job_id in unclaimed if job_id not in known)
        if missing:
            log.error("%d job(s) have no row in the job store (e.g. %s): not running them "
                      "blind; their message is dead-lettered", len(missing), next(iter(missing)))
    notices: dict[str, list[Notice]] = defaultdict(list)
    outcomes: list[Outcome] = []
    for job_id, problem in problems.items():
        log.warning("job %s: %s", job_id, problem)
        if job_id in claims:
            outcomes.append(Outcome(job_id, claims[job_id].attempt, JobStatus.FAILED, problem))
    groups: dict[tuple[str, str, str], list[JobEntry]] = defaultdict(list)
    gave_up: set[str] = set()
    expired = coalesced = 0
    for entry in entries:
        claim = claims.get(entry.id)
        if claim is None:
            continue
        if claim.follows is not None:  # finished with its leader, in the leader's finish
            coalesced += 1
            continue
        if claim.status is JobStatus.EXPIRED:
            expired += 1
            if entry.reply_to:
                notices[entry.reply_to].append(Notice(entry.id, JobStatus.EXPIRED.value))
            continue
        if claim.status is JobStatus.FAILED:  # out of attempts: recorded by the claim itself
            log.error("job %s failed: out of attempts (%d); its message goes to the dead-letter "
                      "queue", entry.id, claim.attempt - 1)
            gave_up.add(entry.id)
            if entry.reply_to:
                notices[entry.reply_to].append(Notice(
                    entry.id, JobStatus.FAILED.value,
                    f"gave up after {runtime.settings.max_attempts} attempts"))
            continue
        groups[(entry.target, entry.version, canonical_params(entry.params))].append(entry)
    done_before: dict[str, bytes] = io(lambda: _results_already_stored(runtime, groups))

    results: dict[str, bytes] = {}
    forwards: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for entry in (e for group in groups.values() for e in group if e.cache_key in done_before):
        outcomes.append(Outcome(entry.id, claims[entry.id].attempt, JobStatus.SUCCEEDED,
                                result=done_before[entry.cache_key] if durable else None))
        if entry.reply_to:
            notices[entry.reply_to].append(Notice(entry.id, JobStatus.SUCCEEDED.value))
    for (target, version, _), group in groups.items():
        to_run = [entry for entry in group if entry.cache_key not in done_before]
        if not to_run:
            continue
        for entry, output, run_error in run_group(runtime, target, version, to_run):
            claim = claims[entry.id]
            error = run_error
            if error is None and entry.steps:
                # a pipeline goes on: the job stays running, its next step gets this output
                following = entry.next_step(_plain(output), claim.attempt)
                queue = queue_name(runtime.settings.namespace, following.kind, following.target)
                forwards[queue].append(following.to_wire())
                continue
            if error is None:
                try:
                    results[entry.cache_key] = codec.encode(output)
                except (TypeError, ValueError) as exc:
                    error = f"output cannot be encoded: {exc}"
            if error is None:
                outcomes.append(Outcome(entry.id, claim.attempt, JobStatus.SUCCEEDED,
                                        result=results[entry.cache_key] if durable else None))
            else:
                outcomes.append(Outcome(entry.id, claim.attempt, JobStatus.FAILED, error))
            if entry.reply_to:
                status = JobStatus.SUCCEEDED if error is None else JobStatus.FAILED
                notices[entry.reply_to].append(Notice(entry.id, status.value, error))

    io(lambda: runtime.cache.put_many(results, runtime.settings.result_ttl_s))
    for queue, wires in forwards.items():
        for start in range(0, len(wires), runtime.settings.pack_size):
            io(partial(runtime.forward, queue, wires[start : start + runtime.settings.pack_size]))
    changed: set[str] = io(lambda: runtime.store.finish_returning(outcomes))
    # No notice for a job whose row did not change (cancelled meanwhile, or a stale attempt):
    # its client learns the recorded status instead.
    reported = {o.id for o in outcomes if o.status in (JobStatus.SUCCEEDED, JobStatus.FAILED)}
    io(lambda: runtime.cache.notify({
        reply_to: [n for n in items if n.job_id in changed or n.job_id not in reported]
        for reply_to, items in notices.items()
    }))
    failed = sum(1 for o in outcomes if o.status is JobStatus.FAILED)
    return BatchReport(
        received=len(ids),
        ran=len(outcomes),
        succeeded=len(outcomes) - failed,
        failed=failed,
        skipped=len(ids) - len(claims),
        expired=expired,
        missing=missing,
        gave_up=frozenset(gave_up),
        coalesced=coalesced,
        held=held,
    )


def _held_elsewhere(runtime: WorkerRuntime, entries: Sequence[JobEntry]) -> frozenset[str]:
    """Ids of redelivered jobs that another worker is still running and is alive (its mark in
    Redis is fresh): a broker restart redelivers the message of a job in the middle of its run.
    Such a job is not taken over; its message waits until that worker commits or dies."""
    takeovers = [entry.id for entry in entries if entry.takeover]
    if not takeovers:
        return frozenset()
    holders = runtime.store.holders(takeovers, other_than=runtime.name)
    if not holders:
        return frozenset()
    alive = runtime.cache.alive_among(sorted(set(holders.values())))
    held = frozenset(job_id for job_id, worker in holders.items() if worker in alive)
    for job_id in held:
        log.info("job %s is still running on %s: its redelivered message waits", job_id,
                 holders[job_id])
    return held


def _results_already_stored(runtime: WorkerRuntime,
                            groups: dict[tuple[str, str, str], list[JobEntry]]) -> dict[str, bytes]:
    """Results already in Redis for jobs about to run (an identical job finished since these
    were submitted, in another flush or on another worker): those jobs take the stored result
    instead of running the model again. One MGET per flush."""
    keys = list({entry.cache_key for group in groups.values() for entry in group})
    if not keys:
        return {}
    found = runtime.cache.get_many(keys)
    return {key: data for key, data in zip(keys, found, strict=True) if data is not None}
