"""What a submission is made of before it is recorded and sent: its plan, its jobs, its options."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from aidist.errors import InvalidInput, MessageTooLarge
from aidist.jobs import (
    MESSAGE_OVERHEAD,
    JobEntry,
    JobKind,
    Step,
    canonical_params,
    wire_overhead,
)

Deadline = float | datetime | None

#: Who is submitting, as the sender's linger needs to know (``producers.sender``): the calling
#: thread, unless the caller names itself here (``AsyncClient`` names its asyncio task, whose
#: calls run on whichever of the loop's worker threads is free).
SUBMITTER: ContextVar[int | None] = ContextVar("aidist_submitter", default=None)


#: ``Client.map`` and ``imap`` record and publish their jobs in slices: the first this many, so
#: workers start on them while the rest are still written, each next one twice the last, up to
#: ``LARGEST_SLICE`` (a handful of statements for a large call; each is one INSERT and packed
#: messages). 256 is one flush of a gpu worker for minilm (4 batches of its 64).
FIRST_SLICE = 256
LARGEST_SLICE = 8192


def slices(total: int, first: int = FIRST_SLICE, largest: int = LARGEST_SLICE
           ) -> list[tuple[int, int]]:
    """``(start, stop)`` of each slice of ``total`` items: ``first``, then doubling up to
    ``largest``, the last one what is left."""
    cuts: list[tuple[int, int]] = []
    start, size, cap = 0, max(first, 1), max(largest, first, 1)
    while start < total:
        stop = min(total, start + size)
        cuts.append((start, stop))
        start, size = stop, min(size * 2, cap)
    return cuts


def submitter() -> int:
    """The current submitter: ``SUBMITTER`` if set, else the thread's ident."""
    named = SUBMITTER.get()
    return named if named is not None else threading.get_ident()


@dataclass(frozen=True, slots=True)
class Plan:
    """What the rows and the first message of a submission look like."""

    kind: JobKind
    label: str
    version: str
    params: dict[str, Any]
    first: Step
    rest: tuple[Step, ...] = ()


@dataclass(frozen=True, slots=True)
class Request:
    """One job to record and send."""

    plan: Plan
    input: Any
    payload: bytes
    key: str
    options: SubmitOptions
    submitter: int = 0  # who submitted it (``submitter()``; 0: not known): producers.sender


@dataclass(frozen=True, slots=True)
class SubmitOptions:
    """Per-submission options shared by every job of one call."""

    priority: int = 0
    deadline: datetime | None = None
    idempotency_key: str | None = None
    tenant: str | None = None


def submit_options(priority: int, deadline: Deadline, idempotency_key: str | None,
                   tenant: str | None) -> SubmitOptions:
    """Check and normalise the options of a submission; ``InvalidInput`` if one is wrong."""
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 9:
        raise InvalidInput(f"priority must be an integer from 0 to 9, got {priority!r}")
    when: datetime | None
    if deadline is None:
        when = None
    elif isinstance(deadline, datetime):
        if deadline.tzinfo is None:
            raise InvalidInput("deadline datetime must be timezone-aware (e.g. datetime.now(UTC))")
        when = deadline
    elif isinstance(deadline, int | float) and not isinstance(deadline, bool) and deadline > 0:
        when = datetime.now(UTC) + timedelta(seconds=float(deadline))
    else:
        raise InvalidInput(f"deadline must be seconds (> 0) or an aware datetime, got {deadline!r}")
    return SubmitOptions(priority, when, idempotency_key, tenant)


#: Plans a client keeps (``Plans``); past this many distinct ones the book starts afresh.
PLANS_KEPT = 256
SAMPLE_KEY = "0" * 40


class Plans:
    """A client's plans for one-step submissions, made once per kind, target, version and
    params and shared by every submission of them, each with its message-entry overhead
    measured once. Measuring it encodes a sample entry (~40 µs); done per ``infer()`` that was 8%
    of a client's CPU under single-message load. Safe across threads: a race only makes a plan
    or measures an overhead twice."""

    def __init__(self, reply_to: str | None) -> None:
        self.reply_to = reply_to
        self._plans: dict[tuple[JobKind, str, str, str], Plan] = {}
        # By id, holding the plan itself, so an id is never reused while its entry stands.
        self._overheads: dict[int, tuple[Plan, int]] = {}

    def single(self, kind: JobKind, target: str, version: str, params: dict[str, Any]) -> Plan:
        """The plan of a one-step job of ``target`` with ``params`` (checked already)."""
        key = (kind, target, version, canonical_params(params))
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) >= PLANS_KEPT:
                self._plans.clear()
            step = Step(kind, target, version, params)
            plan = self._plans[key] = Plan(kind=kind, label=target, version=version,
                                           params=params, first=step)
        return plan

    def overhead(self, plan: Plan) -> int:
        """Bytes an entry of ``plan`` takes in a message besides its encoded input, for a cache
        key of ``len(SAMPLE_KEY)`` characters (every key is: a 20-byte digest in hex)."""
        known = self._overheads.get(id(plan))
        if known is not None and known[0] is plan:
            return known[1]
        first = plan.first
        sample = JobEntry(str(uuid.UUID(int=0)), first.kind, first.target, first.version,
                          "", SAMPLE_KEY, first.params, self.reply_to, steps=plan.rest)
        size = wire_overhead(sample.to_wire())
        if len(self._overheads) >= PLANS_KEPT:
            self._overheads.clear()
        self._overheads[id(plan)] = (plan, size)
        return size


def entry_sizes(requests: Sequence[Request], cached: Sequence[bytes | None], plans: Plans,
                max_message_bytes: int) -> list[int]:
    """Bytes each job's entry takes in a message: its encoded input plus the other fields
    (measured once per plan, ``Plans.overhead``). ``MessageTooLarge`` for a job that would be sent
    (not a cache hit) and cannot fit in a message of ``max_message_bytes`` alone: refused before
    anything is written."""
    sizes: list[int] = []
    for r, hit in zip(requests, cached, strict=True):
        size = plans.overhead(r.plan) + len(r.key) - len(SAMPLE_KEY) + len(r.payload)
        if hit is None and size + MESSAGE_OVERHEAD > max_message_bytes:
            raise MessageTooLarge(
                f"a {r.plan.label} job's message entry would take {size} bytes (its encoded "
                f"input: {len(r.payload)}), over the message limit of {max_message_bytes} bytes "
                "(AIDIST_MAX_MESSAGE_BYTES); nothing was written or sent. Send an input this "
                "large by reference through the blob store (AIDIST_BLOB_URL, "
                "AIDIST_INLINE_MAX_BYTES), split it, or raise AIDIST_MAX_MESSAGE_BYTES "
                "(RabbitMQ's max_message_size must allow it)")
        sizes.append(size)
    return sizes


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One recorded job's message entry, where it goes, and its size in a message."""

    queue: str
    priority: int
    entry: dict[str, Any]
    size: int
    submitter: int = 0  # who submitted it (0: not known)



def by_destination(items: Sequence[Outgoing]) -> dict[tuple[str, int], list[Outgoing]]:
    """Recorded jobs grouped by (queue, priority): what one stream of messages carries."""
    groups: dict[tuple[str, int], list[Outgoing]] = {}
    for item in items:
        groups.setdefault((item.queue, item.priority), []).append(item)
    return groups
