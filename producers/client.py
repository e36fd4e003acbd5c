"""The synchronous client: validate, consult the cache, record, publish packed, wait, read
results."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from typing import Any, cast

from aidist import codec
from aidist.config import Settings
from aidist.errors import (
    IdempotencyConflict,
    InvalidInput,
    JobTimeout,
)
from aidist.jobs import (
    JobKind,
    JobStatus,
    Step,
    cache_key,
    pipeline_key,
)
from aidist.transport import JobPublisher, Publisher
from db import JobStore, ResultCache
from db.blob_base import BlobStore
from db.blobs import live, open_blob_store_for
from db.interfaces import JobStoreLike, ResultCacheLike
from models import ModelInfo, ModelSpec, Registry, build_registry
from producers.grouping import GroupSubmitter
from producers.job import Job, raise_for_status
from producers.outbox import SentMarker, mark_after
from producers.payloads import offload
from producers.progress import job_progress
from producers.publishing import RecordedJobPublisher
from producers.reading import ResultReader
from producers.recompute import Recomputer
from producers.rows import new_rows, outgoing_entries
from producers.sender import BackgroundSender
from producers.submission import (
    Deadline,
    Plan,
    Plans,
    Request,
    SubmitOptions,
    entry_sizes,
    slices,
    submit_options,
    submitter,
)
from producers.waiting import CompletionTracker

log = logging.getLogger("aidist.client")


class Client:
    """Submit inference and preprocessing jobs and get their results.

    ``Client()`` reads settings from ``AIDIST_*`` variables or ``.env``; connections open on first
    use, and a service that cannot be reached raises ``ServiceUnavailable`` within the connect
    timeout. ``store``, ``cache``, ``publisher`` and ``blobs`` replace the Postgres, Redis,
    RabbitMQ and blob-store ones (``aidist.testing`` has in-memory doubles of all four).
    Single submissions return once recorded and are published from a thread of the client's
    (``producers.sender``); ``background_publish=False`` publishes them before ``infer``
    returns, as ``aidist.testing``'s clients do so a test sees the message at once.
    """

    def __init__(self, settings: Settings | None = None, *, registry: Registry | None = None,
                 store: JobStoreLike | None = None, cache: ResultCacheLike | None = None,
                 publisher: JobPublisher | None = None, blobs: BlobStore | None = None,
                 background_publish: bool = True):
        self.settings = settings or Settings()
        self.registry = registry or build_registry(
            self.settings.plugins, max_input_chars=self.settings.max_input_chars
        )
        timeout = self.settings.connect_timeout_s
        self.store: JobStoreLike = store if store is not None else JobStore.connect(
            self.settings.database_url, timeout)
        self.cache: ResultCacheLike = cache if cache is not None else ResultCache.connect(
            self.settings.redis_url, self.settings.namespace, timeout)
        self.publisher: JobPublisher = publisher if publisher is not None else Publisher(
            self.settings.broker_url, self.settings.namespace, timeout)
        self.blobs: BlobStore = blobs if blobs is not None else open_blob_store_for(
            self.settings)
        self.client_id = uuid.uuid4().hex
        self.tracker = CompletionTracker(
            self.cache, self.store, self.cache.reply_key(self.client_id)
        )
        self._plans = Plans(self.tracker.reply_to)
        self._group: GroupSubmitter[Request, Job] = GroupSubmitter(self._enqueue_singles)
        self.sent = SentMarker(self.store, after_s=mark_after(self.settings.sweep_after_s),
                               unfinished=self.tracker.unfinished)
        self.publishing = RecordedJobPublisher(self.settings, self.publisher, self.store,
                                               self.sent, self.tracker)
        self.sender = BackgroundSender(self.publishing.publish, self.sent.add,
                                       self.publishing.refused, inline=not background_publish)
        self._reader = ResultReader(
            self.tracker, self.cache, self.store, self.blobs,
            Recomputer(self.store, self.cache, self.registry, self._enqueue_requests,
                       self.as_completed),
            result_ttl_s=self.settings.result_ttl_s)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Publish what single submissions recorded, mark what was published as sent, close
        connections to RabbitMQ, Redis, Postgres and the blob store."""
        self.sender.close()
        self.sent.close()
        self.publisher.close()
        self.cache.close()
        self.store.close()
        self.blobs.close()

    # -- submitting -------------------------------------------------------------------------------

    def infer(self, model: str, input: Any, params: dict[str, Any] | None = None, *,
              priority: int = 0, deadline: Deadline = None, idempotency_key: str | None = None,
              tenant: str | None = None) -> Job:
        """Run ``model`` on one input. A retry with the same ``idempotency_key`` (per tenant)
        gets the first job back; the key reused for another model, params or input raises
        ``IdempotencyConflict``."""
        options = submit_options(priority, deadline, idempotency_key, tenant)
        return self._submit(JobKind.INFER, model, [input], params, options)[0]

    def preprocess(self, op: str, input: Any, params: dict[str, Any] | None = None, *,
                   priority: int = 0, deadline: Deadline = None,
                   idempotency_key: str | None = None, tenant: str | None = None) -> Job:
        """Run preprocessing ``op`` on one input (``idempotency_key`` as for ``infer``)."""
        options = submit_options(priority, deadline, idempotency_key, tenant)
        return self._submit(JobKind.PREPROCESS, op, [input], params, options)[0]

    def infer_many(self, model: str, inputs: Iterable[Any], params: dict[str, Any] | None = None,
                   *, priority: int = 0, deadline: Deadline = None,
                   tenant: str | None = None) -> list[Job]:
        """One job per input, in input order; inserted in one statement, published packed."""
        options = submit_options(priority, deadline, None, tenant)
        return self._submit(JobKind.INFER, model, list(inputs), params, options)

    def preprocess_many(self, op: str, inputs: Iterable[Any], params: dict[str, Any] | None = None,
                        *, priority: int = 0, deadline: Deadline = None,
                        tenant: str | None = None) -> list[Job]:
        """``infer_many`` for a preprocessing op."""
        options = submit_options(priority, deadline, None, tenant)
        return self._submit(JobKind.PREPROCESS, op, list(inputs), params, options)

    def submit_many(self, target: str, inputs: Iterable[Any],
                    params: dict[str, Any] | None = None, *, priority: int = 0,
                    deadline: Deadline = None, tenant: str | None = None) -> list[Job]:
        """``infer_many`` or ``preprocess_many``, whichever ``target`` is registered as."""
        kind = self.registry.get(target).kind
        options = submit_options(priority, deadline, None, tenant)
        return self._submit(kind, target, list(inputs), params, options)

    def pipeline(self, steps: Sequence[str], input: Any,
                 params: dict[str, dict[str, Any]] | None = None, *, priority: int = 0,
                 deadline: Deadline = None, tenant: str | None = None) -> Job:
        """One job that runs ``steps`` in order on the workers, each step's output feeding the
        next, with no round trip to the client: ``client.pipeline(["chunk", "minilm"], doc,
        {"chunk": {"size": 64}})`` chunks on the cpu pool, embeds every chunk on the gpu pool
        (batched with other jobs) and returns the list of vectors. A step that returns a list
        feeds the next step item by item. ``params`` maps step names to their params."""
        return self.pipeline_many(steps, [input], params, priority=priority, deadline=deadline,
                                  tenant=tenant)[0]

    def pipeline_many(self, steps: Sequence[str], inputs: Iterable[Any],
                      params: dict[str, dict[str, Any]] | None = None, *, priority: int = 0,
                      deadline: Deadline = None, tenant: str | None = None) -> list[Job]:
        """``pipeline`` for many inputs, one job each, inserted and published packed."""
        options = submit_options(priority, deadline, None, tenant)
        names = list(steps)
        if len(names) < 2:
            raise InvalidInput("a pipeline has at least two steps; use infer or preprocess")
        specs = [self.registry.get(name) for name in names]
        params = params or {}
        if not isinstance(params, dict) or set(params) - set(names):
            raise InvalidInput(f"pipeline params must map step names ({names}) to params")
        chain = tuple(
            Step(spec.kind, spec.name, self.registry.version(spec.name),
                 self.registry.validate_params(spec, params.get(spec.name)))
            for spec in specs
        )
        items = self._checked_inputs(specs[0], list(inputs))
        payloads = [codec.encode(value) for value in items]
        plan = Plan(
            kind=chain[-1].kind,
            label=">".join(names),
            version="|".join(step.version for step in chain)[:128],
            params={"steps": [step.to_wire() for step in chain]},
            first=chain[0],
            rest=chain[1:],
        )
        return self._enqueue(plan, items, payloads,
                             [pipeline_key(list(chain), p) for p in payloads], options)

    def _submit(self, kind: JobKind, target: str, inputs: list[Any],
                params: dict[str, Any] | None, options: SubmitOptions, *,
                in_slices: bool = False) -> list[Job]:
        """Validate every input, then record and publish the jobs: all in one go, or
        ``in_slices`` (``producers.submission.slices``: the first slice is published before the
        next is written, so workers start at once; a call that fails part-way leaves the slices
        before it submitted)."""
        spec = self.registry.get(target, kind)
        checked = self.registry.validate_params(spec, params)
        items = self._checked_inputs(spec, inputs)
        version = self.registry.version(target)
        plan = self._plans.single(kind, target, version, checked)
        jobs: list[Job] = []
        for start, stop in slices(len(items)) if in_slices else [(0, len(items))]:
            part = items[start:stop]
            payloads = [codec.encode(value) for value in part]
            keys = [cache_key(kind, target, version, checked, payload) for payload in payloads]
            jobs.extend(self._enqueue(plan, part, payloads, keys, options))
        return jobs

    def _submit_for_outputs(self, target: str, inputs: list[Any], params: dict[str, Any] | None,
                            priority: int, tenant: str | None) -> list[Job]:
        """``map``'s and ``imap``'s jobs, submitted in slices. Slicing is safe here as it is not
        for ``submit_many``, whose caller gets every job or none: these calls return outputs,
        and if one raises part-way, the jobs it had submitted still run and cache their results,
        so the same call again takes those from the cache."""
        kind = self.registry.get(target).kind
        return self._submit(kind, target, inputs, params,
                            submit_options(priority, None, None, tenant), in_slices=True)

    def _checked_inputs(self, spec: ModelSpec, inputs: list[Any]) -> list[Any]:
        if not inputs:
            raise InvalidInput("no inputs given; pass at least one")
        if len(inputs) > self.settings.max_jobs_per_call:
            raise InvalidInput(
                f"{len(inputs)} inputs in one call, "
                f"the limit is {self.settings.max_jobs_per_call}; "
                "submit in slices or raise AIDIST_MAX_JOBS_PER_CALL"
            )
        for value in inputs:
            self.registry.validate_input(spec, value)
        return inputs

    def _enqueue(self, plan: Plan, inputs: list[Any], payloads: list[bytes], keys: list[str],
                 options: SubmitOptions) -> list[Job]:
        who = submitter()
        requests = [Request(plan, value, payload, key, options, who)
                    for value, payload, key in zip(inputs, payloads, keys, strict=True)]
        if len(requests) == 1 and options.idempotency_key is None:
            return [self._group.submit(requests[0])]
        return self._enqueue_requests(requests)

    def _enqueue_singles(self, requests: list[Request]) -> list[Job]:
        """Concurrent single submissions (a group commit): recorded here, published by the
        background sender (``producers.sender``), packed with other calls' jobs."""
        return self._enqueue_requests(requests, background=True)

    def _enqueue_requests(self, requests: list[Request], background: bool = False) -> list[Job]:
        """Cache lookup, large inputs to the blob store, one INSERT for every row, packed
        confirmed publishing of the misses (``background``: by the sender's thread)."""
        self.publisher.connect()  # a down broker fails here, before anything is written
        cached = live(self.blobs, self.cache.get_many([r.key for r in requests]))
        # Before any row: a blob store that is down fails the call with nothing written.
        requests = offload(self.blobs, requests, self.settings.inline_max_bytes)
        sizes = entry_sizes(requests, cached, self._plans, self.settings.max_message_bytes)
        rows = new_rows(requests, cached)
        if rows[0].idempotency_key is not None:
            existing = self.store.insert_idempotent(rows[0])
            if existing is not None:
                # A retry of the same submission gets the first job; the same key for other work
                # (the cache key covers model or op, version, params and input) is a caller's
                # bug that returning the first job would hide, so it is refused, as payment APIs
                # do. Either way nothing was written and nothing is sent.
                if existing.cache_key != rows[0].cache_key:
                    raise IdempotencyConflict(rows[0].idempotency_key, existing.id)
                return [Job(self, existing.id, existing.kind, existing.target, existing.cache_key)]
        else:
            self.store.insert_jobs(rows)
        for row, hit in zip(rows, cached, strict=True):
            if row.cache_hit and hit is not None:  # its result, in hand: no second read
                self.tracker.record(row.id, JobStatus.SUCCEEDED,
                                    result=None if codec.as_blob_ref(hit) else hit)
        outgoing = outgoing_entries(rows, requests, sizes, self.settings.namespace,
                                    self.tracker.reply_to)
        if background:
            self.sender.send(outgoing)
        else:
            self.publishing.publish_now(outgoing)
        return [Job(self, row.id, r.plan.kind, r.plan.label, row.cache_key)
                for row, r in zip(rows, requests, strict=True)]

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until every single submission made so far is published (they are sent from a
        thread of the client's own, after ``infer`` returns); False if ``timeout`` passed first.
        Not needed for correctness: a recorded job is published in any case."""
        return self.sender.wait_sent(timeout)

    # -- waiting and results ----------------------------------------------------------------------

    def get(self, job_id: str) -> Job:
        """A handle on an existing job (``UnknownJob`` if there is none)."""
        record = self.store.get(job_id)
        if record.status.terminal:
            self.tracker.record(record.id, record.status, record.error)
        return Job(self, record.id, record.kind, record.target, record.cache_key)

    def as_completed(self, jobs: Sequence[Job], timeout: float | None = None) -> Iterator[Job]:
        """Yield jobs as they finish (any terminal status). ``JobTimeout`` if some are still
        unfinished after ``timeout`` seconds."""
        by_id = {job.id: job for job in jobs}
        seen = 0
        for finished in self.tracker.iter_finished(list(by_id), timeout):
            seen += 1
            yield by_id[finished.job_id]
        if seen < len(by_id):
            late = next(j for j in jobs if self.tracker.known(j.id) is None)
            raise JobTimeout(late.id, timeout or 0.0, late.status().value)

    def results_of(self, jobs: Sequence[Job], timeout: float | None = 300.0) -> list[Any]:
        """Results of jobs, in order, read in one round trip once they have all ended (waiting up
        to ``timeout``, else ``JobTimeout``); raises for the first job that failed, was
        cancelled or expired. A result that has left Redis (TTL, eviction, a
        flushed or restarted Redis) is recomputed from the input kept in Postgres, by the same
        model version, within ``timeout``; if the model has changed since, ``ResultUnavailable``."""
        unfinished = [job for job in jobs if self.tracker.known(job.id) is None]
        if unfinished:  # wait for them first: a result is only read once its job has ended
            for _ in self.as_completed(unfinished, timeout=timeout):
                pass
        statuses = []
        for job in jobs:
            finished = self.tracker.known(job.id)
            if finished is None:
                record = self.store.get(job.id)
                statuses.append((record.status, record.error))
            else:
                statuses.append((finished.status, finished.error))
        for job, (status, error) in zip(jobs, statuses, strict=True):
            raise_for_status(job.id, status, error)
        return [codec.decode(data) for data in self._reader.read(jobs, timeout)]

    def map(self, target: str, inputs: Iterable[Any], params: dict[str, Any] | None = None, *,
            progress: bool = False, timeout: float | None = None, priority: int = 0,
            tenant: str | None = None) -> list[Any]:
        """Submit one job per input and return the outputs in input order, with an optional Rich
        progress bar. Raises the first job's error if any failed. The jobs are written and
        published in slices (256, then doubling), so workers start on the first while the rest
        are written; if a service fails part-way, the jobs already submitted still run and cache
        their results, and calling ``map`` again takes those from the cache."""
        jobs = self._submit_for_outputs(target, list(inputs), params, priority, tenant)
        if progress:
            with job_progress() as bar:
                task = bar.add_task(f"{target}", total=len(jobs))
                for _ in self.as_completed(jobs, timeout=timeout):
                    bar.advance(task)
        else:
            for _ in self.as_completed(jobs, timeout=timeout):
                pass
        return self.results_of(jobs)

    def imap(self, target: str, inputs: Iterable[Any], params: dict[str, Any] | None = None,
             *, timeout: float | None = None, priority: int = 0,
             tenant: str | None = None) -> Iterator[Any]:
        """Like ``map``, but yields each output in input order as soon as it and every output
        before it are done, so a consumer can start on the first results while the rest run."""
        jobs = self._submit_for_outputs(target, list(inputs), params, priority, tenant)
        position = {job.id: index for index, job in enumerate(jobs)}
        done = [False] * len(jobs)
        next_index = 0
        for finished in self.as_completed(jobs, timeout=timeout):
            done[position[finished.id]] = True
            end = next_index
            while end < len(jobs) and done[end]:
                end += 1
            if end > next_index:
                yield from self.results_of(jobs[next_index:end])
                next_index = end

    def models(self) -> list[ModelInfo]:
        """What is registered (name, version, kind, pool, device) and, from the workers'
        heartbeats, which workers have each one loaded or failed to load."""
        loaded: dict[str, list[str]] = {}
        failed: dict[str, list[str]] = {}
        for presence in self.cache.presences():
            where = f"{presence.get('node')} ({presence.get('device')})"
            for name in cast(list[str], presence.get("ready", [])):
                loaded.setdefault(name, []).append(where)
            for name in cast(dict[str, str], presence.get("not_ready", {})):
                failed.setdefault(name, []).append(where)
        return [
            replace(info, loaded_on=tuple(sorted(loaded.get(info.name, []))),
                    not_ready_on=tuple(sorted(failed.get(info.name, []))))
            for info in self.registry.info(self.settings.device)
        ]
