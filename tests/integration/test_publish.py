"""Publishing hot scores to a real Redis: read-back, atomic flips under concurrent readers, a dropped connection,
rollback and cleanup. Scores are inserted into real ``scoring.scores`` partitions (unique dates per test)."""

from __future__ import annotations

import datetime as dt
import itertools
import random
import socket
import threading
import time
from collections.abc import Iterable
from urllib.parse import urlsplit

import pytest
import redis
import sqlalchemy as sa
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from ml.errors import PublishError
from ml.keyspace import KeySpace
from ml.publish import (
    cleanup_versions,
    current_version,
    publish_version,
    read_hot_items,
    rollback_version,
    stored_versions,
    version_meta,
)

pytestmark = pytest.mark.integration

_DAYS = itertools.count()


def fresh_day(base: dt.date = dt.date(2031, 1, 1)) -> dt.date:
    """A score_date no other test of this session uses."""
    return base + dt.timedelta(days=next(_DAYS))


# --- scores fixtures --------------------------------------------------------------------------------------------------
Row = tuple[int, int, float, str, list[str], list[str]]  # user, product, probability, tier, codes, texts


def tier_of(p: float) -> str:
    return "hot" if p >= 0.5 else "warm" if p >= 0.2 else "cool" if p >= 0.05 else "cold"


def make_rows(users: Iterable[int], per_user: int, seed: int, product_base: int = 1000) -> list[Row]:
    """Synthetic scored pairs: ``per_user`` products per user with distinct probabilities and 0-3 reasons."""
    rng = random.Random(seed)
    rows: list[Row] = []
    for u in users:
        for k in range(per_user):
            p = round(rng.random(), 6)
            n_reasons = rng.randint(0, 3)
            codes = [f"R{rng.randint(1, 6)}" for _ in range(n_reasons)]
            texts = [f"{c}: viewed {rng.randint(1, 9)} times, 'quoted' | piped" for c in codes]
            rows.append((u, product_base + k * 7 + u % 5, p, tier_of(p), codes, texts))
    return rows


def insert_scores(pg_url: str, day: dt.date, rows: list[Row], model_version: str = "m-test", run_id: str = "r1") -> None:
    """Create the day's partition of scoring.scores and COPY ``rows`` into it."""
    import psycopg
    from psycopg import sql

    from ml.db import libpq_url

    part = sql.Identifier("scoring", f"scores_p{day:%Y%m%d}")
    with psycopg.connect(libpq_url(pg_url)) as conn:
        conn.execute(
            sql.SQL("create table {} partition of scoring.scores for values from ({}) to ({})").format(
                part, sql.Literal(day), sql.Literal(day + dt.timedelta(days=1))
            )
        )
        with conn.cursor().copy(
            "copy scoring.scores (score_date, user_id, product_id, probability, model_version, run_id, tier,"
            " reason_codes, reason_texts, top_contributions, base_value, contributions) from stdin"
        ) as copy:
            for u, pid, p, tier, codes, texts in rows:
                copy.write_row((day, u, pid, p, model_version, run_id, tier, codes, texts, "[]", -1.0, [0.5, -0.25]))


def expected_hot(rows: list[Row], top_n: int, floor: float = 0.0) -> dict[int, list[Row]]:
    """Per user: the top-N rows at or above the floor, best first (ties by product_id), as the publisher ranks."""
    by_user: dict[int, list[Row]] = {}
    for r in rows:
        if r[2] >= floor:
            by_user.setdefault(r[0], []).append(r)
    return {u: sorted(rs, key=lambda r: (-r[2], r[1]))[:top_n] for u, rs in by_user.items()}


def as_items(rows: list[Row]) -> list[tuple]:
    return [(r[1], r[2], r[3], r[4], r[5]) for r in rows]


def got_items(items) -> list[tuple]:  # noqa: ANN001 - list[HotItem]
    return [(i.product_id, i.probability, i.tier, i.reason_codes, i.reason_texts) for i in items]


# --- a TCP proxy in front of the real Redis, to drop the publisher's connection midway ---------------------------------
class DroppingProxy:
    """Forwards 127.0.0.1:port to the test Redis; after ``drop_after`` client bytes it closes every connection and
    stops listening, as a network failure would (reconnects are refused)."""

    def __init__(self, redis_url: str, drop_after: int) -> None:
        self.target = urlsplit(redis_url)
        self.drop_after = drop_after
        self.sent = 0
        self.dropped = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _upstream(self) -> socket.socket:
        if self.target.scheme == "unix":
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(self.target.path)
            return s
        return socket.create_connection((self.target.hostname, self.target.port or 6379))

    def _accept(self) -> None:
        while not self.dropped.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            up = self._upstream()
            with self._lock:
                self._socks += [client, up]
            threading.Thread(target=self._pump, args=(client, up, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, count: bool) -> None:
        try:
            while data := src.recv(65536):
                if count:
                    with self._lock:
                        self.sent += len(data)
                        over = self.sent >= self.drop_after
                    if over:
                        self.drop()
                        return
                dst.sendall(data)
        except OSError:
            pass

    def drop(self) -> None:
        self.dropped.set()
        with self._lock:
            socks, self._socks = self._socks, []
        for s in [self.listener, *socks]:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


def db_of(client: redis.Redis) -> int:
    return int(client.connection_pool.connection_kwargs.get("db", 0))


# --- tests ------------------------------------------------------------------------------------------------------------
def test_publish_reads_back_every_hot_pair(engine, settings, redis_client) -> None:
    day = fresh_day()
    rows = make_rows(range(1, 301), per_user=25, seed=1)
    insert_scores(settings.postgres_url, day, rows, model_version="m-7", run_id="run-a")
    settings = settings.model_copy(update={"publish_chunk_pairs": 500})

    result = publish_version(engine, redis_client, settings, day, top_n=20, min_probability=0.1)

    want = expected_hot(rows, 20, 0.1)
    assert result.version == current_version(redis_client, settings)
    assert (result.users, result.pairs, result.scored_pairs) == (len(want), sum(map(len, want.values())), len(rows))
    assert result.model_version == "m-7" and result.run_id == "run-a" and result.previous_version is None
    for user, hot in want.items():
        version, items = read_hot_items(redis_client, settings, user)
        assert version == result.version
        assert got_items(items) == as_items(hot)
    # a user with no pair above the floor has no keys; limit truncates best-first
    assert read_hot_items(redis_client, settings, 999_999) == (result.version, [])
    _, top3 = read_hot_items(redis_client, settings, 1, limit=3)
    assert got_items(top3) == as_items(want[1][:3])

    meta = version_meta(redis_client, settings, result.version)
    assert meta["score_date"] == day.isoformat() and meta["model_version"] == "m-7"
    assert int(meta["pairs"]) == result.pairs and int(meta["users"]) == result.users and meta["previous"] == ""
    assert dt.datetime.fromisoformat(meta["published_at"]).tzinfo is not None
    # no key of the version carries a TTL
    ks = KeySpace(settings.redis_prefix)
    for key in [ks.current(), ks.meta(result.version), ks.recs(result.version, 1), ks.details(result.version, 1)]:
        assert redis_client.ttl(key) == -1
    with engine.connect() as c:
        row = c.execute(
            sa.text("select status, users, pairs, score_date from scoring.publications where redis_prefix = :p"),
            {"p": settings.redis_prefix},
        ).one()
        flips = c.execute(
            sa.text("select from_version, to_version, reason from scoring.pointer_flips where redis_prefix = :p"),
            {"p": settings.redis_prefix},
        ).all()
    assert tuple(row) == ("published", result.users, result.pairs, day)
    assert [tuple(f) for f in flips] == [(None, result.version, "publish")]


def test_publish_refuses_a_date_without_scores(engine, settings, redis_client) -> None:
    with pytest.raises(PublishError, match="no scores for score_date"):
        publish_version(engine, redis_client, settings, fresh_day())
    assert current_version(redis_client, settings) is None


def test_flip_is_atomic_under_concurrent_readers(engine, settings, redis_client, redis_url) -> None:
    users = list(range(1, 1201))
    day1, day2 = fresh_day(), fresh_day()
    rows1 = make_rows(users, per_user=6, seed=11, product_base=1000)
    rows2 = make_rows(users, per_user=6, seed=22, product_base=5000)  # disjoint products: a mix would show
    insert_scores(settings.postgres_url, day1, rows1)
    insert_scores(settings.postgres_url, day2, rows2)
    settings = settings.model_copy(update={"publish_chunk_pairs": 300})
    v1 = publish_version(engine, redis_client, settings, day1).version
    want = {v1: expected_hot(rows1, 20)}

    stop = threading.Event()
    seen: list[int] = []
    errors: list[str] = []
    reads_while_publishing = [0]
    publishing = threading.Event()
    expect_lock = threading.Lock()

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        client = redis.Redis.from_url(redis_url)
        try:
            while not stop.is_set():
                user = rng.choice(users)
                version, items = read_hot_items(client, settings, user)
                with expect_lock:
                    expected = want.get(version)
                if expected is None:
                    errors.append(f"unknown version {version}")
                elif got_items(items) != as_items(expected[user]):
                    errors.append(f"user {user} in version {version}: got {len(items)} items, not that version's")
                seen.append(version)
                if publishing.is_set():
                    reads_while_publishing[0] += 1
        finally:
            client.close()

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    try:
        # the new version's expectations are known before its pointer can flip
        with expect_lock:
            want[v1 + 1] = expected_hot(rows2, 20)
        publishing.set()
        v2 = publish_version(engine, redis_client, settings, day2).version
        publishing.clear()
        assert v2 == v1 + 1
        time.sleep(0.05)
        rolled = rollback_version(redis_client, settings, engine=engine)
        time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    assert reads_while_publishing[0] > 0
    assert {v1, v2} <= set(seen)
    assert (rolled.from_version, rolled.to_version) == (v2, v1)
    assert current_version(redis_client, settings) == v1


def test_dropped_connection_midway_leaves_old_version_served(engine, settings, redis_client, redis_url) -> None:
    users = range(1, 801)
    day1, day2 = fresh_day(), fresh_day()
    rows1, rows2 = make_rows(users, 10, seed=3), make_rows(users, 10, seed=4, product_base=9000)
    insert_scores(settings.postgres_url, day1, rows1)
    insert_scores(settings.postgres_url, day2, rows2)
    settings = settings.model_copy(update={"publish_chunk_pairs": 400})
    v1 = publish_version(engine, redis_client, settings, day1).version

    proxy = DroppingProxy(redis_url, drop_after=60_000)  # well inside the second version's ~8k pairs
    flaky = redis.Redis(  # a short retry policy keeps the test fast; the default one retries for seconds
        host="127.0.0.1", port=proxy.port, db=db_of(redis_client), socket_timeout=5,
        retry=Retry(ExponentialBackoff(cap=0.02, base=0.005), retries=2),
    )
    try:
        with pytest.raises(PublishError, match=f"version {v1} stays served"):
            publish_version(engine, flaky, settings, day2)
    finally:
        proxy.drop()
        flaky.close()
    assert proxy.dropped.is_set()

    assert current_version(redis_client, settings) == v1
    want = expected_hot(rows1, 20)
    for user in (1, 400, 800):
        assert got_items(read_hot_items(redis_client, settings, user)[1]) == as_items(want[user])
    ks = KeySpace(settings.redis_prefix)
    partial = {ks.version_of(k) for k in redis_client.scan_iter(match=ks.version_glob(), count=1000)} - {v1}
    assert partial and stored_versions(redis_client, settings) == [v1]  # orphans exist, but are not registered
    with engine.connect() as c:
        status, error = c.execute(
            sa.text("select status, error from scoring.publications where redis_prefix = :p and version = :v"),
            {"p": settings.redis_prefix, "v": v1 + 1},
        ).one()
    assert status == "failed" and "Connection" in error
    # the cut-off publisher could not release its lock: it expires within publish_lock_timeout_s
    assert 0 < redis_client.ttl(ks.lock()) <= settings.publish_lock_timeout_s
    redis_client.delete(ks.lock())  # stand-in for waiting out the expiry
    # a retry succeeds and its cleanup removes the orphans of the failed attempt
    v3 = publish_version(engine, redis_client, settings, day2).version
    left = {ks.version_of(k) for k in redis_client.scan_iter(match=ks.version_glob(), count=1000)}
    assert left == {v1, v3}
    assert got_items(read_hot_items(redis_client, settings, 5)[1]) == as_items(expected_hot(rows2, 20)[5])


def test_rollback_and_cleanup_keep_served_and_previous(engine, settings, redis_client) -> None:
    users = range(1, 51)
    days = [fresh_day() for _ in range(4)]
    rowsets = [make_rows(users, 4, seed=40 + i, product_base=100 * (i + 1)) for i in range(4)]
    for d, rows in zip(days, rowsets, strict=True):
        insert_scores(settings.postgres_url, d, rows, model_version=f"m{d:%d}")
    settings = settings.model_copy(update={"publish_keep_versions": 2})

    with pytest.raises(PublishError, match="nothing is published"):
        rollback_version(redis_client, settings)
    r1 = publish_version(engine, redis_client, settings, days[0])
    with pytest.raises(PublishError, match="no version before"):
        rollback_version(redis_client, settings)
    r2 = publish_version(engine, redis_client, settings, days[1])
    r3 = publish_version(engine, redis_client, settings, days[2])
    assert r3.deleted_versions == [r1.version] and stored_versions(redis_client, settings) == [r2.version, r3.version]

    back = rollback_version(redis_client, settings, engine=engine)
    assert (back.from_version, back.to_version, back.score_date) == (r3.version, r2.version, days[1].isoformat())
    assert got_items(read_hot_items(redis_client, settings, 7)[1]) == as_items(expected_hot(rowsets[1], 20)[7])
    with pytest.raises(PublishError, match="not stored"):
        rollback_version(redis_client, settings, to_version=r1.version)
    fwd = rollback_version(redis_client, settings, to_version=r3.version)  # roll forward again
    assert fwd.to_version == r3.version
    rollback_version(redis_client, settings)  # back to r2 (r3's previous)

    # a new publish while r2 is served: r2 becomes its previous and survives cleanup, the newest two stay too
    r4 = publish_version(engine, redis_client, settings, days[3])
    assert r4.previous_version == r2.version
    assert stored_versions(redis_client, settings) == [r2.version, r3.version, r4.version]
    assert cleanup_versions(redis_client, settings) == []
    with engine.connect() as c:
        flips = c.execute(
            sa.text("select reason, from_version, to_version from scoring.pointer_flips where redis_prefix = :p"
                    " order by flip_id"),
            {"p": settings.redis_prefix},
        ).all()
    assert [tuple(f) for f in flips] == [
        ("publish", None, r1.version), ("publish", r1.version, r2.version), ("publish", r2.version, r3.version),
        ("rollback", r3.version, r2.version), ("publish", r2.version, r4.version),
    ]


def test_publish_lock_refuses_a_concurrent_publisher(engine, settings, redis_client) -> None:
    day = fresh_day()
    insert_scores(settings.postgres_url, day, make_rows(range(1, 5), 3, seed=5))
    held = redis_client.lock(KeySpace(settings.redis_prefix).lock(), timeout=30)
    assert held.acquire(blocking=False)
    try:
        with pytest.raises(PublishError, match="holds"):
            publish_version(engine, redis_client, settings, day)
    finally:
        held.release()
    assert current_version(redis_client, settings) is None



def test_a_wiped_redis_never_reuses_a_recorded_version_id(engine, settings, redis_client) -> None:
    day = fresh_day()
    rows = make_rows(range(1, 11), 3, seed=9)
    insert_scores(settings.postgres_url, day, rows)
    first = publish_version(engine, redis_client, settings, day)
    for key in redis_client.scan_iter(match=f"{settings.redis_prefix}:*"):  # Redis lost everything
        redis_client.delete(key)
    second = publish_version(engine, redis_client, settings, day)
    assert second.version == first.version + 1 and second.previous_version is None
    assert got_items(read_hot_items(redis_client, settings, 4)[1]) == as_items(expected_hot(rows, 20)[4])
    with engine.connect() as c:
        versions = c.execute(
            sa.text("select version, status from scoring.publications where redis_prefix = :p order by version"),
            {"p": settings.redis_prefix},
        ).all()
    assert [tuple(v) for v in versions] == [(first.version, "published"), (second.version, "published")]


# --- issue 17: a version written by several processes, one user-hash range each ----------------------------------------
def test_parts_publish_what_one_writer_publishes(engine, settings, redis_client) -> None:
    day = fresh_day()
    rows = make_rows(range(1, 401), per_user=12, seed=17)
    insert_scores(settings.postgres_url, day, rows)
    one = publish_version(engine, redis_client, settings.model_copy(update={"publish_workers": 1}), day, top_n=8)
    ks = KeySpace(settings.redis_prefix)
    one_view = {u: got_items(read_hot_items(redis_client, settings, u)[1]) for u in range(1, 401)}
    three = publish_version(engine, redis_client, settings.model_copy(update={"publish_workers": 3,
                                                                            "publish_chunk_pairs": 200}), day, top_n=8)
    assert three.version == one.version + 1 == current_version(redis_client, settings)
    assert (three.users, three.pairs) == (one.users, one.pairs) == (400, 400 * 8)
    three_view = {u: got_items(read_hot_items(redis_client, settings, u)[1]) for u in range(1, 401)}
    assert three_view == one_view == {u: as_items(h) for u, h in expected_hot(rows, 8).items()}
    # each part numbers its reasons apart (part k: ids k+1, k+1+3, ...); every id of a details payload resolves
    ids = sorted(int(i) for i in redis_client.hkeys(ks.reasons(three.version)))
    assert three.reasons == len(ids) == int(version_meta(redis_client, settings, three.version)["reasons"])
    assert {i % 3 for i in ids} == {0, 1, 2} and len(ids) >= one.reasons
    with engine.connect() as c:
        recorded = c.execute(sa.text("select users, pairs, reasons from scoring.publications where redis_prefix = :p"
                                     " and version = :v"), {"p": settings.redis_prefix, "v": three.version}).one()
    assert tuple(recorded) == (400, 3200, three.reasons)


def test_a_dead_part_fails_the_publish_and_the_old_version_stays(engine, settings, redis_client, monkeypatch) -> None:
    import os

    from ml import publish

    day1, day2 = fresh_day(), fresh_day()
    rows1, rows2 = make_rows(range(1, 201), 5, seed=5), make_rows(range(1, 201), 5, seed=6, product_base=7000)
    insert_scores(settings.postgres_url, day1, rows1)
    insert_scores(settings.postgres_url, day2, rows2)
    v1 = publish_version(engine, redis_client, settings, day1).version
    real = publish._part_main

    def dies_in_part_two(result, *args) -> None:  # noqa: ANN001 - the forked child runs this copy
        if args[-2] == 1:
            os._exit(3)
        real(result, *args)

    monkeypatch.setattr(publish, "_part_main", dies_in_part_two)
    with pytest.raises(PublishError, match=r"part 2/2: the writer process died \(exit code 3\).*"
                                           f"version {v1} stays served"):
        publish_version(engine, redis_client, settings.model_copy(update={"publish_workers": 2}), day2)
    assert current_version(redis_client, settings) == v1
    assert got_items(read_hot_items(redis_client, settings, 7)[1]) == as_items(expected_hot(rows1, 20)[7])
    with engine.connect() as c:
        status = c.execute(sa.text("select status from scoring.publications where redis_prefix = :p"
                                   " and version = :v"), {"p": settings.redis_prefix, "v": v1 + 1}).scalar_one()
    assert status == "failed"
