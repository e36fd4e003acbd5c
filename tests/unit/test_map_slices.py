"""``Client.map`` and ``imap`` record and publish their jobs in slices (``producers.submission
.slices``): the first slice is on the broker before the next is written, so workers start at
once; every input is still validated before anything is written; and a call that fails part-way
leaves its earlier slices to run, whose results the same call takes from the cache next time."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from aidist.config import Settings
from aidist.errors import InvalidInput, ServiceUnavailable
from aidist.jobs import JobKind
from aidist.testing import InMemoryBroker, InMemoryStack, InMemoryStore
from db import NewJob
from models import ModelSpec, build_registry
from producers.submission import FIRST_SLICE, LARGEST_SLICE, slices
from tests.unit.doubles import Recorder

WAIT_S = 10.0


class JournalBroker(InMemoryBroker):
    """The in-memory broker, writing each publish into the stack's shared journal."""

    def __init__(self, journal: list[str]) -> None:
        super().__init__()
        self.journal = journal

    def publish(self, queue_name: str, entries: Sequence[dict[str, Any]],
                priority: int = 0) -> str:
        task_id = super().publish(queue_name, entries, priority)
        self.journal.append(f"publish {len(entries)}")
        return task_id


class FailingInserts(InMemoryStore):
    """Refuses its ``fail_at``-th INSERT (counting from 1) as a database that went away would."""

    def __init__(self, journal: list[str], fail_at: int) -> None:
        super().__init__(journal=journal)
        self.fail_at = fail_at
        self.inserts = 0

    def insert_jobs(self, jobs: Sequence[NewJob]) -> None:
        self.inserts += 1
        if self.inserts == self.fail_at:
            raise ServiceUnavailable("postgres", "memory://", "refused for the test")
        super().insert_jobs(jobs)


def _stack(model: Recorder, store: InMemoryStore | None = None) -> InMemoryStack:
    registry = build_registry([])
    registry.register(ModelSpec(name="recorder", kind=JobKind.INFER, loader=model.load,
                                version="recorder-1", max_batch_size=64))
    journal = store.journal if store is not None else []
    return InMemoryStack(Settings(), registry=registry, store=store, journal=journal,
                         broker=JournalBroker(journal))


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def stack(recorder: Recorder) -> Iterator[InMemoryStack]:
    built = _stack(recorder)
    yield built
    built.close()


def _ran(texts: list[str]) -> list[str]:
    """What ``Recorder`` returns for ``texts`` (no params), in order."""
    return [f"{text}:" for text in texts]


def _sizes(total: int, **bounds: int) -> list[int]:
    return [stop - start for start, stop in slices(total, **bounds)]


def test_slices_start_small_double_and_cover_every_item_once() -> None:
    assert slices(0) == []
    assert _sizes(1) == [1]
    assert _sizes(FIRST_SLICE) == [FIRST_SLICE]
    assert _sizes(FIRST_SLICE + 1) == [FIRST_SLICE, 1]
    assert _sizes(5000) == [256, 512, 1024, 2048, 1160]
    many = slices(100_000)
    assert max(stop - start for start, stop in many) == LARGEST_SLICE
    assert [start for start, _ in many] == [0, *(stop for _, stop in many[:-1])]
    assert many[-1][1] == 100_000
    assert _sizes(10, first=4, largest=4) == [4, 4, 2]


def test_map_publishes_its_first_slice_before_it_writes_the_next(
        stack: InMemoryStack) -> None:
    texts = [f"text {i}" for i in range(FIRST_SLICE + 300)]
    with stack.worker_thread():
        outputs = stack.client().map("recorder", texts, timeout=WAIT_S)
    assert outputs == _ran(texts)
    steps = [step for step in stack.journal if step == "insert_jobs" or step.startswith("publish")]
    assert steps.count("insert_jobs") == 2
    second_insert = steps.index("insert_jobs", 1)
    published_before = sum(int(step.split()[1]) for step in steps[:second_insert]
                           if step.startswith("publish"))
    assert published_before == FIRST_SLICE


def test_imap_is_sliced_too_and_yields_every_output_in_order(stack: InMemoryStack) -> None:
    texts = [f"line {i}" for i in range(FIRST_SLICE * 2)]
    with stack.worker_thread():
        outputs = list(stack.client().imap("recorder", texts, timeout=WAIT_S))
    assert outputs == _ran(texts)
    assert stack.journal.count("insert_jobs") == 2


def test_submit_many_stays_one_insert(stack: InMemoryStack) -> None:
    jobs = stack.client().submit_many("recorder", [f"row {i}" for i in range(FIRST_SLICE * 3)])
    assert len(jobs) == FIRST_SLICE * 3
    assert stack.journal.count("insert_jobs") == 1


def test_a_bad_input_in_a_later_slice_fails_the_call_with_nothing_written(
        stack: InMemoryStack) -> None:
    texts: list[Any] = [f"ok {i}" for i in range(FIRST_SLICE + 10)]
    texts.append({"not": "text"})
    with pytest.raises(InvalidInput):
        stack.client().map("recorder", texts, timeout=WAIT_S)
    assert "insert_jobs" not in stack.journal
    assert stack.broker.queued() == 0


def test_a_call_that_fails_part_way_leaves_its_first_slice_to_run_and_cache(
        recorder: Recorder) -> None:
    store = FailingInserts([], fail_at=2)
    stack = _stack(recorder, store)
    try:
        client = stack.client()
        texts = [f"doc {i}" for i in range(FIRST_SLICE + 50)]
        with pytest.raises(ServiceUnavailable):
            client.map("recorder", texts, timeout=WAIT_S)
        waiting = [entry["id"] for queue in stack.broker.queues()
                   for message in stack.broker.messages(queue) for entry in message.entries]
        assert len(waiting) == FIRST_SLICE  # the first slice was recorded and published
        stack.run_queued()
        assert sorted(recorder.inputs) == sorted(texts[:FIRST_SLICE])
        with stack.worker_thread():
            assert client.map("recorder", texts, timeout=WAIT_S) == _ran(texts)
        # the first slice came from the cache: every input ran once
        assert sorted(recorder.inputs) == sorted(texts)
    finally:
        stack.close()
