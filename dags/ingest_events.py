"""
### ingest_events

Validates every new REES46 event file in the **landing** location (a local folder or an object-storage URL) with
Great Expectations and loads the good ones into `raw.events`, exactly once. Hourly by default
(`PROPENSITY_INGEST_SCHEDULE`, a cron expression or preset).

1. **discover**: applies pending SQL migrations (a no-op when up to date), then lists the files waiting in landing
   (`.csv`, `.csv.gz`, `.parquet`; names starting with `.` or `_` are uploads in progress and are skipped), at most
   `max_files` per run, oldest name first.
2. **validate_and_load** (mapped, one task per **group** of files, named after its first file: at most
   `PROPENSITY_INGEST_GROUP_MAX_FILES` files (16) and about `PROPENSITY_INGEST_GROUP_MAX_ROWS` rows (2M, estimated
   from file sizes), so a backlog of 63 small files is a handful of tasks). Each file of a group is validated,
   loaded or quarantined and recorded on its own: structural rules (encoding, delimiter,
   field count, complete last line) and the GX suite `raw_events` (exact columns, types, event_type set, positive
   ids, price range, no future timestamps, uuid sessions, null-ratio and duplicate-ratio thresholds, row count > 0
   and within a band around the trailing average). Every result is a row of `quality.validation_runs`; the GX
   Data Docs page is linked in the task log.
   - **pass**: one transaction writes the `raw.ingested_files` record (sha256, rows, validation id) and COPYs the
     rows (with `file_id`, `line_no`) into the day partitions; the file moves to `archive/`. A re-delivered file
     (same sha256) is a no-op.
   - **fail**: the file moves to `quarantine/` unchanged with `<name>.report.json` and `<name>.summary.txt`; the
     task log names the file and every failed rule, and `summarize` fails the run. Other files, in the same group
     or not, still load. An unexpected error on a file fails the task after the rest of its group was tried; the
     retry finds the loaded files already recorded (no-ops) and tries the failed one again.
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
        "replace": Param(False, type="boolean",
                         description="Replace: a file whose events (or name) are already loaded swaps that file's "
                         "rows atomically instead of being quarantined as a duplicate delivery."),
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

    @task
    def group(files: list[str]) -> list[dict[str, Any]]:
        """Groups of files, one mapped task each (bounded by files and estimated rows per task)."""
        import posixpath

        from ml.ingest import group_files

        with task_resources() as res:
            groups = group_files(files, res.settings)
        log.info("%d file(s) in %d task(s)", len(files), len(groups))
        return [{"paths": g, "label": posixpath.basename(g[0]) + (f" (+{len(g) - 1})" if len(g) > 1 else "")}
                for g in groups]

    @task(map_index_template="{{ file_name }}", max_active_tis_per_dagrun=4)
    def validate_and_load(files: dict[str, Any]) -> list[dict[str, Any]]:
        """Validate each file of the group; load each exactly once, or quarantine it naming every broken rule."""
        import dataclasses

        from ml.ingest import ingest_files

        ctx = get_current_context()
        ctx["file_name"] = files["label"]  # type: ignore[typeddict-unknown-key] - map_index_template
        with task_resources() as res:
            results = ingest_files(files["paths"], res.settings, res.engine, dag_run_id=str(ctx["run_id"]),
                                   replace=bool(ctx["params"].get("replace")))
        for r in results:
            (log.error if r.status in ("quarantined", "error") else log.info)("%-11s %s", r.status, r.message)
        errors = [r for r in results if r.status == "error"]
        if errors:  # an infrastructure problem: retry (the files loaded meanwhile are no-ops then)
            raise RuntimeError("; ".join(r.message for r in errors))
        return [dataclasses.asdict(r) for r in results]  # IngestResult is a flat dataclass

    @task(trigger_rule=TriggerRule.ALL_DONE, outlets=[EVENTS])
    def emit_events(results: Any, outlet_events: Any = None) -> dict[str, Any]:
        """Emit the Asset `events` when rows were loaded (a skipped task emits nothing)."""
        from airflow.sdk.exceptions import AirflowSkipException

        loaded = [r for rs in (results or []) for r in (rs or []) if r and r.get("status") == "loaded"]
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
        done = {r["source_uri"]: r for rs in (results or []) for r in (rs or []) if r}
        by_status: dict[str, int] = {}
        for r in done.values():
            by_status[r["status"]] = by_status.get(r["status"], 0) + 1
            log.info("%-10s %s", r["status"], r["message"])
        failed = [p for p in paths if p not in done or done[p]["status"] in ("quarantined", "error")]
        summary = {"files": len(paths), **by_status, "failed": len(failed)}
        if failed:
            raise AirflowFailException(
                f"{len(failed)} of {len(paths)} file(s) did not load (quarantined or errored; see their "
                f"validate_and_load task logs and quality.validation_runs): " + ", ".join(failed)
            )
        return summary

    files = discover()
    results = validate_and_load.expand(files=group(files))
    emit_events(results)
    summarize(files, results)


ingest_events_dag = ingest_events()
