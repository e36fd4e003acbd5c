"""db.cache.ResultCache against the real Redis: binary results with a TTL, reply-list notices."""

from __future__ import annotations

import time
import uuid

import msgpack
import numpy as np
import pytest

from aidist import codec
from aidist.config import Settings
from db.cache import REPLY_TTL_S, Notice, ResultCache
from tests.conftest import wait_for
from tests.integration.conftest import unique

pytestmark = pytest.mark.integration


def test_put_many_get_many_round_trips_binary_values(cache: ResultCache) -> None:
    keys = [uuid.uuid4().hex for _ in range(3)]
    vector = np.arange(8, dtype=np.float32) / 7
    values = {
        keys[0]: bytes(range(256)),
        keys[1]: codec.encode(vector),
        keys[2]: b"",
    }
    cache.put_many(values, 60)
    absent = uuid.uuid4().hex
    got = cache.get_many([keys[1], absent, keys[0], keys[2]])
    assert got == [values[keys[1]], None, values[keys[0]], b""]
    decoded = codec.decode(got[0] or b"")
    assert decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, vector)
    assert cache.get_many([]) == []


def test_results_live_under_the_namespace_with_a_ttl(cache: ResultCache) -> None:
    key = uuid.uuid4().hex
    cache.put_many({key: b"\x00\x01"}, 120)
    redis_key = cache.result_key(key)
    assert redis_key.startswith(f"{cache.namespace}:")
    assert cache.client.get(redis_key) == b"\x00\x01"
    ttl = cache.client.ttl(redis_key)
    assert 0 < ttl <= 120


def test_notices_arrive_in_order_on_each_reply_list(cache: ResultCache) -> None:
    first = cache.reply_key(unique("client"))
    second = cache.reply_key(unique("client"))
    ids = [str(uuid.uuid4()) for _ in range(4)]
    cache.notify({
        first: [Notice(ids[0], "succeeded"), Notice(ids[1], "failed", "ValueError: boom"),
                Notice(ids[2], "expired")],
        second: [Notice(ids[3], "cancelled")],
    })
    assert 0 < cache.client.ttl(first) <= REPLY_TTL_S
    assert cache.wait_notices(first, 1.0) == [
        Notice(ids[0], "succeeded", None),
        Notice(ids[1], "failed", "ValueError: boom"),
        Notice(ids[2], "expired", None),
    ]
    assert cache.wait_notices(second, 1.0) == [Notice(ids[3], "cancelled", None)]
    assert cache.client.exists(first, second) == 0  # consumed


def test_a_notice_carries_result_bytes_and_a_three_field_one_still_reads(
        cache: ResultCache) -> None:
    reply = cache.reply_key(unique("client"))
    with_result, without = str(uuid.uuid4()), str(uuid.uuid4())
    cache.notify({reply: [Notice(with_result, "succeeded", None, b"\x92\x00\xff")]})
    cache.client.rpush(reply, msgpack.packb([without, "succeeded", None]))  # an older worker's
    assert cache.wait_notices(reply, 1.0) == [
        Notice(with_result, "succeeded", None, b"\x92\x00\xff"),
        Notice(without, "succeeded", None, None),
    ]


def test_put_and_notify_stores_results_and_pushes_notices_together(cache: ResultCache) -> None:
    # A worker's commit when results have a durable copy: both in one pipeline. A reply list
    # left with no notice (its job's row did not change) is skipped, not an empty RPUSH.
    reply, silent = cache.reply_key(unique("client")), cache.reply_key(unique("client"))
    key, job_id = uuid.uuid4().hex, str(uuid.uuid4())
    cache.put_and_notify({key: b"\x00result"}, 60,
                         {reply: [Notice(job_id, "succeeded", None, b"\x00result")], silent: []})
    assert cache.get_many([key]) == [b"\x00result"]
    assert 0 < cache.client.ttl(cache.result_key(key)) <= 60
    assert cache.wait_notices(reply, 1.0) == [Notice(job_id, "succeeded", None, b"\x00result")]
    assert cache.client.exists(silent) == 0
    cache.put_and_notify({}, 60, {silent: []})  # nothing to do: no round trip, no error
    cache.notify({silent: []})


def test_wait_notices_takes_at_most_limit_and_keeps_the_rest(cache: ResultCache) -> None:
    reply = cache.reply_key(unique("client"))
    ids = [str(uuid.uuid4()) for _ in range(5)]
    cache.notify({reply: [Notice(job_id, "succeeded") for job_id in ids]})
    first = cache.wait_notices(reply, 1.0, limit=2)
    assert [notice.job_id for notice in first] == ids[:3]  # the blocking pop plus `limit` more
    rest = cache.wait_notices(reply, 1.0)
    assert [notice.job_id for notice in rest] == ids[3:]


def test_wait_notices_without_blmpop_takes_two_round_trips_alike(cache: ResultCache) -> None:
    # What a server before Redis 7 gets (the client falls back on "unknown command").
    cache._blmpop = False
    reply = cache.reply_key(unique("client"))
    ids = [str(uuid.uuid4()) for _ in range(4)]
    cache.notify({reply: [Notice(job_id, "succeeded") for job_id in ids]})
    assert [n.job_id for n in cache.wait_notices(reply, 1.0, limit=2)] == ids[:3]
    assert [n.job_id for n in cache.wait_notices(reply, 1.0)] == ids[3:]
    assert cache.wait_notices(reply, 0.05) == []


def test_wait_notices_on_an_empty_list_times_out_with_nothing(cache: ResultCache) -> None:
    reply = cache.reply_key(unique("client"))
    started = time.monotonic()
    assert cache.wait_notices(reply, 0.2) == []
    assert time.monotonic() - started < 10  # returned on its own timeout, not hung


def test_delete_namespace_removes_only_its_own_keys(settings: Settings,
                                                    cache: ResultCache) -> None:
    mine = ResultCache.connect(settings.redis_url, unique("del"))
    other = ResultCache.connect(settings.redis_url, unique("keep"))
    try:
        mine.put_many({f"k{i}": b"v" for i in range(1200)}, 60)  # more than one delete batch
        mine.notify({mine.reply_key("c"): [Notice(str(uuid.uuid4()), "succeeded")]})
        other.put_many({"k0": b"kept"}, 60)
        session_key = uuid.uuid4().hex
        cache.put_many({session_key: b"session"}, 60)

        assert mine.delete_namespace() == 1201
        assert mine.get_many(["k0", "k1199"]) == [None, None]
        assert mine.client.exists(mine.reply_key("c")) == 0
        assert other.get_many(["k0"]) == [b"kept"]
        assert cache.get_many([session_key]) == [b"session"]
        assert mine.delete_namespace() == 0
    finally:
        other.delete_namespace()
        mine.delete_namespace()
        other.close()
        mine.close()


def test_alive_marks_expire(cache: ResultCache) -> None:
    runner, steady = (f"host:{n}:{uuid.uuid4().hex[:6]}" for n in (1, 2))
    cache.put_alive(runner, ttl_s=60)
    cache.put_alive(steady, ttl_s=60)
    assert cache.alive_among([runner, steady, "never-seen"]) == {runner, steady}
    cache.put_alive(runner, ttl_s=0.05)  # its last beat: the process died after it
    wait_for(lambda: runner not in cache.alive_among([runner]), timeout=30,
             message="the alive mark to expire")
    assert cache.alive_among([]) == set()


def test_results_and_cancel_marks_come_in_one_call(cache: ResultCache) -> None:
    stored, absent = unique("key"), unique("key")
    cancelled, running = str(uuid.uuid4()), str(uuid.uuid4())
    cache.put_many({stored: b"\x01"}, 60)
    cache.mark_cancelled([cancelled], 60)
    assert cache.results_and_cancelled([stored, absent], [cancelled, running]) == (
        [b"\x01", None], {cancelled})
    assert cache.results_and_cancelled([], []) == ([], set())


def test_a_commit_stores_results_unless_every_job_of_one_was_cancelled(
        cache: ResultCache) -> None:
    """One script: the cancelled jobs come back, a result whose jobs were all cancelled is not
    stored, one that a live job shares is (the cache is keyed by content), with the TTL."""
    alone, shared = uuid.uuid4().hex, uuid.uuid4().hex
    gone, kept, twin, forwarded = (str(uuid.uuid4()) for _ in range(4))
    cache.mark_cancelled([gone, twin], 60)
    found = cache.put_unless_cancelled({alone: b"a", shared: b"\x00s"},
                                       {gone: alone, kept: shared, twin: shared, forwarded: None},
                                       90)
    assert found == {gone, twin}
    assert cache.get_many([alone, shared]) == [None, b"\x00s"]
    assert 0 < cache.client.ttl(cache.result_key(shared)) <= 90
    assert cache.put_unless_cancelled({}, {forwarded: None}, 90) == set()
    assert cache.put_unless_cancelled({}, {}, 90) == set()
