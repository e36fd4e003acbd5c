"""The harness that runs the executor over ``aidist.testing``'s in-memory store, cache and broker
(no I/O), and doubles of a received kombu message and the consumer's timers.

``Store`` and ``Cache`` are the shipped doubles plus what these tests read of them: statuses and
attempts by job id, the outcome that ended each run, every claim call, the TTL of every results
write. Every write of the store and the cache lands in one timeline, ``Harness.events``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import timedelta
from typing import Any, Generic, TypeVar

from aidist import codec
from aidist.config import Settings
from aidist.jobs import JobKind, JobStatus, cache_key
from aidist.testing import InMemoryBroker, InMemoryCache, InMemoryStack, InMemoryStore
from db import Claim, ClaimRequest, JobRecord, Outcome
from models import LoadContext, ModelSpec, Registry, Runner, build_registry
from workers.executor import BatchReport, execute

TTL_S = 321
T = TypeVar("T")


def wait_until(condition: Callable[[], object], timeout_s: float = 10.0) -> bool:
    """Whether ``condition()`` turned true within ``timeout_s`` (looked at every millisecond):
    the tests' wait on a condition with a deadline, never a sleep for synchronisation."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return bool(condition())
        time.sleep(0.001)
    return True


class Column(Mapping[str, T], Generic[T]):
    """One field of every row, by job id, read live from the store (change it with
    ``store.set_state``)."""

    def __init__(self, store: InMemoryStore, read: Callable[[JobRecord], T]) -> None:
        self._store = store
        self._read = read

    def __getitem__(self, job_id: str) -> T:
        found = self._store.get_many([job_id])
        if job_id not in found:
            raise KeyError(job_id)
        return self._read(found[job_id])

    def __iter__(self) -> Iterator[str]:
        return iter(self._store.ids())

    def __len__(self) -> int:
        return len(self._store.ids())


class Store(InMemoryStore):
    """The shipped in-memory store, plus what the executor's tests look at."""

    def __init__(self, events: list[str]) -> None:
        super().__init__(journal=events)
        self.status: Column[JobStatus] = Column(self, lambda record: record.status)
        self.attempts: Column[int] = Column(self, lambda record: record.attempts)
        self.claim_calls: list[tuple[list[str], str]] = []
        self.finished: dict[str, Outcome] = {}

    def claim(self, requests: Sequence[ClaimRequest], worker: str,
              max_attempts: int = 8) -> list[Claim]:
        self.claim_calls.append(([r.id for r in requests], worker))
        return super().claim(requests, worker, max_attempts)

    def finish_returning(self, outcomes: Sequence[Outcome]) -> set[str]:
        changed = super().finish_returning(outcomes)
        self.finished.update((o.id, o) for o in outcomes if o.id in changed)
        return changed


class Cache(InMemoryCache):
    """The shipped in-memory cache, plus the TTL of every results write, in order."""

    def __init__(self, events: list[str]) -> None:
        super().__init__(journal=events)
        self.ttls: list[int] = []
        self.looks: list[list[str]] = []  # the cache keys of each look before a run

    def put_many(self, results: Mapping[str, bytes], ttl_s: int) -> None:
        self.ttls.append(ttl_s)
        super().put_many(results, ttl_s)

    def results_and_cancelled(self, cache_keys: Sequence[str], job_ids: Sequence[str]
                              ) -> tuple[list[bytes | None], set[str]]:
        self.looks.append(list(cache_keys))
        return super().results_and_cancelled(cache_keys, job_ids)


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
    """A WorkerRuntime over the in-memory doubles, plus helpers to build wire entries the store
    knows."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.store = Store(self.events)
        self.cache = Cache(self.events)
        self.broker = InMemoryBroker()
        self.registry: Registry = build_registry(["tests.plugins"])
        self.recorder = Recorder()
        self.registry.register(ModelSpec(name="recorder", kind=JobKind.INFER,
                                         loader=self.recorder.load, version="rec-1",
                                         max_batch_size=3))
        self.stack = InMemoryStack(Settings(result_ttl_s=TTL_S), registry=self.registry,
                                   store=self.store, cache=self.cache, broker=self.broker,
                                   journal=self.events, worker_name="test-worker")
        self.runtime = self.stack.runtime()

    def entry(self, target: str, text: str, *, reply_to: str | None = "client-a",
              params: dict[str, Any] | None = None, version: str | None = None,
              known: bool = True, expired: bool = False) -> dict[str, Any]:
        job_id = str(uuid.uuid4())
        version = version if version is not None else self.registry.version(target)
        key = cache_key(JobKind.INFER, target, version, params, text.encode())
        if known:
            deadline = self.store.clock() - timedelta(seconds=1) if expired else None
            self.store.add(job_id, target=target, version=version, cache_key=key,
                           payload=codec.encode(text), params=params, deadline=deadline)
        return {"v": 1, "id": job_id, "kind": "infer", "target": target, "version": version,
                "input": text, "key": key, "params": params or {}, "reply_to": reply_to}

    def run(self, entries: Any) -> BatchReport:
        return execute(self.runtime, entries)

    def result(self, entry: dict[str, Any]) -> Any:
        return codec.decode(self.cache.results[entry["key"]])

    def outcome(self, entry: dict[str, Any]) -> Outcome:
        return self.store.finished[entry["id"]]


class Message:
    """What the batcher uses of a kombu message: decode(), ack(), reject(requeue),
    delivery_info."""

    def __init__(self, body: Any, log: list[str], name: str) -> None:
        self.body = body
        self.log = log
        self.name = name
        self.delivery_info: dict[str, Any] = {}  # {"redelivered": True} for a redelivery

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
