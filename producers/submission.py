"""What a submission is made of before it is recorded and sent: its plan, its jobs, its options."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from aidist.errors import InvalidInput
from aidist.jobs import JobKind, Step

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
