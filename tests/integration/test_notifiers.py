"""The one alerting path: an alert is a row first, then goes through the webhook notifier (a real local HTTP
server: the ``webhook`` fixture of tests/conftest.py); the Airflow failure notifier turns a failed task into a
task_failure alert row."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

pytestmark = pytest.mark.integration


def test_alert_row_then_webhook_once(engine: sa.Engine, settings, webhook) -> None:
    from ml.alerts import Alert, raise_alert

    url, received = webhook
    s = settings.model_copy(update={"alert_webhook_url": url, "alert_notifiers": ["log", "webhook", "nope"]})
    try:
        first = raise_alert(engine, s, Alert("challenger_refused", "v-notify", "warning", "refused: worse PR-AUC"))
        again = raise_alert(engine, s, Alert("challenger_refused", "v-notify", "warning", "refused: worse PR-AUC"))
        assert first.new and not again.new and first.alert_id == again.alert_id
        assert first.notified == ["log", "webhook"]  # the unknown name is logged, not fatal
        assert received == [{"text": "ALERT [warning] challenger_refused v-notify: refused: worse PR-AUC"}]
        with engine.connect() as c:
            row = c.execute(sa.text("select occurrences, notified from monitoring.alerts where alert_id = :i"),
                            {"i": first.alert_id}).one()
        assert row.occurrences == 2 and row.notified == ["log", "webhook"]
        with pytest.raises(ValueError, match="alert kind 'bogus'"):
            raise_alert(engine, s, Alert("bogus", "x", "warning", "m"))
    finally:
        with engine.begin() as c:
            c.execute(sa.text("delete from monitoring.alerts where subject = 'v-notify'"))


def test_airflow_failure_notifier_records_a_task_failure_alert(engine: sa.Engine, settings, webhook,
                                                                monkeypatch) -> None:
    from pipeline_common import DEFAULT_ARGS, PropensityNotifier

    from airflow.sdk.bases.notifier import BaseNotifier

    url, received = webhook
    monkeypatch.setenv("AIRFLOW_CONN_PROPENSITY_POSTGRES",
                       json.dumps({"conn_type": "postgres", "extra": {"url": settings.postgres_url}}))
    monkeypatch.setenv("PROPENSITY_ALERT_WEBHOOK_URL", url)
    notifier = DEFAULT_ARGS["on_failure_callback"]
    assert isinstance(notifier, PropensityNotifier) and isinstance(notifier, BaseNotifier)
    assert DEFAULT_ARGS["execution_timeout"].total_seconds() > 0

    class TI:
        dag_id, task_id, map_index, try_number = "score_active_pairs", "notify_probe", -1, 3

    try:
        notifier.notify({"ti": TI(), "exception": RuntimeError("disk full"), "run_id": "manual__x"})
        with engine.connect() as c:
            row = c.execute(sa.text("select kind, severity, message from monitoring.alerts"
                                    " where subject = 'score_active_pairs.notify_probe'")).one()
        assert row.kind == "task_failure" and row.severity == "critical" and "RuntimeError disk full" in row.message
        assert received and "FAILED score_active_pairs.notify_probe" in received[0]["text"]
    finally:
        with engine.begin() as c:
            c.execute(sa.text("delete from monitoring.alerts where subject = 'score_active_pairs.notify_probe'"))
