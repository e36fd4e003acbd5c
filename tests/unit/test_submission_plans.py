"""A client's plan book: one plan per model, version and params, its entry overhead measured once
and equal to what a real entry of it takes besides its input."""

from __future__ import annotations

import msgpack

from aidist import codec
from aidist.ids import new_job_id
from aidist.jobs import JobEntry, JobKind, Step, cache_key
from producers.submission import PLANS_KEPT, Plan, Plans, Request, SubmitOptions, entry_sizes


def _entry_bytes_besides_input(plan: Plan, text: str, reply_to: str) -> tuple[int, bytes]:
    payload = codec.encode(text)
    key = cache_key(plan.kind, plan.label, plan.version, plan.params, payload)
    first = plan.first
    wire = JobEntry(new_job_id(), first.kind, first.target, first.version, text, key,
                    first.params, reply_to, steps=plan.rest).to_wire(payload)
    return len(msgpack.packb(wire, use_bin_type=True)) - len(payload), payload


def test_one_plan_per_model_version_and_params() -> None:
    plans = Plans("aidist:replies:abc")
    first = plans.single(JobKind.INFER, "minilm", "1", {})
    assert plans.single(JobKind.INFER, "minilm", "1", {}) is first
    assert plans.single(JobKind.INFER, "minilm", "2", {}) is not first
    with_params = plans.single(JobKind.INFER, "minilm", "1", {"b": 1, "a": 2})
    assert with_params is not first
    assert plans.single(JobKind.INFER, "minilm", "1", {"a": 2, "b": 1}) is with_params


def test_the_book_starts_afresh_past_its_size() -> None:
    plans = Plans(None)
    first = plans.single(JobKind.PREPROCESS, "chunk", "1", {"size": 0})
    for size in range(1, PLANS_KEPT + 1):
        plans.single(JobKind.PREPROCESS, "chunk", "1", {"size": size})
    assert plans.single(JobKind.PREPROCESS, "chunk", "1", {"size": 0}) is not first


def test_entry_sizes_cover_a_real_entry() -> None:
    reply_to = "aidist:replies:" + "f" * 32
    plans = Plans(reply_to)
    chain = (Step(JobKind.PREPROCESS, "chunk", "1", {"size": 64}),
             Step(JobKind.INFER, "minilm", "1", {}))
    pipeline = Plan(kind=JobKind.INFER, label="chunk>minilm", version="1|1",
                    params={"steps": [s.to_wire() for s in chain]}, first=chain[0],
                    rest=chain[1:])
    for plan in (plans.single(JobKind.INFER, "minilm", "1", {"normalize": True}), pipeline):
        for text in ("a", "a longer sentence " * 20):
            real, payload = _entry_bytes_besides_input(plan, text, reply_to)
            key = cache_key(plan.kind, plan.label, plan.version, plan.params, payload)
            request = Request(plan, text, payload, key, SubmitOptions())
            [size] = entry_sizes([request], [None], plans, 10**9)
            # What the sender packs by: never less than the entry, and close to it.
            assert real <= size - len(payload) <= real + 32
