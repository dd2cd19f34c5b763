"""Point-in-time pair features, labels and active pairs, computed in PostgreSQL.

One feature definition serves training and nightly scoring: the parameterised SQL in ``sql/features/``
(``pair_features.sql`` including ``active_pairs.sql`` and ``item_stats.sql``). This module binds the parameters,
streams the result out with ``COPY ... TO STDOUT`` (psycopg 3) straight into Arrow. Training snapshots (build, GX
check, persist, record, fingerprints) live in :mod:`ml.snapshots` (import them from there) and user hash buckets in :mod:`ml.buckets`; their
public names are importable from here too. No value is ever formatted into SQL text: the only text substitution is
the inclusion of those static SQL files by name.

Time (all UTC, half-open windows; see docs/features.md):

* features of a pair at ``as_of`` read only events in ``[as_of - lookback_days, as_of)``;
* a pair is **active** at ``as_of`` when it has a view or cart in ``[as_of - active_window_days, as_of)``;
* its **label** is 1 when the user purchased the product in ``[as_of, as_of + label_horizon_days)``.

An event at exactly ``as_of`` is therefore future: it can make a label, never a feature or an active pair.

Buckets (:mod:`ml.buckets`): ``bucket_of(user_id, K)`` equals ``ml.user_bucket(user_id, K)`` in SQL (migration 0020)
for every bigint id. Fetching bucket k of K filters the events by the equivalent hash range (``bucket_hash_range``,
migration 0022) in the first scan, before any aggregation, so a scoring task aggregates only its own users' events
(the product/category/brand statistics always use every user's events, computed once per key:
``prepare_item_stats``).
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ml.buckets import (  # noqa: F401 - re-exported: scoring and tests import them from ml.features
    bucket_hash_range,
    bucket_of,
    check_buckets,
    user_bucket_sql,
    user_hash32,
)
from ml.dates import utc_datetime
from ml.db import read_sql
from ml.errors import ConfigError
from ml.pgcopy import connect
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


# --- time ----------------------------------------------------------------------------------------------------------
#: The former name of :func:`ml.dates.utc_datetime`, kept for callers (CLI, training).
to_utc = utc_datetime


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
        t = utc_datetime(as_of)
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
            # UTC days for the rollup queries (exact only when as_of is a UTC midnight: see uses_rollups)
            "as_of_day": self.as_of.date(),
            "since_day": self.since.date(),
            "active_since_day": self.active_since.date(),
            "day_7d": (self.as_of - dt.timedelta(days=7)).date(),
            "day_24h": (self.as_of - dt.timedelta(hours=24)).date(),
        }

    @property
    def at_midnight(self) -> bool:
        """True when as_of is a UTC midnight: every window is then whole UTC days, which the daily rollups serve."""
        return self.as_of.time() == dt.time(0) and self.as_of.utcoffset() == dt.timedelta(0)


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


#: The include mapping that makes pair_features.sql / item_stats_insert.sql / active_pair_count.sql read the rollups
#: of migration 0180 instead of raw.events (same columns, same values; tests/integration/test_rollups.py checks it).
ROLLUP_INCLUDES: dict[str, str] = {
    "pair_aggregates": "pair_aggregates_rollup",
    "item_products": "item_products_rollup",
    "active_pairs": "active_pairs_rollup",
}


def uses_rollups(window: FeatureWindow, settings: Settings) -> bool:
    """Whether the features of ``window`` are read from the daily rollups (``settings.feature_source`` is
    ``rollups`` and as_of is a UTC midnight, so every window is whole days) rather than aggregated from raw.events."""
    return getattr(settings, "feature_source", "raw") == "rollups" and window.at_midnight


def feature_sql(name: str, window: FeatureWindow, settings: Settings, **includes: str) -> str:
    """``render_sql(name, **includes)``, reading the rollups when :func:`uses_rollups` says so."""
    if uses_rollups(window, settings):
        includes = {**ROLLUP_INCLUDES, **includes}
    return render_sql(name, **includes)


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
# real REES46 sample. Hash joins are never much worse and usually far better. JIT is off: compiling ~1,000
# expressions per query bought nothing measurable on these aggregates. Parallel workers:
# settings.feature_parallel_workers (0 by default: a night's bucket queries already run side by side).
_SESSION_SQL = (
    "select set_config('work_mem', %(work_mem)s, true), set_config('timezone', 'UTC', true), "
    "set_config('enable_nestloop', 'off', true), set_config('jit', 'off', true), "
    "set_config('max_parallel_workers_per_gather', %(parallel_workers)s, true)"
)


def _session_params(settings: Settings) -> dict[str, str]:
    return {"work_mem": settings.feature_work_mem, "parallel_workers": str(settings.feature_parallel_workers)}


_PGCOPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_BINARY_BLOCK_ROWS = 65_536


def _binary_row_dtype(schema: Any) -> Any:
    """numpy dtype of one row of the fixed-width binary COPY that :func:`_copy_batches` asks for: a field count,
    then per column a length (always 8) and a big-endian int8 (integer columns) or float8 (every other column)."""
    import numpy as np
    import pyarrow as pa

    fields: list[tuple[str, str]] = [("n", ">i2")]
    for i, f in enumerate(schema):
        fields += [(f"l{i}", ">i4"), (f"v{i}", ">i8" if pa.types.is_int64(f.type) else ">f8")]
    return np.dtype(fields)


def _binary_batch(raw: bytes | memoryview, dtype: Any, schema: Any) -> Any:
    """One pyarrow RecordBatch of ``schema`` from whole rows of the fixed-width binary COPY. NaN on the wire is a
    NULL of the query (a float column) and becomes a null, as the CSV path read it."""
    import numpy as np
    import pyarrow as pa

    rows = np.frombuffer(raw, dtype=dtype)
    lengths = [rows[f"l{i}"] for i in range(len(schema))]
    if (rows["n"] != len(schema)).any() or any((x != 8).any() for x in lengths):
        raise RuntimeError("feature COPY: a row is not the fixed-width layout asked for (a NULL key column?)")
    arrays = []
    for i, f in enumerate(schema):
        if pa.types.is_int64(f.type):
            arrays.append(pa.array(rows[f"v{i}"].astype(np.int64)))
            continue
        values = rows[f"v{i}"].astype(np.float64)
        nulls = np.isnan(values)
        if pa.types.is_floating(f.type):
            arrays.append(pa.array(values, mask=nulls if nulls.any() else None))
        else:  # small integer columns (label) travel as float8 so that NULL has a value
            arrays.append(pa.array(np.where(nulls, 0, values).astype(f.type.to_pandas_dtype()), type=f.type,
                                   mask=nulls if nulls.any() else None))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _copy_batches(
    engine: Engine,
    sql: str,
    params: dict[str, Any],
    schema: Any,
    settings: Settings,
    what: str,
) -> Iterator[Any]:
    """Run ``sql`` inside ``COPY (...) TO STDOUT (FORMAT binary)`` and yield pyarrow RecordBatches of ``schema``
    (int64 and float64 columns, plus small integer columns such as label).

    Every column travels as 8 bytes: int64 columns as int8 (never NULL: a NULL fails loudly), every other column as
    float8 with NULL sent as NaN, so each row has the same width and a block of rows is parsed by numpy in one call
    (no float -> text -> float round trip: about 1.3 s of server time and the client's CSV parse per 280k feature
    rows, measured in bench_nightly)."""
    import pyarrow as pa

    cols = ", ".join(
        f'q."{f.name}"::int8' if pa.types.is_int64(f.type) else f"coalesce(q.\"{f.name}\"::float8, 'NaN')"
        for f in schema
    )
    statement = to_pyformat(f"copy (select {cols} from ({sql}) as q) to stdout (format binary)")
    dtype = _binary_row_dtype(schema)
    width = dtype.itemsize
    progress = Progress(what, unit="rows")
    with connect(engine) as conn, conn.cursor() as cur:
        cur.execute(_SESSION_SQL, _session_params(settings))
        with cur.copy(statement, params) as copy:
            buf = bytearray()
            offset = None  # where the rows start, once the header has been read
            for chunk in copy:
                buf += chunk
                if offset is None:
                    if len(buf) < 19:
                        continue
                    if bytes(buf[:11]) != _PGCOPY_SIGNATURE:
                        raise RuntimeError("feature COPY: not a PostgreSQL binary COPY stream")
                    offset = 19 + int.from_bytes(buf[15:19], "big")  # flags, header extension length
                    if len(buf) < offset:
                        offset = None
                        continue
                    del buf[:offset]
                if len(buf) >= _BINARY_BLOCK_ROWS * width:
                    n = len(buf) // width
                    batch = _binary_batch(bytes(buf[: n * width]), dtype, schema)
                    del buf[: n * width]
                    progress.advance(batch.num_rows)
                    yield batch
            n = (len(buf) - 2) // width  # the trailer is a field count of -1
            if offset is None or n < 0 or len(buf) != n * width + 2 or bytes(buf[-2:]) != b"\xff\xff":
                raise RuntimeError(f"feature COPY: truncated stream ({len(buf)} trailing bytes)")
            if n:
                batch = _binary_batch(bytes(buf[: n * width]), dtype, schema)
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
    check_buckets(bucket, n_buckets)
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
    sql = feature_sql("pair_features", window, settings)
    if item_stats_key is not None:
        prepare_item_stats(engine, window.as_of, settings, item_stats_key)
        sql = feature_sql("pair_features", window, settings, item_stats="item_stats_cached")
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
    with connect(engine) as conn, conn.cursor() as cur:
        cur.execute("select pg_advisory_xact_lock(hashtextextended(%s, 7262020))", (key,))
        row = cur.execute(
            "select as_of, since, feature_version from ml.feature_item_stats_keys where cache_key = %s", (key,)
        ).fetchone()
        if row is not None:
            if (utc_datetime(row[0]), utc_datetime(row[1]), row[2]) != (window.as_of, window.since, version):
                raise ConfigError(
                    f"item statistics key {key!r} holds as_of {row[0]}, since {row[1]}, feature version {row[2]}; "
                    f"asked for as_of {window.as_of}, since {window.since}, {version}: use another key"
                )
            return key
        cur.execute(_SESSION_SQL, _session_params(settings))
        cur.execute(
            "delete from ml.feature_item_stats where cache_key in (select cache_key from ml.feature_item_stats_keys "
            "where created_at < now() - %s)",
            (ITEM_STATS_MAX_AGE,),
        )
        cur.execute("delete from ml.feature_item_stats_keys where created_at < now() - %s", (ITEM_STATS_MAX_AGE,))
        t = time.perf_counter()
        cur.execute(to_pyformat(feature_sql("item_stats_insert", window, settings)), {**window.params(), "item_stats_key": key})
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
    check_buckets(bucket, n_buckets)
    sql = feature_sql("labels", window, settings)
    with engine.connect() as conn:
        conn.execute(
            sa.text(re.sub(r"%\((\w+)\)s", r":\1", _SESSION_SQL)), _session_params(settings)
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
    check_buckets(bucket, n_buckets)
    params = {**window.params(), "bucket": bucket, "n_buckets": n_buckets}
    with engine.connect() as conn:
        return int(conn.execute(sa.text(feature_sql("active_pair_count", window, settings)), params).scalar_one())



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
