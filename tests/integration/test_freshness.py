"""The freshness gate on real Postgres: a missing or partial day shuts it with the day named; a thin day is caught
against the trailing average; the failure is an alert row."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from tests.integration.test_monitor import add_file

pytestmark = pytest.mark.integration

START = dt.date(2050, 1, 1)


def day_events(day: dt.date, n: int, last_hour: int = 23) -> list[tuple[dt.datetime, str, int, int]]:
    t0 = dt.datetime.combine(day, dt.time(), dt.timezone.utc)
    step = dt.timedelta(hours=last_hour, minutes=50) / max(n - 1, 1)
    return [(t0 + i * step, "view", 1 + i % 7, 100 + i % 5) for i in range(n)]


@pytest.fixture
def history(engine: sa.Engine):
    with engine.begin() as c:
        for k in range(5):  # 2050-01-01 .. 05, 40 events a day
            add_file(c, day_events(START + dt.timedelta(days=k), 40))
    yield
    with engine.begin() as c:
        files = "select file_id from raw.ingested_files where file_name like 'mon-%'"
        c.execute(sa.text(f"delete from raw.events where file_id in ({files})"))
        c.execute(sa.text(f"delete from raw.ingested_files where file_id in ({files})"))
        c.execute(sa.text("delete from monitoring.alerts where kind = 'freshness'"))


def test_gate_open_when_yesterday_landed(engine: sa.Engine, settings, history) -> None:
    from ml.freshness import check_freshness, require_fresh

    f = check_freshness(engine, settings, "2050-01-05")  # needs 2050-01-04, followed by later events
    assert f.fresh and f.day == dt.date(2050, 1, 4) and f.rows == 40 and f.files == 1
    assert require_fresh(engine, settings, dt.date(2050, 1, 6)).fresh  # 01-05 ends 23:50


def test_missing_day_fails_naming_it_and_alerts(engine: sa.Engine, settings, history) -> None:
    from ml.alerts import open_alerts
    from ml.errors import FreshnessError
    from ml.freshness import require_fresh

    with pytest.raises(FreshnessError, match="no events of 2050-01-06 have landed"):
        require_fresh(engine, settings, "2050-01-07")
    assert any(a["kind"] == "freshness" and a["metric_date"] == dt.date(2050, 1, 6) for a in open_alerts(engine))


def test_partial_and_thin_days_shut_the_gate(engine: sa.Engine, settings) -> None:
    from ml.freshness import check_freshness

    try:
        with engine.begin() as c:
            for k in range(5):
                add_file(c, day_events(START + dt.timedelta(days=10 + k), 40))
            add_file(c, day_events(dt.date(2050, 1, 16), 40, last_hour=14))  # stops at 14:50
        f = check_freshness(engine, settings, "2050-01-17")
        assert not f.fresh and "2050-01-16" in f.reason and "not fully landed" in f.reason
        with engine.begin() as c:
            add_file(c, day_events(dt.date(2050, 1, 17), 5))  # a whole day, but 5 rows vs ~40
        f = check_freshness(engine, settings, "2050-01-18")
        assert not f.fresh and "below 50% of the trailing average" in f.reason
        assert check_freshness(engine, settings.model_copy(update={"freshness_min_row_ratio": 0.1}),
                               "2050-01-18").fresh
    finally:
        with engine.begin() as c:
            files = "select file_id from raw.ingested_files where file_name like 'mon-%'"
            c.execute(sa.text(f"delete from raw.events where file_id in ({files})"))
            c.execute(sa.text(f"delete from raw.ingested_files where file_id in ({files})"))


def test_cli_freshness_and_alerts(settings, history, monkeypatch) -> None:
    from typer.testing import CliRunner

    from ml.cli import app

    # the test's own services and state dir: without them the CLI would start an embedded Redis under ./.local
    monkeypatch.setenv("PROPENSITY_POSTGRES_URL", settings.postgres_url)
    monkeypatch.setenv("PROPENSITY_REDIS_URL", settings.redis_url)
    monkeypatch.setenv("PROPENSITY_REDIS_PREFIX", settings.redis_prefix)
    monkeypatch.setenv("PROPENSITY_STATE_DIR", str(settings.state_dir))
    ok = CliRunner().invoke(app, ["monitor", "freshness", "--score-date", "2050-01-05"])
    assert ok.exit_code == 0 and ok.output.startswith("open: 2050-01-04: 40 events")
    shut = CliRunner().invoke(app, ["monitor", "freshness", "--score-date", "2050-01-09"])
    assert shut.exit_code == 1 and "no events of 2050-01-08 have landed" in shut.output
    alerts = CliRunner().invoke(app, ["monitor", "alerts"])
    assert alerts.exit_code == 0
