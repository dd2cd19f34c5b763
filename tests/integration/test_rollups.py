"""Incremental feature rollups (migration 0180) against a real PostgreSQL: features read from the rollups equal the
features aggregated from raw events, column by column, after a history with late files, a re-ingest, a quarantined
file, a backfilled day and a replaced file; the rollups equal a rebuild from raw.events; a failed load adds nothing.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from ml import features as F
from ml.db import make_engine
from ml.ingest import ingest_file, load_events_frame
from ml.settings import Settings

pytestmark = pytest.mark.integration

START = dt.date(2024, 3, 4)  # a Monday
DAYS = 21
BACKFILL_DAY = START + dt.timedelta(days=5)
ROLLUPS = ("rollup_pair_day", "rollup_user_session_day", "rollup_product_day")


@pytest.fixture(scope="module")
def ru_url(server_pg_url: str) -> Iterator[str]:
    from ml.db import create_database, drop_database

    name = f"rollup_{uuid.uuid4().hex[:10]}"
    yield create_database(server_pg_url, name)
    drop_database(server_pg_url, name)


@pytest.fixture(scope="module")
def ru_engine(ru_url: str) -> Iterator[sa.Engine]:
    eng = make_engine(ru_url)
    yield eng
    eng.dispose()


def _settings(url: str, tmp: Path, **kw: object) -> Settings:
    return Settings(postgres_url=url, state_dir=tmp / "state", row_count_min_history=10**6,
                    data_docs_enabled=False, lookback_days=14, active_window_days=7, label_horizon_days=3, **kw)


def _rollups(engine: sa.Engine) -> dict[str, pd.DataFrame]:
    out = {}
    with engine.connect() as c:
        for t in ROLLUPS:
            frame = pd.read_sql_query(sa.text(f"select * from raw.{t}"), c)
            if "sessions" in frame:
                frame["sessions"] = frame["sessions"].map(lambda a: tuple(sorted(str(u) for u in a)))
            keys = [k for k in ("user_id", "product_id", "user_session", "day") if k in frame]
            if "user_session" in frame:
                frame["user_session"] = frame["user_session"].astype(str)
            out[t] = frame.sort_values(keys).reset_index(drop=True)
    return out


def _assert_same_rollups(a: dict[str, pd.DataFrame], b: dict[str, pd.DataFrame]) -> None:
    for t in ROLLUPS:
        pd.testing.assert_frame_equal(a[t], b[t], check_dtype=False, obj=t)


def _write(frame: pd.DataFrame, path: Path) -> Path:
    from ml.dev.generate.files import format_rees46_csv

    path.write_bytes(format_rees46_csv(frame.sort_values("event_time").reset_index(drop=True)))
    return path


def _compare(engine: sa.Engine, url: str, tmp: Path, as_of: dt.datetime) -> int:
    """Features, labels and active-pair counts at ``as_of`` from the rollups and from raw events: equal."""
    roll = _settings(url, tmp, feature_source="rollups", feature_buckets=1)
    raw = _settings(url, tmp, feature_source="raw", feature_buckets=1)
    window = F.FeatureWindow.at(as_of, roll)
    assert F.uses_rollups(window, roll) and not F.uses_rollups(window, raw)
    key = ["user_id", "product_id"]
    a = F.build_pair_features(engine, as_of, roll).sort_values(key).reset_index(drop=True)
    b = F.build_pair_features(engine, as_of, raw).sort_values(key).reset_index(drop=True)
    assert len(a) > 50 and list(a.columns) == list(b.columns)
    pd.testing.assert_frame_equal(a[key], b[key])
    for c in F.FEATURE_COLUMNS:  # column by column, NaN where NaN
        x, y = a[c].to_numpy(), b[c].to_numpy()
        assert np.array_equal(np.isnan(x), np.isnan(y)), c
        assert np.allclose(x[~np.isnan(x)], y[~np.isnan(y)], rtol=1e-12, atol=1e-9), c
    # one bucket of three through the run's item statistics cache, as the scoring tasks read it
    kr, kw = f"r-{uuid.uuid4().hex[:8]}", f"w-{uuid.uuid4().hex[:8]}"
    ab = F.build_pair_features(engine, as_of, roll, 1, 3, item_stats_key=kr).sort_values(key).reset_index(drop=True)
    bb = F.build_pair_features(engine, as_of, raw, 1, 3, item_stats_key=kw).sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(ab, bb, rtol=1e-12, atol=1e-9)
    F.drop_item_stats(engine, kr)
    F.drop_item_stats(engine, kw)
    la = F.build_labels(engine, as_of, roll).sort_values(key).reset_index(drop=True)
    lb = F.build_labels(engine, as_of, raw).sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(la, lb)
    assert F.count_active_pairs(engine, as_of, roll) == F.count_active_pairs(engine, as_of, raw) == len(a)
    from ml.score.plan import count_pairs_by_bucket

    assert count_pairs_by_bucket(engine, roll, as_of.date(), 4) == count_pairs_by_bucket(engine, raw, as_of.date(), 4)
    return len(a)


def test_rollup_features_equal_raw_features_through_late_reingested_quarantined_backfilled_files(
    ru_engine: sa.Engine, ru_url: str, tmp_path: Path
) -> None:
    from ml.dev.generate import GeneratorConfig, generate_events
    from ml.dev.generate.corrupt import corrupt_file

    cfg = _settings(ru_url, tmp_path)
    frame = generate_events(GeneratorConfig(start=START, days=DAYS, n_users=160, n_products=120, seed=11))
    day = pd.to_datetime(frame["event_time"], utc=True).dt.date
    rng = np.random.default_rng(5)
    late = (day >= START + dt.timedelta(days=17)) & (rng.random(len(frame)) < 0.15)
    first = frame[(day < START + dt.timedelta(days=10)) & (day != BACKFILL_DAY)]
    second = frame[(day >= START + dt.timedelta(days=10)) & ~late]
    now = dt.datetime.combine(START + dt.timedelta(days=DAYS + 1), dt.time(), dt.UTC)

    def ingest(path: Path) -> object:
        return ingest_file(path, cfg, ru_engine, now=now)

    assert ingest(_write(first, tmp_path / "a.csv")).status == "loaded"
    b = _write(second, tmp_path / "b.csv")
    assert ingest(b).status == "loaded"
    before = _rollups(ru_engine)

    # a quarantined file (a copy of b with negative prices: new bytes, new checksum) adds nothing
    bad = corrupt_file(b, tmp_path / "bad.csv", "negative_price", seed=1)
    assert ingest(bad).status == "quarantined"
    # a re-ingest of the same bytes is a no-op
    assert ingest(b).status == "duplicate"
    _assert_same_rollups(before, _rollups(ru_engine))

    # a late file for days already loaded, then a backfill of a day never loaded (a new, old partition)
    late_result = ingest(_write(frame[late], tmp_path / "late.csv"))
    assert late_result.status == "loaded"
    assert ingest(_write(frame[day == BACKFILL_DAY], tmp_path / "backfill.csv")).status == "loaded"

    # a replaced file: its rows deleted (the days are rebuilt), the corrected rows loaded again
    with ru_engine.begin() as c:
        c.execute(sa.text("delete from raw.events where file_id = :f"), {"f": late_result.file_id})
    assert _rollups(ru_engine)["rollup_pair_day"]["events"].sum() == len(frame) - int(late.sum())
    load_events_frame(ru_engine, frame[late], file_id=late_result.file_id)

    # incremental state equals a rebuild from raw.events
    incremental = _rollups(ru_engine)
    assert incremental["rollup_pair_day"]["events"].sum() == len(frame)
    with ru_engine.begin() as c:
        c.execute(sa.text("select raw.rollups_rebuild_days(null)"))
    _assert_same_rollups(incremental, _rollups(ru_engine))

    # features: within the history, over the backfilled day, and after the last event; plus a non-midnight as_of
    for offset in (9, 15, 19, DAYS):
        _compare(ru_engine, ru_url, tmp_path, dt.datetime.combine(START + dt.timedelta(days=offset), dt.time(), dt.UTC))
    odd = dt.datetime.combine(START + dt.timedelta(days=15), dt.time(13, 30), dt.UTC)
    assert not F.uses_rollups(F.FeatureWindow.at(odd, cfg), cfg)  # a within-day as_of reads raw events


def test_failed_load_adds_nothing_to_the_rollups(ru_engine: sa.Engine) -> None:
    """A load whose transaction fails (here: a row breaking raw.events' price check) leaves the rollups as they were."""
    before = _rollups(ru_engine)
    t = dt.datetime(2024, 3, 8, 12, tzinfo=dt.UTC)
    bad = pd.DataFrame([
        {"event_time": t, "event_type": "view", "product_id": 1, "category_id": 1, "category_code": None,
         "brand": None, "price": 1.0, "user_id": 7, "user_session": None},
        {"event_time": t, "event_type": "view", "product_id": 1, "category_id": 1, "category_code": None,
         "brand": None, "price": -1.0, "user_id": 7, "user_session": None},
    ])
    with pytest.raises(Exception, match="price"):
        load_events_frame(ru_engine, bad, file_id=99)
    _assert_same_rollups(before, _rollups(ru_engine))
