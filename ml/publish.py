"""Publish a score date's hot scores to Redis as a new immutable version, flip one pointer, roll back, clean up.

The key layout, value formats and the reader protocol are documented (and the key names built) in
:mod:`ml.keyspace`, which the read-only API shares; this module is the only writer.

Atomicity: a version's keys are written first (pipelined, non-transactional, in chunks), then its meta and
registration, then the pointer flips with one SET. A reader sees the old version or the new one, never a mix; a
publish that dies midway leaves the old pointer, and its orphan keys are removed by the next cleanup. No key of a
version carries a TTL, so the served version can never expire. Cleanup keeps the newest ``publish_keep_versions``
versions plus, always, the served one and the one it replaced, so a reader that read the pointer just before a flip
still finds its version.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import closing
from dataclasses import asdict, dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ml.dates import utc_date
from ml.db import read_sql
from ml.errors import ConfigError, PublishError
from ml.keyspace import KeySpace, decode_details, decode_reason, encode_details, encode_reason
from ml.observe import Progress
from ml.settings import Settings

log = logging.getLogger(__name__)


# --- records --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PublishResult:
    """What one publish wrote. ``pairs_per_s`` counts hot pairs over the whole call (Postgres read included)."""

    version: int
    score_date: dt.date
    model_version: str
    run_id: str
    scored_pairs: int
    users: int
    pairs: int
    reasons: int
    previous_version: int | None
    published_at: dt.datetime
    seconds: float
    deleted_versions: list[int] = field(default_factory=list)

    @property
    def pairs_per_s(self) -> float:
        return self.pairs / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["score_date"] = self.score_date.isoformat()
        d["published_at"] = self.published_at.isoformat()
        d["pairs_per_s"] = round(self.pairs_per_s)
        return d


@dataclass(frozen=True)
class RollbackResult:
    """A pointer flip made by :func:`rollback_version`."""

    from_version: int
    to_version: int
    score_date: str | None
    model_version: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class HotItem:
    """One published hot pair as a reader sees it."""

    product_id: int
    probability: float
    tier: str
    reason_codes: list[str]
    reason_texts: list[str]


# --- helpers --------------------------------------------------------------------------------------------------------
def connect_redis(settings: Settings, url: str | None = None) -> Any:
    """A synchronous client for ``url`` (default ``settings.redis_url``): ``redis.Redis``, or
    ``redis.cluster.RedisCluster`` when ``settings.redis_cluster``. Replies stay bytes (decode_responses=False)."""
    import redis
    from redis.cluster import RedisCluster

    target = url or settings.redis_url
    if not target:
        raise ConfigError("no Redis URL: set PROPENSITY_REDIS_URL (or resolve the embedded one first)")
    return RedisCluster.from_url(target) if settings.redis_cluster else redis.Redis.from_url(target)


def _int_or_none(value: bytes | str | None) -> int | None:
    return int(value) if value not in (None, b"", "") else None


def current_version(redis_client: Any, settings: Settings) -> int | None:
    """The version id ``P:current`` names, or None when nothing was ever published under this prefix."""
    return _int_or_none(redis_client.get(KeySpace(settings.redis_prefix).current()))


def version_meta(redis_client: Any, settings: Settings, version: int) -> dict[str, str]:
    """The ``P:v{V}:meta`` hash as text (empty when the version is not stored)."""
    raw = redis_client.hgetall(KeySpace(settings.redis_prefix).meta(version))
    return {k.decode(): v.decode() for k, v in raw.items()}


def stored_versions(redis_client: Any, settings: Settings) -> list[int]:
    """Registered (complete) versions still stored, oldest first."""
    return [int(v) for v in redis_client.zrange(KeySpace(settings.redis_prefix).versions(), 0, -1)]


def read_hot_items(redis_client: Any, settings: Settings, user_id: int, limit: int | None = None) -> tuple[int | None, list[HotItem]]:
    """Reference reader (what the API does, synchronously): (served version, the user's hot items best first).

    Returns ``(None, [])`` when nothing is published and ``(V, [])`` when the user has no hot pair in version V.
    """
    ks = KeySpace(settings.redis_prefix)
    version = _int_or_none(redis_client.get(ks.current()))
    if version is None:
        return None, []
    pipe = redis_client.pipeline(transaction=False)
    pipe.zrevrange(ks.recs(version, user_id), 0, (limit or 0) - 1, withscores=True)
    pipe.hgetall(ks.details(version, user_id))
    ranked, details = pipe.execute()
    decoded = {int(k): decode_details(v) for k, v in details.items()}
    ids = sorted({rid for _, rids in decoded.values() for rid in rids})
    reasons: dict[int, tuple[str, str]] = {}
    if ids:
        for rid, raw in zip(ids, redis_client.hmget(ks.reasons(version), ids), strict=True):
            reasons[rid] = decode_reason(raw)
    items = []
    for member, score in ranked:
        pid = int(member)
        tier, rids = decoded.get(pid, ("", []))
        items.append(
            HotItem(pid, float(score), tier, [reasons[r][0] for r in rids], [reasons[r][1] for r in rids])
        )
    return version, items


# --- lock -----------------------------------------------------------------------------------------------------------
def _acquire_lock(redis_client: Any, ks: KeySpace, settings: Settings, what: str):  # noqa: ANN202 - redis Lock
    lock = redis_client.lock(ks.lock(), timeout=settings.publish_lock_timeout_s, blocking=False, thread_local=False)
    if not lock.acquire():
        raise PublishError(
            f"cannot {what}: another publish, rollback or cleanup holds {ks.lock()} "
            f"(it expires within {settings.publish_lock_timeout_s}s if its holder died)"
        )
    return lock


class _Heartbeat:
    """Renews a redis lock every ``timeout/4`` seconds from a daemon thread while long work (a Postgres sort, many
    chunks) runs, so the lock can be short-lived: a publisher that died or lost Redis frees it within its timeout."""

    def __init__(self, lock: Any, timeout_s: float) -> None:
        self.lock = lock
        self.every_s = max(timeout_s / 4, 0.05)
        self.lost: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="publish-lock-heartbeat", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.lock.reacquire()
            except Exception as e:  # noqa: BLE001 - reported to the publisher by check()
                self.lost = e
                return

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def check(self) -> None:
        """Raise :class:`PublishError` if renewing the lock failed (Redis unreachable or the lock taken over)."""
        if self.lost is not None:
            raise PublishError(f"lost the publish lock: {self.lost}") from self.lost


def _release_lock(lock: Any) -> None:
    import redis

    try:
        lock.release()
    except redis.RedisError as e:  # the lock expires by itself; never hide the original outcome behind this
        log.warning("could not release the publish lock (%s); it will expire on its own", e)


# --- Postgres bookkeeping -------------------------------------------------------------------------------------------
def _partition_facts(engine: Engine, day: dt.date, floor: float) -> tuple[int, int, str, str]:
    """(scored pairs, pairs at or above the floor, model_version(s), run_id(s)) of the score_date's partition."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "select model_version, run_id, count(*) as n,"
                " count(*) filter (where probability >= :floor) as above"
                " from scoring.scores where score_date = :d group by 1, 2 order by 3 desc"
            ),
            {"d": day, "floor": floor},
        ).all()
    if len({r.model_version for r in rows}) > 1:
        log.warning("score_date %s holds several model versions: %s", day, sorted({r.model_version for r in rows}))
    scored = sum(r.n for r in rows)
    above = sum(r.above for r in rows)
    model_version = ",".join(dict.fromkeys(r.model_version for r in rows))
    run_id = ",".join(dict.fromkeys(r.run_id for r in rows))
    return scored, above, model_version, run_id


def _max_recorded_version(engine: Engine, ks: KeySpace) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.text("select coalesce(max(version), 0) from scoring.publications where redis_prefix = :p"),
                {"p": ks.prefix},
            ).scalar_one()
        )


def _record_start(engine: Engine, ks: KeySpace, version: int, day: dt.date, top_n: int, floor: float,
                  model_version: str, run_id: str, scored: int, allowed_older: bool = False) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "insert into scoring.publications (redis_prefix, version, score_date, model_version, run_id, status,"
                " top_n, min_probability, scored_pairs, allowed_older)"
                " values (:p, :v, :d, :m, :r, 'publishing', :n, :f, :s, :o)"
            ),
            {"p": ks.prefix, "v": version, "d": day, "m": model_version, "r": run_id, "n": top_n, "f": floor,
             "s": scored, "o": allowed_older},
        )


def reconcile_abandoned(engine: Engine, ks: KeySpace) -> int:
    """Mark this prefix's ``publishing`` rows ``failed``: called while holding the publish lock, so no publisher
    of them is alive (it was killed, or lost Redis and its lock). Returns the rows changed."""
    with engine.begin() as conn:
        n = conn.execute(
            sa.text(
                "update scoring.publications set status = 'failed', error = coalesce(error,"
                " 'abandoned: the publisher died before finishing (reconciled by a later publish or cleanup)')"
                " where redis_prefix = :p and status = 'publishing'"
            ),
            {"p": ks.prefix},
        ).rowcount
    if n:
        log.warning("marked %d abandoned publish(es) of prefix %s as failed", n, ks.prefix)
    return int(n or 0)


def served_score_date(redis_client: Any, settings: Settings) -> tuple[int | None, dt.date | None]:
    """(served version, its score_date) under ``settings.redis_prefix``; (None, None) when nothing is served."""
    ks = KeySpace(settings.redis_prefix)
    version = _int_or_none(redis_client.get(ks.current()))
    if version is None:
        return None, None
    raw = redis_client.hget(ks.meta(version), "score_date")
    return version, dt.date.fromisoformat(raw.decode()) if raw else None


def _record_end(engine: Engine, ks: KeySpace, version: int, *, status: str, seconds: float, users: int = 0,
                pairs: int = 0, reasons: int = 0, previous: int | None = None, error: str | None = None,
                published_at: dt.datetime | None = None) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "update scoring.publications set status = :st, users = :u, pairs = :pa, reasons = :re,"
                " previous_version = :pv, seconds = :sec, error = :err, published_at = :at"
                " where redis_prefix = :p and version = :v"
            ),
            {"st": status, "u": users, "pa": pairs, "re": reasons, "pv": previous, "sec": seconds, "err": error,
             "at": published_at, "p": ks.prefix, "v": version},
        )
        if status == "published":
            _record_flip(conn, ks, previous, version, "publish")


def _record_flip(conn: sa.Connection, ks: KeySpace, from_version: int | None, to_version: int, reason: str) -> None:
    conn.execute(
        sa.text(
            "insert into scoring.pointer_flips (redis_prefix, from_version, to_version, reason)"
            " values (:p, :f, :t, :r)"
        ),
        {"p": ks.prefix, "f": from_version, "t": to_version, "r": reason},
    )


# --- publish --------------------------------------------------------------------------------------------------------
def _hot_rows(engine: Engine, day: dt.date, top_n: int, floor: float, part: int | None = None,
              parts: int | None = None) -> Iterator[tuple]:
    """Stream the day's hot pairs, one row per user in ascending user_id: (user_id, product_ids, probabilities,
    tiers, reason codes joined by U+001F per pair, reason texts joined likewise), arrays aligned pair by pair, over one
    binary COPY (psycopg 3). ``part`` of ``parts``: only the users of that user-hash range (None: every user)."""
    from ml.pgcopy import connect

    sql = read_sql("publish/hot_pairs.sql")
    with connect(engine) as conn, conn.cursor() as cur:
        with cur.copy(
            f"copy ({sql}) to stdout (format binary)",
            {"score_date": day, "min_probability": floor, "top_n": top_n, "part": part, "parts": parts},
        ) as copy:
            copy.set_types(["int8", "int8[]", "float8[]", "text[]", "text[]", "text[]", "text"])
            try:
                yield from copy.rows()
            except GeneratorExit:  # the consumer stopped early (Redis failed): stop the server, don't drain it
                conn.cancel_safe()
                raise


_SEP = "\x1f"


def _write_version(rows: Iterable[tuple], redis_client: Any, ks: KeySpace, version: int, chunk_pairs: int,
                   heartbeat: _Heartbeat | None, progress: Progress, part: int = 0, parts: int = 1
                   ) -> tuple[int, int, dict[tuple[str, str], int]]:
    """Write one zset + one hash per user under version ``version`` from :func:`_hot_rows` rows, pipelined in
    chunks of about ``chunk_pairs`` pairs, then the reason dictionary. Returns (users, pairs, reason dictionary).
    Reason ids are ``part + 1``, ``part + 1 + parts``, ...: the writers of the parts of one version never give two
    reasons the same id (a reason seen by two parts has one id per part; both resolve to it).
    Raises :class:`PublishError` when a pair's reason codes and texts do not pair up."""
    reason_ids: dict[tuple[str, str], int] = {}
    pipe = redis_client.pipeline(transaction=False)
    users = pairs = pending = 0
    for user_id, product_ids, probabilities, tiers, codes, texts, *arm in rows:
        if arm and arm[0]:  # the user's A/B experiment arm (issue 14)
            pipe.set(ks.arm(version, user_id), arm[0])
        payloads = []
        for tier, c, t in zip(tiers, codes, texts, strict=True):
            if not c:
                payloads.append(encode_details(tier, ()))
                continue
            cs, ts = c.split(_SEP), t.split(_SEP)
            if len(cs) != len(ts):
                raise PublishError(f"user {user_id}: {len(cs)} reason codes but {len(ts)} reason texts in a pair")
            rids = []
            for pair in zip(cs, ts):
                rid = reason_ids.get(pair)
                if rid is None:
                    rid = reason_ids[pair] = part + 1 + parts * len(reason_ids)
                rids.append(rid)
            payloads.append(encode_details(tier, rids))
        pipe.zadd(ks.recs(version, user_id), dict(zip(product_ids, probabilities, strict=True)))
        pipe.hset(ks.details(version, user_id), mapping=dict(zip(product_ids, payloads, strict=True)))
        users += 1
        pairs += len(product_ids)
        pending += len(product_ids)
        if pending >= chunk_pairs:
            pipe.execute()
            if heartbeat is not None:
                heartbeat.check()
            progress.advance(pending)
            pending = 0
    pipe.execute()
    progress.advance(pending)
    items = [(rid, encode_reason(*pair)) for pair, rid in reason_ids.items()]
    for start in range(0, len(items), 5_000):
        pipe.hset(ks.reasons(version), mapping=dict(items[start : start + 5_000]))
    pipe.execute()
    return users, pairs, reason_ids


def _publish_parts(settings: Settings) -> int:
    """How many processes write a version: ``settings.publish_workers``, or 1 where a child cannot be forked (a
    daemonic process, no fork) or the target is a Redis Cluster (its clients are not shared across a fork here)."""
    import multiprocessing as mp

    n = settings.publish_workers
    if n > 1 and ("fork" not in mp.get_all_start_methods() or mp.current_process().daemon or settings.redis_cluster):
        return 1
    return n


def _part_main(result: Any, engine: Engine, redis_client: Any, ks: KeySpace, version: int, day: dt.date, top_n: int,
               floor: float, chunk_pairs: int, part: int, parts: int) -> None:
    """A forked writer of one user-hash range of the version: its own Postgres COPY (a new connection) and Redis
    connections (redis-py's pool opens new ones after a fork). Sends ("ok", users, pairs, reasons) or
    ("error", text) through ``result``."""
    try:
        progress = Progress(f"publish {day} v{version} part {part + 1}/{parts}", unit="pairs")
        with closing(_hot_rows(engine, day, top_n, floor, part, parts)) as rows:
            users, pairs, reasons = _write_version(rows, redis_client, ks, version, chunk_pairs, None, progress,
                                                   part, parts)
        result.send(("ok", users, pairs, len(reasons)))
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which fails the publish
        result.send(("error", f"{type(e).__name__}: {e}"))
    finally:
        result.close()


def _write_parts(engine: Engine, redis_client: Any, ks: KeySpace, version: int, day: dt.date, top_n: int,
                 floor: float, settings: Settings, heartbeat: _Heartbeat, progress: Progress,
                 parts: int) -> tuple[int, int, int]:
    """Write the version in ``parts`` forked processes, one user-hash range each (the Python that turns rows into
    Redis commands is most of a publish's time, and one interpreter runs it on one core). The parent renews the lock
    and waits; any part's failure stops the others and raises :class:`PublishError`. Returns (users, pairs,
    reason entries)."""
    import multiprocessing as mp
    from multiprocessing.connection import wait

    ctx = mp.get_context("fork")
    procs, readers = [], {}
    try:
        for k in range(parts):
            r, w = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_part_main, name=f"publish-part-{k + 1}",
                            args=(w, engine, redis_client, ks, version, day, top_n, floor,
                                  settings.publish_chunk_pairs, k, parts), daemon=True)
            p.start()
            w.close()
            procs.append(p)
            readers[r] = (k, p)
        users = pairs = reasons = 0
        while readers:
            heartbeat.check()
            for r in wait(list(readers), timeout=0.5):
                k, p = readers.pop(r)
                try:
                    msg = r.recv()
                except EOFError:
                    p.join(5)
                    msg = ("error", f"the writer process died (exit code {p.exitcode})")
                r.close()
                if msg[0] != "ok":
                    raise PublishError(f"part {k + 1}/{parts}: {msg[1]}")
                users, pairs, reasons = users + msg[1], pairs + msg[2], reasons + msg[3]
                progress.advance(msg[2])
        return users, pairs, reasons
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join(5)


def publish_version(
    engine: Engine,
    redis_client: Any,
    settings: Settings,
    score_date: dt.date | str,
    *,
    top_n: int | None = None,
    min_probability: float | None = None,
    allow_older: bool = False,
) -> PublishResult:
    """Publish the top-N products per user of ``score_date``'s finalized ``scoring.scores`` partition as a new Redis
    version, flip ``P:current`` to it, record it in ``scoring.publications`` / ``scoring.pointer_flips``, then clean
    up versions beyond ``publish_keep_versions`` (never the served one or its predecessor).

    ``score_date`` is the UTC calendar date (a string or datetime from an old caller is coerced once by
    :func:`ml.dates.utc_date`). ``redis_client`` is a ``redis.Redis`` (or ``redis.cluster.RedisCluster``) with
    ``decode_responses=False``.
    ``top_n`` / ``min_probability`` default to ``settings.publish_top_n`` / ``publish_min_probability``; pairs tie
    on probability are ranked by product_id. Raises :class:`PublishError` when the date has no scores, no pair
    reaches the floor, another publish holds the lock, or Redis fails midway: in every case the previously served
    version stays served.
    """
    import redis

    day = utc_date(score_date, what="score_date")
    n = top_n if top_n is not None else settings.publish_top_n
    floor = min_probability if min_probability is not None else settings.publish_min_probability
    if n < 1:
        raise ConfigError(f"top_n must be at least 1, not {n}")
    ks = KeySpace(settings.redis_prefix)
    scored, above, model_version, run_id = _partition_facts(engine, day, floor)
    if scored == 0:
        raise PublishError(f"no scores for score_date {day} in scoring.scores; nothing published")
    if above == 0:
        raise PublishError(f"no pair of score_date {day} reaches min_probability {floor}; nothing published")

    started = time.perf_counter()
    try:
        lock = _acquire_lock(redis_client, ks, settings, f"publish {day}")
    except redis.RedisError as e:
        raise PublishError(f"publish of {day}: Redis unreachable ({e}); the served version is unchanged") from e
    try:
        reconcile_abandoned(engine, ks)
        try:
            served, served_day = served_score_date(redis_client, settings)
        except redis.RedisError as e:
            raise PublishError(f"publish of {day}: Redis failed ({e}); the served version is unchanged") from e
        older = served_day is not None and day < served_day
        if older and not allow_older:
            raise PublishError(
                f"refusing to publish score_date {day}: it is older than the served score_date {served_day} "
                f"(version {served}); nothing changed. To serve it anyway pass --allow-older (DAG param "
                "allow_older=true); to go back to an earlier version use rollback-scores"
            )
        recorded = _max_recorded_version(engine, ks)
        try:
            version = int(redis_client.incr(ks.seq()))
            if version <= recorded:  # a wiped or replaced Redis restarts the counter: never reuse a recorded id
                version = recorded + 1
                redis_client.set(ks.seq(), version)
            previous = _int_or_none(redis_client.get(ks.current()))
        except redis.RedisError as e:
            raise PublishError(f"publish of {day}: Redis failed ({e}); the served version is unchanged") from e
        if older:
            log.warning("publishing score_date %s, older than the served %s, as explicitly allowed", day, served_day)
        _record_start(engine, ks, version, day, n, floor, model_version, run_id, scored, allowed_older=older)
        log.info("publishing score_date %s as version %d (top %d, floor %g; %s scored pairs; serving %s)",
                 day, version, n, floor, f"{scored:,}", previous)
        progress = Progress(f"publish {day} v{version}", unit="pairs")
        try:
            parts = _publish_parts(settings)
            with _Heartbeat(lock, settings.publish_lock_timeout_s) as heartbeat:
                if parts > 1:
                    users, pairs, reasons = _write_parts(engine, redis_client, ks, version, day, n, floor, settings,
                                                         heartbeat, progress, parts)
                else:
                    with closing(_hot_rows(engine, day, n, floor)) as rows:
                        users, pairs, dictionary = _write_version(
                            rows, redis_client, ks, version, settings.publish_chunk_pairs, heartbeat, progress
                        )
                    reasons = len(dictionary)
            published_at = dt.datetime.now(dt.UTC).replace(microsecond=0)
            meta = {
                "version": version, "score_date": day.isoformat(), "model_version": model_version, "run_id": run_id,
                "scored_pairs": scored, "users": users, "pairs": pairs, "reasons": reasons, "top_n": n,
                "min_probability": repr(float(floor)), "published_at": published_at.isoformat(),
                "previous": "" if previous is None else previous,
            }
            from ml.monitor import publish_meta  # issue 13: holdout/realized metrics, top features (/v1/model)

            from ml.experiments import published_arms_meta

            meta.update(publish_meta(engine, model_version, day))
            meta.update(published_arms_meta(engine, run_id))  # experiment_id + arms while an experiment ran
            pipe = redis_client.pipeline(transaction=False)
            pipe.hset(ks.meta(version), mapping=meta)
            pipe.zadd(ks.versions(), {version: version})
            pipe.execute()
            lock.reacquire()  # still ours: nobody else flipped the pointer meanwhile
            redis_client.set(ks.current(), version)  # the flip: one single-key SET
        except Exception as e:
            seconds = time.perf_counter() - started
            try:
                _record_end(engine, ks, version, status="failed", seconds=seconds, error=f"{type(e).__name__}: {e}")
            except Exception:  # noqa: BLE001 - never hide the publish failure behind a bookkeeping failure
                log.exception("could not record the failed publish of version %d in scoring.publications", version)
            raise PublishError(
                f"publish of score_date {day} as version {version} failed after {progress.done:,} pairs "
                f"({type(e).__name__}: {e}); version {previous} stays served, the partial keys go at the next cleanup"
            ) from e
        seconds = time.perf_counter() - started
        progress.finish()
        _record_end(engine, ks, version, status="published", seconds=seconds, users=users, pairs=pairs,
                    reasons=reasons, previous=previous, published_at=published_at)
        deleted = _cleanup_locked(redis_client, ks, settings.publish_keep_versions)
    finally:
        _release_lock(lock)
    result = PublishResult(
        version=version, score_date=day, model_version=model_version, run_id=run_id, scored_pairs=scored,
        users=users, pairs=pairs, reasons=reasons, previous_version=previous, published_at=published_at,
        seconds=seconds, deleted_versions=deleted,
    )
    log.info("published %s: version %d serves %s pairs of %s users (%s pairs/s); previous %s; deleted %s",
             day, version, f"{pairs:,}", f"{users:,}", f"{result.pairs_per_s:,.0f}", previous, deleted or "none")
    return result


# --- rollback -------------------------------------------------------------------------------------------------------
def rollback_version(
    redis_client: Any, settings: Settings, *, to_version: int | None = None, engine: Engine | None = None
) -> RollbackResult:
    """Flip ``P:current`` back to the version served before the current one (or to ``to_version``), with one SET.

    The target must be a complete, still-stored version. With ``engine`` the flip is recorded in
    ``scoring.pointer_flips``. Raises :class:`PublishError` when nothing is published, no earlier version is
    stored, or ``to_version`` is not stored; the pointer is then unchanged.
    """
    ks = KeySpace(settings.redis_prefix)
    lock = _acquire_lock(redis_client, ks, settings, "roll back")
    try:
        current = _int_or_none(redis_client.get(ks.current()))
        if current is None:
            raise PublishError(f"nothing is published under prefix {ks.prefix!r}: no version to roll back from")
        stored = stored_versions(redis_client, settings)
        if to_version is None:
            previous = _int_or_none(redis_client.hget(ks.meta(current), "previous"))
            if previous is not None and previous in stored:
                target = previous
            else:
                older = [v for v in stored if v < current]
                if not older:
                    raise PublishError(
                        f"no version before {current} is stored under {ks.prefix!r} (stored: {stored}); "
                        "nothing to roll back to"
                    )
                target = older[-1]
        else:
            if to_version not in stored:
                raise PublishError(f"version {to_version} is not stored under {ks.prefix!r} (stored: {stored})")
            target = to_version
        if target == current:
            raise PublishError(f"version {target} is already served under {ks.prefix!r}")
        redis_client.set(ks.current(), target)
        meta = version_meta(redis_client, settings, target)
    finally:
        _release_lock(lock)
    if engine is not None:
        with engine.begin() as conn:
            _record_flip(conn, ks, current, target, "rollback")
    log.warning("rolled back %s: served version %d -> %d (score_date %s)", ks.prefix, current, target,
                meta.get("score_date"))
    return RollbackResult(current, target, meta.get("score_date"), meta.get("model_version"))


# --- cleanup --------------------------------------------------------------------------------------------------------
def cleanup_versions(redis_client: Any, settings: Settings, engine: Engine | None = None) -> list[int]:
    """Delete versions beyond the newest ``publish_keep_versions`` and leftovers of failed publishes (SCAN +
    UNLINK in chunks). Never deletes the served version or the one it replaced. Returns the deleted version ids.
    With ``engine``, ``publishing`` rows of dead publishers are marked failed first.
    Raises :class:`PublishError` when a publish or rollback holds the lock."""
    ks = KeySpace(settings.redis_prefix)
    lock = _acquire_lock(redis_client, ks, settings, "clean up")
    try:
        if engine is not None:
            reconcile_abandoned(engine, ks)
        return _cleanup_locked(redis_client, ks, settings.publish_keep_versions)
    finally:
        _release_lock(lock)


def _cleanup_locked(redis_client: Any, ks: KeySpace, keep_versions: int, scan_count: int = 2_000,
                    unlink_chunk: int = 1_000) -> list[int]:
    current = _int_or_none(redis_client.get(ks.current()))
    registered = [int(v) for v in redis_client.zrange(ks.versions(), 0, -1)]
    keep = set(registered[-max(keep_versions, 1) :])
    if current is not None:
        keep.add(current)
        previous = _int_or_none(redis_client.hget(ks.meta(current), "previous"))
        if previous is not None:
            keep.add(previous)
    doomed_registered = [v for v in registered if v not in keep]
    if doomed_registered:
        redis_client.zrem(ks.versions(), *doomed_registered)  # first unregister: rollback can no longer pick them
    deleted: set[int] = set()
    batch: list[bytes] = []
    for key in redis_client.scan_iter(match=ks.version_glob(), count=scan_count):
        v = ks.version_of(key)
        if v is None or v in keep:
            continue
        batch.append(key)
        deleted.add(v)
        if len(batch) >= unlink_chunk:
            redis_client.unlink(*batch)
            batch = []
    if batch:
        redis_client.unlink(*batch)
    if deleted:
        log.info("cleanup %s: deleted versions %s, kept %s", ks.prefix, sorted(deleted), sorted(keep))
    return sorted(deleted | set(doomed_registered))
