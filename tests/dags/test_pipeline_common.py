"""Connection resolution used by every DAG task: Airflow connections win, then PROPENSITY_* env, then embedded."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.airflow


def test_connections_win_over_environment(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from pipeline_common import pipeline_settings

    monkeypatch.setenv("PROPENSITY_POSTGRES_URL", "postgresql://env-host/db")
    monkeypatch.setenv("PROPENSITY_REDIS_URL", "redis://env-host:6379/0")
    monkeypatch.setenv("AIRFLOW_CONN_PROPENSITY_POSTGRES", "postgres://u:p@conn-host:5433/scores")
    monkeypatch.setenv(
        "AIRFLOW_CONN_PROPENSITY_REDIS", json.dumps({"conn_type": "redis", "extra": {"url": "unix:///tmp/r.sock?db=1"}})
    )
    s = pipeline_settings(state_dir=tmp_path)
    assert s.postgres_url == "postgresql://u:p@conn-host:5433/scores"  # scheme normalised for SQLAlchemy/libpq
    assert s.redis_url == "unix:///tmp/r.sock?db=1"


def test_environment_used_without_connections(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from pipeline_common import pipeline_settings

    monkeypatch.delenv("AIRFLOW_CONN_PROPENSITY_POSTGRES", raising=False)
    monkeypatch.delenv("AIRFLOW_CONN_PROPENSITY_REDIS", raising=False)
    monkeypatch.setenv("PROPENSITY_POSTGRES_URL", "postgresql://env-host/db")
    monkeypatch.setenv("PROPENSITY_REDIS_URL", "redis://env-host:6379/0")
    s = pipeline_settings(state_dir=tmp_path)
    assert (s.postgres_url, s.redis_url) == ("postgresql://env-host/db", "redis://env-host:6379/0")


@pytest.mark.parametrize("timed", [True, False])
def test_schedule_for_honours_time_schedules(monkeypatch: pytest.MonkeyPatch, timed: bool) -> None:
    from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable
    from pipeline_common import MODEL, schedule_for

    monkeypatch.setenv("PROPENSITY_TIME_SCHEDULES", str(timed).lower())
    cron = CronTriggerTimetable("0 3 * * *", timezone="UTC")
    with_assets = schedule_for(cron, MODEL)
    alone = schedule_for("@hourly")
    if timed:
        assert isinstance(with_assets, AssetOrTimeSchedule) and alone == "@hourly"
    else:
        assert with_assets == MODEL and alone is None  # Assets only; no cron run at all
