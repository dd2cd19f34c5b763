"""
### train_ensemble

Weekly training of the purchase-propensity ensemble (CatBoost, XGBoost, LightGBM and a LightGBM random forest,
blended in log-odds and Platt-calibrated), **Sundays at 02:00 UTC**. With `PROPENSITY_TRAIN_ON_NEW_EVENTS=true` it also
runs whenever new events land (Asset `events`).

1. **build_snapshots**: weekly point-in-time training snapshots up to `as_of` (default: the run's logical date), saved
   as Parquet under the artifacts location; only the path goes through XCom.
2. **tune_member** (mapped, one per member): Optuna TPE (seeded) with pruning and early stopping; the study lives in
   Postgres (schema `experiments`, name `member-<name>-<window>-<fingerprint>`), so a retried task resumes it. Browse:
   `optuna-dashboard "postgresql+psycopg2://...?options=-csearch_path%3Dexperiments"`.
3. **evaluate_and_register**: blend weights + Platt on validation, holdout metrics (ROC-AUC, PR-AUC, log loss, Brier,
   ECE, F1/precision/recall at the validation threshold, hit-rate@10), artifacts in native formats with a manifest,
   a `ml.model_versions` row, and the **champion/challenger gate** (PR-AUC and ECE against the champion on the same
   holdout; decision in `ml.gate_decisions`). Emits the Asset `model`.
4. **write_report**: a self-contained HTML model report; its link is in this task's log.

**Manual runs** (Trigger DAG w/ config): `n_trials`, `timeout` (seconds per member), `as_of` (YYYY-MM-DD),
`members`, `force_promote` (promote even if the gate refuses; recorded as manual).
`action="promote"` with `version` promotes that version; `action="rollback"` restores the previous champion; both
skip training and are recorded in `ml.gate_decisions` with reason "manual". CLI equivalents: `propensity train`,
`propensity promote VERSION`, `propensity promote --previous`, `propensity models`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pendulum
from airflow.sdk import CronTriggerTimetable, Param, dag, get_current_context, task
from pipeline_common import (
    DEFAULT_ARGS,
    EVENTS,
    MODEL,
    TAGS,
    parse_time_setting,
    schedule_for,
    task_resources,
)
from pipeline_common import DAGRUN_TIMEOUT  # issue 13

log = logging.getLogger(__name__)

WEEKLY = CronTriggerTimetable("0 2 * * 0", timezone="UTC")  # Sunday 02:00 UTC
MEMBERS = ["catboost", "xgboost", "lightgbm", "random_forest"]


def _staging_dir(settings: Any, context: Any) -> Path:
    """This DAG run's staging folder of tuned members: ``<artifacts>/staging/<filesystem-safe run id>``."""
    import re

    key = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(context["run_id"]))[:120]
    return Path(settings.location("artifacts")) / "staging" / key


@dag(
    dag_id="train_ensemble",
    dagrun_timeout=DAGRUN_TIMEOUT,
    # weekly; plus the Asset `events` when PROPENSITY_TRAIN_ON_NEW_EVENTS
    schedule=schedule_for(WEEKLY, EVENTS if parse_time_setting("train_on_new_events", False) else None),
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=[*TAGS, "training"],
    doc_md=__doc__,
    params={
        "action": Param("train", enum=["train", "promote", "rollback"],
                        description="train (default); promote `version`; or roll back to the previous champion."),
        "n_trials": Param(None, type=["null", "integer"], minimum=0,
                          description="Optuna trials per member (null: settings.n_trials). 0 fits defaults."),
        "timeout": Param(None, type=["null", "integer"], minimum=1,
                         description="Tuning time budget per member, seconds (null: settings.tune_timeout_s)."),
        "as_of": Param(None, type=["null", "string"],
                       description="Train on snapshots labelled before this date (YYYY-MM-DD, UTC); null: the run's "
                       "logical date."),
        "members": Param(MEMBERS, type="array", items={"type": "string", "enum": MEMBERS}, minItems=1,
                         description="Ensemble members to train."),
        "force_promote": Param(False, type="boolean",
                               description="Promote the new version even if the gate refuses (recorded as manual)."),
        "version": Param(None, type=["null", "string"], description="Version to promote when action=promote."),
    },
)
def train_ensemble() -> None:
    @task.branch
    def choose_action(params: dict[str, Any] | None = None) -> str:
        """Training path or registry management (promote / rollback)."""
        return "build_snapshots" if (params or {}).get("action", "train") == "train" else "manage_registry"

    @task
    def build_snapshots(params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Training snapshots -> Parquet; returns one descriptor (data path, member) per member to train."""
        from pathlib import Path

        from ml.dates import utc_date
        from ml.training_data import prepare_training_data, save_training_data

        ctx = get_current_context()
        as_of = utc_date(params.get("as_of") or ctx.get("logical_date") or ctx["dag_run"].run_after, what="as_of")
        with task_resources() as res:
            data = prepare_training_data(res.engine, res.settings, as_of)
            path = save_training_data(data, Path(res.settings.location("artifacts")) / "training")
        log.info("training data: %d rows, fingerprint %s -> %s", len(data.frame), data.fingerprint[:16], path)
        return [{"data_uri": path, "member": m} for m in params["members"]]

    @task(map_index_template="{{ member }}")
    def tune_member(data_uri: str, member: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Tune + fit one member; the model is staged in its native format, only its path goes to XCom."""
        from ml.train import tune_and_stage_member

        ctx = get_current_context()
        ctx["member"] = member  # type: ignore[typeddict-unknown-key] - rendered by map_index_template
        with task_resources() as res:
            staged = tune_and_stage_member(data_uri, member, res.settings, _staging_dir(res.settings, ctx) / member,
                                           n_trials=params.get("n_trials"), timeout=params.get("timeout"))
        return staged.as_dict()

    @task(outlets=[MODEL])
    def evaluate_and_register(staged: list[dict[str, Any]], params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Blend + calibrate + evaluate, save artifacts, register, apply the gate; emits Asset `model`."""
        import shutil

        from ml.train import register_staged_members

        ctx = get_current_context()
        with task_resources() as res:
            reg = register_staged_members(res.engine, res.settings, list(staged),
                                          force_promote=bool(params.get("force_promote")),
                                          dag_run_id=str(ctx["run_id"]))
            shutil.rmtree(_staging_dir(res.settings, ctx), ignore_errors=True)
        ctx["outlet_events"][MODEL].extra = {"version": reg.version, "status": reg.status}
        return {"version": reg.version, "status": reg.status, "reason": reg.decision.reason}

    @task
    def write_report(registered: dict[str, Any]) -> str:
        """The HTML model report; its link is logged here."""
        from pathlib import Path

        from ml.report import write_version_report

        with task_resources() as res:
            uri = write_version_report(res.engine, res.settings, registered["version"])
        link = uri if "://" in uri else Path(uri).as_uri()
        log.info("MODEL REPORT for %s (%s): %s", registered["version"], registered["status"], link)
        return link

    @task(outlets=[MODEL])
    def manage_registry(params: dict[str, Any] | None = None) -> dict[str, Any]:
        """action=promote: make `version` champion; action=rollback: restore the previous champion."""
        from airflow.sdk.exceptions import AirflowFailException

        from ml.errors import ModelError
        from ml.registry import promote_version, rollback_champion

        ctx = get_current_context()
        if params["action"] == "promote" and not params.get("version"):
            raise AirflowFailException("action=promote needs the `version` param")
        reason, by = f"DAG run {ctx['run_id']}", str(ctx["run_id"])
        with task_resources() as res:
            try:
                if params["action"] == "promote":
                    mv = promote_version(res.engine, params["version"], reason=reason, decided_by=by)
                else:
                    mv = rollback_champion(res.engine, reason=reason, decided_by=by)
            except ModelError as e:  # an unknown version or nothing to roll back to: retrying cannot help
                raise AirflowFailException(str(e)) from e
        log.info("champion is now %s", mv.version)
        ctx["outlet_events"][MODEL].extra = {"version": mv.version, "status": mv.status}
        return {"version": mv.version, "status": mv.status}

    branch = choose_action()
    snap = build_snapshots()
    staged = tune_member.expand_kwargs(snap)
    registered = evaluate_and_register(staged=staged)
    write_report(registered)
    branch >> [snap, manage_registry()]


train_ensemble_dag = train_ensemble()
