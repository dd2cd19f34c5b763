"""
### monitor_outcomes

Realized performance: did the scores come true? Daily at **06:00 UTC**, and whenever new events land (Asset
`events`), because late events can change the labels of a date already evaluated.

1. **evaluate**: for every score date whose label horizon has matured (`score_date + label_horizon_days` at or
   before the newest loaded event), joins `scoring.scores` to the purchases in `[score_date, score_date + horizon)`
   with the trainer's label SQL and records, per score date, model version, segment (`all` pairs, `published`
   pairs: what the storefront saw) and experiment arm (`(all)`; on a date an A/B experiment scored also each arm
   and `(unenrolled)`): ROC-AUC, PR-AUC, log loss, Brier, ECE, base rate, precision@k and hit-rate@k
   per user (`monitoring.realized_metrics`), the reliability curve (`monitoring.calibration_bins`) and conversion
   and lift per tier (`monitoring.tier_outcomes`). A date already evaluated on the same labels is skipped; a date
   whose label files changed is re-evaluated in place (never duplicated). Realized PR-AUC below the holdout's by
   more than `PROPENSITY_PERFORMANCE_DROP_ALERT` raises a `performance` alert. Emits Asset `monitoring`.
2. **check_served**: an alert when the score date served from Redis is older than `PROPENSITY_SERVED_MAX_AGE_DAYS`;
   refreshes the Redis hash `P:monitor` that the lookup API's `/metrics` turns into Prometheus gauges.

BI: `bi.model_performance` (expected = holdout vs realized), `bi.calibration`, `bi.tier_conversion`.

**Manual runs** (Trigger DAG w/ config): `score_dates` (list of YYYY-MM-DD; default: every matured date),
`force` (re-evaluate even when the labels did not change).
CLI equivalent: `propensity monitor run [--score-date YYYY-MM-DD] [--force]`. See docs/monitoring.md.
"""

from __future__ import annotations

import logging
from typing import Any

import pendulum
from airflow.sdk import CronTriggerTimetable, Param, dag, task
from pipeline_common import DAGRUN_TIMEOUT, DEFAULT_ARGS, EVENTS, MONITOR, TAGS, schedule_for, task_resources

log = logging.getLogger(__name__)


@dag(
    dag_id="monitor_outcomes",
    schedule=schedule_for(CronTriggerTimetable("0 6 * * *", timezone="UTC"), EVENTS),
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=DAGRUN_TIMEOUT,
    default_args=DEFAULT_ARGS,
    tags=[*TAGS, "monitoring"],
    doc_md=__doc__,
    params={
        "score_dates": Param(None, type=["null", "array"], items={"type": "string", "format": "date"},
                             description="Score dates (YYYY-MM-DD, UTC) to evaluate; null: every matured date."),
        "force": Param(False, type="boolean",
                       description="Re-evaluate even when the labels of a date did not change."),
    },
)
def monitor_outcomes() -> None:
    @task(outlets=[MONITOR])
    def evaluate(params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Realized metrics of every matured (or given) score date -> monitoring.*; performance alerts."""
        from ml.dates import utc_date
        from ml.monitor import run_monitor

        params = params or {}
        days = [utc_date(d, what="score_dates") for d in params["score_dates"]] if params.get("score_dates") else None
        with task_resources() as res:
            done = run_monitor(res.engine, res.settings, score_dates=days, force=bool(params.get("force")))
        return [{"score_date": e.score_date.isoformat(), "rows": len(e.metrics), "seconds": round(e.seconds, 3)}
                for e in done]

    @task
    def check_served() -> None:
        """Alert when the score date served from Redis is stale; refresh P:monitor (the API's pipeline gauges)."""
        from ml.alerts import check_served as check
        from ml.monitor import push_monitor_summary

        with task_resources() as res:
            check(res.engine, res.redis, res.settings)
            push_monitor_summary(res.engine, res.redis, res.settings)

    evaluate() >> check_served()


monitor_outcomes_dag = monitor_outcomes()
