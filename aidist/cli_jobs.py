"""``aidist jobs``: list jobs, show one with every transition it went through, tail transitions
live. Reads Postgres only (``show`` also Redis, for a human's look at the result).

Rich tables for people; ``--json`` prints one JSON document (``ls``, ``show``) or one JSON line
per transition (``tail``) for scripts. The transitions come from ``job_events``, which triggers on
``jobs`` fill in the same statements as the state writes (migration 0007).
"""

from __future__ import annotations

import json
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Column, Table

from aidist.config import Settings
from aidist.errors import AidistError, InvalidInput
from aidist.jobs import JobStatus
from db.records import JobEvent, JobRecord
from db.store import JobStore
from producers import Client

jobs_app = typer.Typer(help="Inspect jobs recorded in Postgres: list, show, tail.",
                       no_args_is_help=True)

# As in aidist.cli: piped output gets wide lines, so ids are never wrapped.
out = Console(width=None if sys.stdout.isatty() else 200)

GAP_GRACE_S = 10.0  # how long a tail waits for a missing sequence number's transaction to commit
MAX_GAPS = 10_000
_AGO = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def _store(settings: Settings) -> JobStore:
    return JobStore.connect(settings.database_url, settings.connect_timeout_s)


def parse_when(value: str, now: datetime) -> datetime:
    """A point in time from ``10m``/``2h``/``3d`` ago (s, m, h, d, w), or an ISO 8601 time (local
    time unless it carries an offset)."""
    ago = _AGO.match(value)
    if ago:
        return now - timedelta(seconds=float(ago.group(1)) * _UNIT_S[ago.group(2)])
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError as exc:
        raise InvalidInput(f"{value!r} is neither a duration ago (30s, 10m, 2h, 1d, 1w) nor an "
                           "ISO time (2024-05-01T12:00 or with an offset)") from exc
    return moment if moment.tzinfo is not None else moment.astimezone()


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def job_json(record: JobRecord) -> dict[str, Any]:
    """A job record as JSON values (enums as strings, times in ISO 8601)."""
    values = asdict(record)
    for name, value in values.items():
        if isinstance(value, datetime):
            values[name] = value.isoformat()
    values["kind"], values["status"] = record.kind.value, record.status.value
    return values


def event_json(event: JobEvent) -> dict[str, Any]:
    """One transition as JSON values."""
    return {"seq": event.seq, "job_id": event.job_id, "target": event.target,
            "status": event.status.value, "at": event.at.isoformat(), "worker": event.worker,
            "attempt": event.attempt, "step": event.step}


def timings(record: JobRecord, history: Sequence[JobEvent]) -> tuple[float | None, float | None]:
    """(queue wait, run time) in seconds: created to its first run's start, and its last run's
    start (every pipeline step of that attempt included) to its end; None where it did not
    happen. Rows from before the history fall back on started_at (the last claim)."""
    runs = [e for e in history if e.status is JobStatus.RUNNING]
    first_start = runs[0].at if runs else record.started_at
    last_start = min((e.at for e in runs if e.attempt == runs[-1].attempt), default=None
                     ) if runs else record.started_at
    queue_s = (first_start - record.created_at).total_seconds() if first_start else None
    run_s = ((record.finished_at - last_start).total_seconds()
             if record.finished_at is not None and last_start is not None else None)
    return queue_s, run_s


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.3f} s"


@jobs_app.command("ls")
def jobs_ls(
    *,
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20,
    status: Annotated[JobStatus | None, typer.Option(help="Only this status.")] = None,
    target: Annotated[str | None, typer.Option(help="Only this model or op.")] = None,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's.")] = None,
    since: Annotated[str | None, typer.Option(
        help="Created at or after: 10m, 2h, 1d ago, or an ISO time.")] = None,
    until: Annotated[str | None, typer.Option(
        help="Created before: 10m, 2h, 1d ago, or an ISO time.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON list of jobs.")] = False,
) -> None:
    """List recent jobs, newest first, with per-status totals (of all jobs)."""
    now = datetime.now(UTC)
    since_at = parse_when(since, now) if since else None
    until_at = parse_when(until, now) if until else None
    store = _store(Settings())
    try:
        records = store.list_jobs(limit=limit, status=status, target=target, tenant=tenant,
                                  since=since_at, until=until_at)
        if as_json:
            print(json.dumps([job_json(r) for r in records]))
            return
        counts = store.count_by_status()
    finally:
        store.close()
    table = Table(Column("id", no_wrap=True), "kind", "target", "status", "attempts", "cache",
                  "created", "worker")
    for r in records:
        table.add_row(r.id, r.kind.value, r.target, r.status.value, str(r.attempts),
                      "hit" if r.cache_hit else "", f"{r.created_at:%Y-%m-%d %H:%M:%S}",
                      r.worker or "")
    out.print(table)
    out.print("  ".join(f"{s.value}: {n}" for s, n in counts.items()))


@jobs_app.command("show")
def jobs_show(
    job_id: Annotated[str, typer.Argument(help="Job id.")],
    as_json: Annotated[bool, typer.Option(
        "--json", help="One JSON object: the record, timings and its history (no result).")
    ] = False,
) -> None:
    """Show one job: its record, timings, every transition, its result if still cached.

    Transitions with status, time, worker, attempt and pipeline step; timings are the queue
    wait (insert to first claim) and the run time (start of the last attempt to its end)."""
    settings = Settings()
    store = _store(settings)
    with Client(settings, store=store) as client:  # closes the store
        record = store.get(job_id)
        history = store.history(job_id)
        queue_s, run_s = timings(record, history)
        if as_json:
            document = {**job_json(record), "queue_s": queue_s, "run_s": run_s,
                        "history": [{k: v for k, v in event_json(e).items()
                                     if k not in ("seq", "job_id", "target")}
                                    for e in history]}
            print(json.dumps(document))
            return
        table = Table("field", "value", show_header=False)
        for name in ("id", "kind", "target", "version", "status", "attempts", "cache_hit",
                     "priority", "tenant", "deadline", "created_at", "started_at", "finished_at",
                     "worker", "error", "follows", "params", "cache_key"):
            value = getattr(record, name)
            table.add_row(name, "" if value is None else str(getattr(value, "value", value)))
        table.add_row("queue wait", _seconds(queue_s))
        table.add_row("run time", _seconds(run_s))
        if record.status is JobStatus.SUCCEEDED:
            try:
                result = client.results_of([client.get(job_id)])[0]
                text = json.dumps(_jsonable(result))
                table.add_row("result", text if len(text) < 400 else text[:400] + " ...")
            except AidistError as exc:
                table.add_row("result", str(exc))
    out.print(table)
    events = Table("at", "status", "worker", "attempt", "step", title="history")
    for e in history:
        events.add_row(f"{e.at:%Y-%m-%d %H:%M:%S.%f}"[:-3], e.status.value, e.worker or "",
                       str(e.attempt), str(e.step))
    out.print(events if history else "history: none recorded (a job from before migration 0007)")


@jobs_app.command("cancel")
def jobs_cancel(
    job_ids: Annotated[list[str], typer.Argument(help="Job ids (`aidist jobs ls`).")],
) -> None:
    """Cancel jobs that have not finished: a queued job never runs, a running one is dropped at
    the next batch boundary (its output neither reported nor cached). What to use instead of
    `celery revoke` or Flower's Revoke button, which act on messages, not jobs."""
    with Client(Settings()) as client:
        for job_id in job_ids:
            job = client.get(job_id)
            before = job.status()
            if before.terminal:
                out.print(f"{job_id} {before.value} (had finished)")
                continue
            job.cancel()
            out.print(f"{job_id} {job.status().value}")


def _jsonable(value: Any) -> Any:
    tolist = getattr(value, "tolist", None)  # numpy arrays, without importing numpy here
    if callable(tolist):
        return tolist()
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


class EventFollower:
    """Reads ``job_events`` in seq order, each event once, none skipped: a seq is taken when its
    row is written but seen when its transaction commits, so a lower one may show up after a
    higher one (two workers finishing batches at once). A seq jumped over is asked for again for
    ``grace_s`` (a rolled-back statement's seqs never come)."""

    def __init__(self, read: Callable[[int, int, Sequence[int]], list[JobEvent]], after: int,
                 grace_s: float = GAP_GRACE_S, batch: int = 1000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.read, self.cursor, self.grace_s, self.batch = read, after, grace_s, batch
        self.clock = clock
        self.gaps: dict[int, float] = {}  # seq -> when to stop waiting for it

    def poll(self) -> list[JobEvent]:
        """The events that became visible since the last poll, in seq order."""
        now = self.clock()
        self.gaps = {seq: until for seq, until in self.gaps.items() if until > now}
        fresh: list[JobEvent] = []
        for event in self.read(self.cursor, self.batch, sorted(self.gaps)):
            if event.seq in self.gaps:
                del self.gaps[event.seq]
            elif event.seq > self.cursor:
                for missing in range(max(self.cursor + 1, event.seq - MAX_GAPS), event.seq):
                    self.gaps[missing] = now + self.grace_s
                self.cursor = event.seq
            else:
                continue
            fresh.append(event)
        if len(self.gaps) > MAX_GAPS:  # keep the newest: older ones are the likeliest lost
            self.gaps = dict(sorted(self.gaps.items())[-MAX_GAPS:])
        return fresh


@contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGINT (Ctrl-C) or SIGTERM, the previous handlers back afterwards."""
    stop = threading.Event()

    def handle(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _event_line(event: JobEvent) -> str:
    worker = f" on {event.worker}" if event.worker else ""
    step = f" step {event.step}" if event.step else ""
    return (f"{event.at:%Y-%m-%d %H:%M:%S.%f}"[:-3] + f"  {event.job_id}  {event.target or '?'}"
            f"  {event.status.value}  attempt {event.attempt}{step}{worker}")


@jobs_app.command("tail")
def jobs_tail(
    *,
    target: Annotated[str | None, typer.Option(help="Only this model's or op's jobs.")] = None,
    status: Annotated[JobStatus | None, typer.Option(
        help="Only transitions into this status.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON line per transition.")
                       ] = False,
    from_start: Annotated[bool, typer.Option(
        help="Begin with the oldest recorded transition (default: those from now on).")
    ] = False,
    limit_events: Annotated[int | None, typer.Option(
        help="Stop after printing this many transitions.")] = None,
    interval: Annotated[float, typer.Option(help="Seconds between looks at Postgres.")] = 0.5,
) -> None:
    """Print transitions of jobs as they happen, one line each.

    Runs until Ctrl-C or SIGTERM (exit status 0), or until --limit-events were printed."""
    store = _store(Settings())
    printed = 0
    try:
        with _stop_on_signals() as stop:
            start = 0 if from_start else store.last_event_seq()
            follower = EventFollower(store.events_after, start)
            print(f"following job transitions after #{start} (Ctrl-C to stop)", file=sys.stderr,
                  flush=True)
            while not stop.is_set() and (limit_events is None or printed < limit_events):
                events = follower.poll()
                for event in events:
                    if (target is not None and event.target != target) or (
                            status is not None and event.status is not status):
                        continue
                    print(json.dumps(event_json(event)) if as_json else _event_line(event),
                          flush=True)
                    printed += 1
                    if limit_events is not None and printed >= limit_events:
                        break
                if len(events) < follower.batch:  # caught up: look again in a while
                    stop.wait(interval)
    finally:
        store.close()
