"""Point-in-time pair features, labels, active pairs, buckets and snapshots against a real PostgreSQL.

Every test here shares one private, freshly migrated database (module scope), and each test works in its own time
range, so product, category and brand statistics (which read every user's events) never see another test's rows.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import uuid
from collections.abc import Iterator

import numpy as np
import pandas as pd
import psycopg
import pytest
import sqlalchemy as sa

from ml import features as F
from ml import snapshots as S
from ml.db import libpq_url, make_engine
from ml.errors import ConfigError
from ml.settings import Settings

pytestmark = pytest.mark.integration

COLUMNS = ["event_time", "event_type", "product_id", "category_id", "category_code", "brand", "price", "user_id",
           "user_session"]


# --- fixtures and helpers ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def feat_url(server_pg_url: str) -> Iterator[str]:
    """A private migrated database for this module (dropped afterwards)."""
    from ml.db import create_database, drop_database

    name = f"feat_{uuid.uuid4().hex[:10]}"
    yield create_database(server_pg_url, name)
    drop_database(server_pg_url, name)


@pytest.fixture(scope="module")
def feat_engine(feat_url: str) -> Iterator[sa.Engine]:
    eng = make_engine(feat_url)
    yield eng
    eng.dispose()


@pytest.fixture
def fs(feat_url: str, tmp_path) -> Settings:  # noqa: ANN001
    return Settings(postgres_url=feat_url, state_dir=tmp_path / "state")


def insert_events(url: str, frame: pd.DataFrame, file_id: int = 1) -> None:
    """COPY a REES46-shaped frame (event_time tz-aware) into raw.events, making daily partitions first."""
    frame = frame.reset_index(drop=True)
    days = sorted({t.date() for t in pd.to_datetime(frame["event_time"], utc=True).dt.floor("D")})
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        for d in days:
            conn.execute("select raw.ensure_event_partition(%s)", (d,))
        with conn.cursor() as cur, cur.copy(
            f"copy raw.events ({', '.join(COLUMNS)}, file_id, line_no) from stdin"
        ) as copy:
            for i, row in enumerate(frame[COLUMNS].itertuples(index=False)):
                values = [None if (isinstance(v, float) and math.isnan(v)) or v is pd.NA else v for v in row]
                copy.write_row([*values, file_id, i + 1])


def ev(t: dt.datetime, kind: str, product: int, user: int, price: float, session: str | None,
       category: int, brand: str | None) -> dict:
    return {"event_time": t, "event_type": kind, "product_id": product, "category_id": category,
            "category_code": None, "brand": brand, "price": price, "user_id": user, "user_session": session}


def sorted_frame(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(["user_id", "product_id"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def generated(feat_url: str) -> dict:
    """A small generated dataset in its own period (2031-01-06 .. +42 days), loaded once."""
    from ml.dev.generate import GeneratorConfig, generate_events

    cfg = GeneratorConfig(start=dt.date(2031, 1, 6), days=42, n_users=250, n_products=300, seed=3)
    frame = generate_events(cfg)
    insert_events(feat_url, frame, file_id=2)
    return {"config": cfg, "frame": frame, "as_of": dt.datetime(2031, 2, 3, tzinfo=dt.UTC)}


# --- hand-checked values -------------------------------------------------------------------------------------------
AS_OF = dt.datetime(2029, 10, 16, tzinfo=dt.UTC)  # a Tuesday
U1, U2 = 101, 102
P1, P2, P3 = 11, 12, 13  # P1, P2 in category 1001 (P1 brand acme, P2 unbranded); P3 in 1002, brand zed
S1, S2, S3, S4, S5 = (str(uuid.UUID(int=i)) for i in range(1, 6))


def _hand_events() -> pd.DataFrame:
    T = AS_OF
    d, h, m = dt.timedelta(days=1), dt.timedelta(hours=1), dt.timedelta(minutes=1)
    rows = [
        ev(T - 24 * d - 14 * h, "view", P1, U1, 100.0, S1, 1001, "acme"),  # Friday 10:00
        ev(T - 4 * d - 5 * h, "view", P1, U1, 110.0, S2, 1001, "acme"),  # Thursday 19:00
        ev(T - 4 * d - 4 * h - 55 * m, "cart", P1, U1, 110.0, S2, 1001, "acme"),  # Thursday 19:05
        ev(T - 2 * d - 15 * h, "view", P2, U1, 50.0, S3, 1001, None),  # Saturday 09:00
        ev(T - 30 * m, "view", P1, U1, 120.0, S4, 1001, "acme"),  # Monday 23:30
        ev(T, "view", P3, U1, 30.0, S4, 1002, "zed"),  # exactly at as_of: future
        ev(T + 1 * d, "purchase", P1, U1, 120.0, S4, 1001, "acme"),  # label for (U1, P1)
        ev(T + 7 * d, "purchase", P2, U1, 50.0, S4, 1001, None),  # at as_of + horizon: outside the label window
        ev(T - 9 * d - 12 * h, "view", P1, U2, 105.0, S5, 1001, "acme"),  # Saturday 12:00
        ev(T - 9 * d - 12 * h + 10 * m, "cart", P1, U2, 105.0, S5, 1001, "acme"),
        ev(T - 9 * d - 12 * h + 20 * m, "purchase", P1, U2, 105.0, S5, 1001, "acme"),
        ev(T - 1 * d - 16 * h, "cart", P3, U2, 30.0, None, 1002, "zed"),  # Sunday 08:00, no session id
        ev(T - 75 * d, "view", P2, U2, 45.0, S5, 1001, None),  # before the 60-day lookback
    ]
    return pd.DataFrame(rows)


NAN = float("nan")
_U1 = dict(user_events=5, user_sessions=4, user_products=2, user_categories=1, user_brands=1,
           user_mean_session_minutes=1.25, user_events_per_session=1.25, user_carts=1, user_purchases=0,
           user_cart_to_purchase=0.0, user_days_active=4, user_weekend_share=0.2, user_evening_share=0.6,
           user_hours_since_last_event=0.5)
_U2 = dict(user_events=4, user_sessions=1, user_products=2, user_categories=2, user_brands=2,
           user_mean_session_minutes=20.0, user_events_per_session=3.0, user_carts=2, user_purchases=1,
           user_cart_to_purchase=0.5, user_days_active=2, user_weekend_share=1.0, user_evening_share=0.0,
           user_hours_since_last_event=40.0)
# lookback totals: 9 events, 5 views, 1 purchase -> global purchase rate 0.2; smoothing prior 20 views
_P1 = dict(product_viewers=2, product_views=4, product_carts=2, product_purchases=1,
           product_view_to_purchase=(1 + 20 * 0.2) / (4 + 20), product_price=120.0,
           product_price_vs_category_median=120 / 85, brand_popularity=7 / 9, brand_purchase_rate=5 / 24,
           category_frequency=8 / 9, category_purchase_rate=(1 + 4) / (5 + 20))
EXPECTED = {
    (U1, P1): dict(pair_views=3, pair_carts=1, pair_removes=0, pair_purchases=0, pair_sessions=3,
                   pair_hours_since_first_view=590.0, pair_hours_since_last_view=0.5,
                   pair_hours_since_last_cart=4 * 24 + 4 + 55 / 60, pair_views_24h=1, pair_views_7d=2,
                   pair_price_change=0.2, pair_cart_without_purchase=1, **_U1, **_P1,
                   last_hour=23, last_day_of_week=0, last_is_weekend=0),
    (U1, P2): dict(pair_views=1, pair_carts=0, pair_removes=0, pair_purchases=0, pair_sessions=1,
                   pair_hours_since_first_view=63.0, pair_hours_since_last_view=63.0,
                   pair_hours_since_last_cart=NAN, pair_views_24h=0, pair_views_7d=1, pair_price_change=0.0,
                   pair_cart_without_purchase=0, **_U1,
                   product_viewers=1, product_views=1, product_carts=0, product_purchases=0,
                   product_view_to_purchase=4 / 21, product_price=50.0, product_price_vs_category_median=50 / 85,
                   brand_popularity=1 / 9, brand_purchase_rate=4 / 21, category_frequency=8 / 9,
                   category_purchase_rate=0.2, last_hour=9, last_day_of_week=5, last_is_weekend=1),
    (U2, P1): dict(pair_views=1, pair_carts=1, pair_removes=0, pair_purchases=1, pair_sessions=1,
                   pair_hours_since_first_view=228.0, pair_hours_since_last_view=228.0,
                   pair_hours_since_last_cart=228 - 10 / 60, pair_views_24h=0, pair_views_7d=0,
                   pair_price_change=0.0, pair_cart_without_purchase=0, **_U2, **_P1,
                   last_hour=12, last_day_of_week=5, last_is_weekend=1),
    (U2, P3): dict(pair_views=0, pair_carts=1, pair_removes=0, pair_purchases=0, pair_sessions=0,
                   pair_hours_since_first_view=NAN, pair_hours_since_last_view=NAN,
                   pair_hours_since_last_cart=40.0, pair_views_24h=0, pair_views_7d=0, pair_price_change=NAN,
                   pair_cart_without_purchase=1, **_U2,
                   product_viewers=0, product_views=0, product_carts=1, product_purchases=0,
                   product_view_to_purchase=0.2, product_price=30.0, product_price_vs_category_median=1.0,
                   brand_popularity=1 / 9, brand_purchase_rate=0.2, category_frequency=1 / 9,
                   category_purchase_rate=0.2, last_hour=8, last_day_of_week=6, last_is_weekend=1),
}
EXPECTED_LABELS = {(U1, P1): 1, (U1, P2): 0, (U2, P1): 0, (U2, P3): 0}


@pytest.fixture(scope="module")
def hand_loaded(feat_url: str) -> None:
    insert_events(feat_url, _hand_events(), file_id=1)


def test_hand_checked_features_equal_sql(feat_engine, fs, hand_loaded) -> None:  # noqa: ANN001
    frame = F.build_pair_features(feat_engine, AS_OF, fs)
    assert list(frame.columns) == ["user_id", "product_id", *F.FEATURE_COLUMNS]
    assert all(frame[c].dtype == np.float64 for c in F.FEATURE_COLUMNS)
    got = {(int(r.user_id), int(r.product_id)): r for r in frame.itertuples(index=False)}
    assert set(got) == set(EXPECTED)  # (U1, P3) only has an event at exactly as_of: not active
    for pair, expected in EXPECTED.items():
        assert set(expected) == set(F.FEATURE_COLUMNS)
        for name, value in expected.items():
            actual = getattr(got[pair], name)
            if math.isnan(value):
                assert math.isnan(actual), f"{pair} {name}: expected NaN, got {actual}"
            else:
                assert actual == pytest.approx(value, rel=1e-9, abs=1e-9), f"{pair} {name}"
    assert F.count_active_pairs(feat_engine, AS_OF, fs) == 4


def test_hand_checked_labels(feat_engine, fs, hand_loaded) -> None:  # noqa: ANN001
    labels = F.build_labels(feat_engine, AS_OF, fs)
    assert {(int(r.user_id), int(r.product_id)): int(r.label) for r in labels.itertuples()} == EXPECTED_LABELS
    snap = S.build_snapshot_frame(feat_engine, AS_OF, fs)
    assert {(int(r.user_id), int(r.product_id)): int(r.label) for r in snap.itertuples()} == EXPECTED_LABELS
    assert (snap["weight"] == 1.0).all()


def test_windows_are_configurable(feat_engine, fs, hand_loaded) -> None:  # noqa: ANN001
    short = fs.model_copy(update={"active_window_days": 3, "label_horizon_days": 8})
    frame = F.build_pair_features(feat_engine, AS_OF, short)
    # within 3 days: U1's view of P2 (2d15h) and P1 (30 min), U2's cart of P3 (1d16h); U2's P1 (9 days) drops out
    assert set(zip(frame.user_id, frame.product_id, strict=True)) == {(U1, P1), (U1, P2), (U2, P3)}
    labels = F.build_labels(feat_engine, AS_OF, short)
    # an 8-day horizon reaches the purchase of P2 at as_of + 7 days
    assert dict(zip(zip(labels.user_id, labels.product_id, strict=True), labels.label, strict=True)) == {
        (U1, P1): 1, (U1, P2): 1, (U2, P3): 0
    }
    lookback_10 = fs.model_copy(update={"lookback_days": 10, "active_window_days": 10})
    frame = F.build_pair_features(feat_engine, AS_OF, lookback_10).set_index(["user_id", "product_id"])
    assert frame.loc[(U1, P1), "pair_views"] == 2  # the view 24 days back is outside a 10-day lookback
    assert math.isnan(frame.loc[(U1, P1), "pair_price_change"]) is False
    assert frame.loc[(U1, P1), "pair_price_change"] == pytest.approx(120 / 110 - 1)


# --- point in time ------------------------------------------------------------------------------------------------
def test_future_events_leave_features_unchanged(feat_engine, feat_url, fs, generated) -> None:  # noqa: ANN001
    as_of = generated["as_of"]
    before = sorted_frame(F.build_pair_features(feat_engine, as_of, fs))
    labels_before = F.build_labels(feat_engine, as_of, fs).set_index(["user_id", "product_id"])["label"]
    assert len(before) > 100

    # future events on existing pairs: views/carts at exactly as_of, a purchase one hour later for unlabeled pairs
    negatives = labels_before[labels_before == 0].index[:20]
    meta = generated["frame"].drop_duplicates("product_id").set_index("product_id")
    rows = []
    for user, product in negatives:
        cat, brand = int(meta.loc[product, "category_id"]), meta.loc[product, "brand"]
        brand = None if pd.isna(brand) else brand
        rows.append(ev(as_of, "view", product, user, 1.0, S1, cat, brand))
        rows.append(ev(as_of, "cart", product, user, 1.0, S1, cat, brand))
        rows.append(ev(as_of + dt.timedelta(hours=1), "purchase", product, user, 1.0, S1, cat, brand))
    # and a brand-new user and product after as_of
    rows.append(ev(as_of + dt.timedelta(minutes=5), "view", 99_999_001, 99_999_002, 5.0, S2, 777, "newbrand"))
    insert_events(feat_url, pd.DataFrame(rows), file_id=3)

    after = sorted_frame(F.build_pair_features(feat_engine, as_of, fs))
    pd.testing.assert_frame_equal(before, after)
    labels_after = F.build_labels(feat_engine, as_of, fs).set_index(["user_id", "product_id"])["label"]
    labels_before, labels_after = labels_before.sort_index(), labels_after.sort_index()  # row order is free
    changed = labels_after[labels_after != labels_before]
    assert set(changed.index) == set(negatives)
    assert (changed == 1).all()
    # the same rows through the training path: features unchanged, labels changed
    snap = S.build_snapshot_frame(feat_engine, as_of, fs)
    pd.testing.assert_frame_equal(snap[["user_id", "product_id", *F.FEATURE_COLUMNS]], before)


def test_past_events_do_change_features(feat_engine, feat_url, fs, generated) -> None:  # noqa: ANN001
    """The point-in-time test above can fail: an event one second before as_of is a feature."""
    as_of = generated["as_of"] + dt.timedelta(days=1)  # a private as_of (features only read before it)
    before = F.build_pair_features(feat_engine, as_of, fs).set_index(["user_id", "product_id"])
    meta = generated["frame"].drop_duplicates("product_id").set_index("product_id")
    user, product = next(pair for pair in before.index if pair[1] in meta.index)
    brand = meta.loc[product, "brand"]
    insert_events(
        feat_url,
        pd.DataFrame([ev(as_of - dt.timedelta(seconds=1), "view", product, user, 1.0, S3,
                         int(meta.loc[product, "category_id"]), None if pd.isna(brand) else brand)]),
        file_id=4,
    )
    after = F.build_pair_features(feat_engine, as_of, fs).set_index(["user_id", "product_id"])
    assert after.loc[(user, product), "pair_views"] == before.loc[(user, product), "pair_views"] + 1
    assert after.loc[(user, product), "pair_views_24h"] == before.loc[(user, product), "pair_views_24h"] + 1
    assert after.loc[(user, product), "pair_hours_since_last_view"] == pytest.approx(1 / 3600)


# --- buckets ------------------------------------------------------------------------------------------------------
def test_buckets_cover_every_active_pair_exactly_once(feat_engine, fs, generated) -> None:  # noqa: ANN001
    as_of = generated["as_of"] - dt.timedelta(days=7)
    full = sorted_frame(F.build_pair_features(feat_engine, as_of, fs.model_copy(update={"feature_buckets": 1})))
    assert len(full) == F.count_active_pairs(feat_engine, as_of, fs)
    # the default full table is built bucket by bucket over cached item statistics: the same rows and values
    pd.testing.assert_frame_equal(sorted_frame(F.build_pair_features(feat_engine, as_of, fs)), full)
    with feat_engine.connect() as conn:  # and its temporary item statistics are gone
        assert conn.execute(sa.text("select count(*) from ml.feature_item_stats_keys where cache_key like 'tmp-%'")
                            ).scalar_one() == 0
    for k_total in (3, 8):
        parts = []
        for k in range(k_total):
            part = F.build_pair_features(feat_engine, as_of, fs, bucket=k, n_buckets=k_total)
            assert (F.bucket_of(part["user_id"].to_numpy(), k_total) == k).all()
            assert len(part) == F.count_active_pairs(feat_engine, as_of, fs, bucket=k, n_buckets=k_total)
            parts.append(part)
        union = sorted_frame(pd.concat(parts, ignore_index=True))
        assert not union.duplicated(["user_id", "product_id"]).any()
        # same pairs AND the same values: product statistics never depend on the bucketing
        pd.testing.assert_frame_equal(union, full)


def test_item_stats_cache_gives_the_same_rows_once(feat_engine, fs, generated) -> None:  # noqa: ANN001
    import threading

    as_of = generated["as_of"] - dt.timedelta(days=14)
    key = f"test-{uuid.uuid4().hex[:8]}"
    full = sorted_frame(F.build_pair_features(feat_engine, as_of, fs))
    errors: list[BaseException] = []

    def prepare() -> None:
        try:
            F.prepare_item_stats(feat_engine, as_of, fs, key)
        except BaseException as e:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=prepare) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with feat_engine.connect() as conn:
        assert conn.execute(sa.text("select count(*) from ml.feature_item_stats_keys where cache_key = :k"),
                            {"k": key}).scalar_one() == 1
    parts = [F.build_pair_features(feat_engine, as_of, fs, bucket=k, n_buckets=4, item_stats_key=key) for k in range(4)]
    pd.testing.assert_frame_equal(sorted_frame(pd.concat(parts, ignore_index=True)), full)
    with pytest.raises(ConfigError, match="use another key"):
        F.build_pair_features(feat_engine, as_of + dt.timedelta(days=1), fs, item_stats_key=key)
    assert F.drop_item_stats(feat_engine, key) == 1
    with feat_engine.connect() as conn:
        assert conn.execute(sa.text("select count(*) from ml.feature_item_stats where cache_key = :k"),
                            {"k": key}).scalar_one() == 0


def test_sql_and_python_buckets_agree(feat_engine) -> None:  # noqa: ANN001
    rng = np.random.default_rng(0)
    ids = np.concatenate([
        np.array([1, 2, 3, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**32 + 1, 2**62, 2**63 - 1, 512_475_445, 600_000_001]),
        rng.integers(1, 2**63 - 1, size=500, dtype=np.int64),
        rng.integers(500_000_000, 620_000_000, size=500, dtype=np.int64),
    ])
    with feat_engine.connect() as conn:
        for k_total in (1, 2, 7, 8, 1000, 2**31 - 1):
            got = conn.execute(
                sa.text("select u, ml.user_bucket(u, :k), ml.user_hash32(u) from unnest(cast(:ids as bigint[])) as u"),
                {"ids": [int(i) for i in ids], "k": k_total},
            ).all()
            sql_bucket = np.array([r[1] for r in got])
            sql_hash = np.array([r[2] for r in got])
            np.testing.assert_array_equal(sql_bucket, F.bucket_of(ids, k_total))
            np.testing.assert_array_equal(sql_hash, F.user_hash32(ids))
            for k in sorted({0, 1 % k_total, k_total - 1}):
                lo, hi = conn.execute(sa.text("select ml.bucket_hash_lo(:b, :k), ml.bucket_hash_lo(:b + 1, :k)"),
                                      {"b": k, "k": k_total}).one()
                assert (lo, hi) == F.bucket_hash_range(k, k_total)
            assert [F.bucket_of(int(i), k_total) for i in ids[:20]] == list(sql_bucket[:20])
        expr = F.user_bucket_sql("u", "8")
        got = conn.execute(sa.text(f"select {expr} from unnest(cast(:ids as bigint[])) as u"),
                           {"ids": [int(i) for i in ids]}).scalars().all()
    np.testing.assert_array_equal(np.array(got), F.bucket_of(ids, 8))


# --- real data ----------------------------------------------------------------------------------------------------
def test_real_rees46_sample_yields_features(feat_engine, feat_url, fs, rees46_sample) -> None:  # noqa: ANN001
    raw = pd.read_csv(rees46_sample, dtype={"category_code": "string", "brand": "string", "user_session": "string"})
    raw["event_time"] = pd.to_datetime(raw["event_time"].str.replace(" UTC", "", regex=False), utc=True)
    insert_events(feat_url, raw, file_id=5)
    as_of = raw["event_time"].max().ceil("h").to_pydatetime()
    frame = F.build_pair_features(feat_engine, as_of, fs)
    n_active = F.count_active_pairs(feat_engine, as_of, fs)
    assert n_active > 1000 and len(frame) == n_active
    for column in F.FEATURE_COLUMNS:
        values = frame[column]
        if column not in F.NULLABLE_FEATURES:
            assert not values.isna().any(), column
        lo, hi = F.FEATURE_RANGES[column]
        assert values.dropna().between(lo, hi).all(), column
    # cross-check three features against pandas on the raw file
    past = raw[raw["event_time"] < as_of]
    views = past[past.event_type == "view"].groupby(["user_id", "product_id"]).size()
    users = past.groupby("user_id").size()
    viewers = past[past.event_type == "view"].groupby("product_id")["user_id"].nunique()
    idx = frame.set_index(["user_id", "product_id"])
    np.testing.assert_array_equal(idx["pair_views"], views.reindex(idx.index).fillna(0).to_numpy())
    np.testing.assert_array_equal(idx["user_events"], users.reindex(idx.index.get_level_values(0)).to_numpy())
    np.testing.assert_array_equal(
        idx["product_viewers"], viewers.reindex(idx.index.get_level_values(1)).fillna(0).to_numpy()
    )
    check = S.check_snapshot(S.build_snapshot_frame(feat_engine, as_of, fs), fs)
    assert check.success, check.failed_rules


# --- training snapshots -------------------------------------------------------------------------------------------
def test_training_snapshots_are_checked_persisted_and_reproducible(feat_engine, fs, generated) -> None:  # noqa: ANN001
    cfg = generated["config"]
    first = dt.datetime.combine(cfg.start, dt.time(), dt.UTC)
    last = first + dt.timedelta(days=cfg.days) - dt.timedelta(seconds=1)
    dates = S.weekly_as_of_dates(first, last, fs)
    assert dates and all(d.weekday() == 0 and d.hour == 0 for d in dates)
    assert dates[-1] + dt.timedelta(days=fs.label_horizon_days) <= last + dt.timedelta(seconds=1)

    chosen = [generated["as_of"] - dt.timedelta(days=7), generated["as_of"]]
    ts = S.build_training_snapshots(feat_engine, fs, chosen)
    assert list(ts.frame.columns) == ["as_of", "user_id", "product_id", *F.FEATURE_COLUMNS, "label", "weight"]
    assert [s.as_of for s in ts.snapshots] == chosen and all(s.success for s in ts.snapshots)
    assert ts.frame["label"].sum() == sum(s.positives for s in ts.snapshots) > 0
    again = S.build_training_snapshots(feat_engine, fs, chosen)
    assert again.fingerprint == ts.fingerprint and len(ts.fingerprint) == 64

    stored = S.read_snapshot_parquet(ts.snapshots[1].uri)
    pd.testing.assert_frame_equal(stored, ts.frame[ts.frame.as_of == chosen[1]].reset_index(drop=True))
    assert S.frame_fingerprint(stored) == ts.snapshots[1].fingerprint
    with feat_engine.connect() as conn:
        rows = conn.execute(
            sa.text("select s.row_count, s.fingerprint, v.success, v.suite_name from ml.feature_snapshots s "
                    "join quality.validation_runs v using (validation_id) where s.snapshot_id = :i"),
            {"i": ts.snapshots[1].snapshot_id},
        ).one()
    assert rows == (ts.snapshots[1].rows, ts.snapshots[1].fingerprint, True, "feature_snapshot")


def test_negative_subsampling_keeps_positives_and_reweights(feat_engine, fs, generated) -> None:  # noqa: ANN001
    as_of = generated["as_of"]
    full = S.build_snapshot_frame(feat_engine, as_of, fs)
    half = S.build_snapshot_frame(feat_engine, as_of, fs.model_copy(update={"negative_sample_rate": 0.5}))
    again = S.build_snapshot_frame(feat_engine, as_of, fs.model_copy(update={"negative_sample_rate": 0.5}))
    pd.testing.assert_frame_equal(half, again)  # the sample is a stable hash, not a random draw
    assert half["label"].sum() == full["label"].sum()
    assert (half.loc[half.label == 1, "weight"] == 1.0).all() and (half.loc[half.label == 0, "weight"] == 2.0).all()
    n_neg, kept = int((full.label == 0).sum()), int((half.label == 0).sum())
    assert 0.35 * n_neg < kept < 0.65 * n_neg
    merged = half.merge(full, on=["user_id", "product_id"], suffixes=("", "_full"))
    assert len(merged) == len(half)
    np.testing.assert_allclose(merged["user_events"], merged["user_events_full"])


def test_snapshot_dates_from_the_database(feat_engine, fs, generated, hand_loaded) -> None:  # noqa: ANN001
    span = S.event_time_range(feat_engine)
    assert span is not None
    dates = S.snapshot_dates(feat_engine, fs)
    assert dates == S.weekly_as_of_dates(span[0], span[1], fs)
    assert dates and dates[-1] <= span[1]


# --- CLI ----------------------------------------------------------------------------------------------------------
def test_cli_features_and_snapshot_dates(feat_engine, feat_url, redis_url, fs, generated, tmp_path,  # noqa: ANN001
                                         monkeypatch) -> None:
    import json

    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from ml.cli import app

    monkeypatch.setenv("PROPENSITY_POSTGRES_URL", feat_url)
    monkeypatch.setenv("PROPENSITY_REDIS_URL", redis_url)
    monkeypatch.setenv("PROPENSITY_STATE_DIR", str(tmp_path / "state"))
    out = tmp_path / "bucket0.parquet"
    as_of = generated["as_of"] - dt.timedelta(days=7)
    result = CliRunner().invoke(app, ["features", "--as-of", f"{as_of:%Y-%m-%d}", "--bucket", "0", "--buckets", "2",
                                      "--labels", "--out", str(out)])
    assert result.exit_code == 0, result.output
    text = result.stdout
    summary = json.loads(text[text.index("{") : text.rindex("}") + 1])
    assert summary["rows"] == F.count_active_pairs(feat_engine, as_of, fs, bucket=0, n_buckets=2) > 0
    table = pq.read_table(out)
    assert table.num_rows == summary["rows"] and "label" in table.column_names
    result = CliRunner().invoke(app, ["snapshots", "--list"])
    assert result.exit_code == 0, result.output
    listed = [line for line in result.stdout.splitlines() if re.fullmatch(r"\d{4}-\d\d-\d\d 00:00", line)]
    assert listed == [f"{d:%Y-%m-%d %H:%M}" for d in S.snapshot_dates(feat_engine, fs)]
