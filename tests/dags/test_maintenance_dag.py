"""The maintenance DAG through Airflow's ``dag.test()`` on the session database (dry run: nothing is dropped)."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.airflow, pytest.mark.integration]


def test_maintenance_dry_run_reports_and_changes_nothing(airflow_db, airflow_conns, engine) -> None:  # noqa: ANN001
    import sqlalchemy as sa
    from maintenance import maintenance_dag as dag

    def parts() -> int:
        with engine.connect() as conn:
            return conn.execute(sa.text(
                "select count(*) from pg_inherits where inhparent in "
                "('scoring.scores'::regclass, 'raw.events'::regclass)")).scalar_one()

    before = parts()
    run = dag.test(run_conf={"dry_run": True, "scores_days": 0, "events_days": 0})
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    assert run.state == "success", states
    assert states == {"fingerprints": "success", "retention": "success", "footprint": "success"}
    assert parts() == before


def test_maintenance_dag_is_weekly_with_params() -> None:
    from maintenance import maintenance_dag as dag

    assert "maintenance" in dag.tags and dag.doc_md and dag.max_active_runs == 1
    assert set(dag.params) == {"dry_run", "scores_days", "events_days", "keep_archived_models"}
    assert dag.default_args["retries"] >= 1
