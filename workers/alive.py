"""Alive marks: each process that runs jobs says in Redis, every second, that it is alive.

A broker restart (or a network partition) closes a worker's connection while its batch goes on,
and the broker redelivers that batch's messages elsewhere. A redelivered job whose holder's mark is
fresh is not taken over: its message waits until that worker commits (the copy is then skipped)
or dies (the mark expires within ``ALIVE_TTL_S``, and the job is taken over).
"""

from __future__ import annotations

from workers.hooks import ProcessView, WorkerHook
from workers.periodic import Periodic

ALIVE_EVERY_S = 1.0
ALIVE_TTL_S = 5.0


class AliveMarks(WorkerHook):
    """Starts a daemon thread renewing this process's mark once the process runs jobs."""

    def __init__(self, every_s: float = ALIVE_EVERY_S, ttl_s: float = ALIVE_TTL_S) -> None:
        self.every_s = every_s
        self.ttl_s = ttl_s

    def process_started(self, process: ProcessView) -> None:
        def beat() -> float:
            process.cache.put_alive(process.name, self.ttl_s)
            return self.every_s

        Periodic("aidist-alive", beat, retry_s=self.every_s).start()
