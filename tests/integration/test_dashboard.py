"""The Airflow UI page: data from real Postgres, rendered through the plugin's FastAPI app."""

from __future__ import annotations

import json
import uuid

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

pytestmark = pytest.mark.integration


@pytest.fixture
def seeded(engine: sa.Engine):
    run_id = f"dash-{uuid.uuid4().hex[:8]}"
    fname = f"events_bad_{uuid.uuid4().hex[:6]}.csv"
    with engine.begin() as c:
        c.execute(
            sa.text(
                "insert into scoring.runs (run_id, score_date, model_version, status, planned_pairs, scored_pairs,"
                " buckets, timings, finished_at) values (:r, date '2031-01-02', 'v-dash', 'succeeded', 1200, 1200, 4,"
                " cast(:t as jsonb), now())"
            ),
            {"r": run_id, "t": json.dumps({"features": 1.5, "score": 2.25})},
        )
        c.execute(
            sa.text(
                "insert into quality.validation_runs (suite_name, file_name, file_uri, success, row_count, failed_rules,"
                " quarantine_uri) values ('rees46_events', :f, :f, false, 10, array['price_non_negative'], '/q/x')"
            ),
            {"f": fname},
        )
    yield run_id, fname
    with engine.begin() as c:
        c.execute(sa.text("delete from scoring.runs where run_id = :r"), {"r": run_id})
        c.execute(sa.text("delete from quality.validation_runs where file_name = :f"), {"f": fname})


def test_collect_and_render(engine: sa.Engine, seeded) -> None:
    from ml.dashboard import collect_dashboard, render_dashboard

    run_id, fname = seeded
    data = collect_dashboard(engine)
    assert any(r["run_id"] == run_id and r["scored_pairs"] == 1200 for r in data.sections["score_runs"])
    assert any(f["file_name"] == fname for f in data.sections["failures"])
    page = render_dashboard(data)
    assert run_id in page and fname in page and "price_non_negative" in page
    assert "features 1.5" in page and "score 2.2" in page  # per-stage timings are shown


def test_plugin_page_and_file_guard(settings, seeded, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    import propensity_ui

    monkeypatch.setenv(
        "AIRFLOW_CONN_PROPENSITY_POSTGRES", json.dumps({"conn_type": "postgres", "extra": {"url": settings.postgres_url}})
    )
    reports = tmp_path / "reports"
    (reports / "models").mkdir(parents=True)
    (reports / "models" / "v1.html").write_text("<html>report v1</html>")
    monkeypatch.setenv("PROPENSITY_REPORTS_URL", str(reports))
    # content only: the Airflow login the page requires is tested in test_plugin_auth.py (real api-server app)
    monkeypatch.setitem(propensity_ui.app.dependency_overrides, propensity_ui.require_user, lambda: None)
    client = TestClient(propensity_ui.app)
    r = client.get("/")
    assert r.status_code == 200 and seeded[0] in r.text and "Model leaderboard" in r.text
    ok = client.get("/files", params={"path": str(reports / "models" / "v1.html")})
    assert ok.status_code == 200 and "report v1" in ok.text
    outside = client.get("/files", params={"path": "/etc/passwd"})
    assert outside.status_code == 404
    traversal = client.get("/files", params={"path": str(reports / ".." / ".." / "etc" / "passwd")})
    assert traversal.status_code == 404
    assert propensity_ui.PropensityPlugin.external_views[0]["href"] == "propensity/"
