"""Access control of the lookup API: who calls (bearer tokens: API keys stored as sha256 digests, optionally
JWTs) and how often (per-client rate limits).

API keys are random strings handed to a client once; only their sha256 hex digest is configured
(``PROPENSITY_API_KEY_HASHES='["<digest>", ...]'``), so a leaked config file leaks no usable key. A presented key is
hashed and compared with every configured digest in constant time (``hmac.compare_digest``, no early exit).
With ``api_jwt_secret`` set, JWTs signed with it (``api_jwt_algorithms``; ``exp`` and ``sub`` required, ``aud``
checked when ``api_jwt_audience`` is set) are accepted as well.

Rate limits (``api_rate_limit``, e.g. ``"600/minute;20/second"``; ``none`` turns them off) are sliding-window
counters (the ``limits`` library's "sliding window counter" rule) keyed on :attr:`Principal.id`. With
``api_rate_limit_storage=memory://`` (the default) each worker counts in its own memory, computed in place by
:class:`_LocalWindows` (tests check it decides exactly as ``limits``' memory storage); with a Redis URL the counters
are shared by every worker and host, through ``limits``. The failed-login limit uses the same machinery.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from pydantic import SecretStr

from ml.errors import ConfigError
from ml.settings import Settings

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
KEY_PREFIX = "pk_"


def hash_api_key(key: str) -> str:
    """The sha256 hex digest under which an API key is configured."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_api_key() -> tuple[str, str]:
    """A new random API key (256 bits, URL-safe, prefixed ``pk_``) and its digest for the config."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    return key, hash_api_key(key)


@dataclass(frozen=True)
class Principal:
    """Who made a request: ``id`` keys the rate limit and never contains a secret."""

    id: str
    kind: str  # "api_key", "jwt" or "anonymous"


class Authenticator:
    """Checks bearer tokens against the configured API-key digests (and JWT key). Raises :class:`ConfigError` at
    construction when a configured digest is not 64 lowercase hex characters."""

    def __init__(self, settings: Settings) -> None:
        digests = [h.strip().lower() for h in settings.api_key_hashes if h.strip()]
        bad = [h for h in digests if not _HEX64.match(h)]
        if bad:
            raise ConfigError(f"api_key_hashes must be sha256 hex digests; {len(bad)} entry(ies) are not")
        self._digests = [d.encode() for d in digests]
        secret = settings.api_jwt_secret
        self._jwt_key = (secret.get_secret_value() if isinstance(secret, SecretStr) else secret) or None
        self._jwt_algorithms = list(settings.api_jwt_algorithms)
        self._jwt_audience = settings.api_jwt_audience

    @property
    def configured(self) -> bool:
        """True when at least one credential (a key digest or a JWT key) can ever be accepted."""
        return bool(self._digests) or self._jwt_key is not None

    def authenticate(self, token: str | None) -> Principal | None:
        """The principal of a valid token, else None. Never raises on a malformed token."""
        if not token:
            return None
        if self._jwt_key is not None and token.count(".") == 2:
            return self._jwt(token)
        digest = hash_api_key(token).encode()
        match = False
        for known in self._digests:  # every digest is compared: timing does not tell which (or whether) one matched
            match |= hmac.compare_digest(digest, known)
        return Principal(id="key:" + digest[:12].decode(), kind="api_key") if match else None

    def _jwt(self, token: str) -> Principal | None:
        import jwt

        try:
            claims = jwt.decode(
                token,
                self._jwt_key,
                algorithms=self._jwt_algorithms,
                audience=self._jwt_audience,
                options={"require": ["exp", "sub"], "verify_aud": self._jwt_audience is not None},
            )
        except jwt.PyJWTError:
            return None
        return Principal(id="jwt:" + str(claims["sub"]), kind="jwt")


def _limits_storage(settings: Settings) -> Any:
    """The ``limits`` async storage of ``settings.api_rate_limit_storage`` (Redis through redis-py)."""
    from limits.storage import storage_from_string

    uri = settings.api_rate_limit_storage
    options: dict[str, Any] = {}
    if uri.startswith(("redis://", "rediss://", "unix://")):  # shared counters, through redis-py
        scheme, rest = uri.split("://", 1)
        uri = f"async+{'redis+unix' if scheme == 'unix' else scheme}://{rest}"
        options = {"implementation": "redispy"}
    elif not uri.startswith("async+"):
        uri = "async+" + uri
    return storage_from_string(uri, **options)


def _in_process(settings: Settings) -> bool:
    """True when the counters live in this worker's memory (``memory://``, the default)."""
    return settings.api_rate_limit_storage.strip().removeprefix("async+").startswith("memory://")


class _LocalWindows:
    """Sliding-window counters in this process's memory: the rule of the ``limits`` library's sliding window counter
    on its memory storage, computed in place. Windows are aligned on multiples of the period (``time.time()``); a hit
    is admitted while ``floor(previous * share_of_previous_still_inside + current) + 1 <= limit``; the reset time is
    the earlier of the current window's end and the next moment the weighted previous count drops by one.

    Why not ``limits``' async memory storage itself: its layers (key strings, per-key asyncio locks, a coroutine per
    call) cost ~16 us per hit and ~9 us per test, most of a lookup's access control, for two dict reads and an
    addition. Redis storage (counters shared by workers) still goes through ``limits``."""

    _MAX_KEYS = 100_000  # beyond this, records of windows that can no longer count are dropped

    def __init__(self) -> None:
        self._windows: dict[tuple[str, int], list[int]] = {}  # (id, period) -> [window index, previous, current]

    def _counts(self, key: tuple[str, int], now: float) -> tuple[int, int]:
        record = self._windows.get(key)
        if record is None:
            return 0, 0
        index = int(now / key[1])
        if record[0] == index:
            return record[1], record[2]
        return (record[2], 0) if record[0] == index - 1 else (0, 0)

    @staticmethod
    def _weighted(previous: int, current: int, period: int, now: float) -> float:
        previous_ttl = (1 - (((now - period) / period) % 1)) * period if previous else 0.0
        return previous * previous_ttl / period + current

    def hit(self, ident: str, limit: int, period: int) -> bool:
        """Count one hit unless it would exceed ``limit`` per ``period`` seconds; True when admitted."""
        now, key = time.time(), (ident, period)
        previous, current = self._counts(key, now)
        if math.floor(self._weighted(previous, current, period, now)) + 1 > limit:
            return False
        if len(self._windows) >= self._MAX_KEYS and key not in self._windows:
            self._purge(now)
        self._windows[key] = [int(now / period), previous, current + 1]
        return True

    def test(self, ident: str, limit: int, period: int) -> bool:
        """True while one more hit would be admitted (nothing is counted)."""
        now = time.time()
        previous, current = self._counts((ident, period), now)
        return self._weighted(previous, current, period, now) < limit

    def reset_in(self, ident: str, period: int) -> float:
        """Seconds until the weighted count of ``ident`` next decreases (0 with nothing counted)."""
        now = time.time()
        previous, current = self._counts((ident, period), now)
        previous_ttl = (1 - (((now - period) / period) % 1)) * period
        current_ttl = (1 - ((now / period) % 1)) * period + period
        reset = min(previous_ttl % (period / previous) if previous else math.inf,
                    current_ttl % period if current else math.inf)
        return 0.0 if reset == math.inf else reset

    def _purge(self, now: float) -> None:
        stale = [k for k, (index, _, _) in self._windows.items() if index < int(now / k[1]) - 1]
        for k in stale:
            del self._windows[k]


class _Limits:
    """Some ``limits``-syntax limits (``"20/minute;200/hour"``; empty or ``none`` = off) in one namespace, counted
    in this process (:class:`_LocalWindows`) or in shared storage through ``limits``' sliding window counter."""

    def __init__(self, spec: str, namespace: str, settings: Settings) -> None:
        from limits import parse_many
        from limits.aio.strategies import SlidingWindowCounterRateLimiter

        spec = spec.strip()
        self.items = parse_many(spec) if spec and spec.lower() not in ("none", "off", "0") else []
        self.namespace = namespace
        self.local = _LocalWindows() if self.items and _in_process(settings) else None
        self.shared = (SlidingWindowCounterRateLimiter(_limits_storage(settings))
                       if self.items and self.local is None else None)

    @staticmethod
    def _retry(reset_in: float) -> int:
        return max(1, math.ceil(reset_in))

    async def exceeded(self, ident: str, *, count: bool) -> tuple[str, int] | None:
        """None while ``ident`` is within every limit (counting this hit when ``count``), else (the limit, whole
        seconds until it admits again, >= 1)."""
        for item in self.items:
            if self.local is not None:
                period = item.get_expiry()
                ok = (self.local.hit(ident, item.amount, period) if count
                      else self.local.test(ident, item.amount, period))
                if not ok:
                    return str(item), self._retry(self.local.reset_in(ident, period))
            elif self.shared is not None:
                ok = await (self.shared.hit if count else self.shared.test)(item, self.namespace, ident)
                if not ok:
                    stats = await self.shared.get_window_stats(item, self.namespace, ident)
                    return str(item), self._retry(stats.reset_time - time.time())
        return None

    async def count(self, ident: str) -> None:
        """Count one hit of ``ident`` against every limit (admitted or not)."""
        for item in self.items:
            if self.local is not None:
                self.local.hit(ident, item.amount, item.get_expiry())
            elif self.shared is not None:
                await self.shared.hit(item, self.namespace, ident)


class FailedAuthLimiter:
    """Failed bearer-token attempts per client address (``api_failed_auth_limit``): once a client has used up the
    budget, :meth:`blocked` says for how long every call from it is refused (429), so tokens cannot be guessed at
    request rate. Keyed on the peer address, never on the presented token."""

    def __init__(self, settings: Settings) -> None:
        self.limits = _Limits(settings.api_failed_auth_limit, "propensity-auth-fail", settings)

    async def blocked(self, client: str) -> tuple[str, int] | None:
        """None while ``client`` may still try; else (the limit, whole seconds until it may try again, >= 1)."""
        return await self.limits.exceeded(client, count=False)

    async def failed(self, client: str) -> None:
        """Count one failed attempt of ``client``."""
        await self.limits.count(client)


class RateLimiter:
    """Per-client limits (``api_rate_limit``, sliding-window counters) in this process or the configured storage."""

    def __init__(self, settings: Settings) -> None:
        self.limits = _Limits(settings.api_rate_limit, "propensity-api", settings)

    async def hit(self, principal: Principal) -> tuple[str, int] | None:
        """Count one hit of ``principal``: None while within every limit, else (the limit exceeded, whole seconds
        until it admits a call again, at least 1)."""
        return await self.limits.exceeded(principal.id, count=True)
