"""``InMemoryCache``: the result cache's contract (``db.interfaces.ResultCacheLike``) without Redis.

Results, completion notices, worker presence, alive marks and cancel marks, each as
``db.cache.ResultCache`` keeps them: marks and results lapse after their TTL (on ``clock``, which
a test may move forward), notices queue per reply key and ``wait_notices`` blocks until one
arrives or its timeout passes, as BLPOP does, so a waiting client wakes the moment a worker in
another thread notifies it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from db.cache import Notice

DEFAULT_NAMESPACE = "aidist"


class InMemoryCache:
    """``db.cache.ResultCache`` in memory, thread-safe (one lock, one condition for notices).

    For tests: ``results`` (cache key -> encoded result) and ``notices`` (reply key -> notices
    not read yet) are plain dicts to look into or change (``results.clear()`` is a flushed
    Redis); ``result_ttls`` holds the TTL each result was stored with; ``journal`` records the
    name of every write as it happens (``put_many``, ``notify``, ``mark_cancelled``,
    ``cache.close``: heartbeats and reads are not journaled), and may be the same list as an
    ``InMemoryStore``'s, for one timeline. ``expire_alive`` makes alive marks lapse now, as a
    dead worker's do.
    """

    def __init__(self, namespace: str = DEFAULT_NAMESPACE, *, journal: list[str] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.namespace = namespace
        self.journal: list[str] = journal if journal is not None else []
        self.clock = clock
        self.results: dict[str, bytes] = {}
        self.result_ttls: dict[str, int] = {}
        self.notices: dict[str, list[Notice]] = {}
        self._result_expiry: dict[str, float] = {}
        self._presence: dict[str, tuple[str, float]] = {}
        self._alive: dict[str, float] = {}
        self._cancelled: dict[str, float] = {}
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)

    # -- test helpers -----------------------------------------------------------------------------

    def expire_alive(self, *runners: str) -> None:
        """Let the alive marks of ``runners`` (all, if none named) lapse now, as if those worker
        processes had died."""
        with self._lock:
            for runner in runners or list(self._alive):
                self._alive.pop(runner, None)

    def _live(self, marks: dict[str, float], name: str) -> bool:
        expiry = marks.get(name)
        if expiry is None:
            return False
        if expiry <= self.clock():
            del marks[name]
            return False
        return True

    # -- ResultCacheLike --------------------------------------------------------------------------

    def reply_key(self, client_id: str) -> str:
        """The reply list a client reads its completion notices from (the real key format)."""
        return f"{self.namespace}:reply:{client_id}"

    def ping(self) -> None:
        """Always answers."""

    def get_many(self, cache_keys: Sequence[str]) -> list[bytes | None]:
        """Results for the keys, ``None`` where absent or past their TTL."""
        with self._lock:
            now = self.clock()
            found: list[bytes | None] = []
            for key in cache_keys:
                expiry = self._result_expiry.get(key)
                if expiry is not None and expiry <= now:
                    self.results.pop(key, None)
                    self._result_expiry.pop(key, None)
                found.append(self.results.get(key))
            return found

    def put_many(self, results: Mapping[str, bytes], ttl_s: int) -> None:
        """Store results with a TTL."""
        if not results:
            return
        self.journal.append("put_many")
        with self._lock:
            expiry = self.clock() + ttl_s
            for key, value in results.items():
                self.results[key] = bytes(value)
                self.result_ttls[key] = ttl_s
                self._result_expiry[key] = expiry

    def put_unless_cancelled(self, results: Mapping[str, bytes],
                             produced: Mapping[str, str | None], ttl_s: int) -> set[str]:
        """The produced jobs that carry a cancel mark; the results of the others stored (as
        ``put_many``, and journaled so)."""
        cancelled = self.cancelled_among(list(produced))
        kept = {key for job_id, key in produced.items() if job_id not in cancelled}
        self.put_many({key: value for key, value in results.items() if key in kept}, ttl_s)
        return cancelled

    def notify(self, notices: Mapping[str, Sequence[Notice]]) -> None:
        """Append notices to each reply list and wake the clients waiting on them."""
        if not notices:
            return
        self.journal.append("notify")
        with self._arrived:
            for reply_to, items in notices.items():
                if items:
                    self.notices.setdefault(reply_to, []).extend(items)
            self._arrived.notify_all()

    def put_and_notify(self, results: Mapping[str, bytes], ttl_s: int,
                       notices: Mapping[str, Sequence[Notice]]) -> None:
        """``put_many``, then ``notify`` of the lists that have notices (journaled as the
        two)."""
        self.put_many(results, ttl_s)
        self.notify({reply_to: items for reply_to, items in notices.items() if items})

    def wait_notices(self, reply_to: str, timeout_s: float, limit: int = 1000) -> list[Notice]:
        """Block up to ``timeout_s`` for the first notice, then take what else is there (up to
        ``limit`` more, as BLPOP and LPOP with a count do)."""
        deadline = time.monotonic() + max(timeout_s, 0.01)
        with self._arrived:
            while not self.notices.get(reply_to):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                self._arrived.wait(remaining)
            pending = self.notices[reply_to]
            taken, rest = pending[: limit + 1], pending[limit + 1 :]
            if rest:
                self.notices[reply_to] = rest
            else:
                del self.notices[reply_to]
            return taken

    def put_presence(self, node: str, info: Mapping[str, object], ttl_s: float) -> None:
        """Announce a worker for ``ttl_s`` (kept as JSON, as Redis keeps it)."""
        text = json.dumps(dict(info))
        with self._lock:
            self._presence[node] = (text, self.clock() + ttl_s)

    def claim_presence(self, node: str, info: Mapping[str, object], ttl_s: float,
                       stale: Callable[[dict[str, object]], bool]) -> bool:
        """Take ``node`` unless a live announcement that ``stale`` does not reject holds it."""
        with self._lock:
            held = self._presence.get(node)
            if held is not None and held[1] > self.clock() and not stale(json.loads(held[0])):
                return False
            self._presence[node] = (json.dumps(dict(info)), self.clock() + ttl_s)
            return True

    def drop_presence(self, node: str) -> None:
        """Withdraw a worker's announcement."""
        with self._lock:
            self._presence.pop(node, None)

    def put_alive(self, runner: str, ttl_s: float) -> None:
        """Say that the process ``runner`` is alive for ``ttl_s``."""
        with self._lock:
            self._alive[runner] = self.clock() + ttl_s

    def alive_among(self, runners: Sequence[str]) -> set[str]:
        """Those of ``runners`` whose alive mark has not lapsed."""
        with self._lock:
            return {runner for runner in runners if self._live(self._alive, runner)}

    def presences(self) -> list[dict[str, object]]:
        """Every live worker's announcement."""
        with self._lock:
            now = self.clock()
            for node in [n for n, (_, expiry) in self._presence.items() if expiry <= now]:
                del self._presence[node]
            texts = [text for text, _ in self._presence.values()]
        loaded: list[dict[str, object]] = [json.loads(text) for text in texts]
        return loaded

    def mark_cancelled(self, job_ids: Sequence[str], ttl_s: float) -> None:
        """Mark jobs cancelled for ``ttl_s`` (a worker holding them drops them)."""
        if not job_ids:
            return
        self.journal.append("mark_cancelled")
        with self._lock:
            expiry = self.clock() + ttl_s
            for job_id in job_ids:
                self._cancelled[job_id] = expiry

    def cancelled_among(self, job_ids: Sequence[str]) -> set[str]:
        """Those of ``job_ids`` that carry a cancel mark."""
        with self._lock:
            return {job_id for job_id in job_ids if self._live(self._cancelled, job_id)}

    def results_and_cancelled(self, cache_keys: Sequence[str], job_ids: Sequence[str]
                              ) -> tuple[list[bytes | None], set[str]]:
        """``get_many`` and ``cancelled_among`` at once."""
        return self.get_many(cache_keys), self.cancelled_among(job_ids)

    def close(self) -> None:
        """Nothing to close; the contents stay readable."""
        self.journal.append("cache.close")
