"""
### ingest_events

Validates every new REES46 event file in the **landing** location (a local folder or an object-storage URL) with
Great Expectations and loads the good ones into `raw.events`, exactly once. Hourly by default
(`PROPENSITY_INGEST_SCHEDULE`, a cron expression or preset).

1. **discover**: applies pending SQL migrations (a no-op when up to date), then lists the files waiting in landing
   (`.csv`, `.csv.gz`, `.parquet`; names starting with `.` or `_` are uploads in progress and are skipped), at most
   `max_files` per run, oldest name first.
2. **validate_and_load** (mapped, one task per file, named after the file): structural rules (encoding, delimiter,
   field count, complete last line) and the GX suite `raw_events` (exact columns, types, event_type set, positive
   ids, price range, no future timestamps, uuid sessions, null-ratio and duplicate-ratio thresholds, row count > 0
   and within a band around the trailing average). Every result is a row of `quality.validation_runs`; the GX
   Data Docs page is linked in the task log.
   - **pass**: one transaction writes the `raw.ingested_files` record (sha256, rows, validation id) and COPYs the
     rows (with `file_id`, `line_no`) into the day partitions; the file moves to `archive/`. A re-delivered file
     (same sha256) is a no-op.
   - **fail**: the file moves to `quarantine/` unchanged with `<name>.report.json` and `<name>.summary.txt`; the
     task fails (no retry) with a message naming the file and every failed rule. Other files still load.
3. **emit_events**: emits the Asset `events` (extra: files, rows, days) when new rows landed; skipped otherwise.
4. **summarize**: fails the run if any file was quarantined or failed, after the good files have loaded, so the run
   shows red while good data flowed.

**Manual runs** (Trigger DAG w/ config): `path` (a file, folder or URL to ingest instead of landing; files outside
landing are left in place), `date` (only files whose name holds YYYY-MM-DD), `max_files`.
Re-validate a fixed or wrongly rejected file: `propensity requeue NAME` moves it back to landing. CLI equivalent of
this DAG: `propensity ingest [PATH...]`.
"""

from __future__ import annotations

import logging
from typing import Any

import pendulum
from airflow.sdk import Param, TriggerRule, dag, get_current_context, task
from pipeline_common import DEFAULT_ARGS, EVENTS, TAGS, parse_time_setting, schedule_for, task_resources
from pipeline_common import DAGRUN_TIMEOUT  # issue 13

log = logging.getLogger(__name__)


@dag(
    dag_id="ingest_events",
    dagrun_timeout=DAGRUN_TIMEOUT,
    schedule=schedule_for(parse_time_setting("ingest_schedule", "@hourly")),
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=[*TAGS, "ingest"],
    doc_md=__doc__,
    params={
        "path": Param(None, type=["null", "string"],
                      description="A file, folder or URL to ingest instead of the landing location (null: landing)."),
        "date": Param(None, type=["null", "string"], pattern=r"^\d{4}-\d{2}-\d{2}$",
                      description="Only files whose name holds this date, YYYY-MM-DD (null: all)."),
        "max_files": Param(None, type=["null", "integer"], minimum=1, maximum=1000,
                           description="Most files this run maps (null: settings.ingest_max_files_per_run)."),
    },
)  # fmt: skip
def ingest_events() -> None:
    @task
    def discover(params: dict[str, Any] | None = None) -> list[str]:
        """Migrate, then list the files to ingest (paths/URLs only go through XCom)."""
        from ml.dates import utc_date
        from ml.db import migrate
        from ml.ingest import discover_files

        params = params or {}
        day = utc_date(params["date"], what="date param") if params.get("date") else None
        with task_resources() as res:
            migrate(res.engine)
            files = discover_files(res.settings, params.get("path") or None, date=day, limit=params.get("max_files"))
        log.info("%d file(s) to ingest%s", len(files), "".join(f"\n  {f}" for f in files))
        return files

    @task(map_index_template="{{ file_name }}", max_active_tis_per_dagrun=4)
    def validate_and_load(path: str) -> dict[str, Any]:
        """Validate one file; load it exactly once, or quarantine it and fail naming every broken rule."""
        import dataclasses
        import posixpath

        from airflow.sdk.exceptions import AirflowFailException

        from ml.ingest import ingest_file

        ctx = get_current_context()
        ctx["file_name"] = posixpath.basename(path)  # type: ignore[typeddict-unknown-key] - map_index_template
        with task_resources() as res:
            result = ingest_file(path, res.settings, res.engine, dag_run_id=str(ctx["run_id"]))
        if result.status == "quarantined":
            # the file is in quarantine now: a retry would find nothing, so fail without retrying
            raise AirflowFailException(result.message)
        return dataclasses.asdict(result)  # IngestResult is a flat dataclass: its fields are the XCom value

    @task(trigger_rule=TriggerRule.ALL_DONE, outlets=[EVENTS])
    def emit_events(results: Any, outlet_events: Any = None) -> dict[str, Any]:
        """Emit the Asset `events` when rows were loaded (a skipped task emits nothing)."""
        from airflow.sdk.exceptions import AirflowSkipException

        loaded = [r for r in (results or []) if r and r.get("status") == "loaded"]
        if not loaded:
            raise AirflowSkipException("no new rows landed: the Asset events is not emitted")
        extra = {
            "files": [r["file_name"] for r in loaded],
            "file_ids": [r["file_id"] for r in loaded],
            "rows": sum(int(r["rows_loaded"]) for r in loaded),
            "days": sorted({d for r in loaded for d in r.get("days", [])}),
        }
        outlet_events[EVENTS].extra = extra
        log.info("events: %d rows from %d file(s), days %s", extra["rows"], len(loaded), extra["days"])
        return extra

    @task(trigger_rule=TriggerRule.ALL_DONE)
    def summarize(paths: list[str] | None, results: Any) -> dict[str, Any]:
        """One line per file; fail the run if any file was quarantined or failed (the good ones already loaded)."""
        from airflow.sdk.exceptions import AirflowFailException

        if paths is None:  # discover itself failed (e.g. a missing connection): its log names the cause
            raise AirflowFailException("discover failed: no file was listed or ingested; see the discover task log")
        done = {r["source_uri"]: r for r in (results or []) if r}
        by_status: dict[str, int] = {}
        for r in done.values():
            by_status[r["status"]] = by_status.get(r["status"], 0) + 1
            log.info("%-10s %s", r["status"], r["message"])
        failed = [p for p in paths if p not in done]
        summary = {"files": len(paths), **by_status, "failed": len(failed)}
        if failed:
            raise AirflowFailException(
                f"{len(failed)} of {len(paths)} file(s) did not load (quarantined or errored; see their "
                f"validate_and_load task logs and quality.validation_runs): " + ", ".join(failed)
            )
        return summary

    files = discover()
    results = validate_and_load.expand(path=files)
    emit_events(results)
    summarize(files, results)


ingest_events_dag = ingest_events()
