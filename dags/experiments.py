"""
### experiments

A/B experiments between model versions (`ml.experiments`, docs/experiments.md). Runs **daily at 00:30 UTC** and on
demand.

* **Daily** (`action` = `daily`, the default): **move_exposures** copies yesterday's (UTC) exposure counters of the
  lookup API from Redis (`P:xp:{E}:{A}:{D}:users` HyperLogLog and `...:requests`) into `experiments.exposures`,
  then **compute_results** records the per-arm results of every running experiment in `experiments.results`
  (read by `bi.experiment_results`) and prints the table in the task log. A sample-ratio mismatch is logged as an
  ERROR line starting `SAMPLE RATIO MISMATCH`.
* **Manual actions** (Trigger DAG w/ config):
  * `create`: `experiment_id`, `arms` (`control=VERSION,challenger=VERSION`; the first arm is the control and must
    be the champion unless `control` names another arm), `split` (`50,50`), `start_date`, `end_date` (UTC score
    dates), optional `description`, `traffic_percent`, `primary_metric`, `mde`, `horizon_days`, `allow_past`.
  * `start` / `stop` (`reason`): the lifecycle; the next `score_active_pairs` run scores per arm (or stops doing so).
  * `results`: the results of `experiment_id` now (exposures are moved first).

A bad configuration fails the task at once (no retry) with one line naming the field and the rule, e.g.
`split: shares must sum to 1 (or 100), got 90`. CLI equivalent: `propensity experiment create|start|stop|list|results`.
"""

from __future__ import annotations

import logging
from typing import Any

import pendulum
from airflow.sdk import CronTriggerTimetable, Param, dag, get_current_context, task
from pipeline_common import DEFAULT_ARGS, TAGS, schedule_for, task_resources

log = logging.getLogger(__name__)


@dag(
    dag_id="experiments",
    schedule=schedule_for(CronTriggerTimetable("30 0 * * *", timezone="UTC")),
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=[*TAGS, "experiments"],
    doc_md=__doc__,
    params={
        "action": Param("daily", enum=["daily", "create", "start", "stop", "results"],
                        description="daily: move exposures + results of running experiments; or a lifecycle action."),
        "experiment_id": Param(None, type=["null", "string"], description="Experiment id (all actions but daily)."),
        "arms": Param(None, type=["null", "string"],
                      description="create: NAME=MODEL_VERSION,... (first arm = control unless `control`)."),
        "split": Param(None, type=["null", "string"], description="create: shares per arm, e.g. 50,50."),
        "control": Param(None, type=["null", "string"], description="create: the control arm (serves the champion)."),
        "start_date": Param(None, type=["null", "string"], format="date",
                            description="create: first score date (UTC) scored per arm."),
        "end_date": Param(None, type=["null", "string"], format="date",
                          description="create: last score date (UTC) scored per arm."),
        "description": Param("", type="string", description="create: what the experiment tests."),
        "traffic_percent": Param(100.0, type="number", exclusiveMinimum=0, maximum=100,
                                 description="create: percent of users enrolled; the rest get the champion."),
        "primary_metric": Param("conversion", enum=["conversion", "purchases_per_exposed"],
                                description="create: the metric the decision rule reads."),
        "mde": Param(0.01, type="number", description="create: minimum detectable effect (absolute conversion)."),
        "horizon_days": Param(7, type="integer", minimum=1, maximum=90,
                              description="create: days after a score date in which a purchase converts."),
        "allow_past": Param(False, type="boolean", description="create: allow a start date in the past (replays)."),
        "reason": Param("", type="string", description="stop: why (stored with the experiment)."),
        "exposure_date": Param(None, type=["null", "string"], format="date",
                               description="UTC day whose exposure counters to move; null: yesterday."),
    },
)
def experiments() -> None:
    @task
    def apply_action(params: dict[str, Any] | None = None) -> dict[str, Any]:
        """create | start | stop the experiment of the params (nothing for daily / results)."""
        from airflow.sdk.exceptions import AirflowFailException

        from ml import experiments as X
        from ml.errors import ExperimentError

        p = params or {}
        action, eid = p.get("action", "daily"), p.get("experiment_id")
        if action == "daily":
            return {}
        if not eid:
            raise AirflowFailException(f"action={action} needs the `experiment_id` param")
        by = f"dag run {get_current_context()['run_id']}"
        with task_resources() as res:
            try:
                if action == "create":
                    if not (p.get("arms") and p.get("start_date") and p.get("end_date")):
                        raise AirflowFailException("action=create needs the `arms`, `start_date` and `end_date` params")
                    exp = X.create_experiment(
                        res.engine, eid, p["arms"], split=p.get("split"), start_date=p["start_date"],
                        end_date=p["end_date"], description=p.get("description") or "", control=p.get("control"),
                        traffic_percent=float(p.get("traffic_percent") or 100), mde=float(p.get("mde") or 0.01),
                        primary_metric=p.get("primary_metric") or "conversion",
                        horizon_days=int(p.get("horizon_days") or 7), allow_past=bool(p.get("allow_past")), actor=by)
                elif action == "start":
                    exp = X.start_experiment(res.engine, eid, actor=by)
                elif action == "stop":
                    exp = X.stop_experiment(res.engine, eid, reason=p.get("reason") or "", actor=by)
                else:
                    exp = X.get_experiment(res.engine, eid)
            except ExperimentError as e:  # a configuration error: retrying cannot help
                raise AirflowFailException(str(e)) from e
        log.info("experiment %s is %s", exp.experiment_id, exp.status)
        return {"experiment_id": exp.experiment_id, "status": exp.status}

    @task
    def move_exposures(params: dict[str, Any] | None = None) -> int:
        """Redis exposure counters of the day (default yesterday, UTC) -> experiments.exposures."""
        from ml import experiments as X

        with task_resources() as res:
            rows = X.move_exposures(res.engine, res.redis, res.settings, (params or {}).get("exposure_date"))
        return len(rows)

    @task
    def compute_results(moved: int, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Per-arm results -> experiments.results (bi.experiment_results); the table in the log."""
        from ml import experiments as X

        p = params or {}
        out = []
        with task_resources() as res:
            if p.get("action") == "results" and p.get("experiment_id"):
                ids = [p["experiment_id"]]
            else:
                ids = [e.experiment_id for e in X.list_experiments(res.engine, "running")]
            for eid in ids:
                result = X.experiment_results(res.engine, eid, srm_p_threshold=res.settings.experiment_srm_p_threshold,
                                              top_n=res.settings.publish_top_n,
                                              min_probability=res.settings.publish_min_probability)
                for line in result.lines():
                    log.info(line)
                out.append({"experiment_id": eid, "srm_flag": result.srm_flag,
                            "decisions": {a.arm: a.decision for a in result.arms}})
        return out

    acted = apply_action()
    moved = move_exposures()
    acted >> moved
    compute_results(moved)


experiments_dag = experiments()
