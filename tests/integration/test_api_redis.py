"""The API's lean hiredis transport against the real test Redis: db selection, replies, errors, timeouts, and many
concurrent calls multiplexed over one connection (each gets its own replies, a cancelled one disturbs none)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis
from redis import exceptions as rex

from ml.api_redis import FastRedis

pytestmark = pytest.mark.integration


def _db1(url: str) -> str:
    return url.replace("db=0", "db=1") if "db=0" in url else url.rstrip("/0") + "/1"


def test_replies_in_order_from_the_selected_db(redis_url) -> None:
    key = f"fast:{uuid.uuid4().hex}"
    url = _db1(redis_url)
    sync = redis.Redis.from_url(url)
    sync.zadd(key + ":z", {"7": 0.5, "3": 0.25})
    sync.hset(key + ":h", mapping={"7": "hot|1"})
    sync.set(key, "v")

    async def go() -> list:
        fast = FastRedis(url, timeout_s=2)
        try:
            return await fast.pipeline([("GET", key), ("ZREVRANGE", key + ":z", 0, -1, "WITHSCORES"),
                                        ("HGETALL", key + ":h"), ("ZSCORE", key + ":z", 3), ("EXISTS", key + ":no"),
                                        ("GET", key + ":no")])
        finally:
            await fast.aclose()

    try:
        # RESP3 (the connection says HELLO 3): scores are doubles, a hash is a dict
        assert asyncio.run(go()) == [b"v", [[b"7", 0.5], [b"3", 0.25]], {b"7": b"hot|1"}, 0.25, 0, None]
        assert redis.Redis.from_url(redis_url).get(key) is None  # it really was db 1
    finally:
        sync.delete(key, key + ":z", key + ":h")
        sync.close()


def test_errors_timeouts_and_one_connection(redis_url, tmp_path) -> None:
    async def go() -> None:
        fast = FastRedis(redis_url, timeout_s=0.2)
        with pytest.raises(rex.ResponseError):
            await fast.pipeline([("INCR", "fast-test-not-a-number"), ("SET", "fast-test-not-a-number", "x")])
        with pytest.raises(rex.TimeoutError):  # a reply slower than timeout_s
            await fast.pipeline([("BLPOP", f"fast:{uuid.uuid4().hex}", 1)])
        # calls queued behind a slow one on the shared connection fail with it (their replies would come after it)
        blocked = [fast.pipeline([("BLPOP", f"fast:{uuid.uuid4().hex}", 1)]),
                   *[fast.pipeline([("PING",)]) for _ in range(5)]]
        outcomes = await asyncio.gather(*blocked, return_exceptions=True)
        assert all(isinstance(o, rex.TimeoutError) for o in outcomes), outcomes
        replies = await asyncio.gather(*[fast.pipeline([("PING",)]) for _ in range(20)])
        assert all(r == [b"PONG"] for r in replies)  # the timed-out connection was dropped; a new one serves these
        assert fast.connections == 1
        await fast.aclose()
        assert fast.connections == 0
        down = FastRedis(f"unix://{tmp_path / 'none.sock'}", timeout_s=0.2)
        with pytest.raises(rex.ConnectionError):
            await down.pipeline([("PING",)])

    redis.Redis.from_url(redis_url).set("fast-test-not-a-number", "x")
    try:
        asyncio.run(go())
    finally:
        redis.Redis.from_url(redis_url).delete("fast-test-not-a-number")


def test_concurrent_calls_each_get_their_own_replies(redis_url) -> None:
    prefix = f"fast:{uuid.uuid4().hex}"
    sync = redis.Redis.from_url(redis_url)
    sync.mset({f"{prefix}:{i}": f"value-{i}" for i in range(300)})

    async def go() -> list:
        fast = FastRedis(redis_url, timeout_s=2)
        try:
            cancelled = asyncio.ensure_future(fast.pipeline([("GET", f"{prefix}:0"), ("GET", f"{prefix}:1")]))
            calls = [fast.pipeline([("GET", f"{prefix}:{i}"), ("STRLEN", f"{prefix}:{i}"), ("GET", f"{prefix}:none")])
                     for i in range(300)]
            await asyncio.sleep(0)
            cancelled.cancel()  # its replies still arrive on the shared connection and must be skipped
            replies = await asyncio.gather(*calls)
            assert fast.connections == 1
            return replies
        finally:
            await fast.aclose()

    try:
        expected = [[f"value-{i}".encode(), len(f"value-{i}"), None] for i in range(300)]
        assert asyncio.run(go()) == expected
    finally:
        sync.delete(*[f"{prefix}:{i}" for i in range(300)])
        sync.close()


@pytest.mark.parametrize(("url", "cluster", "ok"), [
    ("redis://h:6379/0", False, True), ("unix:///tmp/r.sock?db=0", False, True),
    ("rediss://h:6379/0", False, False), ("redis://h:6379/0", True, False),
])
def test_tls_and_clusters_are_left_to_redis_py(url, cluster, ok) -> None:
    assert FastRedis.supports(url, cluster) is ok
