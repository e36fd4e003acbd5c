"""aidist.errors: one exception tree, with messages that say what happened and what to do."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from aidist import errors
from aidist.errors import (
    AidistError,
    InvalidInput,
    JobCancelled,
    JobError,
    JobExpired,
    JobFailed,
    JobTimeout,
    ResultUnavailable,
    ServiceUnavailable,
    UnknownModel,
)

REPO = Path(__file__).resolve().parents[2]
ALL_ERRORS = [
    obj for _, obj in inspect.getmembers(errors, inspect.isclass)
    if issubclass(obj, BaseException) and obj.__module__ == errors.__name__
]


def test_the_tree_is_not_empty() -> None:
    names = {cls.__name__ for cls in ALL_ERRORS}
    assert {"InvalidInput", "UnknownModel", "JobFailed", "JobCancelled", "JobTimeout",
            "ServiceUnavailable", "ModelLoadError", "ConfigError"} <= names


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=lambda cls: cls.__name__)
def test_every_error_is_an_aidist_error(cls: type[BaseException]) -> None:
    assert issubclass(cls, AidistError)


def test_every_exception_class_of_the_product_lives_in_aidist_errors() -> None:
    """One tree in one module: no package defines an exception of its own."""
    offenders = []
    for package in ("aidist", "producers", "workers", "models", "db"):
        for path in sorted((REPO / package).rglob("*.py")):
            if (path.name == "errors.py" and package == "aidist") or "migrations" in path.parts:
                continue
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef) and any(
                        (isinstance(base, ast.Name) and base.id.endswith(("Error", "Exception")))
                        or (isinstance(base, ast.Attribute) and base.attr.endswith("Error"))
                        for base in node.bases):
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}")
    assert offenders == []


def test_standard_bases_let_callers_catch_broadly() -> None:
    assert issubclass(InvalidInput, ValueError)
    assert issubclass(UnknownModel, LookupError)
    assert issubclass(ServiceUnavailable, ConnectionError)
    assert issubclass(JobTimeout, TimeoutError)


def test_unknown_model_lists_the_known_names_sorted() -> None:
    error = UnknownModel("mini", ["tokenize", "minilm", "chunk"])
    assert error.name == "mini"
    assert error.known == ["chunk", "minilm", "tokenize"]
    message = str(error)
    assert "'mini'" in message
    assert "chunk, minilm, tokenize" in message
    assert "aidist models" in message


def test_unknown_model_with_nothing_registered() -> None:
    assert "(none)" in str(UnknownModel("x", []))


def test_service_unavailable_names_service_and_url() -> None:
    error = ServiceUnavailable("Redis", "redis://cache:6379/0", "Connection refused")
    assert (error.service, error.url, error.reason) == (
        "Redis", "redis://cache:6379/0", "Connection refused",
    )
    message = str(error)
    assert "Redis is unavailable at redis://cache:6379/0" in message
    assert "Connection refused" in message
    assert "Start Redis" in message


def test_job_timeout_is_a_timeout_error_with_details() -> None:
    error = JobTimeout("job-1", 2.5, "running")
    assert isinstance(error, TimeoutError)
    assert isinstance(error, JobError)
    assert error.job_id == "job-1"
    assert error.timeout == 2.5
    assert error.status == "running"
    assert "2.5s" in str(error)
    assert "running" in str(error)
    with pytest.raises(TimeoutError):
        raise error


def test_job_failed_carries_the_worker_error() -> None:
    error = JobFailed("job-2", "ValueError: bad input")
    assert error.job_id == "job-2"
    assert error.error == "ValueError: bad input"
    assert str(error) == "job job-2 failed: ValueError: bad input"


@pytest.mark.parametrize(
    ("error", "fragment"),
    [
        (JobCancelled("j"), "cancelled"),
        (JobExpired("j"), "deadline"),
        (ResultUnavailable("j"), "submit the input again"),
    ],
)
def test_job_errors_mention_the_job(error: JobError, fragment: str) -> None:
    assert error.job_id == "j"
    assert "job j" in str(error)
    assert fragment in str(error)
