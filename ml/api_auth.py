"""Bearer-token authentication for the lookup API: API keys stored as sha256 digests, optionally JWTs.

API keys are random strings handed to a client once; only their sha256 hex digest is configured
(``PROPENSITY_API_KEY_HASHES='["<digest>", ...]'``), so a leaked config file leaks no usable key. A presented key is
hashed and compared with every configured digest in constant time (``hmac.compare_digest``, no early exit).
With ``api_jwt_secret`` set, JWTs signed with it (``api_jwt_algorithms``; ``exp`` and ``sub`` required, ``aud``
checked when ``api_jwt_audience`` is set) are accepted as well.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

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
