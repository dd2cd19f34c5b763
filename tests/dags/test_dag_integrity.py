"""Every DAG in dags/ imports cleanly and carries what an operator needs in the Airflow UI."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.airflow

DAGS_DIR = Path(__file__).resolve().parents[2] / "dags"
EXPECTED = {"ingest_events", "train_ensemble", "score_active_pairs", "monitor_outcomes", "experiments"}


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS_DIR))


def test_no_import_errors(dagbag) -> None:
    assert dagbag.import_errors == {}


def test_expected_dags_present(dagbag) -> None:
    assert EXPECTED <= set(dagbag.dag_ids)


@pytest.mark.parametrize("dag_id", sorted(EXPECTED))
def test_dag_is_documented_and_operable(dagbag, dag_id: str) -> None:
    dag = dagbag.dags[dag_id]
    assert dag is not None
    assert dag.doc_md and len(dag.doc_md) > 200, "doc_md explains the DAG in the UI"
    assert "propensity" in dag.tags
    assert not dag.catchup
    assert dag.start_date is not None and dag.start_date.tzinfo is not None
    for task in dag.tasks:
        assert task.retries >= 1, f"{dag_id}.{task.task_id} has no retries"
        assert task.owner == "data-eng", f"{dag_id}.{task.task_id} owner"
        assert task.on_failure_callback, f"{dag_id}.{task.task_id} has no failure callback"
    for name, param in dag.params.items():
        assert param.description, f"{dag_id} param {name!r} has no description"


def test_scoring_fan_out_param_is_bounded(dagbag) -> None:
    """Mapped scoring batches must stay well under Airflow's max_map_length (1024)."""
    schema = dagbag.dags["score_active_pairs"].params.get_param("buckets").schema
    assert 1 <= schema.get("minimum", 0) and schema.get("maximum", 10**9) <= 512


def test_parse_does_not_touch_services(monkeypatch: pytest.MonkeyPatch) -> None:
    """DAG files must not open connections at parse time: parsing with unreachable service URLs still works."""
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("PROPENSITY_POSTGRES_URL", "postgresql://nobody@127.0.0.1:1/none")
    monkeypatch.setenv("PROPENSITY_REDIS_URL", "redis://127.0.0.1:1/0")
    bag = DagBag(dag_folder=str(DAGS_DIR))
    assert bag.import_errors == {}
    assert EXPECTED <= set(bag.dag_ids)
