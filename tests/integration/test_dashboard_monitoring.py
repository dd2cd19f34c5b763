"""The Propensity UI page shows realized vs expected (with a plot), drift against the training reference and the
open alerts, from real Postgres through the plugin's FastAPI app."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

pytestmark = pytest.mark.integration


@pytest.fixture
def monitored(engine: sa.Engine):
    version = f"v-ui-{uuid.uuid4().hex[:6]}"
    days = [dt.date(2039, 4, 1), dt.date(2039, 4, 2)]
    with engine.begin() as c:
        c.execute(sa.text(
            "insert into ml.model_versions (version, members, params, weights, calibration, features, training_window,"
            " data_fingerprint, library_versions, metrics, artifact_uri) values (:v, '{xgboost}', '{}', '{}', '{}',"
            " '{f}', '{}', 'fp', '{}', cast(:m as jsonb), 'file:///x')"),
            {"v": version, "m": json.dumps({"ensemble": {"pr_auc": 0.4321, "roc_auc": 0.8765}})})
        for i, d in enumerate(days):
            c.execute(sa.text(
                "insert into monitoring.realized_metrics (score_date, model_version, segment, label_horizon_days,"
                " pairs, users, positives, base_rate, roc_auc, pr_auc, k, labels_signature) values"
                " (:d, :v, 'all', 7, 1000, 100, 50, 0.05, 0.8, :pr, 10, 's')"), {"d": d, "v": version, "pr": 0.31 + i / 100})
        c.execute(sa.text(  # an experiment arm's row of the second date (migration 0200)
            "insert into monitoring.realized_metrics (score_date, model_version, segment, arm, experiment_id,"
            " label_horizon_days, pairs, users, positives, base_rate, roc_auc, pr_auc, k, labels_signature) values"
            " (:d, :v, 'all', 'ui-arm-b', 'ui-exp', 7, 400, 40, 20, 0.05, 0.8, 0.2718, 10, 's')"),
            {"d": days[1], "v": version})
        c.execute(sa.text(
            "insert into monitoring.metrics (metric_date, kind, name, value, model_version)"
            " values ('2039-04-02', 'ref_feature_psi', 'ui_feature_x', 0.3141, :v)"), {"v": version})
        c.execute(sa.text(
            "insert into monitoring.reference_distributions (model_version, kind, name, edges, counts, rows, null_rate)"
            " values (:v, 'feature', 'ui_feature_x', '{1}', '{1,1,0}', 2, 0)"), {"v": version})
        c.execute(sa.text(
            "insert into monitoring.alerts (alert_key, kind, severity, subject, message, model_version) values"
            " (:k, 'drift', 'critical', 'ref_feature_psi:ui_feature_x', 'PSI of ui_feature_x is 0.314', :v)"),
            {"k": f"drift:{version}", "v": version})
    yield version
    with engine.begin() as c:
        c.execute(sa.text("delete from monitoring.realized_metrics where model_version = :v"), {"v": version})
        c.execute(sa.text("delete from monitoring.metrics where model_version = :v"), {"v": version})
        c.execute(sa.text("delete from monitoring.reference_distributions where model_version = :v"), {"v": version})
        c.execute(sa.text("delete from monitoring.alerts where model_version = :v"), {"v": version})
        c.execute(sa.text("delete from ml.model_versions where version = :v"), {"v": version})


def test_page_shows_realized_vs_expected_drift_and_alerts(settings, monitored, monkeypatch) -> None:
    import propensity_ui

    monkeypatch.setenv(
        "AIRFLOW_CONN_PROPENSITY_POSTGRES", json.dumps({"conn_type": "postgres", "extra": {"url": settings.postgres_url}})
    )
    # the page's content here; its login requirement is tests/integration/test_plugin_auth.py's
    monkeypatch.setitem(propensity_ui.app.dependency_overrides, propensity_ui.require_user, lambda: None)
    page = TestClient(propensity_ui.app).get("/")
    assert page.status_code == 200
    text = page.text
    assert "Realized vs expected performance" in text and monitored in text
    assert "0.3200" in text and "0.4321" in text  # realized and expected PR-AUC side by side
    assert "ui-arm-b" in text and "0.2718" in text  # the experiment arm's own row
    assert 'alt="realized vs expected PR-AUC and ROC-AUC"' in text  # the plot
    assert "Drift against the training reference" in text and "ui_feature_x" in text and "0.3141" in text
    assert 'alt="largest PSI against the training reference"' in text  # the PSI bar chart
    assert "Open alerts" in text and "PSI of ui_feature_x is 0.314" in text
