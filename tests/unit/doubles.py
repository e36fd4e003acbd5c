"""In-memory doubles of our own store and cache interfaces, and a harness that runs the executor
over them (no I/O), and of a received kombu message and the consumer's timers.

The doubles implement ``db.store.JobStore.claim/finish/existing/holders`` and
``db.cache.ResultCache.get_many/put_many/notify/alive_among`` with the same semantics: claim starts
queued jobs, takes over running ones only for a redelivery at the same step, continues a pipeline
only from the run that forwarded it, returns expired claims for jobs past their deadline, nothing
for finished ones.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from aidist import codec
from aidist.config import Settings
from aidist.jobs import JobKind, JobStatus, cache_key
from db import Claim, ClaimRequest, Notice, Outcome
from models import LoadContext, ModelSpec, Registry, Runner, build_registry
from workers.executor import BatchReport, execute
from workers.runtime import WorkerRuntime

TTL_S = 321


class FakeStore:
    """The claim/finish half of ``db.store.JobStore``, in memory, with attempt fencing."""

    def __init__(self, events: list[str]) -> None:
        self.events = events
        self.status: dict[str, JobStatus] = {}
        self.attempts: dict[str, int] = {}
        self.steps: dict[str, int] = {}
        self.workers: dict[str, str] = {}
        self.past_deadline: set[str] = set()
        self.claim_calls: list[tuple[list[str], str]] = []
        self.finished: dict[str, Outcome] = {}

    def add(self, job_id: str, *, status: JobStatus = JobStatus.QUEUED, attempts: int = 0,
            expired: bool = False) -> None:
        self.status[job_id] = status
        self.attempts[job_id] = attempts
        if expired:
            self.past_deadline.add(job_id)

    def _may_claim(self, request: ClaimRequest) -> bool:
        status, step = self.status.get(request.id), self.steps.get(request.id, 0)
        if request.step == 0:
            return status is JobStatus.QUEUED or (
                request.takeover and status is JobStatus.RUNNING and step == 0)
        return (status is JobStatus.RUNNING and self.attempts[request.id] == request.attempt
                and (step == request.step - 1 or (request.takeover and step == request.step)))

    def claim(self, requests: Sequence[ClaimRequest], worker: str,
              max_attempts: int = 8) -> list[Claim]:
        self.events.append("claim")
        self.claim_calls.append(([r.id for r in requests], worker))
        claims = []
        for request in requests:
            if not self._may_claim(request):
                continue
            job_id = request.id
            counts = request.takeover or request.step == 0
            out_of_attempts = counts and self.attempts[job_id] >= max_attempts
            self.attempts[job_id] += 1 if counts else 0
            self.steps[job_id] = request.step
            self.workers[job_id] = worker
            new = (JobStatus.EXPIRED if job_id in self.past_deadline
                   else JobStatus.FAILED if out_of_attempts else JobStatus.RUNNING)
            self.status[job_id] = new
            claims.append(Claim(job_id, new, self.attempts[job_id]))
        return claims

    def existing(self, job_ids: Sequence[str]) -> set[str]:
        return {job_id for job_id in job_ids if job_id in self.status}

    def holders(self, job_ids: Sequence[str], other_than: str) -> dict[str, str]:
        return {job_id: self.workers[job_id] for job_id in job_ids
                if self.status.get(job_id) is JobStatus.RUNNING
                and self.workers.get(job_id, other_than) != other_than}

    def finish(self, outcomes: Sequence[Outcome]) -> int:
        return len(self.finish_returning(outcomes))

    def finish_returning(self, outcomes: Sequence[Outcome]) -> set[str]:
        self.events.append("finish")
        changed = set()
        for outcome in outcomes:
            assert outcome.status.terminal, outcome
            if (self.status.get(outcome.id) is JobStatus.RUNNING
                    and self.attempts[outcome.id] == outcome.attempt):
                self.status[outcome.id] = outcome.status
                self.finished[outcome.id] = outcome
                changed.add(outcome.id)
        return changed

    def close(self) -> None:
        self.events.append("store.close")


class FakeCache:
    """The put_many/notify half of ``db.cache.ResultCache``, in memory."""

    def __init__(self, events: list[str]) -> None:
        self.events = events
        self.results: dict[str, bytes] = {}
        self.ttls: list[int] = []
        self.notices: dict[str, list[Notice]] = {}
        self.alive: set[str] = set()

    def get_many(self, cache_keys: Sequence[str]) -> list[bytes | None]:
        return [self.results.get(key) for key in cache_keys]

    def alive_among(self, runners: Sequence[str]) -> set[str]:
        return {runner for runner in runners if runner in self.alive}

    def put_many(self, results: Mapping[str, bytes], ttl_s: int) -> None:
        self.events.append("put_many")
        self.results.update(results)
        self.ttls.append(ttl_s)

    def notify(self, notices: Mapping[str, Sequence[Notice]]) -> None:
        self.events.append("notify")
        for reply_to, items in notices.items():
            self.notices.setdefault(reply_to, []).extend(items)

    def close(self) -> None:
        self.events.append("cache.close")


class Recorder:
    """A plugin-like model that records every call (inputs, params) and counts loads."""

    def __init__(self) -> None:
        self.loads = 0
        self.calls: list[tuple[list[Any], dict[str, Any]]] = []

    def load(self, context: LoadContext) -> Runner:
        self.loads += 1

        def run(inputs: Sequence[Any], params: dict[str, Any]) -> list[Any]:
            self.calls.append((list(inputs), dict(params)))
            return [f"{text}:{params.get('tag', '')}" for text in inputs]

        return run

    @property
    def inputs(self) -> list[Any]:
        return [item for inputs, _ in self.calls for item in inputs]


class Harness:
    """A WorkerRuntime over the fakes, plus helpers to build wire entries the store knows."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.store = FakeStore(self.events)
        self.cache = FakeCache(self.events)
        self.registry: Registry = build_registry(["tests.plugins"])
        self.recorder = Recorder()
        self.registry.register(ModelSpec(name="recorder", kind=JobKind.INFER,
                                         loader=self.recorder.load, version="rec-1",
                                         max_batch_size=3))
        self.runtime = WorkerRuntime(
            settings=Settings(result_ttl_s=TTL_S),
            registry=self.registry,
            store=self.store,  # type: ignore[arg-type]
            cache=self.cache,  # type: ignore[arg-type]
            context=LoadContext(),
            name="test-worker",
        )

    def entry(self, target: str, text: str, *, reply_to: str | None = "client-a",
              params: dict[str, Any] | None = None, version: str | None = None,
              known: bool = True, expired: bool = False) -> dict[str, Any]:
        job_id = str(uuid.uuid4())
        version = version if version is not None else self.registry.version(target)
        key = cache_key(JobKind.INFER, target, version, params, text.encode())
        if known:
            self.store.add(job_id, expired=expired)
        return {"v": 1, "id": job_id, "kind": "infer", "target": target, "version": version,
                "input": text, "key": key, "params": params or {}, "reply_to": reply_to}

    def run(self, entries: Any) -> BatchReport:
        return execute(self.runtime, entries)

    def result(self, entry: dict[str, Any]) -> Any:
        return codec.decode(self.cache.results[entry["key"]])

    def outcome(self, entry: dict[str, Any]) -> Outcome:
        return self.store.finished[entry["id"]]


class Message:
    """What the batcher uses of a kombu message: decode(), ack(), reject(requeue)."""

    def __init__(self, body: Any, log: list[str], name: str) -> None:
        self.body = body
        self.log = log
        self.name = name

    def decode(self) -> Any:
        return self.body

    def ack(self) -> None:
        self.log.append(f"ack {self.name}")

    def reject(self, requeue: bool = False) -> None:
        self.log.append(f"reject {self.name} requeue={requeue}")


class Timers:
    """A manual clock for call_after: tests fire pending timers themselves."""

    def __init__(self) -> None:
        self.pending: list[tuple[float, Callable[[], None], Entry]] = []

    def call_after(self, delay: float, fn: Callable[[], None]) -> Entry:
        entry = Entry()
        self.pending.append((delay, fn, entry))
        return entry

    def fire(self) -> None:
        live = [(d, fn, e) for d, fn, e in self.pending if not e.cancelled]
        self.pending = []
        for _, fn, _ in live:
            fn()

    @property
    def live(self) -> list[float]:
        return [d for d, _, e in self.pending if not e.cancelled]


class Entry:
    cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
