"""The vectorised binary COPY encoder of ml.score against a real PostgreSQL: every column round-trips."""

from __future__ import annotations

import datetime as dt
import json
import math

import numpy as np
import psycopg
import pytest
import sqlalchemy as sa

from ml.db import libpq_url
from ml.insights import Insights
from ml.score import COPY_HEADER, COPY_TRAILER, SCORE_COLUMNS, ScoredBlock, encode_sample_rows, encode_score_rows

pytestmark = pytest.mark.integration

FEATURES = ["pair_carts", "price é\"q", "x\\y"]


def block() -> ScoredBlock:
    n = 4
    phi = np.array([[0.5, -0.25, 0.0], [1e-9, 2.0, -3.5], [0.0, 0.0, 0.0], [-0.0, 1.25, 7.0]])
    ins = Insights(
        feature_names=FEATURES,
        tiers=["cold", "cool", "hot"],
        tier=np.array([0, 2, 1, 0], dtype=np.int8),
        codes=["CART_RECENT", "PRICE_DROP"],
        reason_code=np.array([[0, 1], [-1, -1], [1, -1], [0, -1]], dtype=np.int16),
        texts=["Added to cart twice", 'Price dropped 12% — "déjà" \\ vu', "Añadido ✓"],
        reason_text=np.array([[0, 1], [-1, -1], [2, -1], [0, -1]], dtype=np.int32),
        top_feature=np.array([[0, 1], [2, 1], [-1, -1], [2, 1]], dtype=np.int32),
        top_shap=np.array([[0.5, -0.25], [-3.5, 2.0], [np.nan, np.nan], [7.0, 1.25]]),
        top_value=np.array([[2.0, np.nan], [np.inf, 19.99], [np.nan, np.nan], [1e15, -0.0]]),
    )
    return ScoredBlock(
        user_id=np.array([1, 2**62, 3, 4], dtype=np.int64),
        product_id=np.array([10, 20, 30, 2**40], dtype=np.int64),
        logit=np.zeros(n),
        probability=np.array([0.25, 1e-12, 0.5, 1.0]),
        contributions=phi,
        base_value=np.array([-1.5, 0.0, 2.25, -7.0]),
        insights=ins,
        max_residual=0.0,
    )


def test_score_rows_round_trip_through_copy_binary(pg_url: str, engine: sa.Engine) -> None:
    day = dt.date(2031, 5, 17)
    b = block()
    payload = encode_score_rows(b, day, "model-v1", "20310517_0123456789ab")
    with psycopg.connect(libpq_url(pg_url)) as conn:
        conn.execute("create temp table t (like scoring.scores including defaults including constraints)")
        with conn.cursor() as cur, cur.copy(f"copy t ({', '.join(SCORE_COLUMNS)}) from stdin (format binary)") as cp:
            cp.write(COPY_HEADER)
            cp.write(payload)
            cp.write(COPY_TRAILER)
        rows = conn.execute(f"select {', '.join(SCORE_COLUMNS)} from t order by product_id").fetchall()
    assert len(rows) == 4
    for i, r in enumerate(rows):
        (score_date, uid, pid, p, mv, run_id, tier, codes, texts, top, base, contrib, experiment, arm) = r
        assert experiment is None and arm is None  # scored outside any experiment
        assert (score_date, uid, pid, p, mv, run_id) == (day, int(b.user_id[i]), int(b.product_id[i]),
                                                         float(b.probability[i]), "model-v1",
                                                         "20310517_0123456789ab")
        assert tier == b.insights.tiers[b.insights.tier[i]]
        assert codes == [b.insights.codes[c] for c in b.insights.reason_code[i] if c >= 0]
        assert texts == [b.insights.texts[t] for t in b.insights.reason_text[i] if t >= 0]
        assert base == b.base_value[i]
        assert np.array(contrib, dtype=np.float32).tolist() == b.contributions[i].astype(np.float32).tolist()
        assert top == b.insights.row(i)["top_contributions"] == json.loads(json.dumps(top))
    assert rows[1][7] == [] and rows[1][8] == []  # empty text[] arrays are real empty arrays
    assert rows[1][9][0] == {"feature": "x\\y", "value": None, "shap": -3.5}  # inf -> null
    assert rows[3][9] == [{"feature": "x\\y", "value": 1e15, "shap": 7.0},
                          {"feature": "price é\"q", "value": -0.0, "shap": 1.25}]


def test_score_rows_carry_the_experiment_arm(pg_url: str) -> None:
    day = dt.date(2031, 5, 17)
    b = block()
    with psycopg.connect(libpq_url(pg_url)) as conn:
        conn.execute("create temp table t (like scoring.scores including defaults including constraints)")
        with conn.cursor() as cur, cur.copy(f"copy t ({', '.join(SCORE_COLUMNS)}) from stdin (format binary)") as cp:
            cp.write(COPY_HEADER)
            cp.write(encode_score_rows(b, day, "challenger-v2", "20310517_0123456789ab", "exp-ü1", "treatment"))
            cp.write(encode_score_rows(b, day + dt.timedelta(days=1), "champ-v1", "r", "exp-ü1", None))
            cp.write(COPY_TRAILER)
        rows = conn.execute("select score_date, model_version, experiment_id, arm, probability from t"
                            " order by score_date, product_id").fetchall()
    assert [r[1:4] for r in rows] == [("challenger-v2", "exp-ü1", "treatment")] * 4 + [("champ-v1", "exp-ü1", None)] * 4
    assert [r[4] for r in rows[:4]] == b.probability.tolist()


def test_feature_sample_rows_round_trip(pg_url: str) -> None:
    X = np.array([[1.5, np.nan, -2.0], [0.0, 3.25, 1e-3]])
    data = encode_sample_rows(dt.date(2031, 5, 17), "20310517_0123456789ab", 7, np.array([5, 6]), np.array([8, 9]), X)
    with psycopg.connect(libpq_url(pg_url)) as conn:
        conn.execute("create temp table fs (like scoring.feature_samples)")
        with conn.cursor() as cur, cur.copy("copy fs (score_date, run_id, bucket, user_id, product_id, features)"
                                            " from stdin (format binary)") as cp:
            cp.write(COPY_HEADER + data + COPY_TRAILER)
        rows = conn.execute("select bucket, user_id, product_id, features from fs order by user_id").fetchall()
    assert [r[:3] for r in rows] == [(7, 5, 8), (7, 6, 9)]
    assert rows[0][3][0] == 1.5 and math.isnan(rows[0][3][1])
    assert np.array(rows[1][3], dtype=np.float32).tolist() == np.array([0.0, 3.25, 1e-3], dtype=np.float32).tolist()
