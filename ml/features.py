"""Point-in-time pair features, labels and active pairs, computed in PostgreSQL.

One feature definition serves training and nightly scoring: the parameterised SQL in ``sql/features/``
(``pair_features.sql`` including ``active_pairs.sql`` and ``item_stats.sql``). This module binds the parameters,
streams the result out with ``COPY ... TO STDOUT`` (psycopg 3) straight into Arrow, and adds snapshots, checks and
fingerprints on top. No value is ever formatted into SQL text: the only text substitution is the inclusion of those
static SQL files by name.

Time (all UTC, half-open windows; see docs/features.md):

* features of a pair at ``as_of`` read only events in ``[as_of - lookback_days, as_of)``;
* a pair is **active** at ``as_of`` when it has a view or cart in ``[as_of - active_window_days, as_of)``;
* its **label** is 1 when the user purchased the product in ``[as_of, as_of + label_horizon_days)``.

An event at exactly ``as_of`` is therefore future: it can make a label, never a feature or an active pair.

Buckets: ``bucket_of(user_id, K)`` equals ``ml.user_bucket(user_id, K)`` in SQL (migration 0020) for every bigint
id. Fetching bucket k of K filters the events by the equivalent hash range (``bucket_hash_range``, migration 0022) in
the first scan, before any aggregation, so a scoring task aggregates only its own users' events (the
product/category/brand statistics always use every user's events, computed once per key: ``prepare_item_stats``).
"""

from __future__ import annotations

import datetime as dt
import io
import itertools
import logging
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ml.db import libpq_url, read_sql
from ml.errors import ConfigError
from ml.observe import Progress
from ml.settings import Settings

log = logging.getLogger(__name__)

# --- the feature contract --------------------------------------------------------------------------------------------
#: Model features in order. Every one is numeric (float64 in pandas). NaN only in NULLABLE_FEATURES.
FEATURE_COLUMNS: list[str] = [
    # pair: the user's history with this product
    "pair_views",
    "pair_carts",
    "pair_removes",
    "pair_purchases",
    "pair_sessions",
    "pair_hours_since_first_view",
    "pair_hours_since_last_view",
    "pair_hours_since_last_cart",
    "pair_views_24h",
    "pair_views_7d",
    "pair_price_change",
    "pair_cart_without_purchase",
    # user: the user's whole lookback
    "user_events",
    "user_sessions",
    "user_products",
    "user_categories",
    "user_brands",
    "user_mean_session_minutes",
    "user_events_per_session",
    "user_carts",
    "user_purchases",
    "user_cart_to_purchase",
    "user_days_active",
    "user_weekend_share",
    "user_evening_share",
    "user_hours_since_last_event",
    # product: every user's lookback events on it
    "product_viewers",
    "product_views",
    "product_carts",
    "product_purchases",
    "product_view_to_purchase",
    "product_price",
    "product_price_vs_category_median",
    # brand and category, encoded numerically (frequency and smoothed purchase rate)
    "brand_popularity",
    "brand_purchase_rate",
    "category_frequency",
    "category_purchase_rate",
    # context of the pair's last interaction (UTC)
    "last_hour",
    "last_day_of_week",
    "last_is_weekend",
]

#: Features that may be NaN, and why. Every other feature is never NaN on an active pair.
NULLABLE_FEATURES: dict[str, str] = {
    "pair_hours_since_first_view": "no view of the product in the lookback (the pair is active through a cart)",
    "pair_hours_since_last_view": "no view of the product in the lookback",
    "pair_price_change": "no view in the lookback, or a first-view price of 0",
    "pair_hours_since_last_cart": "no cart of the product in the lookback",
    "user_mean_session_minutes": "none of the user's lookback events has a session id",
    "user_events_per_session": "none of the user's lookback events has a session id",
    "user_cart_to_purchase": "the user carted nothing in the lookback",
    "product_price_vs_category_median": "the category's median price is 0",
}

_INF = float("inf")
#: Inclusive bounds every value must respect (NaN aside); used by the snapshot checks and the tests.
FEATURE_RANGES: dict[str, tuple[float, float]] = {
    **{c: (0.0, _INF) for c in FEATURE_COLUMNS},
    "pair_views": (0.0, _INF),
    "pair_price_change": (-1.0, _INF),
    "pair_cart_without_purchase": (0.0, 1.0),
    "user_events": (1.0, _INF),
    "user_products": (1.0, _INF),
    "user_categories": (1.0, _INF),
    "user_days_active": (1.0, _INF),
    "user_cart_to_purchase": (0.0, 1.0),
    "user_weekend_share": (0.0, 1.0),
    "user_evening_share": (0.0, 1.0),
    "user_events_per_session": (1.0, _INF),
    "product_view_to_purchase": (0.0, _INF),
    "brand_popularity": (0.0, 1.0),
    "category_frequency": (0.0, 1.0),
    "last_hour": (0.0, 23.0),
    "last_day_of_week": (0.0, 6.0),
    "last_is_weekend": (0.0, 1.0),
}

KEY_COLUMNS: list[str] = ["user_id", "product_id"]
_SQL_OUTPUT = [*KEY_COLUMNS, *FEATURE_COLUMNS, "label", "weight"]


# --- hash buckets --------------------------------------------------------------------------------------------------
_MASK32 = 0xFFFFFFFF
_HASH_MULTIPLIER = 1540483477  # odd and < 2^31: a 32-bit value times it stays below 2^63 (no bigint overflow)


def user_hash32(user_id: int | np.ndarray) -> int | np.ndarray:
    """The 32-bit hash of ``user_id`` (int or int64 array), equal to SQL ``ml.user_hash32(user_id)``."""
    if isinstance(user_id, np.ndarray):
        x = user_id.astype(np.int64, copy=False)
        folded = (x ^ (x >> 32)) & _MASK32
        return (folded * _HASH_MULTIPLIER) & _MASK32
    x = int(user_id)
    folded = (x ^ (x >> 32)) & _MASK32  # Python's >> on negative ints is arithmetic, like PostgreSQL's
    return (folded * _HASH_MULTIPLIER) & _MASK32


def bucket_of(user_id: int | np.ndarray, n_buckets: int) -> int | np.ndarray:
    """Bucket in ``[0, n_buckets)`` of ``user_id``: equal to SQL ``ml.user_bucket(user_id, n_buckets)``.

    Stable across runs, machines and versions; vectorised over int64 arrays. Raises ValueError for ``n_buckets``
    outside 1 .. 2^31 - 1.
    """
    _check_buckets(0, n_buckets)
    h = user_hash32(user_id)
    if isinstance(h, np.ndarray):
        return ((h * np.int64(n_buckets)) >> 32).astype(np.int64)
    return (h * n_buckets) >> 32


def bucket_hash_range(bucket: int, n_buckets: int) -> tuple[int, int]:
    """The half-open range ``[lo, hi)`` of :func:`user_hash32` values in bucket ``bucket`` of ``n_buckets``; equal
    to SQL ``[ml.bucket_hash_lo(k, K), ml.bucket_hash_lo(k + 1, K))``. The feature SQL filters buckets this way,
    so an index on ``ml.user_hash32(user_id)`` can serve "bucket k of K" as a range scan."""
    _check_buckets(bucket, n_buckets)
    return -(-(bucket << 32) // n_buckets), -(-((bucket + 1) << 32) // n_buckets)


def user_bucket_sql(column: str = "user_id", n_buckets: str = ":n_buckets") -> str:
    """The SQL expression of a column's bucket, for other queries (e.g. ``where {expr} = :bucket``).

    ``column`` may be qualified (``e.user_id``); each part is quoted as an identifier. ``n_buckets`` is a bind
    parameter name (``:name``) or an integer literal.
    """
    if not re.fullmatch(r":[A-Za-z_]\w*|\d+", n_buckets):
        raise ValueError(f"n_buckets must be a :bind_name or an integer literal, not {n_buckets!r}")
    quoted = ".".join('"' + part.replace('"', '""') + '"' for part in column.split("."))
    return f"ml.user_bucket({quoted}, cast({n_buckets} as integer))"


def _check_buckets(bucket: int | None, n_buckets: int | None) -> None:
    if (bucket is None) != (n_buckets is None):
        raise ValueError("give both bucket and n_buckets, or neither")
    if n_buckets is not None:
        if not 1 <= n_buckets < 2**31:
            raise ValueError(f"n_buckets must be in 1 .. 2^31 - 1, not {n_buckets}")
        if bucket is not None and not 0 <= bucket < n_buckets:
            raise ValueError(f"bucket must be in 0 .. {n_buckets - 1}, not {bucket}")


# --- time ----------------------------------------------------------------------------------------------------------
def to_utc(value: dt.datetime | dt.date | str | pd.Timestamp) -> dt.datetime:
    """An aware UTC datetime from a datetime (naive means UTC), a date (its midnight UTC) or an ISO string."""
    if isinstance(value, str):
        value = pd.Timestamp(value).to_pydatetime()
    elif isinstance(value, pd.Timestamp):
        value = value.to_pydatetime()
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
    raise TypeError(f"cannot read a UTC time from {value!r}")


@dataclass(frozen=True)
class FeatureWindow:
    """The time bounds of one as_of (aware UTC datetimes). Every interval is half-open ``[start, end)``."""

    as_of: dt.datetime
    since: dt.datetime  # features read [since, as_of)
    active_since: dt.datetime  # active pairs: a view or cart in [active_since, as_of)
    label_until: dt.datetime  # labels: a purchase in [as_of, label_until)

    @classmethod
    def at(cls, as_of: dt.datetime | dt.date | str, settings: Settings) -> FeatureWindow:
        """The window at ``as_of`` from ``settings`` (lookback_days, active_window_days, label_horizon_days).

        Raises ConfigError when the active window is longer than the lookback (an active pair must have features).
        """
        if not 0 < settings.active_window_days <= settings.lookback_days:
            raise ConfigError(
                f"active_window_days ({settings.active_window_days}) must be in 1 .. lookback_days "
                f"({settings.lookback_days})"
            )
        if settings.label_horizon_days <= 0:
            raise ConfigError(f"label_horizon_days must be positive, not {settings.label_horizon_days}")
        t = to_utc(as_of)
        return cls(
            as_of=t,
            since=t - dt.timedelta(days=settings.lookback_days),
            active_since=t - dt.timedelta(days=settings.active_window_days),
            label_until=t + dt.timedelta(days=settings.label_horizon_days),
        )

    def params(self) -> dict[str, Any]:
        return {
            "as_of": self.as_of,
            "since": self.since,
            "active_since": self.active_since,
            "since_7d": self.as_of - dt.timedelta(days=7),
            "since_24h": self.as_of - dt.timedelta(hours=24),
            "label_until": self.label_until,
        }


# --- SQL text ------------------------------------------------------------------------------------------------------
_INCLUDE_RE = re.compile(r"\{\{\s*([a-z_]+)\s*\}\}")
_BIND_RE = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


@cache
def render_sql(name: str, **includes: str) -> str:
    """The text of ``sql/features/<name>.sql`` with every ``{{ other }}`` replaced by ``sql/features/<other>.sql``
    (or by the file named in ``includes[other]``), recursively. Only static files are included, never values."""

    def sub(m: re.Match[str]) -> str:
        target = includes.get(m.group(1), m.group(1))
        return render_sql(target, **includes)

    text = read_sql(f"features/{name}.sql")
    return _INCLUDE_RE.sub(sub, text).rstrip().rstrip(";")


def to_pyformat(sql: str) -> str:
    """Turn ``:name`` bind parameters into psycopg's ``%(name)s`` (``::`` casts and literal ``%`` are kept)."""
    return _BIND_RE.sub(r"%(\1)s", sql.replace("%", "%%"))


def feature_version() -> str:
    """A short hash of the feature SQL: training snapshots and models record it; scoring can check it."""
    import hashlib

    text = render_sql("pair_features")
    return "f1-" + hashlib.sha256(text.encode()).hexdigest()[:12]


# --- streaming out of PostgreSQL -----------------------------------------------------------------------------------
class _CopyStream(io.RawIOBase):
    """A read-only raw file over the chunks of a psycopg 3 ``COPY ... TO STDOUT`` (libpq hands out one row per
    chunk). Wrapped in a BufferedReader, whose ``read(n)`` gathers whole blocks for pyarrow's streaming reader."""

    def __init__(self, chunks: Iterator[memoryview]) -> None:
        self._chunks = chunks
        self._buf = memoryview(b"")
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf:
            try:
                self._buf = memoryview(next(self._chunks))
            except StopIteration:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        self.bytes_read += n
        return n


# Transaction-local planner settings for the feature queries. Nested loops are off because every join here is an
# equi-join of aggregates whose row counts the planner cannot estimate (fresh partitions without statistics, group
# counts of CTEs); a misestimated nested loop over two 10k-row aggregates turned a 1 s query into 5 minutes on the
# real REES46 sample. Hash joins are never much worse and usually far better.
_SESSION_SQL = (
    "select set_config('work_mem', %(work_mem)s, true), set_config('timezone', 'UTC', true), "
    "set_config('enable_nestloop', 'off', true)"
)


def _connect(engine: Engine):  # noqa: ANN202 - psycopg.Connection, imported lazily
    import psycopg

    return psycopg.connect(libpq_url(engine.url.render_as_string(hide_password=False)))


def _copy_batches(
    engine: Engine,
    sql: str,
    params: dict[str, Any],
    schema: Any,
    settings: Settings,
    what: str,
) -> Iterator[Any]:
    """Run ``sql`` inside ``COPY (...) TO STDOUT (FORMAT csv)`` and yield pyarrow RecordBatches of ``schema``."""
    import pyarrow.csv as pacsv

    statement = to_pyformat(f"copy ({sql}) to stdout (format csv)")
    progress = Progress(what, unit="rows")
    with _connect(engine) as conn, conn.cursor() as cur:
        cur.execute(_SESSION_SQL, {"work_mem": settings.feature_work_mem})
        with cur.copy(statement, params) as copy:
            chunks = iter(copy)
            first = next(chunks, None)
            if first is None:  # no row at all: pyarrow refuses an empty CSV
                progress.finish()
                return
            reader = pacsv.open_csv(
                io.BufferedReader(_CopyStream(itertools.chain([first], chunks)), buffer_size=1 << 20),
                read_options=pacsv.ReadOptions(column_names=schema.names, block_size=8 << 20, use_threads=True),
                convert_options=pacsv.ConvertOptions(column_types=schema, null_values=[""], strings_can_be_null=False),
            )
            for batch in reader:
                progress.advance(batch.num_rows)
                yield batch
    progress.finish()


def _feature_schema(with_label: bool = True) -> Any:
    import pyarrow as pa

    fields = [pa.field(c, pa.int64()) for c in KEY_COLUMNS]
    fields += [pa.field(c, pa.float64()) for c in FEATURE_COLUMNS]
    if with_label:
        fields += [pa.field("label", pa.int8()), pa.field("weight", pa.float64())]
    return pa.schema(fields)


def _pair_params(
    window: FeatureWindow,
    bucket: int | None,
    n_buckets: int | None,
    with_labels: bool,
    negative_rate: float,
    seed: int,
) -> dict[str, Any]:
    _check_buckets(bucket, n_buckets)
    if not 0.0 < negative_rate <= 1.0:
        raise ConfigError(f"negative_sample_rate must be in (0, 1], not {negative_rate}")
    salt = (seed * 1_000_003 + int(window.as_of.timestamp()) // 86_400) % (2**62)
    return {
        **window.params(),
        "n_buckets": n_buckets,
        "bucket": bucket,
        "with_labels": with_labels,
        "negative_rate": float(negative_rate),
        "sample_salt": salt,
    }


def iter_pair_feature_batches(
    engine: Engine,
    as_of: dt.datetime | dt.date | str,
    settings: Settings,
    bucket: int | None = None,
    n_buckets: int | None = None,
    *,
    with_labels: bool = False,
    negative_rate: float = 1.0,
    item_stats_key: str | None = None,
) -> Iterator[Any]:
    """Stream the feature rows of the pairs active at ``as_of`` as pyarrow RecordBatches.

    Columns: user_id, product_id (int64), FEATURE_COLUMNS (float64), label (int8: 1/0, null unless
    ``with_labels``), weight (float64: 1, or 1/negative_rate for a kept negative). With ``negative_rate`` < 1 and
    ``with_labels``, each negative is kept when a stable hash of (user, product, as_of, settings.seed) falls below
    the rate. Memory stays at one CSV block (8 MiB) plus the batch being consumed.

    ``item_stats_key``: read the product/category/brand statistics materialised under this key (computed by the
    first caller with the key, see :func:`prepare_item_stats`) instead of aggregating every user's events again.
    The K bucket tasks of one scoring run should pass the same key (e.g. the run id): the values are identical,
    the work is done once.
    """
    window = FeatureWindow.at(as_of, settings)
    params = _pair_params(window, bucket, n_buckets, with_labels, negative_rate, settings.seed)
    if n_buckets is None and settings.feature_buckets > 1:
        # every user at once: run bucket by bucket over item statistics computed once (same rows, bounded memory)
        key = item_stats_key or f"tmp-{uuid.uuid4().hex}"
        try:
            for k in range(settings.feature_buckets):
                yield from iter_pair_feature_batches(
                    engine, window.as_of, settings, k, settings.feature_buckets, with_labels=with_labels,
                    negative_rate=negative_rate, item_stats_key=key,
                )
        finally:
            if item_stats_key is None:
                drop_item_stats(engine, key)
        return
    sql = render_sql("pair_features")
    if item_stats_key is not None:
        prepare_item_stats(engine, window.as_of, settings, item_stats_key)
        sql = render_sql("pair_features", item_stats="item_stats_cached")
        params["item_stats_key"] = item_stats_key
    what = f"features {window.as_of:%Y-%m-%d %H:%M}" + (f" bucket {bucket}/{n_buckets}" if n_buckets else "")
    yield from _copy_batches(engine, sql, params, _feature_schema(), settings, what)


def read_pair_features_arrow(
    engine: Engine,
    as_of: dt.datetime | dt.date | str,
    settings: Settings,
    bucket: int | None = None,
    n_buckets: int | None = None,
    **kwargs: Any,
) -> Any:
    """The batches of :func:`iter_pair_feature_batches` (same keyword arguments) as one pyarrow Table."""
    import pyarrow as pa

    return pa.Table.from_batches(
        list(iter_pair_feature_batches(engine, as_of, settings, bucket, n_buckets, **kwargs)), schema=_feature_schema()
    )


def build_pair_features(
    engine: Engine,
    as_of: dt.datetime | dt.date | str,
    settings: Settings,
    bucket: int | None = None,
    n_buckets: int | None = None,
    *,
    item_stats_key: str | None = None,
) -> pd.DataFrame:
    """Point-in-time features of the pairs active at ``as_of`` (for the users of bucket k of K when given).

    One row per active pair; columns ``user_id``, ``product_id`` (int64), then FEATURE_COLUMNS (float64; NaN only
    in NULLABLE_FEATURES). Computed only from events strictly before ``as_of`` (UTC). Row order is unspecified.
    ``item_stats_key``: see :func:`iter_pair_feature_batches`. Raises ConfigError on inconsistent windows or a
    reused cache key, ValueError on a bad bucket.
    """
    table = read_pair_features_arrow(engine, as_of, settings, bucket, n_buckets, item_stats_key=item_stats_key)
    return table.drop_columns(["label", "weight"]).to_pandas()


# --- item statistics cache -------------------------------------------------------------------------------------------
ITEM_STATS_MAX_AGE = dt.timedelta(days=2)  # materialised keys older than this are deleted by the next prepare


def prepare_item_stats(
    engine: Engine, as_of: dt.datetime | dt.date | str, settings: Settings, key: str
) -> str:
    """Materialise the product/category/brand statistics at ``as_of`` under ``key`` once; return ``key``.

    Idempotent and safe under concurrency: callers with the same key serialise on a transaction-scoped advisory
    lock; the first computes (one aggregate over every user's lookback events) and commits, the others find the
    key and return. Raises ConfigError if ``key`` already holds statistics for another as_of, lookback or feature
    version. Keys older than ITEM_STATS_MAX_AGE are pruned on the way. The cache is a snapshot: events loaded
    into ``[as_of - lookback, as_of)`` after it was built are not in it (use a new key, e.g. per run).
    """
    import time

    window = FeatureWindow.at(as_of, settings)
    version = feature_version()
    with _connect(engine) as conn, conn.cursor() as cur:
        cur.execute("select pg_advisory_xact_lock(hashtextextended(%s, 7262020))", (key,))
        row = cur.execute(
            "select as_of, since, feature_version from ml.feature_item_stats_keys where cache_key = %s", (key,)
        ).fetchone()
        if row is not None:
            if (to_utc(row[0]), to_utc(row[1]), row[2]) != (window.as_of, window.since, version):
                raise ConfigError(
                    f"item statistics key {key!r} holds as_of {row[0]}, since {row[1]}, feature version {row[2]}; "
                    f"asked for as_of {window.as_of}, since {window.since}, {version}: use another key"
                )
            return key
        cur.execute(_SESSION_SQL, {"work_mem": settings.feature_work_mem})
        cur.execute(
            "delete from ml.feature_item_stats where cache_key in (select cache_key from ml.feature_item_stats_keys "
            "where created_at < now() - %s)",
            (ITEM_STATS_MAX_AGE,),
        )
        cur.execute("delete from ml.feature_item_stats_keys where created_at < now() - %s", (ITEM_STATS_MAX_AGE,))
        t = time.perf_counter()
        cur.execute(to_pyformat(render_sql("item_stats_insert")), {**window.params(), "item_stats_key": key})
        products = cur.rowcount
        seconds = time.perf_counter() - t
        cur.execute(
            "insert into ml.feature_item_stats_keys (cache_key, as_of, since, feature_version, products, seconds) "
            "values (%s, %s, %s, %s, %s, %s)",
            (key, window.as_of, window.since, version, products, seconds),
        )
    log.info("item statistics %r at %s: %s products in %.1fs", key, f"{window.as_of:%Y-%m-%d %H:%M}",
             f"{products:,}", seconds)
    return key


def drop_item_stats(engine: Engine, key: str | None = None) -> int:
    """Delete the item statistics of ``key`` (None: every key); returns the number of keys deleted."""
    params = {"k": key}
    with engine.begin() as conn:
        conn.execute(
            sa.text("delete from ml.feature_item_stats where cast(:k as text) is null or cache_key = :k"), params
        )
        return int(conn.execute(
            sa.text("delete from ml.feature_item_stats_keys where cast(:k as text) is null or cache_key = :k"), params
        ).rowcount)


def build_labels(
    engine: Engine,
    as_of: dt.datetime | dt.date | str,
    settings: Settings,
    bucket: int | None = None,
    n_buckets: int | None = None,
) -> pd.DataFrame:
    """Labels of the pairs active at ``as_of``: columns user_id, product_id (int64), label (int8, 1 when the user
    purchased the product in ``[as_of, as_of + label_horizon_days)``, else 0). One row per active pair."""
    window = FeatureWindow.at(as_of, settings)
    _check_buckets(bucket, n_buckets)
    sql = render_sql("labels")
    with engine.connect() as conn:
        conn.execute(
            sa.text(_SESSION_SQL.replace("%(work_mem)s", ":work_mem")), {"work_mem": settings.feature_work_mem}
        )
        frame = pd.read_sql_query(
            sa.text(sql), conn, params={**window.params(), "bucket": bucket, "n_buckets": n_buckets}
        )
    return frame.astype({"user_id": "int64", "product_id": "int64", "label": "int8"})


def count_active_pairs(
    engine: Engine,
    as_of: dt.datetime | dt.date | str,
    settings: Settings,
    bucket: int | None = None,
    n_buckets: int | None = None,
) -> int:
    """Number of pairs active at ``as_of`` (a view or cart in ``[as_of - active_window_days, as_of)``), for the
    users of bucket k of K when given. Reads only the active window's partitions."""
    window = FeatureWindow.at(as_of, settings)
    _check_buckets(bucket, n_buckets)
    params = {**window.params(), "bucket": bucket, "n_buckets": n_buckets}
    with engine.connect() as conn:
        return int(conn.execute(sa.text(render_sql("active_pair_count")), params).scalar_one())


# --- training snapshots ----------------------------------------------------------------------------------------------
SNAPSHOT_ANCHOR = dt.datetime(2000, 1, 3, tzinfo=dt.UTC)  # a Monday: snapshot dates never move when data grows
SNAPSHOT_SUITE = "feature_snapshot"


def weekly_as_of_dates(
    first_event: dt.datetime,
    last_event: dt.datetime,
    settings: Settings,
    end: dt.datetime | dt.date | str | None = None,
) -> list[dt.datetime]:
    """Snapshot as_of dates (ascending, aware UTC midnights) for data spanning ``first_event`` .. ``last_event``.

    The data is taken to cover whole UTC days: ``[midnight of first_event's day, midnight after last_event's day)``
    (daily files land whole), capped at ``end``. A date qualifies when its label horizon lies inside the coverage
    (``as_of + label_horizon_days <= coverage end``) and a full active window precedes it (``as_of -
    active_window_days >= coverage start``). Dates sit on a grid of ``snapshot_every_days`` anchored on Monday
    2000-01-03, so they stay put as data grows; the most recent ``max_snapshots`` are returned.
    """
    if settings.snapshot_every_days <= 0:
        raise ConfigError(f"snapshot_every_days must be positive, not {settings.snapshot_every_days}")
    day = dt.timedelta(days=1)
    start = to_utc(first_event).replace(hour=0, minute=0, second=0, microsecond=0)
    stop = to_utc(last_event).replace(hour=0, minute=0, second=0, microsecond=0) + day
    if end is not None:
        stop = min(stop, to_utc(end))
    latest = stop - dt.timedelta(days=settings.label_horizon_days)
    earliest = start + dt.timedelta(days=settings.active_window_days)
    step = dt.timedelta(days=settings.snapshot_every_days)
    n_last = (latest - SNAPSHOT_ANCHOR) // step  # floor: the last grid date <= latest
    dates: list[dt.datetime] = []
    current = SNAPSHOT_ANCHOR + n_last * step
    while current >= earliest and len(dates) < settings.max_snapshots:
        dates.append(current)
        current -= step
    return sorted(dates)


def event_time_range(engine: Engine) -> tuple[dt.datetime, dt.datetime] | None:
    """(first, last) event_time in raw.events, or None when it is empty.

    Reads only the first and last non-empty daily partitions (raw.events has no index on event_time alone), so it
    costs milliseconds on any history.
    """
    sql = sa.text(
        "select c.oid::regclass::text as part, pg_get_expr(c.relpartbound, c.oid) as bound "
        "from pg_inherits i join pg_class c on c.oid = i.inhrelid "
        "where i.inhparent = 'raw.events'::regclass"
    )
    with engine.connect() as conn:
        parts = conn.execute(sql).all()
        lower = re.compile(r"FROM \('([^']+)'\)")

        def key(row: Any) -> str:
            m = lower.search(row.bound or "")
            return m.group(1) if m else ""

        ordered = sorted(parts, key=key)

        def first_nonempty(rows: list[Any], agg: str) -> dt.datetime | None:
            for row in rows:
                # the partition name comes from the catalog (regclass text is already quoted)
                value = conn.execute(sa.text(f"select {agg}(event_time) from {row.part}")).scalar()
                if value is not None:
                    return to_utc(value)
            return None

        first = first_nonempty(ordered, "min")
        last = first_nonempty(list(reversed(ordered)), "max")
    return None if first is None or last is None else (first, last)


def snapshot_dates(
    engine: Engine, settings: Settings, end: dt.datetime | dt.date | str | None = None
) -> list[dt.datetime]:
    """Weekly as_of dates whose label horizon is fully covered by the events in raw.events (ascending, aware UTC;
    at most ``settings.max_snapshots``, the most recent). Empty when there is too little history.
    See :func:`weekly_as_of_dates` for the rule."""
    span = event_time_range(engine)
    if span is None:
        return []
    return weekly_as_of_dates(span[0], span[1], settings, end)


def frame_fingerprint(frame: pd.DataFrame, columns: list[str] | None = None) -> str:
    """sha256 (hex) of a frame's content, independent of row order and of the storage format.

    Rows are sorted by the key columns present (as_of, user_id, product_id), then each column's values are hashed
    with pandas' stable ``hash_pandas_object``; column names and dtypes are part of the digest.
    """
    import hashlib

    columns = columns or list(frame.columns)
    keys = [c for c in ("as_of", "user_id", "product_id") if c in columns]
    ordered = frame[columns].sort_values(keys, kind="stable").reset_index(drop=True) if keys else frame[columns]
    digest = hashlib.sha256()
    for c in columns:
        digest.update(f"{c}:{ordered[c].dtype}\n".encode())
        digest.update(pd.util.hash_pandas_object(ordered[c], index=False).to_numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class SnapshotInfo:
    """One persisted, checked training snapshot."""

    as_of: dt.datetime
    rows: int
    positives: int
    uri: str
    fingerprint: str
    success: bool
    snapshot_id: int | None = None
    validation_id: int | None = None
    failed_rules: tuple[str, ...] = ()


@dataclass
class TrainingSet:
    """Labelled training rows over several as_of dates.

    ``frame`` columns: as_of (datetime64[us, UTC]), user_id, product_id (int64), FEATURE_COLUMNS (float64),
    label (int8, 0/1), weight (float64; 1 for positives, 1/negative_sample_rate for kept negatives).
    ``fingerprint`` (sha256 hex) identifies the content: the feature version plus each snapshot's content hash, in
    as_of order; the model registry records it.
    """

    frame: pd.DataFrame
    fingerprint: str
    feature_version: str
    snapshots: list[SnapshotInfo]

    @property
    def feature_names(self) -> list[str]:
        return list(FEATURE_COLUMNS)


def snapshot_params(settings: Settings) -> dict[str, Any]:
    """The settings that shape a training snapshot's rows (recorded with it; their hash is part of its path)."""
    return {
        "lookback_days": settings.lookback_days,
        "active_window_days": settings.active_window_days,
        "label_horizon_days": settings.label_horizon_days,
        "negative_sample_rate": settings.negative_sample_rate,
        "seed": settings.seed,
    }


def _params_key(params: dict[str, Any]) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]


def _snapshot_columns() -> list[str]:
    return ["as_of", *KEY_COLUMNS, *FEATURE_COLUMNS, "label", "weight"]


def build_snapshot_frame(engine: Engine, as_of: dt.datetime | dt.date | str, settings: Settings) -> pd.DataFrame:
    """Features and labels of every pair active at ``as_of`` (negatives subsampled by
    ``settings.negative_sample_rate``), as one frame with the :class:`TrainingSet` columns, sorted by
    (user_id, product_id). Not checked, not persisted: see :func:`build_training_snapshot`."""
    t = to_utc(as_of)
    table = read_pair_features_arrow(
        engine, t, settings, with_labels=True, negative_rate=settings.negative_sample_rate
    )
    frame = table.to_pandas()
    frame.insert(0, "as_of", pd.Timestamp(t).as_unit("us"))
    frame["label"] = frame["label"].astype("int8")
    return frame.sort_values(KEY_COLUMNS, kind="stable").reset_index(drop=True)[_snapshot_columns()]


@dataclass(frozen=True)
class SnapshotCheck:
    """Great Expectations results of one snapshot: ``results`` holds one dict per expectation."""

    success: bool
    results: list[dict[str, Any]]
    failed_rules: list[str]
    statistics: dict[str, Any]


def build_snapshot_suite(previous_rows: int | None, settings: Settings) -> Any:
    """The GX suite of a training snapshot: columns and order, keys unique and present, no NaN outside
    NULLABLE_FEATURES, every feature inside FEATURE_RANGES, label in {0, 1}, weight >= 1, and a row count within
    ``snapshot_row_tolerance`` times the previous snapshot's (at least one row when there is none)."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    tol = settings.snapshot_row_tolerance
    exps: list[Any] = [
        gxe.ExpectTableColumnsToMatchOrderedList(column_list=_snapshot_columns()),
        gxe.ExpectTableRowCountToBeBetween(
            min_value=max(1, int(previous_rows / tol)) if previous_rows else 1,
            max_value=int(previous_rows * tol) + 1 if previous_rows else None,
        ),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=KEY_COLUMNS),
        gxe.ExpectColumnValuesToBeInSet(column="label", value_set=[0, 1]),
        gxe.ExpectColumnValuesToBeBetween(column="weight", min_value=1.0),
    ]
    for column in [*KEY_COLUMNS, "label", "weight"]:
        exps.append(gxe.ExpectColumnValuesToNotBeNull(column=column))
    for column in FEATURE_COLUMNS:
        if column not in NULLABLE_FEATURES:
            exps.append(gxe.ExpectColumnValuesToNotBeNull(column=column))
        lo, hi = FEATURE_RANGES[column]
        exps.append(
            gxe.ExpectColumnValuesToBeBetween(
                column=column, min_value=lo if lo > -_INF else None, max_value=hi if hi < _INF else None
            )
        )
    return gx.ExpectationSuite(name=SNAPSHOT_SUITE, expectations=exps)


def check_snapshot(frame: pd.DataFrame, settings: Settings, previous_rows: int | None = None) -> SnapshotCheck:
    """Validate one snapshot frame with Great Expectations (:func:`build_snapshot_suite`); never raises on a
    failed expectation (the caller decides), only on a GX error."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    asset = ctx.data_sources.add_pandas("snapshots").add_dataframe_asset("snapshot")
    batch_definition = asset.add_batch_definition_whole_dataframe("all")
    suite = ctx.suites.add(build_snapshot_suite(previous_rows, settings))
    validation = batch_definition.get_batch(batch_parameters={"dataframe": frame}).validate(
        suite, result_format={"result_format": "SUMMARY", "partial_unexpected_count": 5}
    )
    results: list[dict[str, Any]] = []
    failed: list[str] = []
    for r in validation.results:
        cfg = r.expectation_config
        column = cfg.kwargs.get("column") or ",".join(cfg.kwargs.get("column_list", []) or [])
        rule = f"{cfg.type}:{column}" if column and len(column) < 60 else cfg.type
        res = r.result or {}
        entry = {
            "rule": rule,
            "success": bool(r.success),
            "unexpected_count": res.get("unexpected_count"),
            "unexpected_percent": res.get("unexpected_percent"),
            "observed_value": _jsonable(res.get("observed_value")),
            "partial_unexpected_list": _jsonable(res.get("partial_unexpected_list")),
            "exception": (r.exception_info or {}).get("exception_message") if not r.success else None,
        }
        results.append(entry)
        if not r.success:
            failed.append(rule)
    stats = {
        "rows": int(len(frame)),
        "positives": int(frame["label"].sum()) if "label" in frame else None,
        "evaluated_expectations": len(results),
        "nan_share": {c: float(frame[c].isna().mean()) for c in NULLABLE_FEATURES if c in frame},
    }
    return SnapshotCheck(success=not failed, results=results, failed_rules=failed, statistics=stats)


def _jsonable(value: Any) -> Any:
    import json

    try:
        json.dumps(value)
        return value
    except TypeError:
        if isinstance(value, list | tuple):
            return [_jsonable(v) for v in value]
        if isinstance(value, dict):
            return {str(k): _jsonable(v) for k, v in value.items()}
        if isinstance(value, np.generic):
            return value.item()
        return str(value)


def write_snapshot_parquet(frame: pd.DataFrame, uri: str, metadata: dict[str, str]) -> str:
    """Write ``frame`` to Parquet at ``uri`` (local path or object-storage URL) via a temporary name then a move,
    so a reader never sees a partial file. Returns ``uri``."""
    import pyarrow as pa
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    extra = {k: v.encode() for k, v in metadata.items()}
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **extra})
    fs, path = pafs.FileSystem.from_uri(uri)
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    tmp = f"{path}.tmp"
    pq.write_table(table, tmp, filesystem=fs, compression="zstd")
    fs.move(tmp, path)
    return uri


def read_snapshot_parquet(uri: str) -> pd.DataFrame:
    """A persisted snapshot back as a frame (the columns of :class:`TrainingSet`)."""
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    fs, path = pafs.FileSystem.from_uri(uri)
    return pq.read_table(path, filesystem=fs).to_pandas()


def _snapshot_uri(settings: Settings, version: str, params_key: str, as_of: dt.datetime) -> str:
    base = settings.location("artifacts").rstrip("/")
    if "://" not in base:
        base = str(Path(base).absolute())
    return f"{base}/snapshots/{version}/{params_key}/as_of={as_of:%Y-%m-%dT%H%M}.parquet"


def _previous_rows(engine: Engine, version: str, params_key: str, as_of: dt.datetime) -> int | None:
    sql = sa.text(
        "select row_count from ml.feature_snapshots where feature_version = :v and params_key = :k "
        "and as_of < :t and success order by as_of desc, created_at desc limit 1"
    )
    with engine.connect() as conn:
        value = conn.execute(sql, {"v": version, "k": params_key, "t": as_of}).scalar()
    return None if value is None else int(value)


def build_training_snapshot(
    engine: Engine,
    as_of: dt.datetime | dt.date | str,
    settings: Settings,
    *,
    previous_rows: int | None = None,
    raise_on_failure: bool = True,
) -> tuple[pd.DataFrame, SnapshotInfo]:
    """Build, check, persist and record the training snapshot at ``as_of``.

    Steps: :func:`build_snapshot_frame` → :func:`check_snapshot` (row count against ``previous_rows``, or the
    latest recorded successful snapshot before ``as_of`` with the same feature version and parameters) → Parquet
    under ``artifacts/snapshots/<feature_version>/<params_key>/`` → one row in quality.validation_runs
    (suite_name 'feature_snapshot') and one in ml.feature_snapshots. A failed check still persists and records
    the snapshot (for inspection), then raises ValidationFailed naming the as_of and rules, unless
    ``raise_on_failure`` is False.
    """
    import json

    from ml.errors import ValidationFailed

    t = to_utc(as_of)
    version = feature_version()
    params = snapshot_params(settings)
    key = _params_key(params)
    frame = build_snapshot_frame(engine, t, settings)
    if previous_rows is None:
        previous_rows = _previous_rows(engine, version, key, t)
    check = check_snapshot(frame, settings, previous_rows)
    fingerprint = frame_fingerprint(frame)
    uri = _snapshot_uri(settings, version, key, t)
    write_snapshot_parquet(
        frame, uri, {"feature_version": version, "fingerprint": fingerprint, "params": json.dumps(params)}
    )
    positives = int(frame["label"].sum())
    with engine.begin() as conn:
        validation_id = conn.execute(
            sa.text(
                "insert into quality.validation_runs (suite_name, file_name, file_uri, checksum_sha256, success, "
                "row_count, statistics, results, failed_rules) values (:suite, :name, :uri, :fp, :ok, :rows, "
                "cast(:stats as jsonb), cast(:results as jsonb), :failed) returning validation_id"
            ),
            {
                "suite": SNAPSHOT_SUITE,
                "name": uri.rsplit("/", 1)[-1],
                "uri": uri,
                "fp": fingerprint,
                "ok": check.success,
                "rows": len(frame),
                "stats": json.dumps({**check.statistics, "previous_rows": previous_rows}),
                "results": json.dumps(check.results),
                "failed": check.failed_rules,
            },
        ).scalar_one()
        snapshot_id = conn.execute(
            sa.text(
                "insert into ml.feature_snapshots (as_of, feature_version, params, params_key, row_count, positives, "
                "uri, fingerprint, validation_id, success) values (:t, :v, cast(:p as jsonb), :k, :rows, :pos, :uri, "
                ":fp, :vid, :ok) returning snapshot_id"
            ),
            {
                "t": t, "v": version, "p": json.dumps(params), "k": key, "rows": len(frame), "pos": positives,
                "uri": uri, "fp": fingerprint, "vid": validation_id, "ok": check.success,
            },
        ).scalar_one()
    info = SnapshotInfo(
        as_of=t, rows=len(frame), positives=positives, uri=uri, fingerprint=fingerprint, success=check.success,
        snapshot_id=int(snapshot_id), validation_id=int(validation_id), failed_rules=tuple(check.failed_rules),
    )
    log.info(
        "snapshot %s: %s rows, %s positives, checks %s (%s)", f"{t:%Y-%m-%d}", f"{len(frame):,}", f"{positives:,}",
        "passed" if check.success else "FAILED", uri,
    )
    if not check.success and raise_on_failure:
        raise ValidationFailed(
            f"training snapshot at {t:%Y-%m-%d %H:%M} UTC failed {len(check.failed_rules)} check(s): "
            + ", ".join(check.failed_rules[:10]) + f" (see {uri}, validation_id {validation_id})",
            failures=[f"snapshot {t:%Y-%m-%d}: {rule}" for rule in check.failed_rules],
        )
    return frame, info


def build_training_snapshots(
    engine: Engine,
    settings: Settings,
    as_of_dates: list[dt.datetime | dt.date | str] | None = None,
) -> TrainingSet:
    """Training rows over several as_of dates (default :func:`snapshot_dates`), each snapshot checked, persisted
    and recorded by :func:`build_training_snapshot` (which raises ValidationFailed on a failed check).

    Raises ConfigError when there is no as_of date (too little history for one label horizon).
    """
    import hashlib

    dates = sorted(to_utc(d) for d in as_of_dates) if as_of_dates is not None else snapshot_dates(engine, settings)
    if not dates:
        raise ConfigError(
            "no training snapshot date: raw.events must cover at least active_window_days + label_horizon_days "
            f"({settings.active_window_days} + {settings.label_horizon_days} days)"
        )
    version = feature_version()
    frames: list[pd.DataFrame] = []
    infos: list[SnapshotInfo] = []
    previous: int | None = None
    progress = Progress("training snapshots", total=len(dates), unit="snapshots", every_s=0.0)
    for t in dates:
        frame, info = build_training_snapshot(engine, t, settings, previous_rows=previous)
        frames.append(frame)
        infos.append(info)
        previous = info.rows
        progress.advance(1)
    progress.finish()
    digest = hashlib.sha256(version.encode())
    for info in infos:
        digest.update(f"{info.as_of.isoformat()}:{info.fingerprint}\n".encode())
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    return TrainingSet(frame=frame, fingerprint=digest.hexdigest(), feature_version=version, snapshots=infos)


def summarize_features(table: Any, seconds: float | None = None) -> dict[str, Any]:
    """A small JSON-able summary of a feature table (rows, users, products, positives, NaN shares of the nullable
    features, seconds): what ``propensity features`` prints."""
    import pyarrow.compute as pc

    out: dict[str, Any] = {
        "rows": table.num_rows,
        "users": len(pc.unique(table.column("user_id"))) if table.num_rows else 0,
        "products": len(pc.unique(table.column("product_id"))) if table.num_rows else 0,
    }
    if "label" in table.column_names and table.column("label").null_count < table.num_rows:
        out["positives"] = int(pc.sum(table.column("label")).as_py() or 0)
    out["nan_share"] = {
        c: round(table.column(c).null_count / table.num_rows, 4) if table.num_rows else None for c in NULLABLE_FEATURES
    }
    if seconds is not None:
        out["seconds"] = round(seconds, 2)
        out["rows_per_second"] = round(table.num_rows / seconds) if seconds > 0 else None
    return out
