"""Alerts: every alert is a row in ``monitoring.alerts`` before it is a message.

One path for every alert (drift, realized performance, a refused challenger, a stale served score date, a missed
freshness deadline, a task failure): :func:`raise_alert` upserts the row (one *open* row per ``alert_key``; the same
condition seen again bumps ``occurrences`` and ``last_seen_at``) and, when the row is new, dispatches it to the
notifiers named in ``settings.alert_notifiers``:

* ``log``: one ``ALERT [severity] kind subject: message`` line at WARNING/ERROR;
* ``webhook``: ``ml.notify.notify`` (POST ``{"text": ...}`` to ``settings.alert_webhook_url``; skipped when unset).

The Airflow side (``dags/pipeline_common.py``: ``PropensityNotifier``, an Airflow 3 ``BaseNotifier``) turns a task
failure into a ``task_failure`` alert through this same function; ``ml`` never imports airflow. A notifier that
raises is logged and skipped: it never hides the alert (the row is already written) or another notifier.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ml.jsonutil import dumps
from ml.settings import Settings

log = logging.getLogger(__name__)

KINDS = ("drift", "performance", "challenger_refused", "stale_scores", "freshness", "task_failure")


@dataclass
class Alert:
    """One alert as raised (and as stored in ``monitoring.alerts``)."""

    kind: str
    subject: str
    severity: str
    message: str
    value: float | None = None
    threshold: float | None = None
    metric_date: dt.date | None = None
    model_version: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    alert_id: int | None = None
    new: bool = True
    notified: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.subject}"

    def text(self) -> str:
        return f"ALERT [{self.severity}] {self.kind} {self.subject}: {self.message}"


def _log_notifier(alert: Alert, settings: Settings) -> bool:
    log.log(logging.ERROR if alert.severity == "critical" else logging.WARNING, "%s", alert.text())
    return True


def _webhook_notifier(alert: Alert, settings: Settings) -> bool:
    from ml.notify import notify

    return notify(alert.text(), settings)


NOTIFIERS: dict[str, Callable[[Alert, Settings], bool]] = {"log": _log_notifier, "webhook": _webhook_notifier}


def dispatch(alert: Alert, settings: Settings) -> list[str]:
    """Send ``alert`` through every configured notifier; returns the names that delivered it. Unknown names are a
    logged error, not an exception (a typo must not hide the alert)."""
    delivered = []
    for name in settings.alert_notifiers:
        fn = NOTIFIERS.get(name)
        if fn is None:
            log.error("alert_notifiers names %r, which is not one of %s", name, sorted(NOTIFIERS))
            continue
        try:
            if fn(alert, settings):
                delivered.append(name)
        except Exception:  # noqa: BLE001 - a broken notifier must not hide the alert or stop the others
            log.exception("notifier %s failed on %s", name, alert.key)
    return delivered


def raise_alert(engine: Engine, settings: Settings, alert: Alert, *, notify: bool = True) -> Alert:
    """Record ``alert`` (insert, or bump the open row with the same key) and, when it is new, notify. Returns it
    with ``alert_id``, ``new`` and ``notified`` filled."""
    if alert.kind not in KINDS:
        raise ValueError(f"alert kind {alert.kind!r} is not one of {KINDS}")
    params = {"key": alert.key, "kind": alert.kind, "sev": alert.severity, "subj": alert.subject,
              "msg": alert.message, "v": alert.value, "t": alert.threshold, "d": alert.metric_date,
              "m": alert.model_version, "x": dumps(alert.details)}
    with engine.begin() as conn:
        conn.execute(sa.text("select pg_advisory_xact_lock(hashtext('monitoring.alerts'), hashtext(:key))"), params)
        row = conn.execute(sa.text(
            "update monitoring.alerts set occurrences = occurrences + 1, last_seen_at = now(), message = :msg,"
            " value = :v, threshold = :t, severity = :sev, metric_date = :d, model_version = :m,"
            " details = cast(:x as jsonb) where alert_key = :key and status = 'open' returning alert_id"),
            params).one_or_none()
        alert.new = row is None
        if row is None:
            row = conn.execute(sa.text(
                "insert into monitoring.alerts (alert_key, kind, severity, subject, message, value, threshold,"
                " metric_date, model_version, details) values (:key, :kind, :sev, :subj, :msg, :v, :t, :d, :m,"
                " cast(:x as jsonb)) returning alert_id"), params).one()
        alert.alert_id = int(row.alert_id)
    if notify and alert.new:
        alert.notified = dispatch(alert, settings)
        if alert.notified:
            with engine.begin() as conn:
                conn.execute(sa.text("update monitoring.alerts set notified = :n where alert_id = :i"),
                             {"n": alert.notified, "i": alert.alert_id})
    elif not alert.new:
        log.info("alert %s still open (seen again): %s", alert.key, alert.message)
    return alert


def resolve_alerts(engine: Engine, kind: str, keep_subjects: Iterable[str] = (), subject_prefix: str = "") -> int:
    """Close the open alerts of ``kind`` (whose subject starts with ``subject_prefix``) that are not in
    ``keep_subjects``: the condition is gone. Returns how many were resolved."""
    with engine.begin() as conn:
        return int(conn.execute(sa.text(
            "update monitoring.alerts set status = 'resolved', resolved_at = now() where status = 'open'"
            " and kind = :k and subject like :p and not (subject = any(cast(:keep as text[])))"),
            {"k": kind, "p": subject_prefix.replace("%", r"\%") + "%", "keep": list(keep_subjects)}).rowcount)


def open_alerts(engine: Engine, limit: int = 50) -> list[dict[str, Any]]:
    """The open alerts, newest first (for the UI page, the CLI and the Prometheus gauge)."""
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.text(
            "select alert_id, kind, severity, subject, message, value, threshold, metric_date, model_version,"
            " occurrences, raised_at, last_seen_at from monitoring.alerts where status = 'open'"
            " order by raised_at desc limit :n"), {"n": limit}).mappings()]


# --- checks that raise alerts ---------------------------------------------------------------------------------------
def check_performance(engine: Engine, settings: Settings, score_dates: Iterable[dt.date]) -> list[Alert]:
    """Alert when a date's realized PR-AUC (segment 'all', over every pair of the model version: arm '(all)') is
    below the model's holdout PR-AUC by more than ``settings.performance_drop_alert`` (a fraction of the holdout
    value). An experiment's arms have their own model versions, so each arm's model is checked on its own pairs."""
    raised = []
    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            "select score_date, model_version, realized_pr_auc, expected_pr_auc from bi.model_performance"
            " where segment = 'all' and arm = '(all)' and score_date = any(cast(:d as date[]))"),
            {"d": list(score_dates)}).all()
    for r in rows:
        if r.realized_pr_auc is None or r.expected_pr_auc is None:
            continue
        floor = r.expected_pr_auc * (1 - settings.performance_drop_alert)
        if r.realized_pr_auc < floor:
            raised.append(raise_alert(engine, settings, Alert(
                "performance", f"pr_auc:{r.model_version}", "critical",
                f"realized PR-AUC {r.realized_pr_auc:.4f} on score date {r.score_date} is below "
                f"{1 - settings.performance_drop_alert:.0%} of the holdout's {r.expected_pr_auc:.4f}",
                value=float(r.realized_pr_auc), threshold=float(floor), metric_date=r.score_date,
                model_version=r.model_version)))
    return raised


def check_stale_served(engine: Engine, settings: Settings, served_score_date: dt.date | None,
                       today: dt.date | None = None) -> Alert | None:
    """Alert when the served score date is older than ``settings.served_max_age_days`` (UTC today); resolve the
    open stale alert otherwise."""
    today = today or dt.datetime.now(dt.timezone.utc).date()
    if served_score_date is None:
        return raise_alert(engine, settings, Alert("stale_scores", "served", "critical",
                                                   "nothing is served: no published version in Redis"))
    age = (today - served_score_date).days
    if age > settings.served_max_age_days:
        return raise_alert(engine, settings, Alert(
            "stale_scores", "served", "critical",
            f"served score date {served_score_date} is {age} days old (limit {settings.served_max_age_days})",
            value=float(age), threshold=float(settings.served_max_age_days), metric_date=served_score_date))
    resolve_alerts(engine, "stale_scores")
    return None


def challenger_refused(engine: Engine, settings: Settings, version: str, reason: str) -> Alert:
    """Alert that the gate refused challenger ``version`` (the champion keeps serving)."""
    return raise_alert(engine, settings, Alert(
        "challenger_refused", version, "warning", f"challenger {version} was refused by the gate: {reason}",
        model_version=version))


def check_served(engine: Engine, redis_client: Any, settings: Settings, today: dt.date | None = None) -> Alert | None:
    """Read the served version's score date from Redis (``P:current`` -> ``P:v{V}:meta``) and apply
    :func:`check_stale_served`."""
    from ml.publish import current_version, version_meta

    v = current_version(redis_client, settings)
    meta = version_meta(redis_client, settings, v) if v is not None else {}
    served = dt.date.fromisoformat(meta["score_date"]) if meta.get("score_date") else None
    return check_stale_served(engine, settings, served, today)
