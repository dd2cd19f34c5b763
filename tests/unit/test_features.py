"""Feature contract, hash buckets, SQL rendering, windows, snapshot dates and snapshot checks (no database)."""

from __future__ import annotations

import datetime as dt
import re

import numpy as np
import pandas as pd
import pytest

from ml import features as F
from ml import snapshots as S
from ml.errors import ConfigError
from ml.settings import Settings


@pytest.fixture
def s() -> Settings:
    return Settings(postgres_url="postgresql://x@/y")


# --- the contract ---------------------------------------------------------------------------------------------------
def test_feature_columns_are_unique_documented_and_bounded() -> None:
    assert len(F.FEATURE_COLUMNS) == len(set(F.FEATURE_COLUMNS))
    assert 30 <= len(F.FEATURE_COLUMNS) <= 45
    assert set(F.NULLABLE_FEATURES) <= set(F.FEATURE_COLUMNS)
    assert set(F.FEATURE_RANGES) == set(F.FEATURE_COLUMNS)
    assert all(lo <= hi for lo, hi in F.FEATURE_RANGES.values())


def test_sql_selects_exactly_the_feature_columns_in_order() -> None:
    text = F.render_sql("pair_features")
    feat_pairs = text[text.index("feat_pairs as (") :]
    aliases = re.findall(r"\bas (\w+),?\s*(?:--[^\n]*)?\n", feat_pairs)
    item = F.render_sql("item_stats")
    item_columns = re.findall(r"\bas (\w+),?\s*(?:--[^\n]*)?\n", item[item.rindex("select") :])
    selected = [a for a in aliases if a in F.FEATURE_COLUMNS]
    # the item columns come through "i.<name>" without an alias
    selected_all = [c for c in F.FEATURE_COLUMNS if c in selected or c in item_columns]
    assert selected_all == F.FEATURE_COLUMNS
    assert "{{" not in text and "}}" not in text


# --- hash buckets ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("user_id", "n_buckets", "expected"),
    [(1, 8, 2), (2, 8, 5), (512_475_445, 8, 4), (2**32, 8, 2), (2**63 - 1, 8, 4), (600_000_001, 1000, 51)],
)
def test_bucket_of_is_pinned(user_id: int, n_buckets: int, expected: int) -> None:
    # pinned values: changing the hash would silently reshuffle every scoring batch and published key
    assert F.bucket_of(user_id, n_buckets) == expected


@pytest.mark.parametrize("n_buckets", [1, 2, 3, 8, 64, 1000])
def test_bucket_of_scalar_equals_vectorised_and_stays_in_range(n_buckets: int) -> None:
    rng = np.random.default_rng(n_buckets)
    ids = np.concatenate([rng.integers(1, 2**63 - 1, 300, dtype=np.int64), np.arange(1, 300, dtype=np.int64)])
    vec = F.bucket_of(ids, n_buckets)
    assert vec.dtype == np.int64
    assert ((vec >= 0) & (vec < n_buckets)).all()
    assert [F.bucket_of(int(i), n_buckets) for i in ids] == vec.tolist()


@pytest.mark.parametrize("ids", ["sequential", "rees46_like", "random"])
def test_buckets_are_balanced(ids: str) -> None:
    rng = np.random.default_rng(1)
    if ids == "sequential":
        users = np.arange(1, 80_001, dtype=np.int64)
    elif ids == "rees46_like":
        users = np.unique(rng.integers(500_000_000, 620_000_000, 80_000, dtype=np.int64))
    else:
        users = rng.integers(1, 2**62, 80_000, dtype=np.int64)
    counts = np.bincount(F.bucket_of(users, 8), minlength=8)
    assert counts.min() > 0.9 * len(users) / 8 and counts.max() < 1.1 * len(users) / 8


@pytest.mark.parametrize("n_buckets", [1, 3, 8, 1000, 2**31 - 1])
def test_bucket_hash_ranges_tile_the_hash_space_and_match_bucket_of(n_buckets: int) -> None:
    ranges = [F.bucket_hash_range(k, n_buckets) for k in ([0, 1, n_buckets - 1] if n_buckets > 8 else range(n_buckets))]
    assert ranges[0][0] == 0 and ranges[-1][1] == 2**32
    if n_buckets <= 8:
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
    ids = np.random.default_rng(n_buckets).integers(1, 2**62, 20_000, dtype=np.int64)
    h, b = F.user_hash32(ids), F.bucket_of(ids, n_buckets)
    for k in {0, 1 % n_buckets, n_buckets - 1}:
        lo, hi = F.bucket_hash_range(k, n_buckets)
        np.testing.assert_array_equal((h >= lo) & (h < hi), b == k)


@pytest.mark.parametrize(("bucket", "n_buckets"), [(0, 0), (8, 8), (-1, 4), (None, 4), (1, None), (0, 2**31)])
def test_bad_buckets_are_refused(bucket: int | None, n_buckets: int | None) -> None:
    with pytest.raises(ValueError):
        F.check_buckets(bucket, n_buckets)


def test_user_bucket_sql_quotes_and_refuses_values() -> None:
    assert F.user_bucket_sql("e.user_id", ":k") == 'ml.user_bucket("e"."user_id", cast(:k as integer))'
    assert F.user_bucket_sql() == 'ml.user_bucket("user_id", cast(:n_buckets as integer))'
    with pytest.raises(ValueError):
        F.user_bucket_sql("user_id", "8); drop table x; --")


# --- SQL text -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("select :a", "select %(a)s"),
        ("cast(:n_buckets as integer)", "cast(%(n_buckets)s as integer)"),
        ("x::date, y % 2", "x::date, y %% 2"),
        ("'00:00' || :b_1", "'00:00' || %(b_1)s"),
    ],
)
def test_to_pyformat(sql: str, expected: str) -> None:
    assert F.to_pyformat(sql) == expected


def test_rendered_sql_has_only_known_bind_parameters() -> None:
    known = {"as_of", "since", "active_since", "since_7d", "since_24h", "label_until", "n_buckets", "bucket",
             "with_labels", "negative_rate", "sample_salt"}
    for name in ("pair_features", "labels", "active_pair_count"):
        params = set(re.findall(r"(?<![:\w]):([A-Za-z_]\w*)", F.render_sql(name)))
        assert params <= known, (name, params - known)
    assert F.feature_version().startswith("f1-")


# --- time windows ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (dt.date(2019, 10, 15), dt.datetime(2019, 10, 15, tzinfo=dt.UTC)),
        ("2019-10-15", dt.datetime(2019, 10, 15, tzinfo=dt.UTC)),
        ("2019-10-15T02:00:00+02:00", dt.datetime(2019, 10, 15, tzinfo=dt.UTC)),
        (dt.datetime(2019, 10, 15, 3), dt.datetime(2019, 10, 15, 3, tzinfo=dt.UTC)),
        (pd.Timestamp("2019-10-15 01:00", tz="Europe/Berlin"), dt.datetime(2019, 10, 14, 23, tzinfo=dt.UTC)),
    ],
)
def test_to_utc(value: object, expected: dt.datetime) -> None:
    assert F.to_utc(value) == expected  # type: ignore[arg-type]


def test_feature_window(s: Settings) -> None:
    w = F.FeatureWindow.at("2019-10-15", s)
    assert w.since == dt.datetime(2019, 8, 16, tzinfo=dt.UTC)
    assert w.active_since == dt.datetime(2019, 10, 1, tzinfo=dt.UTC)
    assert w.label_until == dt.datetime(2019, 10, 22, tzinfo=dt.UTC)
    with pytest.raises(ConfigError):
        F.FeatureWindow.at("2019-10-15", s.model_copy(update={"active_window_days": 90}))
    with pytest.raises(ConfigError):
        F.FeatureWindow.at("2019-10-15", s.model_copy(update={"label_horizon_days": 0}))


@pytest.mark.parametrize("rate", [0.0, -0.5, 1.5])
def test_bad_negative_rate_is_refused(s: Settings, rate: float) -> None:
    with pytest.raises(ConfigError):
        F._pair_params(F.FeatureWindow.at("2019-10-15", s), None, None, True, rate, 1)


# --- snapshot dates -------------------------------------------------------------------------------------------------
def test_weekly_dates_for_the_generator_default(s: Settings) -> None:
    # 84 days from Tuesday 2019-10-01: coverage [10-01, 12-24); last as_of <= 12-17, first >= 10-15
    dates = S.weekly_as_of_dates(
        dt.datetime(2019, 10, 1, 0, 0, 3, tzinfo=dt.UTC), dt.datetime(2019, 12, 23, 23, 59, tzinfo=dt.UTC), s
    )
    assert dates[0] == dt.datetime(2019, 10, 21, tzinfo=dt.UTC)
    assert dates[-1] == dt.datetime(2019, 12, 16, tzinfo=dt.UTC)
    assert len(dates) == 9 and all(d.weekday() == 0 for d in dates)
    assert all(b - a == dt.timedelta(days=7) for a, b in zip(dates, dates[1:], strict=False))


def test_weekly_dates_are_stable_as_data_grows_and_capped(s: Settings) -> None:
    first = dt.datetime(2019, 10, 1, tzinfo=dt.UTC)
    short = S.weekly_as_of_dates(first, dt.datetime(2019, 11, 30, tzinfo=dt.UTC), s)
    many = s.model_copy(update={"max_snapshots": 100})
    longer = S.weekly_as_of_dates(first, dt.datetime(2020, 1, 30, tzinfo=dt.UTC), many)
    assert set(short) <= set(longer)
    last = dt.datetime(2020, 6, 1, tzinfo=dt.UTC)
    capped = S.weekly_as_of_dates(first, last, s.model_copy(update={"max_snapshots": 3}))
    assert capped == S.weekly_as_of_dates(first, last, s.model_copy(update={"max_snapshots": 1000}))[-3:]
    assert S.weekly_as_of_dates(first, dt.datetime(2019, 10, 10, tzinfo=dt.UTC), s) == []  # too little history
    ended = S.weekly_as_of_dates(first, dt.datetime(2020, 1, 30, tzinfo=dt.UTC), s, end="2019-11-20")
    assert ended[-1] + dt.timedelta(days=7) <= dt.datetime(2019, 11, 20, tzinfo=dt.UTC)


# --- fingerprints and snapshot checks -------------------------------------------------------------------------------
def _snapshot(n: int = 50, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "as_of": pd.Timestamp("2019-10-14", tz="UTC").as_unit("us"),
        "user_id": np.arange(1, n + 1, dtype=np.int64),
        "product_id": rng.integers(1, 1000, n).astype(np.int64),
    })
    for c in F.FEATURE_COLUMNS:
        lo, hi = F.FEATURE_RANGES[c]
        frame[c] = rng.uniform(lo, min(hi, lo + 10.0), n)
    frame["label"] = (rng.random(n) < 0.2).astype(np.int8)
    frame["weight"] = 1.0
    return frame


def test_fingerprint_ignores_row_order_but_not_values() -> None:
    frame = _snapshot()
    shuffled = frame.sample(frac=1.0, random_state=3)
    assert S.frame_fingerprint(frame) == S.frame_fingerprint(shuffled)
    changed = frame.copy()
    changed.loc[5, "pair_views"] += 1
    assert S.frame_fingerprint(changed) != S.frame_fingerprint(frame)


def test_snapshot_check_passes_a_good_frame(s: Settings) -> None:
    check = S.check_snapshot(_snapshot(), s, previous_rows=60)
    assert check.success, check.failed_rules
    assert check.statistics["rows"] == 50


def test_snapshot_check_names_each_broken_rule(s: Settings) -> None:
    frame = _snapshot()
    frame.loc[3, "user_events"] = np.nan  # NaN where none is allowed
    frame.loc[4, "user_weekend_share"] = 1.5  # out of range
    frame.loc[5, "label"] = 2
    frame.loc[7, ["user_id", "product_id"]] = frame.loc[6, ["user_id", "product_id"]].to_numpy()
    check = S.check_snapshot(frame, s, previous_rows=1000)  # 50 rows vs 1000 with a tolerance of 3x
    assert not check.success
    failed = set(check.failed_rules)
    assert "expect_column_values_to_not_be_null:user_events" in failed
    assert "expect_column_values_to_be_between:user_weekend_share" in failed
    assert "expect_column_values_to_be_in_set:label" in failed
    assert "expect_table_row_count_to_be_between" in failed
    assert "expect_compound_columns_to_be_unique:user_id,product_id" in failed
    assert "expect_column_values_to_not_be_null:pair_hours_since_last_cart" not in failed
    nullable = _snapshot()
    nullable.loc[:10, list(F.NULLABLE_FEATURES)] = np.nan
    assert S.check_snapshot(nullable, s).success


# --- the binary COPY layout (what PostgreSQL sends for the SELECT of _copy_batches) -------------------------------
def _copy_row(fields: list[tuple[str, object]]) -> bytes:
    """One binary-COPY tuple as PostgreSQL writes it: a field count, then per field a length and the big-endian
    value; ``None`` is a NULL (length -1, no value)."""
    import struct

    out = struct.pack(">h", len(fields))
    for kind, value in fields:
        out += struct.pack(">i", -1) if value is None else struct.pack(">i", 8) + struct.pack(">" + kind, value)
    return out


def test_binary_copy_rows_parse_to_arrow_with_nan_as_null() -> None:
    import pyarrow as pa

    schema = pa.schema([pa.field("user_id", pa.int64()), pa.field("product_id", pa.int64()),
                        pa.field("x", pa.float64()), pa.field("label", pa.int8()), pa.field("weight", pa.float64())])
    nan = float("nan")
    rows = [[("q", 2**62 + 3), ("q", -7), ("d", 1.5), ("d", 1.0), ("d", 2.0)],
            [("q", 5), ("q", 6), ("d", nan), ("d", nan), ("d", 1.0)],  # NULLs sent as NaN by the SELECT's coalesce
            [("q", 8), ("q", 9), ("d", -0.25), ("d", 0.0), ("d", 1.0)]]
    raw = b"".join(_copy_row(r) for r in rows)
    batch = F._binary_batch(raw, F._binary_row_dtype(schema), schema)
    assert batch.schema == schema and batch.num_rows == 3
    assert batch.column("user_id").to_pylist() == [2**62 + 3, 5, 8]  # int8 keys exactly, beyond float precision
    assert batch.column("product_id").to_pylist() == [-7, 6, 9]
    assert batch.column("x").to_pylist() == [1.5, None, -0.25]
    assert batch.column("label").to_pylist() == [1, None, 0]
    assert batch.column("weight").to_pylist() == [2.0, 1.0, 1.0]


def test_binary_copy_refuses_a_row_that_breaks_the_fixed_width_layout() -> None:
    import pyarrow as pa

    schema = pa.schema([pa.field("user_id", pa.int64()), pa.field("x", pa.float64())])
    good = _copy_row([("q", 1), ("d", 2.0)])
    null_key = _copy_row([("q", None), ("d", 2.0)]) + b"\x00" * 8  # same length, but field 1 says NULL
    with pytest.raises(RuntimeError, match="fixed-width"):
        F._binary_batch(good + null_key, F._binary_row_dtype(schema), schema)
