"""The publishing interface the client and the workers depend on.

``aidist.transport.Publisher`` (RabbitMQ, confirmed) satisfies it, and so does the in-memory
broker of ``aidist.testing``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol


class JobPublisher(Protocol):
    """Publishes one message of job entries to a queue and returns once it is safely taken."""

    def connect(self) -> None:
        """Fail now (``ServiceUnavailable``) if the broker cannot be reached."""
        ...

    def publish(self, queue_name: str, entries: Sequence[dict[str, Any]],
                priority: int = 0) -> str:
        """Publish ``entries`` as one message; returns the message's task id."""
        ...

    def close(self) -> None: ...
