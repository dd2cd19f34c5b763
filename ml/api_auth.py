"""Access control of the lookup API: who calls (bearer tokens: API keys stored as sha256 digests, optionally
JWTs) and how often (per-client rate limits).

API keys are random strings handed to a client once; only their sha256 hex digest is configured
(``PROPENSITY_API_KEY_HASHES='["<digest>", ...]'``), so a leaked config file leaks no usable key. A presented key is
hashed and compared with every configured digest in constant time (``hmac.compare_digest``, no early exit).
With ``api_jwt_secret`` set, JWTs signed with it (``api_jwt_algorithms``; ``exp`` and ``sub`` required, ``aud``
checked when ``api_jwt_audience`` is set) are accepted as well.

Rate limits (``api_rate_limit``, e.g. ``"600/minute;20/second"``; ``none`` turns them off) are sliding-window
counters of the ``limits`` library, keyed on :attr:`Principal.id`, stored in memory or, for several workers, in Redis
(``api_rate_limit_storage``).
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
    """The ``limits`` async storage of ``settings.api_rate_limit_storage`` (memory, or Redis through redis-py)."""
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


class FailedAuthLimiter:
    """Failed bearer-token attempts per client address (``api_failed_auth_limit``): once a client has used up the
    budget, :meth:`blocked` says for how long every call from it is refused (429), so tokens cannot be guessed at
    request rate. Keyed on the peer address, never on the presented token."""

    def __init__(self, settings: Settings) -> None:
        from limits import parse_many
        from limits.aio.strategies import SlidingWindowCounterRateLimiter

        spec = settings.api_failed_auth_limit.strip()
        self.items = parse_many(spec) if spec and spec.lower() not in ("none", "off", "0") else []
        self.limiter = SlidingWindowCounterRateLimiter(_limits_storage(settings)) if self.items else None

    async def blocked(self, client: str) -> tuple[str, int] | None:
        """None while ``client`` may still try; else (the limit, whole seconds until it may try again, >= 1)."""
        if self.limiter is None:
            return None
        for item in self.items:
            if not await self.limiter.test(item, "propensity-auth-fail", client):
                stats = await self.limiter.get_window_stats(item, "propensity-auth-fail", client)
                return str(item), max(1, math.ceil(stats.reset_time - time.time()))
        return None

    async def failed(self, client: str) -> None:
        """Count one failed attempt of ``client``."""
        if self.limiter is not None:
            for item in self.items:
                await self.limiter.hit(item, "propensity-auth-fail", client)


class RateLimiter:
    """Per-client limits (``limits`` library, sliding-window counters) on the configured storage."""

    def __init__(self, settings: Settings) -> None:
        from limits import parse_many
        from limits.aio.strategies import SlidingWindowCounterRateLimiter

        spec = settings.api_rate_limit.strip()
        self.items = parse_many(spec) if spec and spec.lower() not in ("none", "off", "0") else []
        self.limiter = SlidingWindowCounterRateLimiter(_limits_storage(settings)) if self.items else None

    async def hit(self, principal: Principal) -> tuple[str, int] | None:
        """Count one hit of ``principal``: None while within every limit, else (the limit exceeded, whole seconds
        until it admits a call again, at least 1)."""
        if self.limiter is None:
            return None
        for item in self.items:
            if not await self.limiter.hit(item, "propensity-api", principal.id):
                stats = await self.limiter.get_window_stats(item, "propensity-api", principal.id)
                return str(item), max(1, math.ceil(stats.reset_time - time.time()))
        return None
