"""Cross-message micro-batching for the gpu pool: jobs from many messages run as one model batch.

Celery runs one task per message; a model runs many times faster per item on a batch. So the gpu
pool's ``aidist.run_jobs`` task gets this strategy (Celery's per-task hook for how a received
message is handled): messages are buffered, and the buffer is flushed through the executor when it
holds as many jobs as its models gather per flush (``flush_jobs``), when its inputs reach
``max_chars`` characters, at once when a message reaches a worker with no batch in flight (a lone
job waits for nobody), when no message has come for ``idle_s``, or at the latest when the oldest
message has waited ``max_delay_s``, and then only once a runner thread is free to start it: while
every runner is busy, the next messages pile up (in the prefetch window, bounded) and go to the
first runner that frees up as one flush, so batches grow with load and stay small and prompt when
load is light.

Each message is acked only after its jobs' results and states are stored (the executor returns);
a message that cannot be understood is rejected to the dead-letter queue; if a service stays down,
the messages are requeued.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aidist.errors import PoisonMessage, ServiceUnavailable
from aidist.jobs import JobEntry
from workers.executor import PARK_S, parse_entries
from workers.hooks import Hooks
from workers.redelivery import look_again, split_lost
from workers.runners import BackgroundRunner, _Held, _Outcome, execute_held
from workers.runtime import WorkerRuntime
from workers.task_events import failure_text
from workers.wakeup import Wakeup

log = logging.getLogger("aidist.worker")
DRAIN_EVERY_S = 0.002
SHUTDOWN_GRACE_S = 60.0  # a warm shutdown waits this long for running batches to store results


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    """When a buffer of messages is flushed into a batch run."""

    max_jobs: int = 64  # for a target without a size of its own in ``flush_jobs``
    max_chars: int = 200_000
    max_delay_s: float = 0.010  # for a target without a delay of its own in ``delays``
    idle_s: float = 0.002
    runners: int = 0  # flushes run on this many threads of their own; 0: on the consumer's
    delays: Mapping[str, float] = field(default_factory=dict)  # target -> its longest wait
    flush_jobs: Mapping[str, int] = field(default_factory=dict)  # target -> its flush size

    def delay_of(self, entries: Sequence[JobEntry]) -> float:
        """The longest the jobs of a message may wait for others: the shortest delay among
        their models (a message normally holds one model's jobs)."""
        return min((self.delays.get(e.target, self.max_delay_s) for e in entries),
                   default=self.max_delay_s)

    def jobs_of(self, entries: Sequence[JobEntry]) -> int:
        """How many jobs a flush holding these may gather: the smallest flush size among
        their models."""
        return min((self.flush_jobs.get(e.target, self.max_jobs) for e in entries),
                   default=self.max_jobs)


@dataclass
class MessageBatcher:
    """Buffers messages and flushes them through ``run_flush``; single-threaded by design (it
    lives in the solo worker's event loop, like everything Celery's consumer does). Each job
    waits at most its own model's delay: the buffer flushes at the earliest deadline of what it
    holds."""

    runtime: Callable[[], WorkerRuntime]
    policy: BatchPolicy
    call_after: Callable[[float, Callable[[], None]], Any]
    hooks: Hooks = field(default_factory=Hooks)
    background: BackgroundRunner | None = None
    _held: list[_Held] = field(default_factory=list)
    _jobs: int = 0
    _chars: int = 0
    _max_jobs: int = 0  # the held messages' smallest flush size (0: nothing held)
    _timer: Any = None
    _deadline: float = 0.0
    _draining: bool = False  # a drain is scheduled on the consumer's timer
    woken: bool = False  # the runners wake the consumer's loop as a batch ends: no drain timer
    batches: int = 0

    def add(self, message: Any) -> None:
        """Take one received message (decoding errors propagate to Celery's handlers)."""
        body = message.decode()
        try:
            if not isinstance(body, list | tuple) or not body or not isinstance(
                    body[0], list | tuple):
                raise PoisonMessage("body is not a Celery protocol-2 (args, kwargs, embed) triple")
            args = body[0]
            if len(args) != 1:
                raise PoisonMessage(f"aidist.run_jobs takes one argument, got {len(args)}")
            entries, problems = parse_entries(args[0])
        except PoisonMessage as exc:
            log.error("dead-lettering a poison message: %s", exc)
            message.reject(requeue=False)
            return
        redelivered = bool((getattr(message, "delivery_info", None) or {}).get("redelivered"))
        if redelivered or any(entry.takeover for entry in entries):
            self._add_redelivered(message, entries, problems)
            return
        self._hold(_Held(message, entries, problems))

    def _add_redelivered(self, message: Any, entries: list[JobEntry],
                         problems: dict[str, str]) -> None:
        """A redelivered message (or a split-off copy), after a look at its jobs' rows: if one
        of them still runs on a live worker, the message is parked and looked at again; if one
        had its run lost with its worker, the message is split (several jobs) or runs alone;
        otherwise nothing ran its jobs, and it joins the batches like any message."""
        runtime = self.runtime()
        try:
            found = look_again(runtime, entries)
            if found.lost and not found.held and not problems and split_lost(
                    runtime, entries, found):
                _settle_one(message, "ack")
                return
        except ServiceUnavailable as exc:
            log.error("requeueing a redelivered message, cannot look at its jobs now: %s", exc)
            _settle_one(message, "requeue")
            return
        if not problems and {entry.id for entry in entries} <= found.done:
            _settle_one(message, "ack")  # every job of it has ended: nothing to claim
            return
        if found.held:  # neither run nor acked: that run goes on, or its worker dies
            self.call_after(PARK_S, lambda: self._add_redelivered(message, entries, problems))
            return
        if found.lost:
            # A job whose run was lost with its worker may be the one that killed it (a crash,
            # or a hang ended by the watchdog): it runs in a batch of its own, with no other
            # batch running beside it, so a job that kills every process it runs in never takes
            # its neighbours down with it again.
            self.flush()
            self._held.append(_Held(message, entries, problems, found.lost))
            self.flush(alone=True)
            return
        self._hold(_Held(message, entries, problems))

    def _hold(self, item: _Held) -> None:
        """Keep a message for the next flush, and flush when the policy says so."""
        message, entries, problems = item.message, item.entries, item.problems
        self._held.append(item)
        self.hooks.message_event("received", message)
        self._jobs += len(entries) + len(problems)
        self._chars += sum(len(e.input) if isinstance(e.input, str) else 0 for e in entries)
        limit = self.policy.jobs_of(entries)
        self._max_jobs = limit if not self._max_jobs else min(self._max_jobs, limit)
        if self._jobs >= self._max_jobs or self._chars >= self.policy.max_chars:
            self.flush()
            return
        if self.background is not None and not self.background.in_flight():
            # An idle worker: no batch runs, so nothing would be gained by waiting for company
            # (under load a batch is always out, and what comes meanwhile is held for the next
            # flush). The idle wait cost a lone job 2-4 ms (the consumer's timer fires late).
            self.flush()
            return
        now = time.monotonic()
        deadline = now + self.policy.delay_of(entries)
        self._deadline = deadline if len(self._held) == 1 else min(self._deadline, deadline)
        if self._timer is not None:
            self._timer.cancel()
        wait = min(self.policy.idle_s, self._deadline - now)
        self._timer = self.call_after(max(wait, 0.0), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.background is not None and not self.background.has_free_runner():
            # Every runner is busy: a flush handed over now would wait in line, and the
            # messages that come meanwhile would make flushes of their own. Held here instead,
            # they all go to the first runner that frees up, as one flush (``on_batch_ended``):
            # under load, flushes grow to what arrived during a batch, not to what arrived
            # during the idle wait (measured: single-message flushes of 1-10 jobs before).
            return
        self.flush()

    def flush(self, alone: bool = False) -> None:
        """Hand everything held to the run: inline, or to the background runner (which keeps the
        model busy while this thread takes the next messages), there ``alone`` if asked. Acks
        follow in ``_settle``."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        held, self._held = self._held, []
        self._jobs = self._chars = self._max_jobs = 0
        if not held:
            return
        for item in held:
            self._event("started", item)
        self.hooks.messages_handled()
        if self.background is not None:
            self.background.submit(held, alone)
            self._drain_soon()
        else:
            self._settle(held, execute_held(self.runtime(), held))

    def drain(self) -> None:
        """Settle batches the background runner has finished (called on the consumer thread)."""
        if self.background is not None:
            for held, outcome in self.background.finished():
                self._settle(held, outcome)

    def _drain_soon(self) -> None:
        """Look for finished batches every ``DRAIN_EVERY_S`` while any is in flight, and not at
        all when none is (a timer that fired for ever cost an idle worker about 5 % of a core).
        Not at all either where the runner threads wake the loop when a batch ends
        (``woken``: the consumer's event loop watches a ``workers.wakeup.Wakeup``)."""
        if not self._draining and not self.woken:
            self._draining = True
            self.call_after(DRAIN_EVERY_S, self._drain_tick)

    def _drain_tick(self) -> None:
        self._draining = False
        self.on_batch_ended()
        if self.background is not None and self.background.in_flight():
            self._drain_soon()

    def on_batch_ended(self) -> None:
        """Settle what the runners finished, and hand messages held for a runner to one that is
        free now (on the consumer's thread: the loop's wake-up, or the drain timer)."""
        self.drain()
        if (self.background is not None and self._held and self._timer is None
                and self.background.has_free_runner()):
            self.flush()

    def _settle(self, held: list[_Held], outcome: _Outcome) -> None:
        self._settle_each(held, outcome)
        self.hooks.messages_handled()

    def _settle_each(self, held: list[_Held], outcome: _Outcome) -> None:
        if outcome.requeue is not None:
            log.error("requeueing %d messages, a service is down: %s", len(held), outcome.requeue)
            for item in held:
                _settle_one(item.message, "requeue")
                self._event("retried", item, exception=outcome.requeue)
            return
        if outcome.dead is not None:
            for item in held:
                _settle_one(item.message, "dead")
                self._event("failed", item, exception=outcome.dead)
            return
        parked: list[_Held] = []
        for item in held:
            ids = {e.id for e in item.entries} | set(item.problems)
            if outcome.held and ids & outcome.held:
                parked.append(item)  # its job still runs on a live worker: neither ack nor run
                continue
            if outcome.missing and ids <= outcome.missing:
                _settle_one(item.message, "dead")  # no row for any of its jobs: never run blind
                self._event("failed", item, exception="jobs have no row in the job store")
                continue
            if outcome.gave_up and ids <= outcome.gave_up:
                _settle_one(item.message, "dead")  # the reason is in the job's row
                self._event("failed", item, exception="out of attempts")
                continue
            _settle_one(item.message, "ack")
            failed = sorted(ids & outcome.failed)
            if failed:  # acked (each job's failure is recorded), but shown as failed
                self._event("failed", item, exception=failure_text(failed, len(ids)))
            else:
                self._event("succeeded", item, result=f"{len(item.entries)} jobs",
                            runtime=outcome.seconds)
        if parked:
            self.call_after(PARK_S, lambda: self._retry_parked(parked))
        self.batches += 1

    def _retry_parked(self, parked: list[_Held]) -> None:
        """Try parked messages again: their jobs have finished (skipped, acked), their worker
        has died (taken over, run), or they wait another round."""
        self._settle(parked, execute_held(self.runtime(), parked))

    def _event(self, kind: str, item: _Held, **fields: Any) -> None:
        self.hooks.message_event(kind, item.message, **fields)


def _settle_one(message: Any, how: str) -> None:
    """Ack, requeue or dead-letter one message. If the broker connection was lost meanwhile
    (a RabbitMQ restart), the broker has already put the message back: it comes again, and the
    claim skips its finished jobs, so a failed ack loses nothing."""
    try:
        if how == "ack":
            message.ack()
        else:
            message.reject(requeue=how == "requeue")
    except Exception as exc:  # kombu raises several types for a dead channel
        log.warning("could not %s a message (%s: %s); the broker redelivers it", how,
                    type(exc).__name__, exc)


class BatchingStrategy:
    """Celery task strategy (``Task.Strategy``) that hands messages to a ``MessageBatcher``."""

    def __init__(self, runtime: Callable[[], WorkerRuntime], policy: BatchPolicy,
                 hooks: Hooks | None = None) -> None:
        self.runtime = runtime
        self.policy = policy
        self.hooks = hooks if hooks is not None else Hooks()
        self.batchers: list[MessageBatcher] = []
        # One set of runner threads per process, kept across consumer restarts (Celery builds a
        # new handler after a broker reconnect): a flush that must run alone waits for the ones
        # still running from before the reconnect too, whose messages come back redelivered.
        self.background: BackgroundRunner | None = None
        self._wakeup: Wakeup | None = None

    def __call__(self, task: Any, app: Any, consumer: Any, **_: Any) -> Callable[..., None]:
        self.hooks.consumer_ready(consumer)
        if self.policy.runners and self.background is None:
            self.background = BackgroundRunner(self.runtime, self.policy.runners)
        background = self.background
        batcher = MessageBatcher(self.runtime, self.policy, consumer.timer.call_after, self.hooks,
                                 background)
        self.batchers.append(batcher)
        hub = getattr(consumer, "hub", None)
        if background is not None and hub is not None:
            # The consumer's event loop (kombu's hub) watches a pipe the runner threads write
            # to as each batch ends: no timer polls for them (``workers.wakeup``). After a
            # reconnect the newest handler takes the pipe over; it settles batches of every
            # handler before it too (each message acks on its own channel).
            if self._wakeup is None:
                self._wakeup = Wakeup()
                background.on_done = self._wakeup.set
            wakeup = self._wakeup
            batcher.woken = True

            def on_wake() -> None:
                wakeup.clear()
                try:
                    batcher.on_batch_ended()
                except Exception:  # as the timer did: log, and keep the consumer's loop going
                    log.exception("settling finished batches failed")

            hub.add_reader(wakeup.fileno(), on_wake)

        def on_message(message: Any, payload: Any, ack: Any, reject: Any, callbacks: Any,
                       **__: Any) -> None:
            batcher.add(message)

        return on_message

    def stop_starting(self) -> None:
        """Warm shutdown began (Celery's SIGTERM handler): start no other batch. Nothing else
        happens here, in the handler: it may have interrupted the consumer's thread inside a
        lock the runner threads need to hand a batch back, and a wait here would then last the
        whole grace (a CI run saw a worker take 60 s to stop so). ``finish`` does the wait."""
        if self.background is not None:
            self.background.close()

    def finish(self, timeout: float = SHUTDOWN_GRACE_S) -> bool:
        """Once the consumer stops, outside the signal handler, with the broker connection
        still open: wait for the batches being run to store their results, then ack their
        messages. Messages of batches not started are left unacked: the broker delivers them
        again, and the claim skips jobs that have ended. False if the grace ran out first."""
        if self.background is None or not self.background.closing:
            return True
        done = self.background.wait_running(timeout)
        if not done:
            log.warning("stopping with batches still running after %.0f s: their messages are "
                        "redelivered", timeout)
        for batcher in self.batchers:
            batcher.drain()
        return done
