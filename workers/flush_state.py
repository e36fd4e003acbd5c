"""What the phases of one flush (``workers.executor``, ``workers.commit``) hand each other: the
jobs, their claims, model groups, outcomes, notices and results as the flush goes."""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from aidist.jobs import JobEntry, JobStatus
from db import Claim, Notice, Outcome

log = logging.getLogger("aidist.worker")
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
