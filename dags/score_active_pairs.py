"""
### score_active_pairs

Nightly batch scoring of every active (user, product) pair, **03:00 UTC**, and whenever `train_ensemble` registers a
model (Asset `model`). Emits the Asset `scores` when the new
score date is live in Postgres.

0. **freshness_gate** (sensor, reschedule mode): the events of the day before the score date must have landed
   (`ml.freshness`: rows up to the day's end, count not far below the trailing average). It re-checks every 5
   minutes until `PROPENSITY_FRESHNESS_WAIT_HOURS` after the run started (default 0: fail at once), then fails naming
   the missing day and records a `freshness` alert. Param `skip_freshness_check=true` scores anyway (backfills).
1. **plan**: resolves the model (param `model_version`, default: the registry's champion; while an A/B experiment
   runs on the date, each user's pairs are scored by the model of the user's arm, docs/experiments.md), drops stage tables of
   failed or superseded runs, counts the active pairs per user_id hash bucket, records a `scoring.runs` row and
   creates the run's stage table. XCom carries only bucket descriptors `{run_id, score_date, bucket, n_buckets,
   model_version}`.
2. **score_bucket** (mapped, one per bucket, pool `propensity_db_writers`): features -> ensemble probability ->
   exact SHAP for every row -> reason codes / insights -> binary COPY into the stage. Progress lines (pairs done,
   pairs/s, ETA) in each task log. A retry replaces the bucket's rows.
3. **finalize**: Great Expectations checks on the output (row count = planned pairs, probabilities in [0, 1], no
   null/NaN contribution, max additivity residual on a sample <= 1e-4), then swaps the score date's partition of
   `scoring.scores` in one transaction. Readers never see a partial date; a re-run replaces the date. The run
   summary is in this task's log and in `scoring.runs.summary`.
4. **publish**: the top products per user to Redis as a new version, then one pointer flip (`ml.publish`). Param
   `publish` (default `auto`): a score date older than the one served (a backfill) is scored into Postgres but not
   published; `always` publishes (an older date still needs `allow_older=true`, recorded in
   `scoring.publications.allowed_older`); `never` skips publishing.
5. **drift**: PSI of the scores and the features against the previous score date -> `monitoring.metrics`.
6. **drift_vs_reference**: PSI of every feature and of the score against the model's training reference, null
   rates, share of pairs unseen at training -> `monitoring.metrics` (kinds `ref_*`); alerts over the thresholds and
   when the served score date is stale (docs/monitoring.md).

If a batch or finalize fails, **mark_failed** records the run as failed; the previous partition and the Redis
version being served stay untouched.

**Manual runs** (Trigger DAG w/ config): `score_date` (YYYY-MM-DD, default: the run's logical date, UTC; features
use events strictly before that date), `model_version`, `buckets` (mapped tasks, default `PROPENSITY_SCORE_BUCKETS`
= 8). `rollback_redis=true` skips scoring and flips Redis back to the previously published version.

**Pool**: create it once: `airflow pools set propensity_db_writers 4 "scoring COPY writers"` (the name comes from
`PROPENSITY_SCORE_DB_POOL`; set it to `default_pool` to do without). A missing pool leaves the mapped tasks queued.
CLI equivalent of a run: `propensity score --score-date YYYY-MM-DD`.
"""

from __future__ import annotations

import logging
from typing import Any

import pendulum
from airflow.sdk import CronTriggerTimetable, Param, TriggerRule, dag, get_current_context, task
from pipeline_common import DEFAULT_ARGS, MODEL, SCORES, TAGS, parse_time_setting, schedule_for, task_resources
from pipeline_common import DAGRUN_TIMEOUT  # issue 13

log = logging.getLogger(__name__)


@dag(
    dag_id="score_active_pairs",
    dagrun_timeout=DAGRUN_TIMEOUT,
    # nightly, and also as soon as a new model version is registered (Asset `model`)
    schedule=schedule_for(CronTriggerTimetable("0 3 * * *", timezone="UTC"), MODEL),
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=[*TAGS, "scoring"],
    doc_md=__doc__,
    params={
        "score_date": Param(None, type=["null", "string"], format="date",
                            description="Score date YYYY-MM-DD (UTC); features use events before it. "
                            "Null: the run's logical date."),
        "model_version": Param(None, type=["null", "string"],
                               description="Model version from ml.model_versions; null: the champion."),
        "buckets": Param(None, type=["null", "integer"], minimum=1, maximum=512,
                         description="user_id hash buckets = mapped score tasks; null: settings.score_buckets (fewer for a small night: score_bucket_min_pairs)."),
        "rollback_redis": Param(False, type="boolean",
                                description="Skip scoring; flip Redis back to the previously published version."),
        "publish": Param("auto", type="string", enum=["auto", "always", "never"],
                         description="auto: publish unless the date is older than the served one (backfills only "
                         "write Postgres); always: publish (an older date still needs allow_older); never: skip."),
        "allow_empty": Param(False, type="boolean",
                             description="Accept a score date with no active pairs (otherwise plan fails)."),
        "allow_shrink": Param(False, type="boolean",
                              description="Accept a partition smaller than (1 - score_max_shrink_fraction) x the "
                              "previous date's (otherwise finalize fails and the old partition stays)."),
        "allow_older": Param(False, type="boolean",
                             description="Let publish serve a score date older than the served one (recorded)."),
        "skip_freshness_check": Param(False, type="boolean",
                                      description="Score even when the events of the day before the score date "
                                      "have not landed (backfills, re-runs)."),
    },
)
def score_active_pairs() -> None:
    @task.branch
    def choose_path(params: dict[str, Any] | None = None) -> str:
        """Scoring path, or only the Redis rollback."""
        return "rollback_redis" if (params or {}).get("rollback_redis") else "freshness_gate"

    @task.sensor(poke_interval=300, timeout=parse_time_setting("freshness_wait_hours", 0.0) * 3600 + 3600,
                 mode="reschedule")
    def freshness_gate(params: dict[str, Any] | None = None) -> Any:
        """The events of the day before the score date must have landed (ml.freshness); re-checks every 5 minutes
        (reschedule mode: no worker slot held) until settings.freshness_wait_hours after the run started, then fails
        naming the missing day and records a `freshness` alert. Param skip_freshness_check overrides."""
        import pendulum as pdl
        from airflow.sdk import PokeReturnValue

        from ml.dates import utc_date
        from ml.freshness import check_freshness, require_fresh

        params = params or {}
        ctx = get_current_context()
        day = utc_date(params.get("score_date") or ctx.get("logical_date") or ctx["dag_run"].run_after,
                       what="score_date")
        if params.get("skip_freshness_check"):
            log.warning("freshness gate skipped by param skip_freshness_check for score date %s", day)
            return PokeReturnValue(is_done=True, xcom_value={"skipped": True})
        with task_resources() as res:
            fresh = check_freshness(res.engine, res.settings, day)
            if fresh.fresh:
                return PokeReturnValue(is_done=True, xcom_value=require_fresh(res.engine, res.settings, day).as_dict())
            started = ctx["dag_run"].start_date or pdl.now("UTC")
            if pdl.now("UTC") >= started + pdl.duration(hours=res.settings.freshness_wait_hours):
                from airflow.sdk.exceptions import AirflowFailException

                from ml.errors import FreshnessError

                try:  # fails naming the day, with a `freshness` alert; retrying would only repeat the wait
                    require_fresh(res.engine, res.settings, day)
                except FreshnessError as e:
                    raise AirflowFailException(str(e)) from e
            log.info("freshness gate waiting: %s", fresh.reason)
        return PokeReturnValue(is_done=False)

    @task
    def plan(params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Plan the run; returns one descriptor per bucket (no data in XCom). Also pushes XCom `run_id`."""
        from ml.dates import utc_date
        from ml.score import plan_run

        ctx = get_current_context()
        day = utc_date(params.get("score_date") or ctx.get("logical_date") or ctx["dag_run"].run_after,
                       what="score_date")
        with task_resources() as res:
            p = plan_run(res.engine, res.settings, day, model_version=params.get("model_version"),
                         n_buckets=params.get("buckets"), orchestrator_run_id=str(ctx["run_id"]),
                         allow_empty=bool(params.get("allow_empty")), allow_shrink=bool(params.get("allow_shrink")))
        ctx["ti"].xcom_push(key="run_id", value=p.run_id)
        return [b.as_dict() for b in p.batches]

    @task(pool=parse_time_setting("score_db_pool", "propensity_db_writers"), map_index_template="bucket {{ bucket }}")
    def score_bucket(batch: dict[str, Any]) -> dict[str, Any]:
        """Features -> probability -> exact SHAP -> insights -> COPY into the stage, for one bucket."""
        from ml.score import score_batch

        ctx = get_current_context()
        ctx["bucket"] = batch["bucket"]  # type: ignore[typeddict-unknown-key] - rendered by map_index_template
        with task_resources() as res:
            return score_batch(res.engine, res.settings, batch).as_dict()

    @task(outlets=[SCORES])
    def finalize(planned: list[dict[str, Any]]) -> dict[str, Any]:
        """Output checks, then the atomic partition swap; emits Asset `scores`."""
        from ml.score import finalize_run

        ctx = get_current_context()
        run_id = planned[0]["run_id"]
        with task_resources() as res:
            summary = finalize_run(res.engine, res.settings, run_id)
        ctx["outlet_events"][SCORES].extra = {"score_date": summary.score_date.isoformat(), "run_id": run_id,
                                              "model_version": summary.model_version,
                                              "scored_pairs": summary.scored_pairs}
        return summary.as_dict()

    @task
    def publish(summary: dict[str, Any], params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Hot scores of the date to Redis (a Redis Cluster when PROPENSITY_REDIS_CLUSTER) as a new version, then the
        pointer flip; param `publish` (auto/always/never) and `allow_older` decide for backfills."""
        from ml.dates import utc_date
        from ml.publish import publish_version, served_score_date

        params = params or {}
        mode, allow_older = params.get("publish") or "auto", bool(params.get("allow_older"))
        day = utc_date(summary["score_date"], what="score_date")
        if mode == "never":
            log.info("param publish=never: score_date %s stays in Postgres only", day)
            return {"published": False, "score_date": day.isoformat(), "reason": "publish=never"}
        with task_resources() as res:
            if mode == "auto" and not allow_older:
                _, served_day = served_score_date(res.redis, res.settings)
                if served_day is not None and day < served_day:
                    log.warning("score_date %s is older than the served %s (a backfill): not published; trigger "
                                "with publish=always, allow_older=true to serve it", day, served_day)
                    return {"published": False, "score_date": day.isoformat(),
                            "reason": f"older than served {served_day}"}
            return publish_version(res.engine, res.redis, res.settings, day, allow_older=allow_older).as_dict()

    @task
    def drift(summary: dict[str, Any]) -> dict[str, float | None]:
        """PSI of scores and features vs the previous score date -> monitoring.metrics."""
        from ml.dates import utc_date
        from ml.drift import record_drift

        day = utc_date(summary["score_date"], what="score_date")
        with task_resources() as res:
            metrics = record_drift(res.engine, res.settings, day)
        return {f"{m.kind}:{m.name}": m.value for m in metrics}

    @task
    def drift_vs_reference(summary: dict[str, Any]) -> dict[str, float | None]:
        """PSI, null rates and unseen share vs the model's training reference -> monitoring.metrics; alerts over
        the thresholds; an alert when the served score date is stale (issue 13)."""
        from ml.alerts import check_served
        from ml.dates import utc_date
        from ml.drift import record_reference_drift

        day = utc_date(summary["score_date"], what="score_date")
        with task_resources() as res:
            metrics = record_reference_drift(res.engine, res.settings, day)
            check_served(res.engine, res.redis, res.settings)
            from ml.monitor import push_monitor_summary  # P:monitor: the gauges of the API's /metrics

            push_monitor_summary(res.engine, res.redis, res.settings)
        return {f"{m.kind}:{m.name}": m.value for m in metrics}

    @task(trigger_rule=TriggerRule.ONE_FAILED)
    def mark_failed() -> None:
        """A batch or finalize failed: record the run as failed (the live partition is untouched)."""
        from ml.score import fail_run

        ctx = get_current_context()
        run_id = ctx["ti"].xcom_pull(task_ids="plan", key="run_id")
        if not run_id:
            log.warning("no scoring run was planned; nothing to mark")
            return
        with task_resources() as res:
            fail_run(res.engine, run_id, f"a task of DAG run {ctx['run_id']} failed; see its task logs")

    @task
    def rollback_redis() -> dict[str, Any]:
        """Flip the Redis pointer (cluster-aware) back to the version served before the current one."""
        from ml.publish import rollback_version

        with task_resources() as res:
            result = rollback_version(res.redis, res.settings, engine=res.engine)
        log.warning("Redis rolled back: version %s -> %s (score_date %s)", result.from_version, result.to_version,
                    result.score_date)
        return result.as_dict()

    path = choose_path()
    gate = freshness_gate()
    planned = plan()
    gate >> planned
    batches = score_bucket.expand(batch=planned)
    summary = finalize(planned)
    batches >> summary
    publish(summary) >> drift(summary) >> drift_vs_reference(summary)
    [batches, summary] >> mark_failed()
    path >> [gate, rollback_redis()]


score_active_pairs_dag = score_active_pairs()
