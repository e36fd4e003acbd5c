"""The public surface: ``aidist.__all__`` is exactly what users may import, every name resolves,
and every public object says it belongs to aidist (httpx's tests/test_exported_members.py is the
model)."""

from __future__ import annotations

import inspect

import pytest

import aidist
from aidist import errors

PUBLIC = {
    # the client
    "Client", "AsyncClient", "Job", "AsyncJob",
    # job contracts and settings
    "JobStatus", "JobKind", "Settings",
    # the plugin API
    "ModelSpec", "LoadContext", "Registry", "Runner", "ModelInfo",
    # errors
    "AidistError", "ConfigError", "InvalidInput", "UnknownModel", "UnknownJob",
    "ServiceUnavailable", "JobError", "JobFailed", "JobCancelled", "JobExpired", "JobTimeout",
    "ResultUnavailable", "IdempotencyConflict", "ModelLoadError", "TransientError", "StoreError",
    "CacheError", "MessageTooLarge",
}
# Raised and handled inside workers; a user never meets them.
INTERNAL_ERRORS = {"JobsFailed", "PoisonMessage", "ServicesDown", "MalformedEntry"}


def test_all_is_pinned() -> None:
    assert set(aidist.__all__) == PUBLIC
    assert len(aidist.__all__) == len(PUBLIC)
    assert aidist.__all__ == sorted(aidist.__all__)


def test_every_exported_name_resolves() -> None:
    for name in aidist.__all__:
        assert getattr(aidist, name) is not None, name


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from aidist import *", namespace)
    assert set(namespace) - {"__builtins__"} == PUBLIC


def test_every_public_error_is_exported() -> None:
    defined = {name for name, obj in inspect.getmembers(errors, inspect.isclass)
               if issubclass(obj, BaseException) and obj.__module__ == errors.__name__}
    assert defined - INTERNAL_ERRORS <= PUBLIC
    assert defined >= INTERNAL_ERRORS


def test_unknown_attribute_raises_attribute_error() -> None:
    name = "NoSuchThing"
    with pytest.raises(AttributeError, match=name):
        getattr(aidist, name)
