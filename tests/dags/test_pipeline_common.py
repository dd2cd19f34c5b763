"""Connection resolution used by every DAG task (Airflow connections win, then an explicitly set PROPENSITY_* URL,
else a clear error naming the connection) and the resources task_resources() hands out."""

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


def _no_service_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("AIRFLOW_CONN_PROPENSITY_POSTGRES", "AIRFLOW_CONN_PROPENSITY_REDIS", "PROPENSITY_POSTGRES_URL",
                "PROPENSITY_REDIS_URL"):
        monkeypatch.delenv(var, raising=False)


def test_missing_postgres_connection_names_it(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from pipeline_common import pipeline_settings

    from ml.errors import ConfigError

    _no_service_env(monkeypatch)
    with pytest.raises(ConfigError, match="Airflow connection 'propensity_postgres' is not defined") as e:
        pipeline_settings(state_dir=tmp_path / "state")
    assert "AIRFLOW_CONN_PROPENSITY_POSTGRES" in str(e.value) and "PROPENSITY_POSTGRES_URL" in str(e.value)
    assert not (tmp_path / "state").exists()


@pytest.mark.integration
def test_task_resources_are_lazy_and_released(monkeypatch: pytest.MonkeyPatch, settings, redis_client) -> None:
    """Only what a task asks for is created; leaving the block disposes the engine and closes the Redis client."""
    import sqlalchemy as sa
    from pipeline_common import task_resources

    from ml.errors import ConfigError

    _no_service_env(monkeypatch)
    monkeypatch.setenv("AIRFLOW_CONN_PROPENSITY_POSTGRES",
                       json.dumps({"conn_type": "postgres", "extra": {"url": settings.postgres_url}}))
    with task_resources(state_dir=settings.state_dir) as res:
        assert res._engine is None and res._redis is None
        with pytest.raises(ConfigError, match="Airflow connection 'propensity_redis' is not defined"):
            res.redis  # noqa: B018 - the property is the call under test
        engine = res.engine
        with engine.connect() as c:
            assert c.execute(sa.text("select 1")).scalar() == 1
        assert engine.pool.checkedin() == 1 and res._redis is None
    assert engine.pool.checkedin() == 0  # disposed

    monkeypatch.setenv("PROPENSITY_REDIS_URL", settings.redis_url)  # an explicitly set URL is the fallback
    with task_resources(state_dir=settings.state_dir) as res:
        client_id = res.redis.client_id()
        assert res._engine is None
        assert any(c["id"] == str(client_id) for c in redis_client.client_list())
    # closed: the server drops a closed connection from CLIENT LIST asynchronously, so look again for a moment
    import time

    for _ in range(50):
        if not any(c["id"] == str(client_id) for c in redis_client.client_list()):
            break
        time.sleep(0.1)
    assert not any(c["id"] == str(client_id) for c in redis_client.client_list())
