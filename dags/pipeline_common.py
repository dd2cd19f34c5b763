"""Airflow glue shared by every DAG of this project: Assets, connection ids, default args, callbacks, the
resolution of Airflow connections into plain URLs handed to ``ml`` functions, and :func:`task_resources`, the one
context manager a task opens to get settings, an engine and a Redis client.

Nothing here touches a database, hook or Variable at import (DAG-parse) time. A connection that is missing is a
:class:`ml.errors.ConfigError` naming its id, never an embedded server: this module does not import
``ml.dev.services`` (development tooling).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import Asset
from airflow.sdk.bases.notifier import BaseNotifier

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from ml.errors import ConfigError
    from ml.settings import Settings

log = logging.getLogger(__name__)

# --- Assets: defined once; DAGs produce and consume them ----------------------------------------------------------
EVENTS = Asset(name="events", uri="x-propensity://raw/events")
MODEL = Asset(name="model", uri="x-propensity://ml/model_versions")
SCORES = Asset(name="scores", uri="x-propensity://scoring/scores")
MONITOR = Asset(name="monitoring", uri="x-propensity://monitoring/realized_metrics")

# --- Connection ids ------------------------------------------------------------------------------------------------
# AIRFLOW_CONN_PROPENSITY_POSTGRES: a postgres URI (postgresql://user:pw@host:5432/db) or JSON with extra.url.
# AIRFLOW_CONN_PROPENSITY_REDIS: a redis URI (redis://:pw@host:6379/0) or JSON with extra.url (e.g. unix://...).
PG_CONN_ID = "propensity_postgres"
REDIS_CONN_ID = "propensity_redis"

OWNER = "data-eng"
TAGS = ["propensity"]


class PropensityNotifier(BaseNotifier):
    """The one alerting path from Airflow (issue 13), an Airflow 3 notifier: a failed task becomes a ``task_failure``
    row in ``monitoring.alerts`` and goes through the notifiers of ``settings.alert_notifiers`` (log, webhook) via
    :func:`ml.alerts.raise_alert`. Without a reachable database the summary still goes to the notifiers directly.
    Never raises: a broken notifier must never hide the original failure."""

    def notify(self, context: dict[str, Any]) -> None:
        ti = context.get("task_instance") or context.get("ti")
        exc = context.get("exception")
        dag_id, task_id = getattr(ti, "dag_id", "?"), getattr(ti, "task_id", "?")
        summary = (
            f"FAILED {dag_id}.{task_id} map_index={getattr(ti, 'map_index', -1)} "
            f"run={context.get('run_id')} try={getattr(ti, 'try_number', '?')}: "
            f"{type(exc).__name__ if exc else ''} {exc}"
        )
        log.error(summary)
        try:
            from ml.alerts import Alert, dispatch, raise_alert

            alert = Alert("task_failure", f"{dag_id}.{task_id}", "critical", summary,
                          details={"run_id": str(context.get("run_id"))})
            try:
                with task_resources() as res:
                    raise_alert(res.engine, res.settings, alert)
            except Exception:  # noqa: BLE001 - no database: still tell someone
                log.exception("could not record the task_failure alert; notifying without a row")
                from ml.settings import get_settings

                dispatch(alert, get_settings())
        except Exception:  # noqa: BLE001 - a broken notifier must never hide the original failure
            log.exception("failure notifier raised")


on_failure = PropensityNotifier()


DEFAULT_ARGS: dict[str, Any] = {
    "owner": OWNER,
    "retries": 2,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=10),
    "on_failure_callback": on_failure,
}


def parse_time_setting(field: str, default: Any) -> Any:
    """``settings.<field>`` for use at DAG-parse time: read from the environment only (no I/O), and ``default`` when
    the environment holds an invalid value, so a bad env var never breaks parsing (the production value holds)."""
    from ml.settings import get_settings

    try:
        return getattr(get_settings(), field)
    except Exception:  # noqa: BLE001 - pydantic's ValidationError and anything a validator raises
        log.warning("invalid PROPENSITY_%s in the environment: parsing with %r", field.upper(), default)
        return default


# every task and every DAG run is bounded (issue 13): settings task_timeout_minutes / dagrun_timeout_hours, read from
# the environment at parse time
DEFAULT_ARGS["execution_timeout"] = timedelta(minutes=parse_time_setting("task_timeout_minutes", 120))
DAGRUN_TIMEOUT = timedelta(hours=parse_time_setting("dagrun_timeout_hours", 12))


def schedule_for(timetable: Any, assets: Any = None) -> Any:
    """A DAG's schedule: its timetable (cron string or timetable), OR'ed with ``assets`` when given. With
    ``settings.time_schedules`` off, only the assets (or nothing: manual runs only). Reads the environment only."""
    from airflow.sdk import AssetOrTimeSchedule

    if not parse_time_setting("time_schedules", True):
        return assets
    if assets is None:
        return timetable
    return AssetOrTimeSchedule(timetable=timetable, assets=assets)


def _conn_url(conn_id: str) -> str | None:
    """The URL of Airflow connection ``conn_id`` (``extra.url`` when given, else the connection's URI; ``postgres://``
    normalised to ``postgresql://``), or None when the connection is not defined."""
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


def _missing(conn_id: str, fallback_env: str, example: str) -> ConfigError:
    from ml.errors import ConfigError

    return ConfigError(
        f"Airflow connection {conn_id!r} is not defined: set AIRFLOW_CONN_{conn_id.upper()} (a URI such as "
        f"{example}, or JSON with extra.url), define it in the Airflow UI or secrets backend, or set "
        f"{fallback_env}. No embedded server is started inside an Airflow task."
    )


def pipeline_settings(**overrides: Any) -> Settings:
    """Settings for a task. The URLs come from the Airflow connections ``propensity_postgres`` / ``propensity_redis``;
    a connection that is not defined falls back to ``PROPENSITY_POSTGRES_URL`` / ``PROPENSITY_REDIS_URL`` only when
    that setting is explicitly set (environment or ``.env``). Keyword ``overrides`` win over both.

    The Postgres URL is required: without it this raises :class:`ml.errors.ConfigError` naming the connection id.
    A missing Redis URL leaves ``settings.redis_url`` None; :attr:`TaskResources.redis` raises the same kind of error
    when a task asks for Redis. Nothing is ever started here (no embedded server in production)."""
    from ml.settings import get_settings

    found = {
        field: url
        for field, url in (("postgres_url", _conn_url(PG_CONN_ID)), ("redis_url", _conn_url(REDIS_CONN_ID)))
        if url
    }
    s = get_settings(**{**found, **overrides})
    if not s.postgres_url:
        raise _missing(PG_CONN_ID, "PROPENSITY_POSTGRES_URL", "postgresql://user:pw@host:5432/db")
    return s


class TaskResources:
    """What one task run needs: ``settings`` (URLs resolved from the Airflow connections), and, created on first use,
    an SQLAlchemy ``engine`` on the pipeline database and a ``redis`` client (``ml.publish.connect_redis``: a
    ``RedisCluster`` when ``settings.redis_cluster``). :meth:`close` disposes/closes only what was created."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._engine: Engine | None = None
        self._redis: Any = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            from ml.db import make_engine

            self._engine = make_engine(self.settings.postgres_url)
        return self._engine

    @property
    def redis(self) -> Any:
        if self._redis is None:
            if not self.settings.redis_url:
                raise _missing(REDIS_CONN_ID, "PROPENSITY_REDIS_URL", "redis://:pw@host:6379/0")
            from ml.publish import connect_redis

            self._redis = connect_redis(self.settings)
        return self._redis

    def close(self) -> None:
        client, engine = self._redis, self._engine
        self._redis = self._engine = None
        try:
            if client is not None:
                client.close()
        finally:
            if engine is not None:
                engine.dispose()


def _mask_in_task_logs(settings: Settings) -> None:
    """Register the settings' secrets (URL passwords, webhook, JWT key: ``ml.redact.secret_values``) with Airflow's
    task-log masker, so they print as *** in task logs like connection passwords do."""
    from airflow.sdk.log import mask_secret

    from ml.redact import register_secrets

    for value in register_secrets(settings):
        mask_secret(value)


@contextmanager
def task_resources(**overrides: Any) -> Iterator[TaskResources]:
    """``with task_resources() as res:`` -> ``res.settings``, ``res.engine``, ``res.redis`` (see
    :class:`TaskResources`); everything created is released when the block exits, also on error.
    ``overrides``: Settings fields that win over connections and environment."""
    res = TaskResources(pipeline_settings(**overrides))
    _mask_in_task_logs(res.settings)
    try:
        yield res
    finally:
        res.close()
