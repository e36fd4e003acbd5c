"""The Redis side: results under content keys (binary, with a TTL) and completion notices.

After the state commit, a worker stores a batch's results and pushes one notice per job onto the
submitting client's reply list, in one command, so a client waiting on thousands of jobs reads
their completions in bulk instead of polling Postgres for each.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import cast

import msgpack
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError, WatchError
from redis.exceptions import TimeoutError as RedisTimeoutError

from aidist.config import redact_url
from aidist.errors import CacheError, ServiceUnavailable

SERVICE = "Redis"
REPLY_TTL_S = 3600

# The commit's one round trip (``ResultCache.put_unless_cancelled``). KEYS: the produced jobs'
# cancel marks (ARGV[2] of them), then the result keys. ARGV: the TTL, the number of jobs, each
# result's value, then each result's owners (the 1-based numbers of its jobs, comma-separated).
# A result is stored unless every job that produced it is cancelled; the cancelled jobs'
# numbers come back. A script, so the look and the writes see the same marks.
_PUT_UNLESS_CANCELLED = """
local jobs = tonumber(ARGV[2])
local results = #KEYS - jobs
local cancelled, out = {}, {}
for i = 1, jobs do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    cancelled[i] = true
    out[#out + 1] = i
  end
end
for r = 1, results do
  for owner in string.gmatch(ARGV[2 + results + r], '%d+') do
    if not cancelled[tonumber(owner)] then
      redis.call('SET', KEYS[jobs + r], ARGV[2 + r], 'EX', ARGV[1])
      break
    end
  end
end
return out
"""

# ``ResultCache.put_and_notify`` (and so ``put_many`` and ``notify``) as one command: a pipeline
# of a SET per result cost the worker more CPU than the rest of a tiny job's commit (redis-py
# builds each command in Python).
# KEYS: the result keys, then the reply lists. ARGV: the TTL of results, that of reply lists,
# the number of results, each result's value, then per reply list its number of notices and
# the notices.
_PUT_AND_NOTIFY = """
local results = tonumber(ARGV[3])
for i = 1, results do
  redis.call('SET', KEYS[i], ARGV[3 + i], 'EX', ARGV[1])
end
local at = 4 + results
for list = results + 1, #KEYS do
  local count = tonumber(ARGV[at])
  for first = at + 1, at + count, 1000 do
    redis.call('RPUSH', KEYS[list], unpack(ARGV, first, math.min(first + 999, at + count)))
  end
  redis.call('EXPIRE', KEYS[list], ARGV[2])
  at = at + count + 1
end
return 0
"""


@dataclass(frozen=True, slots=True)
class Notice:
    """A job finished: its id, final status, error text (if failed) and, for a small result,
    the result's bytes (so a client waiting on one job needs no second round trip to read it)."""

    job_id: str
    status: str
    error: str | None = None
    result: bytes | None = None


class ResultCache:
    """Results by content key, and reply lists. Thread-safe (redis-py pools connections)."""

    def __init__(self, client: redis.Redis, namespace: str, url: str) -> None:
        self.client = client
        self.namespace = namespace
        self._url = redact_url(url)
        self._put_unless_cancelled = client.register_script(_PUT_UNLESS_CANCELLED)
        self._put_and_notify = client.register_script(_PUT_AND_NOTIFY)
        self._blmpop = True  # until the server says it has no BLMPOP (before Redis 7)

    @classmethod
    def connect(cls, redis_url: str, namespace: str, connect_timeout_s: float = 5.0) -> ResultCache:
        """Build from a URL; connections open lazily."""
        client = redis.Redis.from_url(
            redis_url,
            socket_connect_timeout=connect_timeout_s,
            health_check_interval=30,
        )
        return cls(client, namespace, redis_url)

    @contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise ServiceUnavailable(SERVICE, self._url, str(exc) or type(exc).__name__) from exc
        except RedisError as exc:
            raise CacheError(f"Redis command failed: {exc}") from exc

    def result_key(self, cache_key: str) -> str:
        """Redis key of a result."""
        return f"{self.namespace}:result:{cache_key}"

    def cancel_key(self, job_id: str) -> str:
        """The Redis key of a job's cancel mark."""
        return f"{self.namespace}:cancelled:{job_id}"

    def reply_key(self, client_id: str) -> str:
        """Redis list a client reads its completion notices from."""
        return f"{self.namespace}:reply:{client_id}"

    def ping(self) -> None:
        """Raise ``ServiceUnavailable`` unless Redis answers."""
        with self._guard():
            self.client.ping()

    def get_many(self, cache_keys: Sequence[str]) -> list[bytes | None]:
        """Results for the keys, ``None`` where absent; one round trip."""
        if not cache_keys:
            return []
        with self._guard():
            # The client does not decode responses, so values are bytes (or None if absent).
            values = self.client.mget([self.result_key(k) for k in cache_keys])
            return list(cast("list[bytes | None]", values))

    def put_many(self, results: Mapping[str, bytes], ttl_s: int) -> None:
        """Store results with a TTL in one command (the commit's script, with no notices)."""
        self.put_and_notify(results, ttl_s, {})

    def put_unless_cancelled(self, results: Mapping[str, bytes],
                             produced: Mapping[str, str | None], ttl_s: int) -> set[str]:
        """A worker's commit, one round trip: those of the ``produced`` jobs (job id -> the
        cache key of its result, ``None`` for one whose output went on to a next step) that
        carry a cancel mark, while the results (cache key -> bytes) are stored with a TTL,
        except one every job of which was cancelled (it is not cached)."""
        if not results and not produced:
            return set()
        ids = list(produced)
        number = {job_id: str(i) for i, job_id in enumerate(ids, start=1)}
        owners: dict[str, list[str]] = {key: [] for key in results}
        for job_id, key in produced.items():
            if key in owners:
                owners[key].append(number[job_id])
        keys = [self.cancel_key(job_id) for job_id in ids] + [self.result_key(k) for k in results]
        args: list[bytes | str | int] = [ttl_s, len(ids), *results.values(),
                                         *(",".join(owners[k]) for k in results)]
        with self._guard():
            found = self._put_unless_cancelled(keys=keys, args=args)
        return {ids[int(i) - 1] for i in cast("list[int]", found)}

    def notify(self, notices: Mapping[str, Sequence[Notice]]) -> None:
        """Push notices onto each reply list (key -> notices), one command for all."""
        self.put_and_notify({}, 0, notices)

    def put_and_notify(self, results: Mapping[str, bytes], ttl_s: int,
                       notices: Mapping[str, Sequence[Notice]]) -> None:
        """``put_many`` and then ``notify``, in one command (a script): the commit of a worker
        whose results were written to Postgres with their jobs' states just before (a client
        that sees a job succeeded before its result is here reads that durable copy). Reply
        lists with no notice are left alone."""
        lists = {reply_to: items for reply_to, items in notices.items() if items}
        if not results and not lists:
            return
        args: list[bytes | str | int] = [ttl_s, REPLY_TTL_S, len(results), *results.values()]
        for items in lists.values():
            args.append(len(items))
            args.extend(msgpack.packb([n.job_id, n.status, n.error] if n.result is None
                                      else [n.job_id, n.status, n.error, n.result])
                        for n in items)
        with self._guard():
            self._put_and_notify(keys=[*map(self.result_key, results), *lists], args=args)

    def wait_notices(self, reply_to: str, timeout_s: float, limit: int = 1000) -> list[Notice]:
        """Block up to ``timeout_s`` for the first notice, then take what else is there (up to
        ``limit`` more). One ``BLMPOP`` (Redis 7) where a ``BLPOP`` and an ``LPOP`` took two
        round trips, which a client waiting on one job at a time paid for every job; a server
        without it (Redis 6) gets the two."""
        with self._guard():
            if self._blmpop:
                try:
                    popped = self.client.blmpop(max(timeout_s, 0.01), 1, reply_to,
                                                direction="LEFT", count=limit + 1)
                    raw = cast("list[bytes]", popped[1]) if popped else []
                except ResponseError as exc:
                    if "unknown command" not in str(exc).lower():
                        raise
                    self._blmpop = False
            if not self._blmpop:
                raw = self._blpop_then_lpop(reply_to, timeout_s, limit)
        notices = []
        for item in raw:
            fields = msgpack.unpackb(item, raw=False)
            notices.append(Notice(*fields[:4]))
        return notices

    def _blpop_then_lpop(self, reply_to: str, timeout_s: float, limit: int) -> list[bytes]:
        first = self.client.blpop([reply_to], timeout=max(timeout_s, 0.01))
        if first is None:
            return []
        raw = [cast(bytes, first[1])]
        # With a count, LPOP answers a list (or None when the list is empty).
        more = cast("list[bytes] | None", self.client.lpop(reply_to, limit))
        if more:
            raw.extend(more)
        return raw

    def put_presence(self, node: str, info: Mapping[str, object], ttl_s: float) -> None:
        """Announce a worker (what it serves, where) for ``ttl_s``; heartbeats renew it."""
        with self._guard():
            self.client.set(f"{self.namespace}:worker:{node}", json.dumps(info),
                            px=int(ttl_s * 1000))

    def claim_presence(self, node: str, info: Mapping[str, object], ttl_s: float,
                       stale: Callable[[dict[str, object]], bool]) -> bool:
        """Take the node name ``node`` for this worker if no live worker holds it: free, or held
        by an announcement that ``stale`` judges dead (its pid gone on this host). Atomic (SET NX,
        else WATCH and replace), so two workers starting at once never take the same name."""
        key = f"{self.namespace}:worker:{node}"
        value = json.dumps(info)
        with self._guard():
            if self.client.set(key, value, px=int(ttl_s * 1000), nx=True):
                return True
            with self.client.pipeline() as pipe:
                try:
                    pipe.watch(key)  # type: ignore[no-untyped-call]
                    held = pipe.get(key)
                    if held is not None and not stale(json.loads(held)):
                        return False
                    pipe.multi()
                    pipe.set(key, value, px=int(ttl_s * 1000))
                    pipe.execute()
                except WatchError:
                    return False
        return True

    def drop_presence(self, node: str) -> None:
        """Withdraw a stopping worker's announcement, freeing its node name at once."""
        with self._guard():
            self.client.delete(f"{self.namespace}:worker:{node}")

    def put_alive(self, runner: str, ttl_s: float) -> None:
        """Say that the process ``runner`` (a worker runtime's name) is alive for ``ttl_s``: a
        redelivered job it still runs is not taken over by another worker meanwhile."""
        with self._guard():
            self.client.set(f"{self.namespace}:alive:{runner}", b"1", px=int(ttl_s * 1000))

    def alive_among(self, runners: Sequence[str]) -> set[str]:
        """Those of ``runners`` whose alive mark has not expired."""
        if not runners:
            return set()
        names = list(runners)
        with self._guard():
            values = self.client.mget([f"{self.namespace}:alive:{name}" for name in names])
        return {name for name, value in zip(names, values, strict=True) if value is not None}

    def mark_cancelled(self, job_ids: Sequence[str], ttl_s: float) -> None:
        """Say that these jobs were cancelled while they may be running: a worker holding them
        drops them before its next model batch and does not cache their results. The row in
        Postgres is the truth; the mark only needs to outlive the longest batch."""
        if not job_ids:
            return
        with self._guard():
            pipe = self.client.pipeline(transaction=False)
            for job_id in job_ids:
                pipe.set(self.cancel_key(job_id), b"1", px=int(ttl_s * 1000))
            pipe.execute()

    def cancelled_among(self, job_ids: Sequence[str]) -> set[str]:
        """Those of ``job_ids`` that carry a cancel mark (one MGET)."""
        if not job_ids:
            return set()
        names = list(job_ids)
        with self._guard():
            values = self.client.mget([self.cancel_key(name) for name in names])
        return {name for name, value in zip(names, values, strict=True) if value is not None}

    def results_and_cancelled(self, cache_keys: Sequence[str], job_ids: Sequence[str]
                              ) -> tuple[list[bytes | None], set[str]]:
        """``get_many`` and ``cancelled_among`` in one MGET: what a worker asks before it runs
        a flush (results stored meanwhile, jobs cancelled meanwhile), in one round trip."""
        names = list(job_ids)
        if not cache_keys and not names:
            return [], set()
        with self._guard():
            values = cast("list[bytes | None]", self.client.mget(
                [self.result_key(k) for k in cache_keys]
                + [self.cancel_key(name) for name in names]))
        marks = values[len(cache_keys):]
        return (list(values[:len(cache_keys)]),
                {name for name, value in zip(names, marks, strict=True) if value is not None})

    def presences(self) -> list[dict[str, object]]:
        """Every live worker's announcement."""
        with self._guard():
            keys = list(self.client.scan_iter(match=f"{self.namespace}:worker:*", count=1000))
            values = cast(list[bytes | None], self.client.mget(keys)) if keys else []
        return [json.loads(value) for value in values if value is not None]

    def delete_namespace(self) -> int:
        """Delete every key of this namespace (tests and `aidist` resets); returns how many."""
        deleted = 0
        with self._guard():
            batch = []
            for key in self.client.scan_iter(match=f"{self.namespace}:*", count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    deleted += self.client.delete(*batch)
                    batch = []
            if batch:
                deleted += self.client.delete(*batch)
        return deleted

    def close(self) -> None:
        """Close pooled connections."""
        self.client.close()
