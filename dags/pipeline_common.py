"""Airflow glue shared by every DAG of this project: Assets, connection ids, default args, callbacks, and the
resolution of Airflow connections into plain URLs handed to ``ml`` functions.

Nothing here touches a database, hook or Variable at import (DAG-parse) time.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import Asset

if TYPE_CHECKING:
    from ml.settings import Settings

log = logging.getLogger(__name__)

# --- Assets: defined once; DAGs produce and consume them ----------------------------------------------------------
EVENTS = Asset(name="events", uri="x-propensity://raw/events")
MODEL = Asset(name="model", uri="x-propensity://ml/model_versions")
SCORES = Asset(name="scores", uri="x-propensity://scoring/scores")

# --- Connection ids ------------------------------------------------------------------------------------------------
# AIRFLOW_CONN_PROPENSITY_POSTGRES: a postgres URI (postgresql://user:pw@host:5432/db) or JSON with extra.url.
# AIRFLOW_CONN_PROPENSITY_REDIS: a redis URI (redis://:pw@host:6379/0) or JSON with extra.url (e.g. unix://...).
PG_CONN_ID = "propensity_postgres"
REDIS_CONN_ID = "propensity_redis"

OWNER = "data-eng"
TAGS = ["propensity"]


def on_failure(context: dict[str, Any]) -> None:
    """Failure callback: one clear summary line in the log, and the optional notifier (settings.alert_webhook_url)."""
    ti = context.get("task_instance") or context.get("ti")
    exc = context.get("exception")
    dag_id = getattr(ti, "dag_id", "?")
    summary = (
        f"FAILED {dag_id}.{getattr(ti, 'task_id', '?')} map_index={getattr(ti, 'map_index', -1)} "
        f"run={context.get('run_id')} try={getattr(ti, 'try_number', '?')}: {type(exc).__name__ if exc else ''} {exc}"
    )
    log.error(summary)
    try:
        from ml.notify import notify

        notify(summary)
    except Exception:  # noqa: BLE001 - a broken notifier must never hide the original failure
        log.exception("failure notifier raised")


DEFAULT_ARGS: dict[str, Any] = {
    "owner": OWNER,
    "retries": 2,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=10),
    "on_failure_callback": on_failure,
}


def schedule_for(timetable: Any, assets: Any = None) -> Any:
    """A DAG's schedule: its timetable (cron string or timetable), OR'ed with ``assets`` when given. With
    ``settings.time_schedules`` off, only the assets (or nothing: manual runs only). Reads the environment only."""
    from airflow.sdk import AssetOrTimeSchedule

    from ml.settings import get_settings

    try:
        timed = get_settings().time_schedules
    except Exception:  # noqa: BLE001 - a bad env var must not break parsing; keep the production schedule
        timed = True
    if not timed:
        return assets
    if assets is None:
        return timetable
    return AssetOrTimeSchedule(timetable=timetable, assets=assets)


def _conn_url(conn_id: str) -> str | None:
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        conn = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return None
    url = conn.extra_dejson.get("url") or conn.get_uri()
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    return url


def pipeline_settings(**overrides: Any) -> Settings:
    """Settings for a task: URLs from the Airflow connections when they exist, else ``PROPENSITY_*`` env, else the
    embedded services (started on demand). The returned Settings always carries concrete URLs."""
    from ml.services import resolve_services
    from ml.settings import get_settings

    found = {
        field: url
        for field, url in (("postgres_url", _conn_url(PG_CONN_ID)), ("redis_url", _conn_url(REDIS_CONN_ID)))
        if url
    }
    s = get_settings(**{**found, **overrides})
    svc = resolve_services(s)
    return s.model_copy(update={"postgres_url": svc.postgres_url, "redis_url": svc.redis_url})
