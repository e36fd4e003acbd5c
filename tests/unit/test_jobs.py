"""aidist.jobs: job lifecycle, content cache keys, and the wire format of job entries."""

from __future__ import annotations

from typing import Any

import pytest

from aidist.jobs import (
    RUN_JOBS_TASK,
    TERMINAL_STATUSES,
    WIRE_VERSION,
    JobEntry,
    JobKind,
    JobStatus,
    cache_key,
    canonical_params,
)


@pytest.mark.parametrize(
    ("status", "terminal"),
    [
        (JobStatus.QUEUED, False),
        (JobStatus.RUNNING, False),
        (JobStatus.SUCCEEDED, True),
        (JobStatus.FAILED, True),
        (JobStatus.CANCELLED, True),
        (JobStatus.EXPIRED, True),
    ],
)
def test_terminal_statuses(status: JobStatus, terminal: bool) -> None:
    assert status.terminal is terminal
    assert (status in TERMINAL_STATUSES) is terminal


def test_statuses_are_the_documented_strings() -> None:
    assert {s.value for s in JobStatus} == {
        "queued", "running", "succeeded", "failed", "cancelled", "expired",
    }
    assert JobStatus("running") is JobStatus.RUNNING
    assert JobStatus.FAILED == "failed"


def test_task_name_is_stable() -> None:
    assert RUN_JOBS_TASK == "aidist.run_jobs"


def _key(**overrides: Any) -> str:
    args: dict[str, Any] = {
        "kind": JobKind.INFER,
        "target": "minilm",
        "version": "v1",
        "params": {"a": 1},
        "input_bytes": b"hello",
    }
    args.update(overrides)
    return cache_key(**args)


def test_cache_key_is_stable_for_equal_inputs() -> None:
    assert _key() == _key()
    assert _key(params={"a": 1}) == _key(params=dict([("a", 1)]))


def test_cache_key_is_hex() -> None:
    key = _key()
    int(key, 16)
    assert len(key) == 40  # blake2b with a 20-byte digest


@pytest.mark.parametrize(
    "change",
    [
        {"kind": JobKind.PREPROCESS},
        {"target": "toy-classifier"},
        {"version": "v2"},
        {"params": {"a": 2}},
        {"params": {"b": 1}},
        {"params": {"a": 1, "b": 1}},
        {"input_bytes": b"hello!"},
        {"input_bytes": b""},
    ],
)
def test_cache_key_changes_with_any_part(change: dict[str, Any]) -> None:
    assert _key(**change) != _key()


def test_cache_key_ignores_params_order() -> None:
    first = _key(params={"size": 10, "overlap": 2, "z": [1, 2]})
    second = _key(params={"z": [1, 2], "overlap": 2, "size": 10})
    assert first == second


def test_cache_key_parts_do_not_run_together() -> None:
    # "ab" + "c" must not collide with "a" + "bc": parts are separated.
    assert _key(target="ab", version="c") != _key(target="a", version="bc")


def test_no_params_and_empty_params_are_the_same() -> None:
    assert _key(params=None) == _key(params={})
    assert canonical_params(None) == canonical_params({}) == "{}"


def test_canonical_params_sorted_and_compact() -> None:
    assert canonical_params({"b": 1, "a": "é"}) == '{"a":"é","b":1}'


def _entry(**overrides: Any) -> JobEntry:
    fields: dict[str, Any] = {
        "id": "6f1c1b8e-9f0e-4a57-8a47-2f3c1e9d1b10",
        "kind": JobKind.PREPROCESS,
        "target": "chunk",
        "version": "ops-v1",
        "input": "some text",
        "cache_key": "abc123",
        "params": {"size": 4, "overlap": 1},
        "reply_to": "client-1",
    }
    fields.update(overrides)
    return JobEntry(**fields)


@pytest.mark.parametrize("reply_to", ["client-1", None])
def test_wire_round_trip(reply_to: str | None) -> None:
    entry = _entry(reply_to=reply_to)
    assert JobEntry.from_wire(entry.to_wire()) == entry


def test_wire_format_fields() -> None:
    wire = _entry().to_wire()
    assert wire["v"] == WIRE_VERSION
    assert wire["kind"] == "preprocess"
    assert isinstance(wire["kind"], str)
    assert wire["key"] == "abc123"
    assert set(wire) == {"v", "id", "kind", "target", "version", "input", "key", "params",
                         "reply_to"}


def test_from_wire_defaults_missing_params_and_reply_to() -> None:
    wire = _entry().to_wire()
    del wire["params"]
    del wire["reply_to"]
    entry = JobEntry.from_wire(wire)
    assert entry.params == {}
    assert entry.reply_to is None


@pytest.mark.parametrize("data", [None, "text", 3, ["v", 1], b"bytes"])
def test_from_wire_rejects_non_maps(data: Any) -> None:
    with pytest.raises(ValueError, match="must be a map") as info:
        JobEntry.from_wire(data)
    assert type(data).__name__ in str(info.value)


@pytest.mark.parametrize("version", [None, 0, 2, "1"])
def test_from_wire_rejects_other_versions(version: Any) -> None:
    wire = _entry().to_wire()
    if version is None:
        del wire["v"]
    else:
        wire["v"] = version
    with pytest.raises(ValueError, match="unsupported job entry version"):
        JobEntry.from_wire(wire)


@pytest.mark.parametrize("missing", ["id", "kind", "target", "version", "input", "key"])
def test_from_wire_names_the_missing_field(missing: str) -> None:
    wire = _entry().to_wire()
    del wire[missing]
    with pytest.raises(ValueError, match=f"lacks field '{missing}'"):
        JobEntry.from_wire(wire)


@pytest.mark.parametrize("params", ["size=3", [["size", 3]], 5])
def test_from_wire_rejects_params_that_are_not_a_map(params: Any) -> None:
    wire = _entry().to_wire()
    wire["params"] = params
    with pytest.raises(ValueError, match="params must be a map"):
        JobEntry.from_wire(wire)


def test_from_wire_rejects_unknown_kind() -> None:
    wire = _entry().to_wire()
    wire["kind"] = "train"
    with pytest.raises(ValueError, match="train"):
        JobEntry.from_wire(wire)
