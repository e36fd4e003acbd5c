"""A submission's rows and message entries, built from its requests."""

from __future__ import annotations

from collections.abc import Sequence

from aidist.ids import new_job_id
from aidist.jobs import JobEntry, JobStatus
from aidist.transport import queue_name
from db import NewJob
from producers.payloads import blob_keys
from producers.submission import Outgoing, Request


def new_rows(requests: Sequence[Request], cached: Sequence[bytes | None]) -> list[NewJob]:
    """The rows of a submission: queued, or succeeded where the cache had the result."""
    return [
        NewJob(
            id=new_job_id(),  # time-ordered: index locality on a big table
            kind=r.plan.kind,
            target=r.plan.label,
            version=r.plan.version,
            cache_key=r.key,
            payload=r.payload,
            status=JobStatus.QUEUED if hit is None else JobStatus.SUCCEEDED,
            params=r.plan.params,
            cache_hit=hit is not None,
            priority=r.options.priority,
            tenant=r.options.tenant,
            idempotency_key=r.options.idempotency_key,
            deadline=r.options.deadline,
            blob_keys=blob_keys(r, hit),
        )
        for r, hit in zip(requests, cached, strict=True)
    ]


def outgoing_entries(rows: Sequence[NewJob], requests: Sequence[Request], sizes: Sequence[int],
                     namespace: str, reply_to: str) -> list[Outgoing]:
    """The message entries of the rows that must run (not the cache hits), with their queue."""
    out: list[Outgoing] = []
    for row, r, size in zip(rows, requests, sizes, strict=True):
        if row.cache_hit:
            continue
        first = r.plan.first
        wire = JobEntry(row.id, first.kind, first.target, first.version, r.input, row.cache_key,
                        first.params, reply_to, steps=r.plan.rest).to_wire(r.payload)
        out.append(Outgoing(queue_name(namespace, first.kind, first.target), r.options.priority,
                            wire, size, r.submitter))
    return out
