"""Typed jobs through the client and the executor over ``aidist.testing``: arrays batched only
with arrays of their dtype and shape, an over-size output failing only its job, a pipeline that
hands a typed tensor to its next step, and messages kept within ``max_message_bytes``."""

from __future__ import annotations

from collections.abc import Iterator

import msgpack
import numpy as np
import pytest

from aidist.config import Settings
from aidist.demo import make_images
from aidist.errors import JobFailed, MessageTooLarge
from aidist.jobs import JobEntry
from aidist.testing import InMemoryStack
from models import LoadContext, build_registry
from models.image import image_tensor
from tests.typed_plugins import BYTES_ECHO_MAX_OUTPUT


@pytest.fixture
def stack() -> Iterator[InMemoryStack]:
    built = InMemoryStack(Settings(plugins=["tests.plugins"], max_message_bytes=64 * 1024))
    yield built
    built.close()


def test_arrays_share_a_model_call_only_with_their_own_dtype_and_shape(
        stack: InMemoryStack) -> None:
    rng = np.random.default_rng(1)
    arrays = ([rng.random((2, 3), dtype=np.float32) for _ in range(3)]
              + [rng.random((4, 3), dtype=np.float32) for _ in range(3)]
              + [rng.integers(0, 9, size=(2, 3)) for _ in range(2)])
    jobs = stack.client().infer_many("tensor-stats", arrays)
    assert stack.run_queued() == 1  # one message, one flush
    for array, job in zip(arrays, jobs, strict=True):
        stats = job.result(timeout=1)
        assert stats["layouts"] == [f"{array.dtype.name}{list(array.shape)}"]
        assert stats["batch"] == (2 if array.dtype == np.int64 else 3)
        assert stats["doubled"].dtype == array.dtype
        np.testing.assert_array_equal(stats["doubled"], array * 2)


def test_an_oversize_output_fails_only_its_own_job(stack: InMemoryStack) -> None:
    fine, grown, also_fine = stack.client().infer_many("bytes-echo", [b"abc", b"grow", b"xyz"])
    stack.run_queued()
    assert fine.result(timeout=1) == b"cba" and also_fine.result(timeout=1) == b"zyx"
    with pytest.raises(JobFailed, match=rf"bytes-echo output is \d+ bytes encoded, over its "
                                        rf"max_output_bytes of {BYTES_ECHO_MAX_OUTPUT}"):
        grown.result(timeout=1)


def test_a_pipeline_hands_its_next_step_a_typed_tensor(stack: InMemoryStack) -> None:
    png = make_images(1, seed=4)[0]
    job = stack.client().pipeline(["image", "toy-vision"], png, {"image": {"size": [24, 24]}})
    stack.run_queued()
    probabilities = job.result(timeout=1)
    vision = build_registry().get("toy-vision").load(LoadContext())
    expected = vision([image_tensor(png, 24, 24)], {})[0]
    assert probabilities.dtype == np.float32 and probabilities.shape == expected.shape
    np.testing.assert_allclose(probabilities, expected, atol=1e-6)


def test_a_job_too_big_for_one_message_is_refused_before_anything_is_written(
        stack: InMemoryStack) -> None:
    with pytest.raises(MessageTooLarge, match=r"over the message limit of 65536 bytes "
                                              r"\(AIDIST_MAX_MESSAGE_BYTES\); nothing was "
                                              r"written or sent"):
        stack.client().infer_many("bytes-echo", [b"small", b"x" * 63 * 1024])
    assert stack.store.ids() == [] and stack.broker.queued() == 0


def test_jobs_submitted_together_are_split_to_fit_the_message_limit(
        stack: InMemoryStack) -> None:
    inputs = [bytes([i]) * 20_000 for i in range(1, 8)]
    jobs = stack.client().infer_many("bytes-echo", inputs)
    (queue,) = stack.broker.queues()
    messages = stack.broker.messages(queue)
    assert [len(m.entries) for m in messages] == [3, 3, 1]  # 20 kB entries, 64 KiB messages
    for message in messages:
        assert len(msgpack.packb(message.entries, use_bin_type=True)) < 64 * 1024
    sent = [JobEntry.from_wire(wire) for message in messages for wire in message.entries]
    assert [entry.id for entry in sent] == [job.id for job in jobs]
    assert [entry.input for entry in sent] == inputs
