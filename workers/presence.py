"""A worker's presence: a heartbeat in Redis saying what it serves and where, and the fallback for
models that failed to load here.

A gpu-pool worker loads its models before it consumes. A model that fails to load is not ready on
this worker: its queue is left to workers that can run it. If after ``load_failure_grace_s`` no
worker at all consumes that queue, this worker starts consuming it after all, and its jobs fail with
the load error, so nothing waits silently forever.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

from aidist.config import Settings
from aidist.errors import ConfigError
from aidist.transport import queue_stats
from db.interfaces import ResultCacheLike

log = logging.getLogger("aidist.worker")
HEARTBEAT_S = 5.0
DEFAULT_NAMESPACE = "aidist"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def claim_node_name(cache: ResultCacheLike, pool: str, namespace: str = DEFAULT_NAMESPACE, *,
                    limit: int = 1024) -> str:
    """The Celery node name of a worker started without ``--hostname``: the lowest free slot of
    its pool on this host, ``gpu-1@host``, ``gpu-2@host``, as ``celery multi`` names ``w1@host``.
    Stable across restarts (a restarted worker takes its old name back: a slot whose holder's pid
    is gone from this host is free at once), unique on a host (the slot is claimed atomically in
    Redis, and held by the presence heartbeat), so Flower keeps one row per worker and metrics
    one series, and the same name starts every runtime name recorded in Postgres. Outside the
    default namespace the name carries it (``gpu-1.staging@host``): Celery's control queues are
    per node name across the whole broker, whatever aidist's namespace."""
    host = socket.gethostname()
    suffix = "" if namespace == DEFAULT_NAMESPACE else f".{namespace}"

    def stale(held: dict[str, object]) -> bool:
        pid = held.get("pid")
        return held.get("host") == host and isinstance(pid, int) and not _pid_alive(pid)

    for slot in range(1, limit + 1):
        node = f"{pool}-{slot}{suffix}@{host}"
        info = {"node": node, "pool": pool, "host": host, "pid": os.getpid(), "ready": [],
                "not_ready": {}, "starting": True}
        if cache.claim_presence(node, info, HEARTBEAT_S * 3, stale):
            return node
    raise ConfigError(f"no free worker name of pool {pool} on {host} among {limit} slots; "
                      "pass --hostname")


class WorkerPresence:
    """One heartbeat per ``beat()``; run it with ``workers.periodic.Periodic``."""

    def __init__(self, settings: Settings, cache: ResultCacheLike, *, node: str, pool: str,
                 device: str, queue_of: Mapping[str, str],
                 consume: Callable[[str], None]) -> None:
        self.settings = settings
        self.cache = cache
        self.node = node
        self.info: dict[str, object] = {
            "node": node, "pool": pool, "device": device, "ready": [], "not_ready": {},
            "host": socket.gethostname(), "pid": os.getpid()}
        self.waiting: dict[str, str] = {}  # targets whose grace period is running
        self.queue_of = queue_of
        self.consume = consume
        self.started = time.monotonic()

    def serving(self, ready: list[str], not_ready: Mapping[str, str]) -> None:
        """What this worker serves, once its models have loaded (or failed to): announced from
        the next beat on; the grace period of those that failed starts now."""
        self.info = {**self.info, "ready": list(ready), "not_ready": dict(not_ready)}
        self.waiting = dict(not_ready)
        self.started = time.monotonic()

    def beat(self) -> float:
        """Announce this worker (and act on models whose grace period ended); returns the
        seconds until the next beat. The announcement expires on its own once beats stop."""
        self.cache.put_presence(self.node, self.info, ttl_s=HEARTBEAT_S * 3)
        self._check_waiting()
        return HEARTBEAT_S if not self.waiting else min(HEARTBEAT_S, 1.0)

    def _check_waiting(self) -> None:
        if not self.waiting or time.monotonic() - self.started < self.settings.load_failure_grace_s:
            return
        for target in list(self.waiting):
            queue = self.queue_of[target]
            (stats,) = queue_stats(self.settings.broker_url, [queue])
            if stats.consumers == 0:
                log.error("no worker can run %s after %.0fs; failing its jobs with the load "
                          "error: %s", target, self.settings.load_failure_grace_s,
                          self.waiting[target])
                self.consume(queue)
            del self.waiting[target]
