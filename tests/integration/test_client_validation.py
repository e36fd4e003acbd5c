"""producers.Client validation against the real services: a submission that is not acceptable
raises a typed error that says what to do, and nothing is written to Postgres or sent to
RabbitMQ."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import numpy as np
import pytest

from aidist.config import Settings
from aidist.errors import (
    AidistError,
    InvalidInput,
    MessageTooLarge,
    UnknownModel,
)
from aidist.jobs import JobKind
from aidist.transport import queue_name
from db.store import JobStore
from producers import Client
from tests.conftest import queue_depth
from tests.integration.conftest import (
    TOY,
    clean_namespace,
    drain,
    isolated_settings,
    total_jobs,
    toy_queue,
)

pytestmark = pytest.mark.integration


# -- validation: nothing written, nothing sent --------------------------------------------------

Submit = Callable[[Client], object]
NAIVE_DEADLINE = datetime(2999, 1, 1, 12, 0)  # no tzinfo: ambiguous, so refused
NOT_A_DICT: Any = ["lowercase"]

INVALID_SUBMISSIONS: dict[str, Submit] = {
    "none": lambda c: c.infer(TOY, None),
    "bytes": lambda c: c.infer(TOY, b"bytes"),
    "nested": lambda c: c.infer(TOY, {"nested": ["junk"]}),
    "empty": lambda c: c.infer(TOY, ""),
    "blank": lambda c: c.infer(TOY, " \n\t "),
    "oversize": lambda c: c.infer(TOY, "x" * 100_001),
    "priority-11": lambda c: c.infer(TOY, "x", priority=11),
    "priority-negative": lambda c: c.infer(TOY, "x", priority=-1),
    "priority-bool": lambda c: c.infer(TOY, "x", priority=True),
    "deadline-negative": lambda c: c.infer(TOY, "x", deadline=-5),
    "deadline-zero": lambda c: c.infer(TOY, "x", deadline=0),
    "deadline-naive": lambda c: c.infer(TOY, "x", deadline=NAIVE_DEADLINE),
    "params-for-paramless-model": lambda c: c.infer(TOY, "x", params={"temperature": 2}),
    "params-not-a-dict": lambda c: c.preprocess("normalize", "x", params=NOT_A_DICT),
    "bad-param-value": lambda c: c.preprocess("normalize", "x", params={"lowercase": "yes"}),
    "unknown-param": lambda c: c.preprocess("chunk", "x", params={"width": 3}),
    "no-inputs": lambda c: c.infer_many(TOY, []),
    "one-bad-among-many": lambda c: c.infer_many(TOY, ["fine", "also fine", None, "fine"]),
}


@pytest.mark.parametrize("submit", list(INVALID_SUBMISSIONS.values()),
                         ids=list(INVALID_SUBMISSIONS))
def test_invalid_submission_raises_and_writes_and_sends_nothing(
        ns_settings: Settings, ns_client: Client, store: JobStore, submit: Submit) -> None:
    ns_client.infer(TOY, "a valid job, so the queue exists")
    assert ns_client.flush()  # published from the client's sender thread
    queue = toy_queue(ns_settings)
    prep_queue = queue_name(ns_settings.namespace, JobKind.PREPROCESS, "normalize")
    before = (total_jobs(store), queue_depth(ns_settings, queue),
              queue_depth(ns_settings, prep_queue))
    assert before[1] == 1

    with pytest.raises(InvalidInput) as raised:
        submit(ns_client)
    assert isinstance(raised.value, AidistError)
    assert isinstance(raised.value, ValueError)
    assert str(raised.value)

    after = (total_jobs(store), queue_depth(ns_settings, queue),
             queue_depth(ns_settings, prep_queue))
    assert after == before


@pytest.mark.parametrize("submit", [
    lambda c: c.infer("no-such-model", "x"),
    lambda c: c.infer_many("no-such-model", ["x"]),
    lambda c: c.preprocess(TOY, "x"),  # a model is not a preprocessing op
    lambda c: c.infer("normalize", "x"),  # and an op is not a model
], ids=["infer", "infer_many", "preprocess-a-model", "infer-an-op"])
def test_unknown_model_lists_known_names_and_writes_nothing(
        ns_settings: Settings, ns_client: Client, store: JobStore, submit: Submit) -> None:
    before = total_jobs(store)
    with pytest.raises(UnknownModel) as raised:
        submit(ns_client)
    error = raised.value
    assert isinstance(error, AidistError) and isinstance(error, LookupError)
    assert error.known == sorted(error.known) and error.known
    assert set(error.known) <= {"minilm", TOY, "flaky", "sleepy", "unloadable", "oom-on-batches",
                                "crashing", "logged", "logged-cpu",
                                "tokenize", "toy-vision", "bytes-echo", "tensor-stats",
                                "large-echo", "chunk", "normalize", "image", "json-echo"}
    for name in error.known:
        assert name in str(error)
    assert "aidist models" in str(error)
    assert total_jobs(store) == before
    assert queue_depth(ns_settings, toy_queue(ns_settings)) == 0


def test_unknown_model_names_the_builtins(ns_client: Client) -> None:
    with pytest.raises(UnknownModel) as raised:
        ns_client.infer("gpt-17", "x")
    assert raised.value.name == "gpt-17"
    assert {"minilm", TOY, "flaky"} <= set(raised.value.known)


def test_too_many_inputs_in_one_call_is_refused(settings: Settings, store: JobStore) -> None:
    limited = isolated_settings(settings, max_jobs_per_call=2)
    try:
        with Client(limited) as limited_client:
            before = total_jobs(store)
            with pytest.raises(InvalidInput, match="limit is 2"):
                limited_client.infer_many(TOY, ["a", "b", "c"])
            assert total_jobs(store) == before
            assert len(limited_client.infer_many(TOY, ["a", "b"])) == 2
            assert total_jobs(store) == before + 2
    finally:
        clean_namespace(limited)




# -- typed inputs: the error names what was expected; nothing written, nothing sent ------------

TYPED_INVALID: dict[str, tuple[Submit, str]] = {
    "bytes-given-text": (lambda c: c.infer("bytes-echo", "text"),
                         "bytes-echo takes bytes, got str"),
    "bytes-too-large": (lambda c: c.infer("bytes-echo", b"x" * (64 * 1024 + 1)),
                        "has 65537 bytes, the limit is 65536"),
    "image-undecodable": (lambda c: c.preprocess("image", b"\x89PNG\r\n\x1a\n not really"),
                          "image got PNG bytes that do not decode"),
    "image-not-an-image": (lambda c: c.preprocess("image", b"just bytes"),
                           "neither PNG nor JPEG"),
    "tensor-dtype": (lambda c: c.infer("toy-vision", np.zeros((3, 4, 4), dtype=np.float64)),
                     "toy-vision takes a tensor of dtype float32, got float64"),
    "tensor-shape": (lambda c: c.infer("toy-vision", np.zeros((4, 4), dtype=np.float32)),
                     r"shape \(3, None, None\) \(None: any size\), got shape \(4, 4\)"),
    "tensor-not-an-array": (lambda c: c.infer("toy-vision", [[0.0]]),
                            r"takes a tensor \(a numpy array\), got list"),
    "json-set": (lambda c: c.preprocess("json-echo", {"a": {1, 2}}), "takes JSON .* got set"),
    "pipeline-first-step": (lambda c: c.pipeline(["image", "toy-vision"], "a.png"),
                            "image takes an image: PNG or JPEG bytes"),
}


@pytest.mark.parametrize(("submit", "message"), list(TYPED_INVALID.values()),
                         ids=list(TYPED_INVALID))
def test_typed_input_refused_naming_what_was_expected(
        ns_settings: Settings, ns_client: Client, store: JobStore, submit: Submit,
        message: str) -> None:
    before = total_jobs(store)
    with pytest.raises(InvalidInput, match=message):
        submit(ns_client)
    assert total_jobs(store) == before
    for kind, name in [(JobKind.INFER, "bytes-echo"), (JobKind.INFER, "toy-vision"),
                       (JobKind.PREPROCESS, "image"), (JobKind.PREPROCESS, "json-echo")]:
        assert queue_depth(ns_settings, queue_name(ns_settings.namespace, kind, name)) == 0


def test_messages_stay_within_the_limit_and_a_job_too_big_for_one_is_refused(
        settings: Settings, store: JobStore) -> None:
    limited = isolated_settings(settings, max_message_bytes=64 * 1024)
    queue = queue_name(limited.namespace, JobKind.INFER, "bytes-echo")
    try:
        with Client(limited) as limited_client:
            before = total_jobs(store)
            with pytest.raises(MessageTooLarge, match="AIDIST_MAX_MESSAGE_BYTES"):
                limited_client.infer_many("bytes-echo", [b"small", b"x" * 63 * 1024])
            assert total_jobs(store) == before
            inputs = [bytes([i]) * 20_000 for i in range(1, 8)]
            jobs = limited_client.infer_many("bytes-echo", inputs)
            messages = drain(limited, queue)
            assert [len(entries) for _, entries in messages] == [3, 3, 1]
            assert [entry["id"] for _, entries in messages for entry in entries] == [
                job.id for job in jobs]
            assert total_jobs(store) == before + len(inputs)
    finally:
        clean_namespace(limited)
