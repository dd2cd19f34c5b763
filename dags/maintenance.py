"""
### maintenance

Weekly housekeeping (Sunday 03:30 UTC): content fingerprints of old files, then retention of scores, events and
archived models' files (`ml.retention.apply_retention`; CLI equivalent: `propensity retention`).

1. **fingerprints**: the content fingerprint of every loaded file that has none (loaded before migration 0141),
   recomputed from its rows in raw.events (`ml.fingerprints.backfill_fingerprints`; CLI equivalent:
   `propensity backfill-fingerprints`), before retention trims any of those rows, so a re-delivery of such a file
   with other bytes is caught as a duplicate delivery; files loaded twice are logged. Skipped on a dry run.
2. **retention**: drops `scoring.scores` partitions older than `retention_scores_days` (default 90) and `raw.events`
   day partitions older than `retention_events_days` (default 400), and removes the artifacts folder, HTML report and
   Optuna studies of archived model versions beyond the newest `retention_keep_archived_models` (default 5). It never
   drops the score dates Redis serves or would roll back to, score dates inside the monitoring horizon or not yet
   evaluated, data from the start of an unfinished experiment, or events inside the champion's training window
   and the next night's feature lookback. The task log lists what was freed (bytes, rows, files, studies) and
   every protection that limited it; the returned XCom is that summary.
3. **footprint**: logs bytes per scored pair and per raw event (for capacity planning, docs/operations.md).

**Manual runs** (Trigger DAG w/ config): `dry_run` (report only), `scores_days`, `events_days`,
`keep_archived_models` (override the settings for this run).
"""

from __future__ import annotations

import logging
from typing import Any

import pendulum
from airflow.sdk import Param, dag, get_current_context, task
from pipeline_common import DEFAULT_ARGS, TAGS, schedule_for, task_resources

log = logging.getLogger(__name__)


@dag(
    dag_id="maintenance",
    schedule=schedule_for("30 3 * * 0"),
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=[*TAGS, "maintenance"],
    doc_md=__doc__,
    params={
        "dry_run": Param(False, type="boolean", description="Only report what would be dropped and removed."),
        "scores_days": Param(None, type=["null", "integer"], minimum=0,
                             description="Keep score dates this recent (null: settings.retention_scores_days)."),
        "events_days": Param(None, type=["null", "integer"], minimum=0,
                             description="Keep event days this recent (null: settings.retention_events_days)."),
        "keep_archived_models": Param(None, type=["null", "integer"], minimum=0,
                                      description="Archived models whose files stay (null: the setting)."),
    },
)  # fmt: skip
def maintenance() -> None:
    @task
    def fingerprints() -> dict[str, int]:
        from ml.fingerprints import backfill_fingerprints

        if get_current_context()["params"].get("dry_run"):
            log.info("dry run: content fingerprints not backfilled")
            return {}
        with task_resources() as res:
            out = backfill_fingerprints(res.engine)
        return {st: sum(o.status == st for o in out) for st in ("filled", "incomplete", "duplicate")}

    @task
    def retention() -> dict[str, Any]:
        from ml.retention import apply_retention

        p = get_current_context()["params"]
        with task_resources() as res:
            report = apply_retention(
                res.engine, res.settings, dry_run=bool(p.get("dry_run")), scores_days=p.get("scores_days"),
                events_days=p.get("events_days"), keep_archived_models=p.get("keep_archived_models"),
            )
        return {
            "dry_run": report.dry_run, "bytes_freed": report.bytes_freed,
            "scores_partitions": [d.table for d in report.scores], "events_partitions": [d.table for d in report.events],
            "models": [m.version for m in report.models], "skipped": report.skipped,
        }

    @task
    def footprint(_: dict[str, Any]) -> dict[str, float]:
        from ml.retention import storage_footprint

        with task_resources() as res:
            figures = storage_footprint(res.engine)
        for key, value in figures.items():
            log.info("%s: %s", key, f"{value:,.1f}")
        return figures

    kept = retention()
    fingerprints() >> kept
    footprint(kept)


maintenance_dag = maintenance()
