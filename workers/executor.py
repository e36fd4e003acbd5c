"""Running a flush of jobs, in four named phases: triage, claim, run, commit.

A flush is the jobs of one message (the cpu pool's task) or of many messages gathered by the
batcher (the gpu pool). ``run_flush`` shows its whole path on one screen:

- **look again** (a redelivered message only, before anything else): its jobs as their rows say
  now. Only a job whose run was lost with its worker (running on one whose alive mark is gone)
  is a takeover, fenced on that worker, and may be the job that killed it (split off, run alone);
  one still running on a live worker is held (its message waits); every other job (never
  claimed, finished, a pipeline step not begun) is an ordinary delivery: no attempt spent;
- **triage**: the same job twice in a flush runs once; a job running in another flush of this
  process is held (its message waits);
- **claim**: one fenced UPDATE starts the jobs (or says they are finished, expired, out of
  attempts, following a twin elsewhere, or unknown);
- **run**: jobs whose result another run stored meanwhile take it; the rest run through their
  models in groups (``workers.model_runs``), minus jobs cancelled meanwhile;
- **commit** (``workers.commit``): every state and result in one statement, then results and
  notices to Redis in one round trip; or, with no durable copy of results (or a large output, or
  a next pipeline step), results to Redis first, then pipeline continuations, then the states,
  then the notices.

Order matters for durability: only after ``run_flush`` returns does Celery ack the messages
(acks_late). A crash anywhere before leaves them unacked, so they are delivered again, and the
claim skips jobs that already finished.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

from aidist.errors import PoisonMessage
from aidist.jobs import JobEntry, JobStatus, canonical_params
from db import ClaimRequest, Outcome
from workers.commit import commit
from workers.flush_state import NOTICE_RESULT_MAX, FlushState
from workers.hooks import BatchReport
from workers.model_runs import run_group
from workers.outputs import Forward, encode_output, forward, output_limit
from workers.payloads import (
    fetch_inputs,
    has_refs,
    live_results,
    needs_blobs,
    ref_key,
    with_inputs,
)
from workers.redelivery import look_again, split_lost
from workers.runtime import WorkerRuntime
from workers.service_retry import ServiceRetry

__all__ = ["NOTICE_RESULT_MAX", "PARK_S", "BatchReport", "execute", "parse_entries",
           "run_flush"]

log = logging.getLogger("aidist.worker")
SERVICE_RETRY_S = 30.0
PARK_S = 1.0  # how often a redelivered job still running on a live worker is looked at again


# -- the path of a message and of a flush ----------------------------------------------------------


def execute(runtime: WorkerRuntime, raw_entries: Any, redelivered: bool = False) -> BatchReport:
    """Run every job of one message (the cpu pool's task; ``aidist.testing``). A redelivered
    message (or a copy marked ``takeover``) is looked at first: while one of its jobs runs on a
    live worker nothing runs and ``held`` says so (the caller asks again); one holding a run
    lost with its worker is split (``split_lost``). Raises ``PoisonMessage`` for a message that
    is unusable as a whole; ``ServiceUnavailable`` if the look cannot be taken now."""
    entries, problems = parse_entries(raw_entries)
    lost: Mapping[str, str] = {}
    if redelivered or any(entry.takeover for entry in entries):
        found = look_again(runtime, entries)
        if found.held or (not problems and {e.id for e in entries} <= found.done) or (
                found.lost and not problems and split_lost(runtime, entries, found)):
            return BatchReport(received=len(entries), ran=0, succeeded=0, failed=0,
                               skipped=len(entries), expired=0, held=found.held)
        lost = found.lost
    return run_flush(runtime, entries, problems, lost=lost)


def run_flush(runtime: WorkerRuntime, entries: Sequence[JobEntry],
              problems: dict[str, str] | None = None,
              budget_s: float | None = None, lost: Mapping[str, str] | None = None
              ) -> BatchReport:
    """Triage, claim, run and commit one flush, between the hooks' ``flush_started`` and
    ``flush_ended`` (the watchdog ends the process past ``job_time_limit_s``). Only the jobs in
    ``lost`` (id -> the dead worker their run was lost with, from ``look_again``) are taken
    over; every other entry is claimed as an ordinary delivery, whatever its ``takeover`` flag.
    Each I/O step is retried while its service is unreachable; past ``budget_s`` (default
    ``SERVICE_RETRY_S``) ``ServicesDown`` tells the caller to requeue the messages, which is
    safe: claims are fenced and a finished job is never claimed again."""
    io = ServiceRetry(SERVICE_RETRY_S if budget_s is None else budget_s)
    started = time.perf_counter()
    with runtime.hooks.flush(entries) as reports:
        state = FlushState(triage(entries), problems or {}, lost=dict(lost or {}))
        # A job another flush of this process runs now (a duplicate delivery landing in the
        # other runner thread) is held: its message waits, then finds the job finished.
        with runtime.in_flight.taking(list(state.entries)) as busy:
            state.held = busy
            for job_id in sorted(busy):
                log.info("job %s is still running on %s (another flush of this process): its "
                         "message waits", job_id, runtime.name)
            state.orphans = [i for i in state.problems if i not in state.entries]
            state.entries = {i: e for i, e in state.entries.items() if i not in state.held}
            received = len(state.entries) + len(state.orphans)
            claim(runtime, state, io)
            run(runtime, state, io)
            commit(runtime, state, io)
        report = _report(state, received)
        reports.append(report)
    _log_batch(entries, report, time.perf_counter() - started)
    return report


def _log_batch(entries: Sequence[JobEntry], report: BatchReport, seconds: float) -> None:
    """The one line per batch: its id, model(s), size and time (as fields in JSON logs)."""
    batch = secrets.token_hex(4)
    targets = ",".join(sorted({entry.target for entry in entries}))
    log.info("batch %s: %s, %d jobs: %d succeeded, %d failed, %d skipped in %.1f ms", batch,
             targets, report.received, report.succeeded, report.failed, report.skipped,
             seconds * 1000, extra={"batch": batch, "target": targets, "jobs": report.received,
                                    "succeeded": report.succeeded, "failed": report.failed,
                                    "ms": round(seconds * 1000, 2)})


# -- triage ----------------------------------------------------------------------------------------


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


def triage(entries: Sequence[JobEntry]) -> dict[str, JobEntry]:
    """The flush's jobs by id: the same job delivered twice runs once (the first copy)."""
    unique: dict[str, JobEntry] = {}
    for entry in entries:
        unique.setdefault(entry.id, entry)
    return unique


# -- claim -----------------------------------------------------------------------------------------


def claim(runtime: WorkerRuntime, state: FlushState, io: ServiceRetry) -> None:
    """Start the jobs with one fenced claim, and sort what came back: runnable jobs by model
    group; expired, out-of-attempts and malformed jobs ended here; jobs following a twin that
    runs elsewhere left to it. A job with no claim finished before, is held by another run, or
    was never recorded: only the last is poison (never run blind)."""
    requests = [ClaimRequest(e.id, e.step, e.attempt, e.id in state.lost, state.lost.get(e.id))
                for e in state.entries.values()]
    requests += [ClaimRequest(job_id, takeover=True) for job_id in state.orphans]
    state.claims = {c.id: c for c in io(lambda: runtime.store.claim(
        requests, runtime.name, runtime.settings.max_attempts))}
    unclaimed = [r.id for r in requests if r.id not in state.claims]
    if unclaimed:
        known: set[str] = io(lambda: runtime.store.existing(unclaimed))
        state.missing = frozenset(job_id for job_id in unclaimed if job_id not in known)
        if state.missing:
            log.error("%d job(s) have no row in the job store (e.g. %s): not running them "
                      "blind; their message is dead-lettered", len(state.missing),
                      next(iter(state.missing)))
    for job_id, problem in state.problems.items():
        log.warning("job %s: %s", job_id, problem)
        if job_id in state.claims:
            state.outcomes.append(Outcome(job_id, state.claims[job_id].attempt,
                                          JobStatus.FAILED, problem))
    for entry in state.entries.values():
        found = state.claims.get(entry.id)
        if found is None:
            continue
        if found.follows is not None:  # finished with its leader, in the leader's finish
            state.coalesced += 1
        elif found.status is JobStatus.EXPIRED:
            state.expired += 1
            state.notify(entry, JobStatus.EXPIRED)
        elif found.status is JobStatus.FAILED:  # out of attempts: recorded by the claim itself
            log.error("job %s failed: out of attempts (%d); its message goes to the dead-letter "
                      "queue", entry.id, found.attempt - 1)
            state.gave_up.add(entry.id)
            state.notify(entry, JobStatus.FAILED,
                         f"gave up after {runtime.settings.max_attempts} attempts")
        else:
            key = (entry.target, entry.version, canonical_params(entry.params))
            state.groups[key].append(entry)


# -- run -------------------------------------------------------------------------------------------


def run(runtime: WorkerRuntime, state: FlushState, io: ServiceRetry) -> None:
    """Run the claimed jobs. A job whose result is in Redis already (an identical job finished
    since, in another flush or on another worker) takes it instead of running the model; a job
    cancelled since its claim is dropped before its group runs (the batch boundary; for the
    first group, asked in the same round trip as the stored results). With durable results the
    claim says which jobs have such a twin (``Claim.twin_stored``), and only those (and
    pipeline steps, whose own keys the claim does not look at) are asked about: most flushes
    make no round trip here, and a job cancelled between its claim and the first group is left
    to the finish's fence. Inputs sent by reference are read from the blob store once, for the
    whole flush, before any model runs. Each output becomes a result, a pipeline continuation,
    or a failure."""
    durable = runtime.settings.durable_results
    asked = [e for group in state.groups.values() for e in group
             if not durable or state.claims[e.id].twin_stored or e.step or e.steps]
    keys = list({entry.cache_key for entry in asked})
    stored: dict[str, bytes] = {}
    cancelled: set[str] = set()
    if keys:
        found, cancelled = io(partial(runtime.cache.results_and_cancelled, keys,
                                      [e.id for e in asked]))
        if has_refs(found):  # a reference to a blob gone since is no result: the job runs
            found = io(partial(live_results, runtime.blobs, found))
        stored = {key: data for key, data in zip(keys, found, strict=True) if data is not None}
    pending = [e for group in state.groups.values() for e in group if e.cache_key not in stored]
    by_ref = needs_blobs(pending)
    inputs = io(partial(fetch_inputs, runtime.blobs, pending)) if by_ref else {}
    ran_a_group = False
    for (target, version, _), group in state.groups.items():
        for entry in (e for e in group if e.cache_key in stored):
            state.from_cache.add(entry.id)
            state.end(entry, JobStatus.SUCCEEDED,
                      result=stored[entry.cache_key] if durable else None,
                      blob_key=ref_key(stored[entry.cache_key]))
        to_run = [entry for entry in group if entry.cache_key not in stored]
        if ran_a_group and to_run:  # the look before the first group is older than this group
            cancelled = io(partial(runtime.cache.cancelled_among, [e.id for e in to_run]))
        dropped = {entry.id for entry in to_run} & cancelled
        if dropped:
            state.cancelled |= dropped
            to_run = [entry for entry in to_run if entry.id not in dropped]
        if not to_run:
            continue
        if by_ref:  # a job whose input blob is gone fails (the blob will not come back)
            to_run, unreadable = with_inputs(to_run, inputs, runtime.blobs.url)
            for entry, problem in unreadable:
                state.fail(entry, problem)
        state.computed.update(entry.id for entry in to_run)
        ran_a_group = True
        limit = output_limit(runtime.registry, target)
        for entry, output, run_error in run_group(runtime, target, version, to_run):
            encoded, error = (b"", run_error) if run_error is not None else encode_output(
                target, output, limit)
            if error is None and entry.steps:
                following = forward(runtime.settings, entry, output, encoded,
                                    state.claims[entry.id].attempt)
                if isinstance(following, Forward):  # a pipeline goes on: the job stays running
                    state.forwards[following.queue].append(following.wire)
                    state.forward_sizes[entry.id] = following.size
                    continue
                error = following
            if error is None:
                state.results[entry.cache_key] = encoded
                state.end(entry, JobStatus.SUCCEEDED, result=encoded if durable else None,
                          output=encoded)
            else:
                state.fail(entry, error)


def _report(state: FlushState, received: int) -> BatchReport:
    failed = sum(1 for o in state.outcomes if o.status is JobStatus.FAILED)
    return BatchReport(
        received=received,
        ran=len(state.outcomes),
        succeeded=len(state.outcomes) - failed,
        failed=failed,
        skipped=received - len(state.claims),
        expired=state.expired,
        missing=state.missing,
        gave_up=frozenset(state.gave_up),
        coalesced=state.coalesced,
        held=state.held,
        cancelled_ids=frozenset(state.cancelled),
        outcomes=tuple(state.outcomes),
        claims=tuple(state.claims.values()),
        from_cache=frozenset(state.from_cache),
        computed=frozenset(state.computed),
    )
