"""The last phase of a flush (``workers.executor``): what its run produced goes to the blob
store, Redis, the next step's queue and Postgres, in an order that keeps it durable, and only
then do the waiting clients hear of it."""

from __future__ import annotations

from functools import partial

from aidist.jobs import JobStatus, message_packs
from db import Notice
from workers.flush_state import FlushState
from workers.payloads import outline_results
from workers.runtime import WorkerRuntime
from workers.service_retry import ServiceRetry

__all__ = ["commit"]


def commit(runtime: WorkerRuntime, state: FlushState, io: ServiceRetry) -> None:
    """Store what the run produced, in an order that keeps it durable. With durable results
    (the default) and nothing for the blob store or a next step, every state and result goes
    to Postgres in one statement first, then the results and the notices to Redis in one
    round trip (``_commit_state_first``). Otherwise outputs too large to keep inline go to the
    blob store first, then results (or their references) to Redis (a client that sees
    ``succeeded`` finds its result), then pipeline continuations, then every state in one
    statement (fenced on the attempt: a stale or cancelled run changes nothing), then notices;
    there, jobs cancelled while their batch ran are left out of all of it: no cached result, no
    next step (their cancel marks are read in the same Redis script that stores the results,
    one round trip). Either way a cancelled job gets no notice and no result."""
    limit, ttl_s = runtime.settings.inline_max_bytes, runtime.settings.result_ttl_s
    large = any(len(data) > limit for data in state.results.values())
    if runtime.settings.durable_results and not state.forwards and not large:
        _commit_state_first(runtime, state, io)
        return
    produced: dict[str, str | None] = {
        o.id: state.entries[o.id].cache_key if o.id in state.entries else None
        for o in state.outcomes if o.status is JobStatus.SUCCEEDED}
    produced.update((wire["id"], None) for wires in state.forwards.values() for wire in wires)
    if large:
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
    io(lambda: runtime.cache.notify(_notices_of(state, changed)))


def _commit_state_first(runtime: WorkerRuntime, state: FlushState, io: ServiceRetry) -> None:
    """The commit when every result rides in its row: states and results in one statement,
    then Redis once (one round trip fewer than looking at cancel marks first). The statement's
    fence decides what stands: a job cancelled while it ran, or whose run was taken over, is
    not changed, and only changed jobs' results are cached and notified. A worker that dies
    between the two leaves finished rows without a cached result or a notice: waiting clients
    learn the end from Postgres (they poll), and read the result from the row."""
    changed: set[str] = io(lambda: runtime.store.finish_returning(state.outcomes))
    unchanged = [o.id for o in state.outcomes if o.id not in changed]
    if unchanged:  # rare: which of them were cancelled (the rest lost their run to another)
        cancelled = io(partial(runtime.cache.cancelled_among, unchanged))
        if cancelled:
            _drop_cancelled(state, cancelled)
    wanted = {state.entries[o.id].cache_key for o in state.outcomes
              if o.id in changed and o.status is JobStatus.SUCCEEDED and o.id in state.entries}
    results = {key: data for key, data in state.results.items() if key in wanted}
    notices = _notices_of(state, changed)
    io(lambda: runtime.cache.put_and_notify(results, runtime.settings.result_ttl_s, notices))


def _notices_of(state: FlushState, changed: set[str]) -> dict[str, list[Notice]]:
    """The notices to send: none for a job whose row the finish did not change (cancelled
    meanwhile, or a stale attempt): its client learns the recorded status instead."""
    reported = {o.id for o in state.outcomes if o.status.terminal}
    return {reply_to: [n for n in items if n.job_id in changed or n.job_id not in reported]
            for reply_to, items in state.notices.items()}


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
