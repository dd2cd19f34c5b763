"""GET /v1/model and the pipeline gauges on /metrics (real Postgres, real Redis): what publish put into the
version's meta comes back; 503 (not 500) when Redis is down."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from ml.api import create_app
from ml.api_auth import new_api_key
from ml.publish import publish_version
from tests.integration.test_publish import fresh_day, insert_scores, make_rows

pytestmark = pytest.mark.integration

KEY, KEY_HASH = new_api_key()
AUTH = {"Authorization": f"Bearer {KEY}"}
HOLDOUT = {"roc_auc": 0.81, "pr_auc": 0.42, "log_loss": 0.3, "brier": 0.08, "ece": 0.01, "hit_rate_at_10": 0.5,
           "n": 1000, "positives": 90}


def test_model_route_returns_published_metrics_and_gauges(engine, settings, redis_client) -> None:
    from ml.monitor import push_monitor_summary

    version = f"m-model-{uuid.uuid4().hex[:6]}"
    day = fresh_day(dt.date(2033, 1, 1))
    run = f"run-{version}"
    insert_scores(settings.postgres_url, day, make_rows(range(1, 31), per_user=4, seed=2), model_version=version,
                  run_id=run)
    with engine.begin() as c:
        c.execute(sa.text(
            "insert into ml.model_versions (version, members, params, weights, calibration, features, training_window,"
            " data_fingerprint, library_versions, metrics, artifact_uri) values (:v, '{xgboost}', '{}', '{}', '{}',"
            " '{f_a,f_b}', '{}', 'fp', '{}', cast(:m as jsonb), 'file:///x')"),
            {"v": version, "m": '{"ensemble": ' + __import__("json").dumps(HOLDOUT) + "}"})
        c.execute(sa.text(
            "insert into scoring.runs (run_id, score_date, model_version, status, finished_at, feature_names)"
            " values (:r, :d, :v, 'succeeded', now(), '{f_a,f_b}')"), {"r": run, "d": day, "v": version})
        c.execute(sa.text(
            "insert into monitoring.realized_metrics (score_date, model_version, segment, label_horizon_days, pairs,"
            " users, positives, base_rate, roc_auc, pr_auc, k, labels_signature) values"
            " (:d, :v, 'all', 7, 100, 30, 9, 0.09, 0.77, 0.35, 10, 'sig')"), {"d": day - dt.timedelta(days=8),
                                                                             "v": version})
        c.execute(sa.text(
            "insert into monitoring.alerts (alert_key, kind, severity, subject, message, model_version)"
            " values (:k, 'drift', 'critical', 'x', 'test', :v)"), {"k": f"drift:{version}", "v": version})
    s = settings.model_copy(update={"api_key_hashes": [KEY_HASH]})
    try:
        publish_version(engine, redis_client, s, day)
        push_monitor_summary(engine, redis_client, s)
        with TestClient(create_app(s)) as c:
            assert c.get("/v1/model").status_code == 401
            body = c.get("/v1/model", headers=AUTH).json()
            assert body["model_version"] == version and body["score_date"] == day.isoformat()
            assert body["holdout_metrics"] == HOLDOUT
            assert body["realized_metrics"]["pr_auc"] == 0.35
            assert body["realized_metrics"]["score_date"] == (day - dt.timedelta(days=8)).isoformat()
            # contributions are [0.5, -0.25] on every row: f_a first
            assert body["top_features"] == [{"feature": "f_a", "mean_abs_shap": 0.5},
                                            {"feature": "f_b", "mean_abs_shap": 0.25}]
            assert c.get("/v1/model?x=1", headers=AUTH).status_code == 422
            text = c.get("/metrics").text
        assert "propensity_pipeline_scrape_ok 1.0" in text
        assert f'propensity_realized_metric{{metric="pr_auc",model_version="{version}"}} 0.35' in text
        assert f'propensity_holdout_metric{{metric="pr_auc",model_version="{version}"}} 0.42' in text
        assert 'propensity_open_alerts{severity="critical"}' in text
        age = (dt.datetime.now(dt.UTC).date() - day).days
        assert f"propensity_served_score_date_age_days {float(age)}" in text
    finally:
        with engine.begin() as c:
            c.execute(sa.text("delete from monitoring.alerts where alert_key = :k"), {"k": f"drift:{version}"})
            c.execute(sa.text("delete from monitoring.realized_metrics where model_version = :v"), {"v": version})


def test_model_route_503_when_redis_is_down(settings, tmp_path) -> None:
    s = settings.model_copy(update={"redis_url": f"unix://{tmp_path / 'no-redis.sock'}", "api_key_hashes": [KEY_HASH]})
    with TestClient(create_app(s), raise_server_exceptions=False) as c:
        r = c.get("/v1/model", headers=AUTH)
        assert r.status_code == 503 and r.json() == {"detail": "score store unavailable"}
        m = c.get("/metrics")
        assert m.status_code == 200 and "propensity_pipeline_scrape_ok 0.0" in m.text
