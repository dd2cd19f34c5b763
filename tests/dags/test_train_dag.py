"""The train_ensemble DAG through Airflow's ``dag.test()``: generated events in PostgreSQL, Great Expectations-checked
snapshots, real Optuna studies, artifacts, registry, gate and report; then the manual promote and rollback paths of
the same DAG and the CLI. The database of generated events is shared with tests/integration/test_train.py (one per
session), so
the registry may already hold versions: assertions are about what each run adds or changes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

pytestmark = [pytest.mark.airflow, pytest.mark.integration]


def test_schedule_params_and_shape() -> None:
    from train_ensemble import train_ensemble_dag as dag

    assert dag.timetable.expression == "0 2 * * 0" and "UTC" in str(dag.timetable.timezone)
    assert set(dag.params) >= {"n_trials", "timeout", "as_of", "members", "force_promote", "action", "version"}
    assert dag.max_active_runs == 1
    emits = {t.task_id for t in dag.tasks if any(getattr(o, "name", None) == "model" for o in t.outlets)}
    assert emits == {"evaluate_and_register", "manage_registry"}
    assert dag.get_task("tune_member").downstream_task_ids == {"evaluate_and_register"}


@pytest.fixture
def dag_db(request: pytest.FixtureRequest, server_pg_url: str, airflow_conns,
           monkeypatch: pytest.MonkeyPatch) -> str:
    """The session's database of generated events, exposed to the DAG's tasks as the propensity_postgres connection."""
    from tests.integration.test_train import generated_database

    url = generated_database(request, server_pg_url)
    monkeypatch.setenv("AIRFLOW_CONN_PROPENSITY_POSTGRES", json.dumps({"conn_type": "postgres", "extra": {"url": url}}))
    monkeypatch.setenv("PROPENSITY_TRAIN_THREADS", "1")
    monkeypatch.setenv("PROPENSITY_REPORT_SHAP_ROWS", "100")
    return url


def _states(run) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for ti in run.get_task_instances():
        out.setdefault(ti.task_id, []).append(str(ti.state))
    return out


def _champion(c: sa.Connection) -> str | None:
    return c.execute(sa.text("select version from ml.model_versions where status = 'champion'")).scalar()


def test_weekly_run_trains_registers_reports_then_manual_actions(airflow_db, dag_db: str, airflow_conns,
                                                                 caplog: pytest.LogCaptureFixture,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from train_ensemble import train_ensemble_dag as dag

    from ml.db import make_engine

    engine = make_engine(dag_db)
    try:
        with engine.connect() as c:
            before = set(c.execute(sa.text("select version from ml.model_versions")).scalars())
            champion_before = _champion(c)
        run = dag.test(run_conf={"n_trials": 1, "timeout": 60, "members": ["lightgbm", "xgboost"]})
        states = _states(run)
        assert run.state == "success", states
        assert states["tune_member"] == ["success", "success"] and states["manage_registry"] == ["skipped"]

        with engine.connect() as c:
            row = c.execute(sa.text("select * from ml.model_versions where not (version = any(:b))"),
                            {"b": list(before)}).mappings().one()
            assert sorted(row["members"]) == ["lightgbm", "xgboost"] and row["dag_run_id"] == run.run_id
            assert row["status"] == "champion" if champion_before is None else row["status"] in ("champion", "rejected")
            assert Path(row["report_uri"]).exists() and (Path(row["artifact_uri"]) / "manifest.json").exists()
            d = c.execute(sa.text("select * from ml.gate_decisions where version = :v"),
                          {"v": row["version"]}).mappings().one()
            assert d["champion_version"] == champion_before and not d["manual"]
            studies = set(c.execute(sa.text("select study_name from experiments.studies")).scalars())
            assert {"lightgbm", "xgboost"} <= {s.split("-")[1] for s in studies}
            snapshots = c.execute(sa.text("select count(*) from ml.feature_snapshots")).scalar()
            assert snapshots >= 3  # the DAG's snapshots went through the checked, recorded path
        assert any("MODEL REPORT" in r.getMessage() for r in caplog.records)
        first = row["version"]

        # a second version (trained in-process on the run's saved training data), promoted through the DAG's params
        from ml.settings import Settings
        from ml.train import register_result, train_prepared
        from ml.training_data import load_training_data, split_training_data

        s = Settings(postgres_url=dag_db, state_dir=airflow_conns.state_dir, train_threads=1)
        prepared = split_training_data(load_training_data(row["training_window"]["data_uri"]), s)
        second = register_result(engine, s, train_prepared(prepared, s, n_trials=0, members=["lightgbm"]),
                                 prepared).version
        with engine.connect() as c:
            champion_before_promote = _champion(c)
        if champion_before_promote == second:  # the gate promoted it already: promote the first one instead
            second, first = first, second
        run2 = dag.test(run_conf={"action": "promote", "version": second})
        assert run2.state == "success", _states(run2)
        with engine.connect() as c:
            assert _champion(c) == second
            d = c.execute(sa.text("select manual, reason, champion_version from ml.gate_decisions where version = :v "
                                  "order by decision_id desc limit 1"), {"v": second}).mappings().one()
        assert d["manual"] and d["reason"].startswith("manual") and d["champion_version"] == champion_before_promote

        # rollback through the CLI (the same ml.registry function): the previous champion is back
        from typer.testing import CliRunner

        from ml.cli import app

        monkeypatch.setenv("PROPENSITY_POSTGRES_URL", dag_db)
        cli = CliRunner()
        out = cli.invoke(app, ["promote", "--previous", "--reason", "pytest"])
        assert out.exit_code == 0, out.output
        with engine.connect() as c:
            assert _champion(c) == champion_before_promote
            assert c.execute(sa.text("select status from ml.model_versions where version = :v"),
                             {"v": second}).scalar() == "rolled_back"
        listing = cli.invoke(app, ["models", "--limit", "50"])
        assert listing.exit_code == 0 and first in listing.output and "rolled_back" in listing.output
    finally:
        engine.dispose()
