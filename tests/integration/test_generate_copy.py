"""Generated REES46 files load into PostgreSQL with the raw.events column types, unchanged (real Postgres)."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from ml.dev.generate import GeneratorConfig, generate_events, write_daily_files

pytestmark = pytest.mark.integration

COLUMNS = """event_time timestamptz not null, event_type text not null, product_id bigint not null,
    category_id bigint not null, category_code text, brand text, price double precision not null,
    user_id bigint not null, user_session uuid"""


def test_generated_csv_copies_into_raw_event_types(engine: sa.Engine, tmp_path: Path) -> None:
    events = generate_events(GeneratorConfig(days=2, n_users=300, n_products=200, seed=5, null_session_rate=0.01))
    paths = write_daily_files(events, tmp_path, formats=("csv",))
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute(f"create temp table gen_copy ({COLUMNS})")
        for p in paths:
            cur.copy_expert("copy gen_copy from stdin with (format csv, header true)", io.BytesIO(p.read_bytes()))
        cur.execute(
            "select count(*), count(category_code), count(brand), count(user_session), round(sum(price)::numeric, 2),"
            " min(event_time), max(event_time), count(distinct user_session),"
            " count(*) filter (where event_type = 'purchase') from gen_copy"
        )
        n, n_code, n_brand, n_sess, price_sum, t_min, t_max, n_sessions, n_buy = cur.fetchone()
    finally:
        raw.rollback()
        raw.close()
    assert n == len(events)
    assert n_code == events["category_code"].notna().sum()
    assert n_brand == events["brand"].notna().sum()
    assert n_sess == events["user_session"].notna().sum() < n  # empty fields arrive as NULL
    assert float(price_sum) == pytest.approx(round(events["price"].sum(), 2), abs=0.005)
    assert pd.Timestamp(t_min) == events["event_time"].min()
    assert pd.Timestamp(t_max) == events["event_time"].max()
    assert n_sessions == events["user_session"].nunique()
    assert n_buy == (events["event_type"] == "purchase").sum()
