"""API-key hashing, bearer-token checks and the in-process rate-limit windows (no server needed)."""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import time

import jwt
import pytest
from pydantic import SecretStr

from ml.api_auth import Authenticator, _LocalWindows, hash_api_key, new_api_key
from ml.errors import ConfigError
from ml.settings import Settings


def test_new_keys_are_random_and_hash_to_their_digest() -> None:
    (k1, h1), (k2, h2) = new_api_key(), new_api_key()
    assert k1 != k2 and k1.startswith("pk_") and len(k1) > 40
    assert h1 == hashlib.sha256(k1.encode()).hexdigest() == hash_api_key(k1)
    assert h1 != h2


@pytest.mark.parametrize("token", [None, "", "pk_wrong", "x" * 500, "a.b.c", "Bearer pk_x"])
def test_unknown_tokens_are_refused(token) -> None:
    key, digest = new_api_key()
    assert Authenticator(Settings(api_key_hashes=[digest])).authenticate(token) is None


def test_any_configured_key_is_accepted_and_the_principal_hides_the_key() -> None:
    keys = [new_api_key() for _ in range(3)]
    auth = Authenticator(Settings(api_key_hashes=[h.upper() + " " for _, h in keys]))  # case and spaces tolerated
    for key, digest in keys:
        principal = auth.authenticate(key)
        assert principal is not None and principal.kind == "api_key"
        assert principal.id == "key:" + digest[:12] and key not in principal.id


def test_no_credentials_configured_refuses_everything() -> None:
    auth = Authenticator(Settings(api_key_hashes=[]))
    assert not auth.configured and auth.authenticate("pk_anything") is None


@pytest.mark.parametrize("bad", ["abc", "g" * 64, "0" * 63])
def test_malformed_digests_fail_loudly(bad) -> None:
    with pytest.raises(ConfigError, match="sha256 hex digests"):
        Authenticator(Settings(api_key_hashes=[bad]))


def test_jwt_needs_signature_expiry_subject_and_audience() -> None:
    secret = "s" * 64
    auth = Authenticator(Settings(api_jwt_secret=SecretStr(secret), api_jwt_audience="store"))
    now = int(time.time())

    def tok(claims: dict, key: str = secret, alg: str = "HS256") -> str:
        return jwt.encode(claims, key, alg)

    ok = auth.authenticate(tok({"sub": "shop-1", "aud": "store", "exp": now + 60}))
    assert ok is not None and (ok.id, ok.kind) == ("jwt:shop-1", "jwt")
    for bad in (
        tok({"sub": "shop-1", "aud": "store", "exp": now - 1}),  # expired
        tok({"sub": "shop-1", "aud": "store"}),  # no exp
        tok({"aud": "store", "exp": now + 60}),  # no sub
        tok({"sub": "shop-1", "aud": "other", "exp": now + 60}),  # wrong audience
        tok({"sub": "shop-1", "aud": "store", "exp": now + 60}, key="t" * 64),  # forged
        tok({"sub": "shop-1", "aud": "store", "exp": now + 60}, key="s" * 64, alg="HS512"),  # algorithm not allowed
    ):
        assert auth.authenticate(bad) is None


@pytest.mark.parametrize("spec", ["5 per 10 seconds", "3 per minute", "1 per second"])
def test_in_process_windows_decide_like_the_limits_library(monkeypatch, spec) -> None:
    """memory:// counters are computed in place (_LocalWindows); hit for hit, across window boundaries, they admit,
    refuse and report the reset time exactly as the limits library's sliding window counter on its memory storage."""
    from limits import parse
    from limits.aio.strategies import SlidingWindowCounterRateLimiter
    from limits.storage import storage_from_string

    clock = [1_700_000_003.25]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    item, period = parse(spec), parse(spec).get_expiry()
    local, rng = _LocalWindows(), random.Random(7)

    async def go() -> list[bool]:
        reference = SlidingWindowCounterRateLimiter(storage_from_string("async+memory://"))
        decisions = []
        for step in range(600):
            clock[0] += rng.choice([0.0, 0.0, 0.05, 0.4, 1.3, period / 3, period * 1.1, period * 2.5])
            if rng.random() < 0.75:
                expected, got = await reference.hit(item, "ns", "c"), local.hit("c", item.amount, period)
            else:
                expected, got = await reference.test(item, "ns", "c"), local.test("c", item.amount, period)
            assert got == expected, (step, clock[0])
            stats = await reference.get_window_stats(item, "ns", "c")
            assert math.isclose(local.reset_in("c", period), stats.reset_time - clock[0], abs_tol=1e-6), step
            decisions.append(got)
        return decisions

    decisions = asyncio.run(go())
    assert True in decisions and False in decisions  # both outcomes were exercised
