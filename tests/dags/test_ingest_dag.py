"""The ingest_events DAG end to end through Airflow's ``dag.test()``: real Postgres, real files, real GX."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

pytestmark = [pytest.mark.airflow, pytest.mark.integration]


def _head(src: Path, dst: Path, rows: int) -> Path:
    """The header and the first ``rows`` data lines of ``src`` (bytes unchanged): a distinct, real file."""
    lines = src.read_bytes().split(b"\n")
    dst.write_bytes(b"\n".join(lines[: rows + 1]) + b"\n")
    return dst


@pytest.fixture
def landing(airflow_conns, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PROPENSITY_ROW_COUNT_MIN_HISTORY", "1000")  # the session DB's history is other tests'
    monkeypatch.setenv("PROPENSITY_DATA_DOCS_ENABLED", "false")  # covered by tests/integration/test_ingest.py
    path = Path(airflow_conns.location("landing"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _states(run) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for ti in run.get_task_instances():
        out.setdefault(ti.task_id, []).append(str(ti.state))
    return out


def test_good_file_loads_bad_file_quarantined_run_fails(
    airflow_db, landing: Path, airflow_conns, engine, rees46_sample: Path
) -> None:
    from ingest_events import ingest_events_dag as dag

    from ml.dev.generate import corrupt_file

    good = _head(rees46_sample, landing / "events_2019-10-01_a.csv", 3000)
    corrupt_file(good, landing / "events_2019-10-01_bad.csv", "unknown_event_type", seed=3)
    _head(rees46_sample, landing / "events_2019-10-01_c.csv", 2000)
    run = dag.test()
    states = _states(run)
    assert run.state == "failed", states
    # the three small files are one group: one task, the bad file quarantined alone, the others loaded
    assert states["validate_and_load"] == ["success"]
    assert states["emit_events"] == ["success"]
    assert states["summarize"] == ["failed"]
    events = _asset_events(run.run_id)
    assert [(e["source_task_id"], e["extra"]["rows"], e["extra"]["files"]) for e in events] == [
        ("emit_events", 5000, ["events_2019-10-01_a.csv", "events_2019-10-01_c.csv"])
    ]

    with engine.connect() as c:
        files = c.execute(
            sa.text(
                "select f.file_id, f.file_name, f.row_count from raw.ingested_files f"
                " join quality.validation_runs v using (validation_id) where v.dag_run_id = :r"
            ),
            {"r": run.run_id},
        ).all()
        assert sorted((f.file_name, f.row_count) for f in files) == [
            ("events_2019-10-01_a.csv", 3000), ("events_2019-10-01_c.csv", 2000)]
        for f in files:  # each good file loaded exactly once
            n = c.execute(sa.text("select count(*) from raw.events where file_id = :f"), {"f": f.file_id}).scalar()
            assert n == f.row_count
        runs = c.execute(
            sa.text("select file_name, success, failed_rules from quality.validation_runs where dag_run_id = :r"),
            {"r": run.run_id},
        ).all()
    assert sorted((r.file_name, r.success, list(r.failed_rules)) for r in runs) == [
        ("events_2019-10-01_a.csv", True, []),
        ("events_2019-10-01_bad.csv", False, ["event_type_allowed"]),
        ("events_2019-10-01_c.csv", True, []),
    ]
    quarantine = Path(airflow_conns.location("quarantine"))
    assert (quarantine / "events_2019-10-01_bad.csv").exists()
    report = json.loads((quarantine / "events_2019-10-01_bad.csv.report.json").read_text())
    assert report["failed_rules"] == ["event_type_allowed"]
    assert (Path(airflow_conns.location("archive")) / "events_2019-10-01_a.csv").exists()
    assert (Path(airflow_conns.location("archive")) / "events_2019-10-01_c.csv").exists()
    assert sorted(p.name for p in landing.iterdir()) == []

    # the next run finds nothing new: success, and no Asset event
    run2 = dag.test()
    states2 = _states(run2)
    assert run2.state == "success", states2
    assert states2["emit_events"] == ["skipped"]
    assert _asset_events(run2.run_id) == []


def _asset_events(run_id: str) -> list[dict]:
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(AssetEvent).filter(AssetEvent.source_run_id == run_id).all()
        return [{"source_task_id": e.source_task_id, "extra": dict(e.extra or {})} for e in rows]

