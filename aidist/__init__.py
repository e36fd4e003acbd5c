"""aidist: AI inference and preprocessing as durable jobs.

Everything a user imports comes from here: the client (``Client``, ``AsyncClient``, ``Job``), the
job contracts (``JobStatus``, ``JobKind``), ``Settings``, every public error, and the plugin API
(``ModelSpec``, ``LoadContext``, ``Registry``). ``tests/unit/test_exported_members.py`` pins the
list.

The client side and the model registry are re-exported lazily (PEP 562) so that the kernel modules
(config, jobs, errors) import without pulling in ``producers`` or ``models``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from aidist.config import Settings
from aidist.errors import (
    AidistError,
    CacheError,
    ConfigError,
    IdempotencyConflict,
    InvalidInput,
    JobCancelled,
    JobError,
    JobExpired,
    JobFailed,
    JobTimeout,
    MessageTooLarge,
    ModelLoadError,
    ResultUnavailable,
    ServiceUnavailable,
    StoreError,
    TransientError,
    UnknownJob,
    UnknownModel,
)
from aidist.jobs import JobKind, JobStatus

if TYPE_CHECKING:
    from models import LoadContext, ModelInfo, ModelSpec, Registry, Runner
    from producers import AsyncClient, AsyncJob, Client, Job

__all__ = [
    "AidistError",
    "AsyncClient",
    "AsyncJob",
    "CacheError",
    "Client",
    "ConfigError",
    "IdempotencyConflict",
    "InvalidInput",
    "Job",
    "JobCancelled",
    "JobError",
    "JobExpired",
    "JobFailed",
    "JobKind",
    "JobStatus",
    "JobTimeout",
    "LoadContext",
    "MessageTooLarge",
    "ModelInfo",
    "ModelLoadError",
    "ModelSpec",
    "Registry",
    "ResultUnavailable",
    "Runner",
    "ServiceUnavailable",
    "Settings",
    "StoreError",
    "TransientError",
    "UnknownJob",
    "UnknownModel",
]
__version__ = "0.1.0"

# name -> the package it lives in, imported on first access
_LAZY = {
    "Client": "producers",
    "AsyncClient": "producers",
    "AsyncJob": "producers",
    "Job": "producers",
    "LoadContext": "models",
    "ModelInfo": "models",
    "ModelSpec": "models",
    "Registry": "models",
    "Runner": "models",
}


def __getattr__(name: str) -> Any:
    package = _LAZY.get(name)
    if package is None:
        raise AttributeError(f"module 'aidist' has no attribute {name!r}")
    return getattr(importlib.import_module(package), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
