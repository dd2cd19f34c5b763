"""The train_ensemble DAG through Airflow's ``dag.test()``: generated events in a private PostgreSQL database, real
Optuna studies, artifacts, registry and gate; then the manual promote/rollback path of the same DAG."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

pytestmark = [pytest.mark.airflow, pytest.mark.integration]


def test_schedule_params_and_shape() -> None:
    from train_ensemble import train_ensemble_dag as dag

    assert dag.timetable.expression == "0 2 * * 0" and str(dag.timetable.timezone) in ("UTC", "Timezone('UTC')")
    assert set(dag.params) >= {"n_trials", "timeout", "as_of", "members", "force_promote", "action", "version"}
    assert dag.max_active_runs == 1
    emits = {t.task_id for t in dag.tasks if any(getattr(o, "name", None) == "model" for o in t.outlets)}
    assert emits == {"evaluate_and_register", "manage_registry"}
    assert dag.get_task("tune_member").downstream_task_ids == {"evaluate_and_register"}


@pytest.fixture
def dag_db(server_pg_url: str, airflow_conns, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A private database with generated events, exposed to the DAG's tasks as the propensity_postgres connection."""
    from tests.integration.test_train import create_database, drop_database, load_generated_events

    url = create_database(server_pg_url, "traindag")
    load_generated_events(url, n_users=400, n_products=300, seed=5)
    monkeypatch.setenv("AIRFLOW_CONN_PROPENSITY_POSTGRES", json.dumps({"conn_type": "postgres", "extra": {"url": url}}))
    monkeypatch.setenv("PROPENSITY_TRAIN_THREADS", "1")
    monkeypatch.setenv("PROPENSITY_REPORT_SHAP_ROWS", "100")
    yield url
    drop_database(server_pg_url, url)


def _states(run) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for ti in run.get_task_instances():
        out.setdefault(ti.task_id, []).append(str(ti.state))
    return out


def test_weekly_run_trains_registers_reports_then_manual_actions(airflow_db, dag_db: str, airflow_conns,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    from train_ensemble import train_ensemble_dag as dag

    from ml.db import make_engine

    run = dag.test(run_conf={"n_trials": 1, "timeout": 60, "members": ["lightgbm", "xgboost"]})
    states = _states(run)
    assert run.state == "success", states
    assert states["tune_member"] == ["success", "success"] and states["manage_registry"] == ["skipped"]

    engine = make_engine(dag_db)
    try:
        with engine.connect() as c:
            row = c.execute(sa.text("select * from ml.model_versions")).mappings().one()
            assert row["status"] == "champion" and sorted(row["members"]) == ["lightgbm", "xgboost"]
            assert row["dag_run_id"] == run.run_id
            assert Path(row["report_uri"]).exists() and (Path(row["artifact_uri"]) / "manifest.json").exists()
            studies = set(c.execute(sa.text("select study_name from experiments.studies")).scalars())
            assert {s.split("-")[1] for s in studies} == {"lightgbm", "xgboost"}
            events = c.execute(sa.text("select count(*) from ml.gate_decisions")).scalar()
            assert events == 1
        assert any("MODEL REPORT" in r.getMessage() for r in caplog.records)
        first = row["version"]

        # a second version (trained in-process on the run's saved training data), promoted through the DAG's params
        from ml.settings import Settings
        from ml.train import load_training_data, register_result, split_training_data, train_prepared

        s = Settings(postgres_url=dag_db, state_dir=airflow_conns.state_dir, train_threads=1)
        prepared = split_training_data(load_training_data(row["training_window"]["data_uri"]), s)
        reg = register_result(engine, s, train_prepared(prepared, s, n_trials=0, members=["lightgbm"]), prepared)
        second = reg.version
        run2 = dag.test(run_conf={"action": "promote", "version": second})
        assert run2.state == "success", _states(run2)
        with engine.connect() as c:
            assert c.execute(sa.text("select version from ml.model_versions where status = 'champion'")).scalar() \
                == second
            d = c.execute(sa.text("select manual, reason, champion_version from ml.gate_decisions "
                                  "where version = :v order by decision_id desc limit 1"), {"v": second}).mappings().one()
        assert d["manual"] and d["reason"].startswith("manual") and d["champion_version"] == first

        # manual rollback through the DAG's params: training is skipped, the first version is champion again
        run3 = dag.test(run_conf={"action": "rollback"})
        states = _states(run3)
        assert run3.state == "success" and states["manage_registry"] == ["success"]
        assert states["build_snapshots"] == ["skipped"]
        with engine.connect() as c:
            assert c.execute(sa.text("select version from ml.model_versions where status = 'champion'")).scalar() \
                == first
            assert c.execute(sa.text("select status from ml.model_versions where version = :v"),
                             {"v": second}).scalar() == "rolled_back"
    finally:
        engine.dispose()
