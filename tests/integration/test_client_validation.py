"""producers.Client validation against the real services: a submission that is not acceptable
raises a typed error that says what to do, and nothing is written to Postgres or sent to
RabbitMQ."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest

from aidist.config import Settings
from aidist.errors import (
    AidistError,
    InvalidInput,
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
                                "tokenize",
                                "chunk", "normalize"}
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


