"""Large payloads by reference, over the in-memory doubles (a real Client and the real executor):
inputs above AIDIST_INLINE_MAX_BYTES go to the blob store before the row, travel as a BlobRef,
and are read once per flush; large outputs are stored as blobs and the cache, the durable copy
and the client hold the reference; a blob store that is down fails the submit with nothing
written."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Sequence

import pytest

from aidist import codec
from aidist.codec import BlobRef
from aidist.config import Settings
from aidist.errors import JobFailed, ServiceUnavailable
from aidist.jobs import JobEntry, JobKind, JobStatus
from aidist.testing import InMemoryStack
from db.records import UnsentJob
from producers import Client
from workers.sweeper import entry_of

LIMIT = 1024


@pytest.fixture
def stack() -> Iterator[InMemoryStack]:
    built = InMemoryStack(Settings(plugins=["tests.plugins"], inline_max_bytes=LIMIT))
    yield built
    built.close()


@pytest.fixture
def client(stack: InMemoryStack) -> Iterator[Client]:
    with stack.client() as built:
        yield built


def test_a_large_input_and_output_travel_by_reference(stack: InMemoryStack,
                                                      client: Client) -> None:
    data = os.urandom(50_000)
    encoded_in, encoded_out = codec.encode(data), codec.encode(data[::-1])
    job = client.infer("large-echo", data)
    assert stack.journal.index("blobs.put") < stack.journal.index("insert_jobs")
    (queue,) = stack.broker.queues()
    (message,) = stack.broker.messages(queue)
    entry = JobEntry.from_wire(message.entries[0])
    assert entry.input == BlobRef.of(encoded_in)  # the message carries the reference
    assert stack.store.payloads([job.id])[job.id] == codec.encode(BlobRef.of(encoded_in))
    stack.run_queued()
    assert job.result(timeout=1) == data[::-1]
    out_ref = BlobRef.of(encoded_out)
    assert stack.cache.results[job.cache_key] == codec.encode(out_ref)  # Redis: the reference
    assert stack.store.stored_result(job.id) == codec.encode(out_ref)  # and the durable copy
    assert stack.store.blob_keys(job.id) == [BlobRef.of(encoded_in).key, out_ref.key]
    assert stack.blobs.blobs[out_ref.key] == encoded_out


def test_small_payloads_stay_inline(stack: InMemoryStack, client: Client) -> None:
    job = client.infer("large-echo", b"small")
    stack.run_queued()
    assert job.result(timeout=1) == b"llams"
    assert stack.blobs.blobs == {}
    assert stack.store.blob_keys(job.id) is None


def test_the_inputs_of_a_flush_are_read_in_one_call(stack: InMemoryStack,
                                                    client: Client) -> None:
    reads: list[list[str]] = []
    real = stack.blobs.get_many

    def counted(keys: Sequence[str]) -> dict[str, bytes]:
        reads.append(list(keys))
        return real(keys)

    shared = os.urandom(5000)
    inputs = [shared, os.urandom(5000), shared, os.urandom(5000)]
    jobs = client.infer_many("large-echo", inputs)
    assert stack.blobs.uploads == 3  # identical inputs stored once
    stack.blobs.get_many = counted  # type: ignore[method-assign]
    stack.run_queued()
    assert reads == [list(dict.fromkeys(BlobRef.of(codec.encode(d)).key for d in inputs))]
    assert client.results_of(jobs, timeout=1) == [data[::-1] for data in inputs]


def test_a_cache_hit_on_a_large_output_reads_the_blob(stack: InMemoryStack,
                                                      client: Client) -> None:
    data = os.urandom(20_000)
    first = client.infer("large-echo", data)
    stack.run_queued()
    assert first.result(timeout=1) == data[::-1]
    again = client.infer("large-echo", data)
    assert stack.broker.queued() == 0  # nothing to run: a cache hit
    assert again.result(timeout=1) == data[::-1]
    assert sum(report.ran for report in stack.reports) == 1  # the model ran once
    record = stack.store.get(again.id)
    assert record.cache_hit
    out_key = BlobRef.of(codec.encode(data[::-1])).key
    assert out_key in (stack.store.blob_keys(again.id) or [])
    assert stack.store.blob_keys_referenced([out_key, "0" * 64]) == {out_key}


def test_a_result_that_left_redis_is_read_from_its_durable_reference(stack: InMemoryStack,
                                                                     client: Client) -> None:
    data = os.urandom(20_000)
    job = client.infer("large-echo", data)
    stack.run_queued()
    stack.cache.results.clear()  # a flushed Redis
    assert client.results_of([job], timeout=1) == [data[::-1]]
    assert sum(report.ran for report in stack.reports) == 1


def test_a_result_whose_blob_is_gone_is_computed_again(stack: InMemoryStack,
                                                       client: Client) -> None:
    data = os.urandom(20_000)
    job = client.infer("large-echo", data)
    stack.run_queued()
    out_key = BlobRef.of(codec.encode(data[::-1])).key
    stack.blobs.delete([out_key])  # pruned while its reference lived on
    with stack.worker_thread():
        assert client.results_of([job], timeout=5) == [data[::-1]]
        again = client.infer("large-echo", data)  # a dangling cache hit runs again too
        assert again.result(timeout=5) == data[::-1]
    assert stack.blobs.exists(out_key)


def test_a_job_whose_input_blob_is_gone_fails_naming_it(stack: InMemoryStack,
                                                        client: Client) -> None:
    data = os.urandom(5000)
    doomed, kept = client.infer_many("large-echo", [data, os.urandom(5000)])
    stack.blobs.delete([BlobRef.of(codec.encode(data)).key])
    stack.run_queued()
    with pytest.raises(JobFailed, match=r"input blob \w+ \(\d+ bytes\) is not in the blob store memory://"):
        doomed.result(timeout=1)
    assert kept.status() is JobStatus.SUCCEEDED


def test_a_blob_store_that_is_down_fails_the_submit_with_nothing_written(
        stack: InMemoryStack, client: Client) -> None:
    stack.blobs.available = False
    with pytest.raises(ServiceUnavailable, match="blob store"):
        client.infer("large-echo", os.urandom(5000))
    assert "insert_jobs" not in stack.journal
    assert stack.store.count_by_status()[JobStatus.QUEUED] == 0
    assert stack.broker.queued() == 0
    assert client.infer("large-echo", b"small").status() is JobStatus.QUEUED  # inline: fine


def test_the_sweeper_republishes_a_recorded_job_with_its_reference() -> None:
    ref = BlobRef.of(b"a large encoded input")
    unsent = UnsentJob(str(uuid.uuid4()), JobKind.INFER, "large-echo", "large-echo-1", {},
                       "k" * 40, codec.encode(ref), 0)
    wire = entry_of(unsent).to_wire()
    assert "input" not in wire
    assert JobEntry.from_wire(wire).input == ref

