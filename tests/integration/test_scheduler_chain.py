"""The whole chain through a real Airflow scheduler (not dag.test()): ingest_events is triggered by hand, and
train_ensemble and score_active_pairs follow from Assets. Asserts rows in Postgres and keys in Redis.

Runs the local Airflow (scheduler, dag-processor, api-server, LocalExecutor) with its metadata DB in a fresh
PostgreSQL database on the test server, on tiny generated data and a tiny tuning budget.
"""

from __future__ import annotations

import datetime as dt
import socket
import uuid

import pytest
import sqlalchemy as sa

pytestmark = [pytest.mark.integration, pytest.mark.airflow, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def own_db(server_pg_url: str):
    """A private pipeline database: ingest's trailing-average row-count rule must not see other tests' files."""
    from ml.db import create_database, drop_database, make_engine

    name = f"chain_{uuid.uuid4().hex[:8]}"
    url = create_database(server_pg_url, name)
    eng = make_engine(url)
    yield url, eng
    eng.dispose()
    drop_database(server_pg_url, name)


def test_chain_runs_through_the_scheduler(settings, own_db, redis_client, monkeypatch, tmp_path) -> None:
    from ml.dev.generate import GeneratorConfig, generate_events, write_daily_files
    from ml.dev.local_airflow import local_airflow
    from ml.publish import current_version, version_meta

    url, engine = own_db
    settings = settings.model_copy(update={"postgres_url": url})
    today = dt.datetime.now(dt.UTC).date()
    landing = tmp_path / "landing"
    events = generate_events(
        GeneratorConfig(start=today - dt.timedelta(days=56), days=56, n_users=220, n_products=120, seed=11)
    )
    write_daily_files(events, landing, formats=("csv",))

    knobs = {
        "PROPENSITY_LANDING_URL": str(landing),
        "PROPENSITY_QUARANTINE_URL": str(tmp_path / "quarantine"),
        "PROPENSITY_ARTIFACTS_URL": str(tmp_path / "artifacts"),
        "PROPENSITY_REPORTS_URL": str(tmp_path / "reports"),
        "PROPENSITY_N_TRIALS": "2",
        "PROPENSITY_TUNE_TIMEOUT_S": "60",
        "PROPENSITY_SCORE_BUCKETS": "2",
        "PROPENSITY_TRAIN_ON_NEW_EVENTS": "true",
        "PROPENSITY_TIME_SCHEDULES": "false",
    }
    for k, v in knobs.items():
        monkeypatch.setenv(k, v)
    af = local_airflow(
        settings, port=_free_port(), home=tmp_path / "airflow", metadata_db=f"af_{uuid.uuid4().hex[:8]}"
    )
    af.extra_env.update(knobs)
    af.migrate()
    af.start()
    try:
        dags = ["ingest_events", "train_ensemble", "score_active_pairs"]
        af.wait_for_dags(dags)
        af.ensure_pool(settings.score_db_pool, 2, "scoring COPY writers")
        for d in dags:
            af.unpause(d)
        started = dt.datetime.now(dt.UTC).isoformat()
        run_id = af.trigger("ingest_events")
        assert af.wait_for_run("ingest_events", run_id=run_id, timeout=600)["state"] == "success"
        train = af.wait_for_run("train_ensemble", after=started, timeout=900)
        assert train["run_type"] == "asset_triggered"
        score = af.wait_for_run("score_active_pairs", after=started, timeout=900)
        assert score["run_type"] == "asset_triggered"
        runs_by_dag = {d: af.runs(d) for d in dags}
    finally:
        af.stop()

    # with cron schedules off, every run was started by hand (ingest) or by an Asset: none by the clock
    assert all(r["run_type"] != "scheduled" for d in dags for r in runs_by_dag[d])
    with engine.connect() as c:
        loaded = c.execute(sa.text("select count(*) from raw.events where file_id in "
                                   "(select file_id from raw.ingested_files where file_uri like :l)"),
                           {"l": f"%{landing.name}%"}).scalar_one()
        assert loaded == len(events)
        champion = c.execute(sa.text("select count(*) from ml.model_versions where status = 'champion'")).scalar_one()
        assert champion >= 1
        scored = c.execute(sa.text("select count(*) from scoring.scores where score_date = :d"), {"d": today}).scalar_one()
        assert scored > 0
    version = current_version(redis_client, settings)
    assert version is not None
    info = version_meta(redis_client, settings, version)
    assert info["score_date"] == str(today)
    assert int(info["pairs"]) > 0
