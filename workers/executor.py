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
- **commit**: results to Redis, then pipeline continuations, then every state in one statement,
  then notices to the waiting clients.

Order matters for durability: only after ``run_flush`` returns does Celery ack the messages
(acks_late). A crash anywhere before leaves them unacked, so they are delivered again, and the
claim skips jobs that already finished.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from aidist.errors import PoisonMessage
from aidist.jobs import JobEntry, JobStatus, canonical_params, message_packs
from db import Claim, ClaimRequest, Notice, Outcome
from workers.hooks import BatchReport
from workers.model_runs import run_group
from workers.outputs import Forward, encode_output, forward, output_limit
from workers.payloads import (
    fetch_inputs,
    has_refs,
    live_results,
    needs_blobs,
    outline_results,
    ref_key,
    with_inputs,
)
from workers.redelivery import look_again, split_lost
from workers.runtime import WorkerRuntime
from workers.service_retry import ServiceRetry

__all__ = ["PARK_S", "BatchReport", "execute", "parse_entries", "run_flush"]

log = logging.getLogger("aidist.worker")
SERVICE_RETRY_S = 30.0
PARK_S = 1.0  # how often a redelivered job still running on a live worker is looked at again
# A result up to this size rides in its job's completion notice: a client waiting on one job
# then reads it without a second round trip to Redis (a minilm vector takes 1.5 kB).
NOTICE_RESULT_MAX = 8 * 1024
GroupKey = tuple[str, str, str]  # (target, version, canonical params): one model call's jobs


@dataclass
class FlushState:
    """What the phases of one flush hand each other."""

    entries: dict[str, JobEntry]  # unique by id, held ones removed
    problems: dict[str, str]  # malformed entries that still name a job: failed, not run
    orphans: list[str] = field(default_factory=list)  # problem ids with no readable entry
    held: frozenset[str] = frozenset()
    lost: dict[str, str] = field(default_factory=dict)  # takeovers: id -> the dead holder
    claims: dict[str, Claim] = field(default_factory=dict)
    groups: dict[GroupKey, list[JobEntry]] = field(default_factory=lambda: defaultdict(list))
    outcomes: list[Outcome] = field(default_factory=list)
    notices: dict[str, list[Notice]] = field(default_factory=lambda: defaultdict(list))
    results: dict[str, bytes] = field(default_factory=dict)  # cache key -> encoded output
    forwards: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    forward_sizes: dict[str, int] = field(default_factory=dict)  # job id -> its entry's bytes
    missing: frozenset[str] = frozenset()
    gave_up: set[str] = field(default_factory=set)
    expired: int = 0
    coalesced: int = 0
    cancelled: set[str] = field(default_factory=set)
    from_cache: set[str] = field(default_factory=set)  # took a result another run stored
    computed: set[str] = field(default_factory=set)  # ran through their model here

    def end(self, entry: JobEntry, status: JobStatus, error: str | None = None, *,
            result: bytes | None = None, blob_key: str | None = None,
            output: bytes | None = None) -> None:
        """Record a job's terminal state (``result``: the durable copy, if kept), and the notice
        its client waits for, with ``output`` in it if it is small."""
        self.outcomes.append(Outcome(entry.id, self.claims[entry.id].attempt, status, error,
                                     result=result, blob_key=blob_key))
        self.notify(entry, status, error,
                    output if output is not None and len(output) <= NOTICE_RESULT_MAX else None)

    def fail(self, entry: JobEntry, error: str) -> None:
        """Record a job that ran (or could not) and failed, with a log line naming it."""
        log.warning("job %s (%s) failed: %s", entry.id, entry.target, error,
                    extra={"job_id": entry.id, "target": entry.target})
        self.end(entry, JobStatus.FAILED, error)

    def notify(self, entry: JobEntry, status: JobStatus, error: str | None = None,
               output: bytes | None = None) -> None:
        if entry.reply_to:
            self.notices[entry.reply_to].append(Notice(entry.id, status.value, error, output))


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
    first group, asked in the same round trip as the stored results). Inputs
    sent by reference are read from the blob store once, for the whole flush, before any model
    runs. Each output becomes a result, a pipeline continuation, or a failure."""
    durable = runtime.settings.durable_results
    keys = list({entry.cache_key for group in state.groups.values() for entry in group})
    stored: dict[str, bytes] = {}
    cancelled: set[str] = set()
    if keys:
        found, cancelled = io(partial(runtime.cache.results_and_cancelled, keys,
                                      [e.id for group in state.groups.values() for e in group]))
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


# -- commit ----------------------------------------------------------------------------------------


def commit(runtime: WorkerRuntime, state: FlushState, io: ServiceRetry) -> None:
    """Store what the run produced, in the order that keeps it durable: outputs too large to
    keep inline in the blob store first, then results (or their references) in Redis (a client
    that sees ``succeeded`` finds its result), then pipeline continuations, then every
    state in one statement (fenced on the attempt: a stale or cancelled run changes nothing),
    then notices. Jobs cancelled while their batch ran are left out of all of it: no cached
    result, no next step (their cancel marks are read in the same Redis script that stores the
    results, one round trip)."""
    produced: dict[str, str | None] = {
        o.id: state.entries[o.id].cache_key if o.id in state.entries else None
        for o in state.outcomes if o.status is JobStatus.SUCCEEDED}
    produced.update((wire["id"], None) for wires in state.forwards.values() for wire in wires)
    limit, ttl_s = runtime.settings.inline_max_bytes, runtime.settings.result_ttl_s
    if any(len(data) > limit for data in state.results.values()):
        # Large outputs go to the blob store first, and only those of jobs still wanted: the
        # cancel marks are looked at before, and the references stored after.
        cancelled = io(partial(runtime.cache.cancelled_among, list(produced)))
        if cancelled:
            _drop_cancelled(state, cancelled)
        state.results, state.outcomes = io(partial(
            outline_results, runtime.blobs, state.results, state.outcomes,
            {job_id: entry.cache_key for job_id, entry in state.entries.items()}, limit))
        io(lambda: runtime.cache.put_many(state.results, ttl_s))
    elif produced:  # the look at the cancel marks and the results' writes: one round trip
        cancelled = io(partial(runtime.cache.put_unless_cancelled, state.results, produced,
                               ttl_s))
        if cancelled:
            _drop_cancelled(state, cancelled)
    pack, max_bytes = runtime.settings.pack_size, runtime.settings.max_message_bytes
    for queue, wires in state.forwards.items():
        sizes = [state.forward_sizes[wire["id"]] for wire in wires]
        for part in message_packs(sizes, pack, max_bytes):
            io(partial(runtime.forward, queue, wires[part]))
    changed: set[str] = io(lambda: runtime.store.finish_returning(state.outcomes))
    # No notice for a job whose row did not change (cancelled meanwhile, or a stale attempt):
    # its client learns the recorded status instead.
    reported = {o.id for o in state.outcomes if o.status.terminal}
    io(lambda: runtime.cache.notify({
        reply_to: [n for n in items if n.job_id in changed or n.job_id not in reported]
        for reply_to, items in state.notices.items()
    }))


def _drop_cancelled(state: FlushState, cancelled: set[str]) -> None:
    """Forget the outputs of jobs cancelled while they ran (a result another job of the flush
    shares stays: the cache is keyed by content)."""
    state.cancelled |= cancelled
    keep = [o for o in state.outcomes if o.id not in cancelled]
    kept_keys = {state.entries[o.id].cache_key for o in keep if o.id in state.entries}
    state.results = {k: v for k, v in state.results.items() if k in kept_keys}
    state.outcomes = keep
    for queue, wires in list(state.forwards.items()):
        state.forwards[queue] = [wire for wire in wires if wire["id"] not in cancelled]
    for reply_to, items in state.notices.items():
        state.notices[reply_to] = [n for n in items if n.job_id not in cancelled]


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
