"""aidist: AI inference and preprocessing as durable jobs.

The front door (``Client``, ``AsyncClient``) is re-exported lazily (PEP 562) so that the kernel
modules (config, jobs, errors) import without pulling in the client side.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aidist.jobs import JobKind, JobStatus

if TYPE_CHECKING:
    from producers import AsyncClient, Client, Job

__all__ = ["AsyncClient", "Client", "Job", "JobKind", "JobStatus"]
__version__ = "0.1.0"

_LAZY = {"Client", "AsyncClient", "Job"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import producers

        return getattr(producers, name)
    raise AttributeError(f"module 'aidist' has no attribute {name!r}")
