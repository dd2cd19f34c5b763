"""The thin lookup API: FastAPI over the published Redis versions (it reads Redis only, never Postgres).

``create_app(settings)`` builds the app; uvicorn runs it (``propensity api`` or
``uvicorn --factory ml.api:app_from_env``). Every lookup follows the reader protocol documented in
:mod:`ml.keyspace`: the pointer GET is pipelined with the reads of the user's two keys in the version seen last, and
the reads are repeated for the new version only when the pointer moved, so a response always comes from one version
(even while a publish or rollback flips the pointer) at one round trip in the steady state. That round trip goes
through :mod:`ml.api_redis` (hiredis; one connection per worker that every lookup in flight shares) on standalone
Redis, through redis-py otherwise.
Version metadata and reason texts are immutable per version and cached in the process.

Routes: ``GET /v1/users/{user_id}/recommendations?limit=``, ``GET /v1/users/{user_id}/products/{product_id}`` (bearer
auth + per-client rate limit, :mod:`ml.api_auth`), ``GET /healthz`` (503 while Redis is unreachable), ``GET /metrics``
(Prometheus, :mod:`ml.api_metrics`), ``/openapi.json`` and ``/docs``. Errors are JSON ``{"detail": ...}``; a stack
trace never reaches a client.
"""

from __future__ import annotations

import datetime as dt
import gc
import logging
import os
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Any, Literal

import orjson
import redis.asyncio as aioredis
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field, TypeAdapter, ValidationError
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from ml.api_auth import Authenticator, FailedAuthLimiter, Principal, RateLimiter
from ml.api_metrics import ApiMetrics, MetricsMiddleware
from ml.api_redis import FastRedis
from ml.errors import ConfigError
from ml.keyspace import KeySpace, decode_details, decode_reason
from ml.pipeline_metrics import PipelineGauges
from ml.settings import Settings, get_settings

log = logging.getLogger(__name__)

MAX_ID = 2**63 - 1  # user and product ids are PostgreSQL bigints
MAX_LIMIT = 100
_VERSION_CACHE = 4  # versions whose meta and reasons stay cached per process
_PAYLOAD_CACHE = 50_000  # decoded pair payloads (tier + reasons) kept per version


# --- response models ------------------------------------------------------------------------------------------------
class Recommendation(BaseModel):
    """One hot product of a user."""

    product_id: int = Field(description="REES46 product_id.")
    probability: float = Field(ge=0, le=1, description="Calibrated purchase probability within the label horizon.")
    tier: str = Field(description="hot, warm, cool or cold (settings.tier_bands).")
    reason_codes: list[str] = Field(description="Reason codes, strongest first.")
    reason_texts: list[str] = Field(description="The same reasons as display texts.")


class ServedVersion(BaseModel):
    """Which published version answered."""

    version: int = Field(description="Redis publish version id (grows with every publish).")
    model_version: str = Field(description="Model version that scored the pairs.")
    score_date: dt.date = Field(description="Score date (UTC) of the published partition.")
    published_at: dt.datetime | None = Field(None, description="When the version was flipped in (UTC).")
    experiment_id: str | None = Field(None, description="A/B experiment the user is enrolled in (null: none).")
    variant: str | None = Field(
        None, description="The user's experiment arm; model_version is then that arm's model. Null: the champion.")


class RecommendationsResponse(ServedVersion):
    user_id: int
    items: list[Recommendation] = Field(description="Hot products, best first (at most `limit`).")


class PairResponse(ServedVersion, Recommendation):
    user_id: int


class TopFeature(BaseModel):
    feature: str
    mean_abs_shap: float = Field(description="Mean |SHAP| (log-odds) over a sample of the score date's pairs.")


class ModelResponse(ServedVersion):
    """The served model and how it performs (issue 13): from the version's Redis meta, written at publish time."""

    holdout_metrics: dict[str, float | int | None] | None = Field(
        None, description="Expected: the model's holdout metrics (roc_auc, pr_auc, log_loss, brier, ece, ...).")
    realized_metrics: dict[str, Any] | None = Field(
        None, description="Realized: the latest matured score date's metrics (null before any matured date).")
    top_features: list[TopFeature] = Field(default_factory=list, description="Largest mean |SHAP| first.")


class HealthResponse(BaseModel):
    status: Literal["ok", "unavailable"]
    redis: Literal["up", "down"]
    serving: ServedVersion | None = Field(None, description="The served version; null when nothing is published.")


class ErrorResponse(BaseModel):
    detail: str


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ValidationErrorResponse(BaseModel):
    detail: str = Field(description="All problems in one line.")
    errors: list[FieldError]


def _err(description: str, model: type[BaseModel] = ErrorResponse) -> dict[str, Any]:
    return {"description": description, "model": model}


_V1_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: _err("Missing or invalid bearer token."),
    404: _err("Unknown user (no hot pair in the served version), or the pair is not hot."),
    422: _err("Invalid path or query parameter.", ValidationErrorResponse),
    429: _err("Rate limit exceeded; see Retry-After."),
    503: _err("Redis unreachable, or nothing published yet."),
}


# --- reading Redis --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Version:
    id: int
    served: ServedVersion
    fields: dict[str, Any]  # the ServedVersion fields, JSON-ready, merged into every response body
    arms: dict[str, str] | None = None  # experiment arm -> model version, while the version was scored in one

    def for_arm(self, raw_arm: bytes | str | None) -> _Version:
        """This version as seen by a user in experiment arm ``raw_arm`` (the Redis reply; None: not enrolled)."""
        if not raw_arm or not self.arms:
            return self
        arm = raw_arm.decode() if isinstance(raw_arm, bytes) else raw_arm
        return _Version(self.id, self.served, {**self.fields, "variant": arm,
                                               "experiment_id": self.fields["experiment_id_of_version"],
                                               "model_version": self.arms.get(arm, self.served.model_version)},
                        self.arms)

    @cached_property
    def body(self) -> dict[str, Any]:
        """The fields merged into a response (without internal ones)."""
        return {k: v for k, v in self.fields.items() if k != "experiment_id_of_version"}


def _as_dict(reply: dict[bytes, bytes] | list[bytes]) -> dict[bytes, bytes]:
    """An HGETALL reply as a dict (redis-py already returns one; a raw RESP2 reply is a flat list)."""
    return reply if isinstance(reply, dict) else dict(zip(reply[::2], reply[1::2], strict=True))


def _score_pairs(reply: list[Any]) -> list[tuple[bytes, float]]:
    """(member, score) pairs of a raw ZRANGE ... WITHSCORES reply: RESP3 (the hot path's connection speaks it when
    the server does) nests [member, score] pairs with scores already parsed as doubles by hiredis; RESP2 is flat
    [member, score-bytes, ...]."""
    if type(reply[0]) is list or type(reply[0]) is tuple:
        return [(m, sc if type(sc) is float else float(sc)) for m, sc in reply]
    return list(zip(reply[::2], map(float, reply[1::2]), strict=True))


class ScoreReader:
    """Async reader of published versions; caches each version's meta and reason dictionary (immutable).

    A lookup sends the pointer GET and the reads of the version it saw last in one pipelined round trip; the reads
    are used only if the pointer still names that version, else they are repeated for the new one. So a response
    always comes from the version the pointer named during the request, at one round trip in the steady state.
    """

    def __init__(self, client: aioredis.Redis, keys: KeySpace, fast: FastRedis | None = None) -> None:
        self.client = client
        self.keys = keys
        self.fast = fast
        self._versions: dict[int, _Version] = {}
        self._reasons: dict[int, dict[int, tuple[str, str]]] = {}
        self._payloads: dict[int, dict[bytes, tuple[str, list[str], list[str]]]] = {}
        self._last: _Version | None = None

    async def served(self) -> _Version | None:
        """The version the pointer names now, or None when nothing is published."""
        raw = await self.client.get(self.keys.current())
        return None if raw is None else await self._version(int(raw))

    async def _version(self, vid: int) -> _Version | None:
        found = self._versions.get(vid)
        if found is not None:
            return found
        meta = {k.decode(): v.decode() for k, v in (await self.client.hgetall(self.keys.meta(vid))).items()}
        if not meta:  # a pointer to a version without meta is never written by publish; treat as not published
            log.error("pointer %s names version %d, which has no meta", self.keys.current(), vid)
            return None
        published_at = meta.get("published_at")
        served = ServedVersion(
            version=vid,
            model_version=meta.get("model_version", ""),
            score_date=dt.date.fromisoformat(meta["score_date"]),
            published_at=dt.datetime.fromisoformat(published_at) if published_at else None,
        )
        fields = served.model_dump(mode="json")
        arms = None
        if meta.get("experiment_id"):  # scored during an A/B experiment (issue 14): users carry their arm
            arms = orjson.loads(meta.get("arms") or "{}")
            fields["experiment_id_of_version"] = meta["experiment_id"]
        version = _Version(vid, served, fields, arms)
        self._versions[vid] = version
        for old in sorted(self._versions)[:-_VERSION_CACHE]:
            self._versions.pop(old, None)
            self._reasons.pop(old, None)
            self._payloads.pop(old, None)
        return version

    async def _roundtrip(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """One pipelined round trip: the lean hiredis transport when configured, else a redis-py pipeline."""
        if self.fast is not None:
            return await self.fast.pipeline(commands)
        async with self.client.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            return await pipe.execute()

    async def _lookup(self, reads: Callable[[_Version], list[tuple[Any, ...]]]) -> tuple[_Version | None, list[Any]]:
        """Run the commands ``reads(version)`` against the served version: (version, their replies)."""
        guess = self._last
        first = await self._roundtrip([("GET", self.keys.current()), *(reads(guess) if guess else [])])
        if first[0] is None:
            return None, []
        vid = int(first[0])
        if guess is not None and vid == guess.id:
            return guess, first[1:]
        version = await self._version(vid)  # first lookup, or the pointer moved (publish / rollback)
        if version is None:
            return None, []
        self._last = version
        return version, await self._roundtrip(reads(version))

    async def _resolve(self, vid: int, ids: set[int]) -> dict[int, tuple[str, str]]:
        cache = self._reasons.setdefault(vid, {})
        missing = sorted(i for i in ids if i not in cache)
        if missing:
            for rid, raw in zip(missing, await self.client.hmget(self.keys.reasons(vid), missing), strict=True):
                cache[rid] = decode_reason(raw)
        return cache

    async def _items(self, vid: int, ranked: list[tuple[bytes, float]], details: dict[bytes, bytes]) -> list[dict]:
        """Items shaped like :class:`Recommendation`, as plain dicts (serialised once, straight to JSON).

        A pair's payload (``tier|rid,rid``) repeats across pairs and users, so each distinct payload of a version is
        decoded and resolved to its reason codes and texts once, then reused (the lists are shared, never mutated)."""
        decoded = self._payloads.setdefault(vid, {})
        payloads = [details.get(member, b"|") for member, _ in ranked]
        new = {p for p in payloads if p not in decoded}
        if new:
            parsed = {p: decode_details(p) for p in new}
            ids = {rid for _, rids in parsed.values() for rid in rids}
            reasons = await self._resolve(vid, ids) if ids else {}
            if len(decoded) + len(parsed) > _PAYLOAD_CACHE:
                decoded.clear()
            for p, (tier, rids) in parsed.items():
                decoded[p] = (tier, [reasons[r][0] for r in rids], [reasons[r][1] for r in rids])
        items = []
        append = items.append
        for (member, score), payload in zip(ranked, payloads, strict=True):
            tier, codes, texts = decoded[payload]
            append({"product_id": int(member), "probability": score, "tier": tier, "reason_codes": codes,
                    "reason_texts": texts})
        return items

    def _arm_read(self, version: _Version, user_id: int) -> list[tuple[Any, ...]]:
        """The read of the user's experiment arm, only in a version scored during an experiment (publish writes
        ``P:v{V}:a:{U}`` keys in no other)."""
        return [("GET", self.keys.arm(version.id, user_id))] if version.arms is not None else []

    async def recommendations(self, user_id: int, limit: int) -> tuple[_Version | None, list[dict]]:
        """(served version or None when nothing is published, the user's hot items best first; empty when the user
        has none)."""

        def reads(version: _Version) -> list[tuple[Any, ...]]:
            return [("ZREVRANGE", self.keys.recs(version.id, user_id), 0, limit - 1, "WITHSCORES"),
                    ("HGETALL", self.keys.details(version.id, user_id)), *self._arm_read(version, user_id)]

        version, results = await self._lookup(reads)
        if version is None or not results[0]:
            return version, []
        version = version.for_arm(results[2] if len(results) > 2 else None)
        return version, await self._items(version.id, _score_pairs(results[0]), _as_dict(results[1]))

    async def count_exposure(self, version: _Version, user_id: int, ttl_s: int) -> None:
        """Count that ``version`` served the user's experiment arm today (UTC): PFADD into the day's user
        HyperLogLog and INCR of its request counter, one pipelined round trip, only for enrolled users. A Redis
        error is logged, never returned to the client (the lookup already succeeded)."""
        arm = version.fields.get("variant")
        if not arm:
            return
        from redis.exceptions import RedisError

        eid, day = version.fields["experiment_id"], dt.datetime.now(dt.UTC).strftime("%Y%m%d")
        users, requests = self.keys.exposure_users(eid, arm, day), self.keys.exposure_requests(eid, arm, day)
        try:
            await self._roundtrip([("PFADD", users, user_id), ("INCR", requests), ("EXPIRE", users, ttl_s),
                                   ("EXPIRE", requests, ttl_s)])
        except (RedisError, OSError) as e:
            log.warning("exposure of experiment %s arm %s not counted: %s", eid, arm, e)

    async def pair(self, user_id: int, product_id: int) -> tuple[_Version | None, bool, dict | None]:
        """(served version or None, user known in it, the pair's item or None when the pair is not hot)."""

        def reads(version: _Version) -> list[tuple[Any, ...]]:
            return [("ZSCORE", self.keys.recs(version.id, user_id), product_id),
                    ("HGET", self.keys.details(version.id, user_id), product_id),
                    ("EXISTS", self.keys.recs(version.id, user_id)), *self._arm_read(version, user_id)]

        version, results = await self._lookup(reads)
        if version is None:
            return None, False, None
        score, payload, exists = results[:3]
        version = version.for_arm(results[3] if len(results) > 3 else None)
        if score is None:
            return version, bool(exists), None
        member = str(product_id).encode()
        items = await self._items(version.id, [(member, float(score))], {member: payload or b"|"})
        return version, True, items[0]


# --- the app --------------------------------------------------------------------------------------------------------
def _redis_url(settings: Settings) -> str:
    if settings.redis_url:
        return settings.redis_url
    from ml.dev.services import redis_uri

    url = redis_uri(settings.state_dir)
    if url is None:
        raise ConfigError(
            f"no Redis: set PROPENSITY_REDIS_URL or start the embedded one (`propensity services up`, {settings.state_dir})"
        )
    return url


def _json(body: dict[str, Any]) -> Response:
    """A JSON response serialised once, by orjson. The route's response_model documents the shape (and the fuzz
    test checks responses against it); returning a Response skips FastAPI's re-validation of ~20 items per lookup,
    and orjson is ~15x faster than json.dumps on this body (6 us vs 96 us measured on the bench machine)."""
    return Response(orjson.dumps(body), media_type="application/json")


def _validation_message(errors: list[dict[str, Any]]) -> tuple[str, list[FieldError]]:
    fields = [
        FieldError(loc=[p if isinstance(p, int) else str(p) for p in e.get("loc", ())], msg=str(e.get("msg", "")),
                   type=str(e.get("type", "")))
        for e in errors
    ]
    line = "; ".join(f"{'.'.join(map(str, f.loc))}: {f.msg}" for f in fields) or "invalid request"
    return line, fields


# The routes' parameters (path ids, ?limit=) and the bearer scheme are documented in OpenAPI (_id_param, _LIMIT_PARAM,
# _SECURED) and read by _params / _authorize, not declared as FastAPI parameters and dependencies: FastAPI inspects
# every declared parameter's annotation again on every request, and solving them (ids, a Query field, a nested
# security dependant) cost ~45 us of CPU per lookup, about a fifth of it. Validation is the same pydantic validation
# of the same types, in FastAPI's order, with the same 422 bodies; the generated spec is unchanged.
_bearer = HTTPBearer(auto_error=False, description="API key (or JWT) as `Authorization: Bearer <token>`.")
_SECURED: dict[str, Any] = {"security": [{_bearer.scheme_name: []}]}
DEFAULT_LIMIT = 20
_ID = TypeAdapter(Annotated[int, Field(ge=0, le=MAX_ID)])
_LIMIT = TypeAdapter(Annotated[int, Field(ge=1, le=MAX_LIMIT)])
_LIMIT_PARAM: dict[str, Any] = {
    "name": "limit", "in": "query", "required": False, "description": "Most items returned.",
    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT, "title": "Limit",
               "description": "Most items returned."},
}


def _id_param(name: str) -> dict[str, Any]:
    """The OpenAPI entry of path parameter ``name`` (a REES46 id, validated by :func:`_params`)."""
    description = f"REES46 {name} (non-negative 64-bit integer)."
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "integer", "minimum": 0, "maximum": MAX_ID, "title": name.replace("_", " ").title(),
                       "description": description}}


_NO_QUERY: frozenset[str] = frozenset()
_LIMIT_ONLY = frozenset({"limit"})


def _bearer_token(request: Request) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (scheme case-insensitive), else None: what the
    documented HTTPBearer scheme accepts, parsed with FastAPI's own helper."""
    scheme, token = get_authorization_scheme_param(request.headers.get("authorization"))
    return token if token and scheme.lower() == "bearer" else None


async def _authorize(request: Request) -> Principal:
    """The client of a /v1 call: 401 without a valid bearer token while auth is on; then its rate-limit hit (429)."""
    state = request.app.state
    if state.auth_enabled:
        client = "ip:" + (request.client.host if request.client else "unknown")
        blocked = await state.auth_failures.blocked(client)  # failed-login limit (ml.api_auth.FailedAuthLimiter)
        if blocked is not None:
            raise HTTPException(429, f"too many failed logins from this client ({blocked[0]}); retry in "
                                f"{blocked[1]}s", headers={"Retry-After": str(blocked[1])})
        principal = state.auth.authenticate(_bearer_token(request))
        if principal is None:
            await state.auth_failures.failed(client)
            raise HTTPException(401, "missing or invalid bearer token", headers={"WWW-Authenticate": "Bearer"})
    else:
        principal = Principal(id="ip:" + (request.client.host if request.client else "unknown"), kind="anonymous")
    exceeded = await state.limiter.hit(principal)
    if exceeded is not None:
        limit, retry = exceeded
        raise HTTPException(
            429, f"rate limit exceeded ({limit}); retry in {retry}s", headers={"Retry-After": str(retry)}
        )
    return principal


def _params(request: Request, ids: tuple[str, ...], *, limit: bool = False) -> list[int]:
    """The route's parameters as documented: the path ids (0..MAX_ID) in order, then ``?limit=`` (1..MAX_LIMIT,
    default 20) when ``limit``. Invalid values are one 422 listing every error as pydantic words it (path, then
    query, like FastAPI); a query parameter the route does not declare is a 422 too (a typo such as ``?limt=5``
    must not pass silently)."""
    values: list[int] = []
    errors: list[dict[str, Any]] = []
    for name in ids:
        try:
            values.append(_ID.validate_python(request.path_params[name]))
        except ValidationError as e:
            errors += [{**err, "loc": ("path", name)} for err in e.errors(include_url=False)]
    query = request.query_params if request.scope["query_string"] else None
    if limit:
        raw = query.get("limit") if query is not None else None
        try:
            values.append(DEFAULT_LIMIT if raw is None else _LIMIT.validate_python(raw))
        except ValidationError as e:
            errors += [{**err, "loc": ("query", "limit")} for err in e.errors(include_url=False)]
    if errors:
        raise RequestValidationError(errors)
    if query is not None:
        unknown = [k for k in query if k not in (_LIMIT_ONLY if limit else _NO_QUERY)]
        if unknown:
            raise RequestValidationError(
                [{"loc": ("query", k), "msg": "Unknown query parameter", "type": "extra_forbidden"} for k in unknown])
    return values


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the lookup API for ``settings`` (default: from the environment). Raises :class:`ConfigError` when no
    Redis URL can be resolved or an API-key digest is malformed. The Redis client is created by the app's lifespan
    (so run the app under uvicorn, or enter ``TestClient(app)`` as a context manager)."""
    settings = settings or get_settings()
    url = _redis_url(settings)
    keys = KeySpace(settings.redis_prefix)
    auth = Authenticator(settings)
    limiter = RateLimiter(settings)
    metrics = ApiMetrics()
    pipeline = PipelineGauges()
    if settings.api_auth_enabled and not auth.configured:
        log.warning("API auth is on but no api_key_hashes / api_jwt_secret is configured: every /v1 call gets 401")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        timeouts = {"socket_timeout": settings.api_redis_timeout_s,
                    "socket_connect_timeout": settings.api_redis_timeout_s}
        retry = Retry(ExponentialBackoff(cap=0.05, base=0.005), retries=1)
        pool = None
        if settings.redis_cluster:  # one pool per node, managed by the cluster client
            client = aioredis.RedisCluster.from_url(
                url, max_connections=settings.api_redis_max_connections, retry=retry, **timeouts
            )
        else:  # a blocking pool: a burst beyond max_connections waits (up to the timeout) instead of failing
            pool = aioredis.BlockingConnectionPool.from_url(
                url, max_connections=settings.api_redis_max_connections, timeout=settings.api_redis_timeout_s,
                retry=retry, **timeouts,
            )
            client = aioredis.Redis(connection_pool=pool)
        fast = (
            FastRedis(url, timeout_s=settings.api_redis_timeout_s)
            if FastRedis.supports(url, settings.redis_cluster)
            else None
        )
        app.state.reader = ScoreReader(client, keys, fast)
        try:
            yield
        finally:
            if fast is not None:
                await fast.aclose()
            await client.aclose()
            if pool is not None:
                await pool.aclose()

    app = FastAPI(
        title="Purchase-propensity lookup API",
        version="1.0",
        description="Hot purchase-propensity scores per user, read from the published Redis version. "
        "Every response names the model_version and score_date it came from.",
        lifespan=lifespan,
    )
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    # --- errors: JSON bodies, never a stack trace ---------------------------------------------------------------
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        line, fields = _validation_message(list(exc.errors()))
        body = ValidationErrorResponse(detail=line, errors=fields)
        return JSONResponse(body.model_dump(), status_code=422)

    @app.exception_handler(RedisError)
    async def _redis_down(request: Request, exc: RedisError) -> JSONResponse:
        log.warning("redis error on %s: %s", request.url.path, exc)
        return JSONResponse({"detail": "score store unavailable"}, status_code=503)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        ref = uuid.uuid4().hex[:12]
        log.error("unhandled error %s on %s", ref, request.url.path, exc_info=exc)
        return JSONResponse({"detail": f"internal error (ref {ref})"}, status_code=500)

    app.state.auth_enabled = settings.api_auth_enabled
    app.state.auth = auth
    app.state.limiter = limiter
    app.state.auth_failures = FailedAuthLimiter(settings)

    def _serving(version: _Version | None) -> _Version:
        if version is None:
            raise HTTPException(503, "no scores are published yet")
        metrics.served(version.id, version.served.model_version, version.served.score_date)
        return version

    # --- routes -----------------------------------------------------------------------------------------------------
    @app.get(
        "/v1/users/{user_id}/recommendations",
        response_model=RecommendationsResponse,
        responses=_V1_RESPONSES,
        tags=["scores"],
        summary="A user's hot products, best first",
        openapi_extra={**_SECURED, "parameters": [_id_param("user_id"), _LIMIT_PARAM]},
    )
    async def recommendations(request: Request) -> Response:
        user_id, limit = _params(request, ("user_id",), limit=True)
        await _authorize(request)
        version, items = await request.app.state.reader.recommendations(user_id, limit)
        version = _serving(version)
        if not items:
            metrics.lookup("recommendations", False)
            raise HTTPException(404, f"user {user_id} has no recommendations in version {version.id}")
        metrics.lookup("recommendations", True)
        await request.app.state.reader.count_exposure(version, user_id, settings.experiment_exposure_ttl_days * 86400)
        return _json({**version.body, "user_id": user_id, "items": items})

    @app.get(
        "/v1/users/{user_id}/products/{product_id}",
        response_model=PairResponse,
        responses=_V1_RESPONSES,
        tags=["scores"],
        summary="One user-product pair, if it is hot for the user",
        openapi_extra={**_SECURED, "parameters": [_id_param("user_id"), _id_param("product_id")]},
    )
    async def pair(request: Request) -> Response:
        user_id, product_id = _params(request, ("user_id", "product_id"))
        await _authorize(request)
        version, known, item = await request.app.state.reader.pair(user_id, product_id)
        version = _serving(version)
        if item is None:
            metrics.lookup("pair", False)
            detail = (
                f"product {product_id} is not among user {user_id}'s hot products in version {version.id}"
                if known
                else f"user {user_id} has no recommendations in version {version.id}"
            )
            raise HTTPException(404, detail)
        metrics.lookup("pair", True)
        await request.app.state.reader.count_exposure(version, user_id, settings.experiment_exposure_ttl_days * 86400)
        return _json({**item, **version.body, "user_id": user_id})

    @app.get(
        "/v1/model",
        response_model=ModelResponse,
        responses=_V1_RESPONSES,
        tags=["model"],
        summary="The served model version, its holdout and realized metrics, its top features",
        openapi_extra=_SECURED,
    )
    async def model_info(request: Request) -> Response:
        _params(request, ())
        await _authorize(request)
        reader: ScoreReader = request.app.state.reader
        version = _serving(await reader.served())
        meta = {k.decode(): v.decode() for k, v in (await reader.client.hgetall(keys.meta(version.id))).items()}
        extra = {}
        for field in ("holdout_metrics", "realized_metrics", "top_features"):
            try:
                extra[field] = orjson.loads(meta[field]) if meta.get(field) else None
            except ValueError:
                extra[field] = None
        extra["top_features"] = extra["top_features"] or []
        return _json({**version.fields, **extra})

    @app.get(
        "/healthz",
        response_model=HealthResponse,
        responses={503: {"description": "Redis unreachable.", "model": HealthResponse}},
        tags=["ops"],
        summary="Liveness and Redis reachability",
    )
    async def healthz(request: Request) -> Any:
        _params(request, ())
        reader: ScoreReader = request.app.state.reader
        try:
            await reader.client.ping()
            version = await reader.served()
        except RedisError as e:
            log.warning("healthz: redis unreachable: %s", e)
            body = HealthResponse(status="unavailable", redis="down")
            return JSONResponse(body.model_dump(mode="json"), status_code=503)
        if version is not None:
            metrics.served(version.id, version.served.model_version, version.served.score_date)
        return HealthResponse(status="ok", redis="up", serving=version.served if version else None)

    async def prometheus_metrics(request: Request) -> Response:
        _params(request, ())
        await pipeline.refresh(request.app.state.reader.client, keys)  # issue 13: gauges from Redis
        return Response(metrics.exposition() + pipeline.exposition(), media_type=CONTENT_TYPE_LATEST)

    async def prometheus_metrics_authenticated(request: Request) -> Response:
        await _authorize(request)  # the /v1 bearer token, and the same failed-login limit
        return await prometheus_metrics(request)

    app.add_api_route(  # settings.api_metrics_auth: OpenAPI documents the bearer scheme only when it is required
        "/metrics",
        prometheus_metrics_authenticated if settings.api_metrics_auth else prometheus_metrics,
        methods=["GET"],
        response_class=Response,
        responses={200: {"description": "Prometheus text exposition.", "content": {"text/plain": {}}},
                   **({401: _err("Missing or invalid bearer token.")} if settings.api_metrics_auth else {})},
        tags=["ops"],
        summary="Prometheus metrics",
        openapi_extra=_SECURED if settings.api_metrics_auth else None,
    )

    def openapi() -> dict[str, Any]:
        """FastAPI's spec plus the bearer scheme that the secured operations name (see _SECURED)."""
        if app.openapi_schema is None:
            spec = FastAPI.openapi(app)
            schemes = spec.setdefault("components", {}).setdefault("securitySchemes", {})
            schemes[_bearer.scheme_name] = _bearer.model.model_dump(mode="json", by_alias=True, exclude_none=True)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def app_from_env() -> FastAPI:
    """uvicorn factory (``uvicorn --factory ml.api:app_from_env``): the app for the environment's settings."""
    from ml.observe import setup_logging

    setup_logging(os.environ.get("PROPENSITY_LOG_LEVEL", "INFO"))
    app = create_app(get_settings())
    # What exists now (modules, the app, its routes and models: ~73k objects) lives as long as the worker. Frozen, it
    # is out of the cyclic garbage collector's view, so a full collection scans only request-time objects instead of
    # stalling every in-flight request for tens of milliseconds (70-140 ms per full collection, measured here).
    gc.collect()
    gc.freeze()
    return app
