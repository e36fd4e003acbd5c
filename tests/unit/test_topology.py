"""aidist.transport.topology: queue names and declarations producers and workers agree on."""

from __future__ import annotations

from aidist.jobs import JobKind
from aidist.transport import (
    dead_letter_exchange,
    job_queue,
    jobs_exchange,
    queue_arguments,
    queue_name,
)


def test_one_queue_per_kind_and_target() -> None:
    assert queue_name("ns", JobKind.INFER, "minilm") == "ns.infer.minilm"
    assert queue_name("ns", JobKind.PREPROCESS, "chunk") == "ns.preprocess.chunk"
    assert queue_name("a", JobKind.INFER, "x") != queue_name("b", JobKind.INFER, "x")


def test_queue_arguments_are_deterministic_and_dead_letter() -> None:
    assert queue_arguments("ns") == queue_arguments("ns")
    assert queue_arguments("ns")["x-dead-letter-exchange"] == dead_letter_exchange("ns")
    assert queue_arguments("ns")["x-max-priority"] == 10


def test_job_queue_is_durable_and_bound_under_its_name() -> None:
    name = queue_name("ns", JobKind.INFER, "minilm")
    queue = job_queue("ns", name)
    assert queue.name == name
    assert queue.routing_key == name
    assert queue.durable
    assert queue.exchange.name == jobs_exchange("ns").name == "ns.jobs"
    assert queue.exchange.type == "direct"
    assert queue.queue_arguments == queue_arguments("ns")
