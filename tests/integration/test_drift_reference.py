"""Drift against the training reference on real Postgres: PSI near 0 on the training distribution, over the alert
threshold on a shifted one, with an alert row and a notifier call; null rates and alert de-duplication."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

pytestmark = pytest.mark.integration

FEATURES = ["views_7d", "price_mean", "cart_share"]


def reference_frame(rng: np.random.Generator, n: int) -> pd.DataFrame:
    return pd.DataFrame({
        "views_7d": rng.poisson(3.0, n).astype(float),
        "price_mean": rng.lognormal(3.0, 0.6, n),
        "cart_share": np.where(rng.uniform(size=n) < 0.1, np.nan, rng.beta(2, 5, n)),
    })


def add_score_date(engine: sa.Engine, day: dt.date, version: str, X: pd.DataFrame, probs: np.ndarray) -> None:
    run = f"drift-{day}"
    with engine.begin() as c:
        c.execute(sa.text(
            f"create table if not exists scoring.scores_p{day:%Y%m%d} partition of scoring.scores "
            f"for values from ('{day}') to ('{day + dt.timedelta(days=1)}')"))
        c.execute(sa.text(
            "insert into scoring.runs (run_id, score_date, model_version, status, finished_at, feature_names)"
            " values (:r, :d, :v, 'succeeded', now(), :f)"), {"r": run, "d": day, "v": version, "f": FEATURES})
        c.execute(sa.text(
            "insert into scoring.scores (score_date, user_id, product_id, probability, model_version, run_id, tier,"
            " top_contributions, base_value, contributions) values (:d, :u, :p, :prob, :v, :r, 'cold', '[]', 0, '{0}')"),
            [{"d": day, "u": i + 1, "p": 7, "prob": float(p), "v": version, "r": run} for i, p in enumerate(probs)])
        c.execute(sa.text(
            "insert into scoring.feature_samples (score_date, run_id, bucket, user_id, product_id, features)"
            " values (:d, :r, 0, :u, 7, :x)"),
            [{"d": day, "r": run, "u": i + 1, "x": [float(v) for v in row]}
             for i, row in enumerate(X[FEATURES].to_numpy())])


def cleanup(engine: sa.Engine, days: list[dt.date], version: str) -> None:
    with engine.begin() as c:
        for day in days:
            c.execute(sa.text(f"drop table if exists scoring.scores_p{day:%Y%m%d}"))
            c.execute(sa.text("delete from scoring.feature_samples where score_date = :d"), {"d": day})
            c.execute(sa.text("delete from scoring.runs where score_date = :d"), {"d": day})
            c.execute(sa.text("delete from monitoring.metrics where metric_date = :d"), {"d": day})
        c.execute(sa.text("delete from monitoring.reference_distributions where model_version = :v"), {"v": version})
        c.execute(sa.text("delete from monitoring.alerts where model_version = :v"), {"v": version})


def test_psi_vs_reference_near_zero_then_alerts_on_shift(engine: sa.Engine, settings) -> None:
    from ml import alerts
    from ml.drift import record_reference, record_reference_drift

    rng = np.random.default_rng(3)
    version = "drift-test-v1"
    ref = reference_frame(rng, 4000)
    ref_p = rng.beta(1, 8, 4000)
    same_day, shifted_day = dt.date(2043, 1, 5), dt.date(2043, 1, 6)
    calls: list[str] = []
    alerts.NOTIFIERS["test"] = lambda alert, s: calls.append(alert.key) or True
    settings = settings.model_copy(update={"alert_notifiers": ["log", "test"]})
    try:
        refs = record_reference(engine, settings, version, ref, FEATURES, ref_p)
        assert {r.name for r in refs} == {*FEATURES, "probability"}
        assert next(r for r in refs if r.name == "cart_share").null_rate == pytest.approx(ref.cart_share.isna().mean())

        add_score_date(engine, same_day, version, reference_frame(rng, 3000), rng.beta(1, 8, 3000))
        same = {(m.kind, m.name): m.value for m in record_reference_drift(engine, settings, same_day)}
        for name in FEATURES:
            assert same[("ref_feature_psi", name)] < 0.02, name
        assert same[("ref_score_psi", "probability")] < 0.02
        assert same[("ref_null_rate", "cart_share")] == pytest.approx(0.1, abs=0.03)
        assert calls == []

        drifted = reference_frame(rng, 3000)
        drifted["price_mean"] *= 2.0  # a price level shift, as the generator's drift knob does
        drifted["cart_share"] = np.where(rng.uniform(size=3000) < 0.5, np.nan, drifted["cart_share"])
        add_score_date(engine, shifted_day, version, drifted, rng.beta(1, 8, 3000))
        got = {(m.kind, m.name): m.value for m in record_reference_drift(engine, settings, shifted_day)}
        assert got[("ref_feature_psi", "price_mean")] > settings.psi_alert
        assert got[("ref_feature_psi", "views_7d")] < settings.psi_warn
        assert "drift:ref_feature_psi:price_mean" in calls and "drift:ref_null_rate:cart_share" in calls
        with engine.connect() as c:
            rows = c.execute(sa.text(
                "select subject, severity, status, occurrences from monitoring.alerts where model_version = :v"
                " and kind = 'drift' order by subject"), {"v": version}).all()
            view = c.execute(sa.text(
                "select count(*) from bi.drift_vs_reference where metric_date = :d"), {"d": shifted_day}).scalar_one()
        assert ("ref_feature_psi:price_mean", "critical", "open", 1) in [tuple(r) for r in rows]
        assert view == 2 * len(FEATURES) + 1  # psi + null rate per feature, score psi (no holdout_as_of: no unseen)

        # the same condition the next night: the open row is bumped, not duplicated, and not re-notified
        n_calls = len(calls)
        record_reference_drift(engine, settings, shifted_day)
        assert len(calls) == n_calls
        with engine.connect() as c:
            occ = c.execute(sa.text(
                "select count(*), max(occurrences) from monitoring.alerts where alert_key ="
                " 'drift:ref_feature_psi:price_mean' and status = 'open'")).one()
        assert tuple(occ) == (1, 2)

        # back to normal: the drift alerts resolve
        record_reference_drift(engine, settings, same_day)
        assert all(a["kind"] != "drift" or a["model_version"] != version for a in alerts.open_alerts(engine))
    finally:
        alerts.NOTIFIERS.pop("test", None)
        cleanup(engine, [same_day, shifted_day], version)


def test_stale_served_score_date_alerts_and_resolves(engine: sa.Engine, settings) -> None:
    from ml.alerts import check_stale_served, open_alerts

    today = dt.date(2044, 5, 10)
    try:
        a = check_stale_served(engine, settings, today - dt.timedelta(days=5), today)
        assert a is not None and a.kind == "stale_scores" and a.value == 5
        assert any(r["kind"] == "stale_scores" for r in open_alerts(engine))
        assert check_stale_served(engine, settings, today - dt.timedelta(days=1), today) is None
        assert not any(r["kind"] == "stale_scores" for r in open_alerts(engine))
    finally:
        with engine.begin() as c:
            c.execute(sa.text("delete from monitoring.alerts where kind = 'stale_scores'"))
