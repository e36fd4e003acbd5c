"""``InMemoryBroker``: the publishing contract (``aidist.transport.interfaces.JobPublisher``)
without RabbitMQ.

A published message is kept, per queue, as the entries a worker would decode from it: they go
through msgpack as the real publisher's body does, so an entry RabbitMQ could not carry fails here
too, and what a worker gets is a copy (a tuple comes back a list), never the client's own objects.
Set ``available = False`` to see how the caller behaves while the broker is down.
"""

from __future__ import annotations

import itertools
import threading
import uuid
from collections.abc import Sequence
from typing import Any, NamedTuple

import msgpack

from aidist.errors import ServiceUnavailable

SERVICE = "RabbitMQ"
URL = "memory://"


class Published(NamedTuple):
    """One message as published: its task id, its job entries (as decoded), its priority."""

    task_id: str
    entries: list[dict[str, Any]]
    priority: int


class InMemoryBroker:
    """Keeps published messages per queue until a test takes them. Thread-safe."""

    def __init__(self) -> None:
        self.available = True
        self.closed = False
        self._queues: dict[str, list[tuple[int, Published]]] = {}
        self._seq = itertools.count()
        self._lock = threading.Lock()

    # -- JobPublisher -----------------------------------------------------------------------------

    def connect(self) -> None:
        """``ServiceUnavailable`` while ``available`` is False, else nothing."""
        if not self.available:
            raise ServiceUnavailable(SERVICE, URL, "the in-memory broker is set unavailable")

    def publish(self, queue_name: str, entries: Sequence[dict[str, Any]],
                priority: int = 0) -> str:
        """Keep ``entries`` as one message of ``queue_name``; returns its task id. A
        ``TypeError`` for entries msgpack cannot encode."""
        self.connect()
        body = msgpack.packb(list(entries), use_bin_type=True)
        decoded: list[dict[str, Any]] = msgpack.unpackb(body, raw=False)
        task_id = str(uuid.uuid4())
        with self._lock:
            self._queues.setdefault(queue_name, []).append(
                (next(self._seq), Published(task_id, decoded, priority)))
        return task_id

    def close(self) -> None:
        """Nothing to close; kept messages stay (a closed ``Publisher`` reconnects too)."""
        self.closed = True

    # -- for tests --------------------------------------------------------------------------------

    def queues(self) -> list[str]:
        """Names of the queues with messages waiting."""
        with self._lock:
            return sorted(self._queues)

    def messages(self, queue: str) -> list[Published]:
        """The messages waiting in ``queue``, in publish order."""
        with self._lock:
            return [message for _, message in self._queues.get(queue, [])]

    def queued(self, queue: str | None = None) -> int:
        """How many messages wait (in ``queue``, or in all queues)."""
        with self._lock:
            if queue is not None:
                return len(self._queues.get(queue, []))
            return sum(len(waiting) for waiting in self._queues.values())

    def take(self, queue: str | None = None) -> list[tuple[str, Published]]:
        """Remove and return the waiting messages (of ``queue``, or of all queues) with their
        queue names, in delivery order: higher priority first, then publish order."""
        with self._lock:
            names = [queue] if queue is not None else list(self._queues)
            taken = [(seq, name, message) for name in names
                     for seq, message in self._queues.pop(name, [])]
        taken.sort(key=lambda item: (-item[2].priority, item[0]))
        return [(name, message) for _, name, message in taken]
