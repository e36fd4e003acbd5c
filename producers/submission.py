"""What a submission is made of before it is recorded and sent: its plan, its jobs, its options."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from aidist.errors import InvalidInput, MessageTooLarge
from aidist.jobs import MESSAGE_OVERHEAD, JobEntry, JobKind, Step, wire_overhead

Deadline = float | datetime | None


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


def entry_sizes(requests: Sequence[Request], cached: Sequence[bytes | None],
                reply_to: str | None, max_message_bytes: int) -> list[int]:
    """Bytes each job's entry takes in a message: its encoded input plus the other fields
    (measured once per plan). ``MessageTooLarge`` for a job that would be sent (not a cache hit)
    and cannot fit in a message of ``max_message_bytes`` alone: refused before anything is
    written."""
    overheads: dict[int, int] = {}
    sizes: list[int] = []
    for r, hit in zip(requests, cached, strict=True):
        overhead = overheads.get(id(r.plan))
        if overhead is None:
            first = r.plan.first
            sample = JobEntry(str(uuid.UUID(int=0)), first.kind, first.target, first.version,
                              "", r.key, first.params, reply_to, steps=r.plan.rest)
            overhead = overheads[id(r.plan)] = wire_overhead(sample.to_wire())
        size = overhead + len(r.payload)
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



def by_destination(items: Sequence[Outgoing]) -> dict[tuple[str, int], list[Outgoing]]:
    """Recorded jobs grouped by (queue, priority): what one stream of messages carries."""
    groups: dict[tuple[str, int], list[Outgoing]] = {}
    for item in items:
        groups.setdefault((item.queue, item.priority), []).append(item)
    return groups
