"""The experiments DAG through Airflow's ``dag.test()`` against the session's PostgreSQL and Redis: create, start,
the daily exposure move + results, stop; a bad configuration fails apply_action with one clear line."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
import sqlalchemy as sa

from tests.integration.test_experiments import register_fake

pytestmark = [pytest.mark.airflow, pytest.mark.integration]


def _states(run) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


def test_schedule_and_params() -> None:
    from experiments import experiments_dag as dag

    assert dag.timetable.expression == "30 0 * * *"
    assert dag.params["action"] == "daily"
    assert set(dag.params) >= {"action", "experiment_id", "arms", "split", "start_date", "end_date", "reason"}


def test_lifecycle_and_daily_run_through_the_dag(airflow_db, airflow_conns, engine, redis_client,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    from experiments import experiments_dag as dag

    from ml import experiments as X
    from ml.keyspace import KeySpace

    with engine.begin() as conn:
        conn.execute(sa.text("update experiments.experiments set status = 'stopped' where status = 'running'"))
    champ, chall = register_fake(engine, "champion"), register_fake(engine)
    eid = f"dag-{uuid.uuid4().hex[:8]}"
    today = dt.datetime.now(dt.UTC).date()
    bad = dag.test(run_conf={"action": "create", "experiment_id": eid, "arms": f"control={champ},b={chall}",
                             "split": "70,20", "start_date": str(today), "end_date": str(today)})
    assert _states(bad)["apply_action"] == "failed"
    assert "split: shares must sum to 1 (or 100), got 90" in caplog.text
    run = dag.test(run_conf={"action": "create", "experiment_id": eid, "arms": f"control={champ},b={chall}",
                             "split": "50,50", "start_date": str(today), "end_date": str(today + dt.timedelta(days=6))})
    assert _states(run)["apply_action"] == "success"
    assert dag.test(run_conf={"action": "start", "experiment_id": eid}).get_task_instance("apply_action").state == "success"
    assert X.get_experiment(engine, eid).status == "running"
    ks = KeySpace(airflow_conns.redis_prefix)
    redis_client.pfadd(ks.exposure_users(eid, "b", today.strftime("%Y%m%d")), 1, 2, 3)
    daily = dag.test(run_conf={"action": "daily", "exposure_date": str(today)})
    assert set(_states(daily).values()) == {"success"}
    with engine.connect() as conn:
        exposed = conn.execute(sa.text("select arm, users from experiments.exposures where experiment_id = :e"
                                       " order by arm"), {"e": eid}).all()
        results = conn.execute(sa.text("select count(*) from bi.experiment_results where experiment_id = :e"),
                               {"e": eid}).scalar()
    assert [tuple(r) for r in exposed] == [("b", 3), ("control", 0)]
    assert results == 2
    stop = dag.test(run_conf={"action": "stop", "experiment_id": eid, "reason": "done"})
    assert _states(stop)["apply_action"] == "success"
    assert X.get_experiment(engine, eid).status == "stopped"
