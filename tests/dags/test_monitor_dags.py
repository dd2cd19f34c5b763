"""Issue 13 through Airflow's dag.test() on a real pipeline world (events + a trained champion, real Postgres and
Redis): the freshness gate shuts scoring with the missing day named and the override scores anyway; the
monitor_outcomes DAG records realized metrics next to the expected ones."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from tests.dags.test_score_dag import _task_states, dag_env  # noqa: F401 - fixtures
from tests.integration.test_score import World, build_world, drop_world

pytestmark = [pytest.mark.airflow, pytest.mark.integration]


@pytest.fixture(scope="module")
def world(server_pg_url: str, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> World:
    w = build_world(server_pg_url, tmp_path_factory.mktemp("monitor_world"))
    request.addfinalizer(drop_world)
    return w


def test_freshness_gate_then_override_then_realized_metrics(dag_env, world: World, redis_client) -> None:  # noqa: ANN001, F811
    from monitor_outcomes import monitor_outcomes_dag
    from score_active_pairs import score_active_pairs_dag as score

    from ml.db import make_engine

    engine = make_engine(world.url)
    try:
        # the world's events end on 2019-11-11: scoring 2019-11-20 needs 2019-11-19, which never landed
        shut = score.test(run_conf={"score_date": "2019-11-20", "buckets": 1, "rollback_redis": False,
                                    "skip_freshness_check": False, "model_version": None})
        states = _task_states(shut)
        assert shut.state == "failed" and states["freshness_gate"] != ["success"], states
        assert states["plan"] != ["success"]
        with engine.connect() as c:
            alert = c.execute(sa.text("select message, metric_date from monitoring.alerts where kind = 'freshness'"
                                      " and status = 'open'")).one()
            assert c.execute(sa.text("select count(*) from scoring.runs where score_date = '2019-11-20'")).scalar_one() == 0
        assert "2019-11-19" in alert.message and str(alert.metric_date) == "2019-11-19"

        forced = score.test(run_conf={"score_date": "2019-11-20", "buckets": 1, "rollback_redis": False,
                                      "skip_freshness_check": True, "model_version": None})
        assert forced.state == "success", _task_states(forced)

        # a matured date (2019-11-04 + 7 days <= the newest event): scored (the gate is open), then evaluated
        # it is older than the served 2019-11-20: published on purpose (issue 15: a backfill alone never serves it),
        # so that its 'published' segment (what the storefront saw) is evaluated too
        run = score.test(run_conf={"score_date": "2019-11-04", "buckets": 1, "rollback_redis": False,
                                   "skip_freshness_check": False, "model_version": None,
                                   "publish": "always", "allow_older": True})
        assert run.state == "success", _task_states(run)
        with engine.connect() as c:
            ref = c.execute(sa.text("select count(*) from monitoring.metrics where metric_date = '2019-11-04'"
                                    " and kind = 'ref_feature_psi'")).scalar_one()
        assert ref == len(world.features)

        mon = monitor_outcomes_dag.test(run_conf={"score_dates": None, "force": False})
        assert mon.state == "success", _task_states(mon)
        with engine.connect() as c:
            perf = c.execute(sa.text("select * from bi.model_performance where score_date = '2019-11-04'"
                                     " order by segment")).mappings().all()
            again_before = c.execute(sa.text("select max(evaluated_at) from monitoring.realized_metrics")).scalar_one()
        assert [p["segment"] for p in perf] == ["all", "published"]
        assert perf[0]["model_version"] == world.version and perf[0]["expected_pr_auc"] is not None
        assert perf[0]["pairs"] > 0 and perf[0]["realized_roc_auc"] is not None

        # nothing changed: the second run evaluates nothing and duplicates nothing
        again = monitor_outcomes_dag.test(run_conf={"score_dates": None, "force": False})
        assert again.state == "success"
        with engine.connect() as c:
            n, last = c.execute(sa.text("select count(*), max(evaluated_at) from monitoring.realized_metrics"
                                        " where score_date = '2019-11-04'")).one()
        assert n == 2 and last == again_before

        from ml.dev.demo import monitor_lines

        lines = monitor_lines(engine, dt.date(2019, 11, 4))  # the demo's summary lines
        assert len(lines) == 2 and "expected" in lines[0] and "roc_auc" in lines[0]

        check_grafana_panels(engine)
    finally:
        engine.dispose()


# the columns each Postgres panel must return (dashboard uid, panel title) -> columns
PANEL_COLUMNS = {
    "Freshness": ["hours_since_newest_event", "newest_score_date", "served_score_date", "open_alerts"],
    "Scoring run wall time (s)": ["time", "wall_seconds"],
    "Pairs scored per score date": ["time", "scored_pairs"],
    "Events loaded per day": ["time", "events"],
    "Latest scoring runs": ["run_id", "score_date", "model_version", "status", "scored_pairs", "wall_seconds",
                            "pairs_per_second", "started_at"],
    "Open alerts": ["raised_at", "severity", "kind", "subject", "message", "occurrences", "last_seen_at"],
    "PR-AUC: expected vs realized (all pairs)": ["time", "realized_pr_auc", "expected_pr_auc"],
    "ROC-AUC: expected vs realized (all pairs)": ["time", "realized_roc_auc", "expected_roc_auc"],
    "Published pairs: precision@k and hit-rate@k": ["time", "precision_at_k", "realized_hit_rate_at_k"],
    "Calibration error and log loss: expected vs realized": ["time", "realized_ece", "expected_ece",
                                                             "realized_log_loss", "expected_log_loss"],
    "Reliability curve, newest evaluated date": ["bin", "lower_bound", "upper_bound", "pairs", "mean_probability",
                                                 "observed_rate"],
    "Tier conversion, newest evaluated date": ["tier", "pairs", "positives", "expected_conversion",
                                               "realized_conversion", "lift"],
    "Realized metrics per score date, model version and experiment arm": [
        "score_date", "model_version", "arm", "segment", "pairs", "positives", "base_rate", "realized_roc_auc",
        "expected_roc_auc", "realized_pr_auc", "expected_pr_auc", "realized_brier", "expected_brier"],
    "Feature PSI vs reference": ["time", "metric", "value"],
    "Score PSI vs reference": ["time", "score_psi"],
    "Share of pairs unseen at training": ["time", "unseen_share"],
    "Null rate per feature": ["time", "metric", "value"],
    "Largest PSI, newest night": ["name", "psi", "model_version"],
}


def check_grafana_panels(engine: sa.Engine) -> None:
    """Every Postgres panel's SQL, as the read-only BI role, returns rows with the expected columns. Grafana's
    $__timeFilter(x) macro becomes a filter that keeps every row (the world's dates are in 2019)."""
    import json
    import re
    from pathlib import Path

    seen = set()
    for path in sorted((Path(__file__).resolve().parents[2] / "docker/grafana/dashboards").glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            if panel["datasource"]["uid"] != "propensity-pg":
                continue
            for target in panel["targets"]:
                macro = r"\$__timeFilter\(([^()]*(?:\([^()]*\))?[^()]*)\)"
                sql = re.sub(macro, r"(\1) is not null", target["rawSql"])
                assert "$__" not in sql, sql
                with engine.connect() as c:
                    c.execute(sa.text("set role propensity_bi"))  # least privilege: bi.* only
                    result = c.execute(sa.text(sql))
                    cols, rows = list(result.keys()), result.all()
                    c.execute(sa.text("reset role"))
                assert rows, f"{path.name}: panel {panel['title']!r} returned no row"
                assert cols == PANEL_COLUMNS[panel["title"]], (panel["title"], cols)
                seen.add(panel["title"])
    assert seen == set(PANEL_COLUMNS)
