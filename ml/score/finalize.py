"""Finalizing a scoring run (step 3 of the :mod:`ml.score` life of a run): check the stage table with Great
Expectations, then swap it in as the score date's partition of ``scoring.scores`` in one transaction; and
:func:`run_scoring`, the whole run (plan, every batch, finalize) in one process for the CLI, tests and benchmarks.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from psycopg import sql as psql
from sqlalchemy.engine import Engine

from ml.errors import RunSuperseded, ScoringError
from ml.jsonutil import dumps, to_jsonable
from ml.pgcopy import pg_days
from ml.score.arms import RunArms
from ml.score.batch import score_batch
from ml.score.plan import load_model, plan_run, run_row
from ml.score.race import lost_error
from ml.score.records import CheckResult, RunSummary
from ml.score.tables import partition_name, scoring_table, sql_text
from ml.settings import Settings

if TYPE_CHECKING:
    from ml.ensemble import Ensemble

log = logging.getLogger(__name__)

_CHECK_SUITE = "score_output"
_SWAP_LOCK_NS = 7_262_040  # pg_advisory_xact_lock(namespace, day): one swap of a given day at a time


# --- checks --------------------------------------------------------------------------------------------------------
def check_stage(engine: Engine, settings: Settings, run_id: str) -> list[CheckResult]:
    """Great Expectations checks of a run's stage table (SQL datasource; the data never leaves PostgreSQL):

    * ``row_count_equals_planned``: rows == the pairs planned for the run;
    * ``probability_in_0_1`` and not-null checks of probability, base_value, contributions, top_contributions;
    * ``contributions_length`` / ``contributions_complete``: every vector has one entry per feature, none null/NaN;
    * ``additivity_residual_max``: on a sample of ``score_check_sample_rows`` rows (Bernoulli, repeatable),
      max |sum(contributions) + base_value - logit(probability)| <= ``score_additivity_tolerance``.

    The outcome is recorded in ``quality.validation_runs`` (suite ``score_output``).
    """
    from ml.quality import GxRunner, gx, record_validation

    gxe = gx().expectations
    with engine.connect() as conn:
        run = run_row(conn, run_id)
    if run is None or run.stage_table is None:
        raise ScoringError(f"scoring run {run_id}: no run or no stage table to check")
    stage, planned, n_features = run.stage_table, int(run.planned_pairs or 0), len(run.feature_names)
    sample = stage + "_chk"
    pct = min(100.0, 100.0 * settings.score_check_sample_rows / max(planned, 1))
    drop_sample = sa.text(sql_text("drop_table", table=scoring_table(sample)))
    with engine.begin() as conn:
        conn.execute(drop_sample)
        conn.execute(sa.text(sql_text("check_sample", sample=scoring_table(sample), stage=scoring_table(stage))),
                     {"percent": pct})
        sampled = conn.execute(sa.text(sql_text("count_rows", table=scoring_table(sample)))).scalar_one()
    try:
        runner = GxRunner()
        ds = runner.context().data_sources.add_sql("scoring", connection_string=engine.url.render_as_string(hide_password=False))
        suites: list[tuple[Any, list[tuple[str, Any]]]] = [
            (ds.add_table_asset("stage", table_name=stage, schema_name="scoring"), [
                ("row_count_equals_planned", gxe.ExpectTableRowCountToEqual(value=planned)),
                ("probability_in_0_1", gxe.ExpectColumnValuesToBeBetween(column="probability", min_value=0.0,
                                                                         max_value=1.0)),
                *[(f"{c}_not_null", gxe.ExpectColumnValuesToNotBeNull(column=c))
                  for c in ("probability", "base_value", "contributions", "top_contributions")],
            ]),
            (ds.add_query_asset("contributions", query=(
                "select cardinality(contributions) as n_contributions, (array_position(contributions, null) is null"
                " and array_position(contributions, 'NaN'::real) is null) as contributions_complete"
                f" from {scoring_table(stage).as_string()}")), [
                ("contributions_length", gxe.ExpectColumnValuesToBeBetween(
                    column="n_contributions", min_value=n_features, max_value=n_features)),
                ("contributions_complete", gxe.ExpectColumnValuesToBeInSet(
                    column="contributions_complete", value_set=[True])),
            ]),
        ]
        arms = RunArms.from_params(run.params)
        if arms is not None:  # per-arm scoring: every row's model is its arm's (non-enrolled rows: the control's)
            expected = psql.SQL(", ").join(psql.SQL("({}, {})").format(psql.Literal(a.name), psql.Literal(a.model_version))
                                           for a in arms.arms)
            query = psql.SQL(
                "select (s.model_version = coalesce(m.model_version, {control}) and (s.arm is null) = (s.experiment_id"
                " is null) and coalesce(s.experiment_id = {eid}, true)) as arm_model_matches from {stage} as s left"
                " join (values {expected}) as m(arm, model_version) on m.arm = s.arm").format(
                control=psql.Literal(arms.control.model_version), eid=psql.Literal(arms.experiment_id),
                stage=scoring_table(stage), expected=expected).as_string()
            suites.append((ds.add_query_asset("arms", query=query), [
                ("arm_model_version_matches", gxe.ExpectColumnValuesToBeInSet(column="arm_model_matches",
                                                                              value_set=[True])),
            ]))
        if sampled or planned:
            suites.append((ds.add_table_asset("residuals", table_name=sample, schema_name="scoring"), [
                ("additivity_sample_not_empty", gxe.ExpectTableRowCountToBeBetween(min_value=1)),
                ("additivity_residual_max", gxe.ExpectColumnMaxToBeBetween(
                    column="residual", max_value=settings.score_additivity_tolerance)),
            ]))
        checks: list[CheckResult] = []
        raw: list[dict[str, Any]] = []
        for asset, rules in suites:
            suite = gx().ExpectationSuite(name=f"{_CHECK_SUITE}_{asset.name}", expectations=[e for _, e in rules])
            batch = asset.add_batch_definition_whole_table("all").get_batch()
            # the stage-wide suites first with BOOLEAN_ONLY: GX then computes only the aggregates that decide
            # success, not the "unexpected values" query that scans the stage once more per column rule (~4 s of a
            # 1.1M-pair finalize). A passing rule's observed value follows from its success (0 unexpected rows, the
            # planned row count); a suite with a failure is validated again with GX's default format for the report.
            outcome = None
            if asset.name != "residuals":
                quick = runner.validate_batch(suite, batch, result_format="BOOLEAN_ONLY")
                if all(r.success for r in quick.expectations):
                    outcome = quick
            if outcome is None:
                outcome = runner.validate_batch(suite, batch)
            by_type: dict[str, list[Any]] = {}
            for r in outcome.expectations:
                by_type.setdefault(r.expectation_type, []).append(r)
            for rule, exp in rules:
                r = by_type[exp.expectation_type].pop(0)
                observed = (r.result or {}).get("observed_value", (r.result or {}).get("unexpected_count"))
                if observed is None and r.success:  # BOOLEAN_ONLY: what a pass implies
                    observed = exp.configuration.kwargs.get("value", 0)
                expected = dumps({k: v for k, v in exp.configuration.kwargs.items()
                                  if k in ("value", "min_value", "max_value", "value_set")})
                checks.append(CheckResult(rule, bool(r.success), to_jsonable(observed), expected))
                raw.append({"rule": rule, "success": bool(r.success), "observed": to_jsonable(observed),
                            "expected": expected, "result": to_jsonable(r.result)})
    finally:
        with engine.begin() as conn:
            conn.execute(drop_sample)
    failed = [c.rule for c in checks if not c.success]
    record_validation(engine, suite_name=_CHECK_SUITE, file_name=stage, file_uri=f"postgresql:scoring.{stage}",
                      success=not failed, row_count=planned,
                      statistics={"run_id": run_id, "score_date": str(run.score_date), "sampled_rows": sampled},
                      results=raw, failed_rules=failed, dag_run_id=run.orchestrator_run_id)
    return checks


# --- the run's end: failed, or checked and swapped -----------------------------------------------------------------
def fail_run(engine: Engine, run_id: str, error: BaseException | str) -> None:
    """Mark a running run failed (its stage stays for inspection until the next plan drops it). Never raises."""
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(sql_text("run_failed")), {"error": str(error)[:8000], "run_id": run_id})
        from ml.features import drop_item_stats

        drop_item_stats(engine, run_id)  # a retry of the date plans a new run with a fresh cache
    except sa.exc.SQLAlchemyError:
        log.exception("could not mark scoring run %s failed", run_id)


def _stage_facts(conn: sa.Connection, stage: str, with_arms: bool = True
                 ) -> tuple[dict[str, int], dict[str, int], dict[str, Any]]:
    """(rows per tier, rows per reason code, pairs/users per experiment arm) of the stage. ``with_arms`` False (the
    run scored no experiment): the arms scan is skipped, the answer is {} either way."""
    table = scoring_table(stage)
    tiers = {r.tier: int(r.n) for r in conn.execute(sa.text(sql_text("finalize_stage_tiers", stage=table)))}
    reasons = {r.code: int(r.n) for r in conn.execute(sa.text(sql_text("finalize_stage_reasons", stage=table)))}
    if not with_arms:
        return tiers, reasons, {}
    arms = {r.arm or "(outside)": {"experiment_id": r.experiment_id, "model_version": r.model_version, "pairs": int(r.pairs),
                    "users": int(r.users)}
            for r in conn.execute(sa.text(sql_text("finalize_stage_arms", stage=table)))}
    if not any(a["experiment_id"] for a in arms.values()):
        arms = {}  # no experiment: the run's model scored every row
    return tiers, reasons, arms


def finalize_run(engine: Engine, settings: Settings, run_id: str) -> RunSummary:
    """Check the run's stage and swap it in as the score date's partition of scoring.scores, in one transaction
    (:mod:`ml.score`, step 3). Idempotent: finalizing a succeeded run returns its summary. Raises ScoringError
    (and marks the run failed) when a bucket did not succeed or a check fails; the previous partition is intact."""
    t0 = time.perf_counter()
    with engine.connect() as conn:
        run = run_row(conn, run_id)
        if run is None:
            raise ScoringError(f"scoring run {run_id}: no such run")
        if run.status == "succeeded" and run.summary:
            log.info("scoring run %s is already finalized", run_id)
            return RunSummary.from_dict(run.summary)
        if run.status != "running":
            raise lost_error(conn, run_id) or ScoringError(
                f"scoring run {run_id} (score_date {run.score_date}) is {run.status}; plan a new run")
        batches = conn.execute(sa.text(sql_text("finalize_batches")), {"run_id": run_id}).all()
    day = run.score_date
    what = f"scoring run {run_id} (score_date {day})"
    unfinished = [b.bucket for b in batches if b.status != "succeeded"]
    if unfinished:
        msg = f"{what}: bucket(s) {unfinished} did not succeed; nothing was swapped"
        fail_run(engine, run_id, msg)
        raise lost_error(engine, run_id) or ScoringError(msg)
    t = time.perf_counter()
    try:
        checks = check_stage(engine, settings, run_id)
    except Exception as e:  # issue 15: a newer run of the date dropped the stage under the checks
        lost = lost_error(engine, run_id) if not isinstance(e, RunSuperseded) else None
        if lost is None:
            raise
        raise lost from e
    check_s = time.perf_counter() - t
    failed = [c for c in checks if not c.success]
    if failed:
        msg = f"{what}: output checks failed, partition not swapped: " + "; ".join(
            f"{c.rule} (observed {c.observed}, expected {c.expected})" for c in failed)
        fail_run(engine, run_id, msg)
        raise lost_error(engine, run_id) or ScoringError(msg)
    timings: dict[str, float] = {"plan": float((run.timings or {}).get("plan", 0.0))}
    for b in batches:
        for key, value in (b.timings or {}).items():
            timings[key] = round(timings.get(key, 0.0) + float(value), 4)
    timings["check"] = round(check_s, 4)
    scored = sum(int(b.scored_pairs or 0) for b in batches)
    _shrink_guard(engine, settings, run_id, day, scored, what)
    stage, part = run.stage_table, partition_name(day)
    try:
        with engine.connect() as conn:
            tiers, reasons, arms = _stage_facts(conn, stage, RunArms.from_params(run.params) is not None)
    except sa.exc.DBAPIError as e:  # the stage was dropped by a newer run's plan
        raise (lost_error(engine, run_id) or ScoringError(f"{what}: reading the stage failed: {e.orig}")) from e
    t = time.perf_counter()
    try:
        with engine.begin() as conn:
            replaced = _swap_partition(conn, settings, stage, part, day)
            lost = lost_error(conn, run_id)  # under the day's swap lock: a newer run of the date swapped in already
            if lost is not None:
                raise lost  # rolls the swap back: the newer run's partition stays
            conn.execute(sa.text(sql_text("finalize_delete_samples")), {"score_date": day, "run_id": run_id})
            timings["swap"] = round(time.perf_counter() - t, 4)
            wall = float(conn.execute(sa.text(sql_text("finalize_wall_seconds")), {"run_id": run_id}).scalar_one())
            summary = RunSummary(run_id, day, run.model_version, "succeeded", int(run.planned_pairs or 0), scored,
                                 int(run.buckets), part, replaced, timings, wall, tiers, reasons, checks,
                                 arms)
            conn.execute(sa.text(sql_text("finalize_succeeded")),
                         {"scored_pairs": scored, "timings": dumps(timings), "summary": dumps(summary.as_dict()),
                          "run_id": run_id})
    except RunSuperseded as e:
        fail_run(engine, run_id, e)
        raise
    except sa.exc.DBAPIError as e:
        raise (lost_error(engine, run_id)
               or ScoringError(f"{what}: partition swap failed (the previous partition is intact): {e.orig}")) from e
    from ml.features import drop_item_stats

    drop_item_stats(engine, run_id)  # the run's feature statistics cache is no longer needed
    for line in summary.lines():
        log.info(line)
    log.debug("finalize took %.1fs", time.perf_counter() - t0)
    return summary


def _shrink_guard(engine: Engine, settings: Settings, run_id: str, day: dt.date, scored: int, what: str) -> None:
    """Issue 15: fail (run marked failed, nothing swapped) when the partition would hold fewer than
    (1 - settings.score_max_shrink_fraction) x the pairs of the latest succeeded run of this or an earlier date,
    unless the run was planned with allow_shrink."""
    with engine.connect() as conn:
        allow = conn.execute(sa.text("select coalesce((params->>'allow_shrink')::boolean, false) from scoring.runs"
                                     " where run_id = :r"), {"r": run_id}).scalar()
        prev = conn.execute(sa.text("select score_date, scored_pairs from scoring.runs where status = 'succeeded'"
                                    " and score_date <= :d and run_id <> :r order by score_date desc, started_at desc"
                                    " limit 1"), {"d": day, "r": run_id}).first()
    floor = (1 - settings.score_max_shrink_fraction) * (prev.scored_pairs or 0) if prev else 0
    if prev is not None and scored < floor and not allow:
        msg = (f"{what}: {scored:,} scored pairs would replace a partition shrinking more than "
               f"{settings.score_max_shrink_fraction:.0%} against score_date {prev.score_date} ({prev.scored_pairs:,} "
               "pairs); nothing swapped. Missing upstream events? Pass --allow-shrink if this is expected")
        fail_run(engine, run_id, msg)
        raise ScoringError(msg)


def _swap_partition(conn: sa.Connection, settings: Settings, stage: str, part: str, day: dt.date) -> bool:
    """Inside the caller's transaction: replace partition ``part`` of scoring.scores by table ``stage``. Returns
    whether a previous partition was replaced."""
    conn.execute(sa.text(sql_text("swap_lock_timeout")), {"lock_timeout": f"{settings.score_lock_timeout_s}s"})
    conn.execute(sa.text(sql_text("swap_lock_day")), {"namespace": _SWAP_LOCK_NS, "day": pg_days(day)})
    conn.execute(sa.text(sql_text("swap_lock_scores")))
    existing = conn.execute(sa.text(sql_text("swap_partition_state")), {"partition": part}).one_or_none()
    if existing is not None:
        if existing.attached:
            conn.execute(sa.text(sql_text("swap_detach", partition=scoring_table(part))))
        conn.execute(sa.text(sql_text("drop_table", table=scoring_table(part))))
    conn.execute(sa.text(sql_text("swap_rename_table", table=scoring_table(stage), new_name=psql.Identifier(part))))
    for (index,) in conn.execute(sa.text(sql_text("swap_partition_indexes")), {"partition": part}).all():
        if index.startswith(stage):
            conn.execute(sa.text(sql_text("swap_rename_index", index=scoring_table(index),
                                          new_name=psql.Identifier(part + index[len(stage):]))))
    conn.execute(sa.text(sql_text("swap_rename_constraint", table=scoring_table(part),
                                  constraint=psql.Identifier(stage + "_day"), new_name=psql.Identifier(part + "_day"))))
    conn.execute(sa.text(sql_text("swap_attach", partition=scoring_table(part))),
                 {"from_date": day, "to_date": day + dt.timedelta(days=1)})
    return existing is not None and bool(existing.attached)


# --- the whole run in one process (CLI, tests, benchmarks) ---------------------------------------------------------
def run_scoring(
    engine: Engine,
    settings: Settings,
    score_date: dt.date | dt.datetime | str,
    *,
    model_version: str | None = None,
    n_buckets: int | None = None,
    orchestrator_run_id: str | None = "cli",
    ensemble: Ensemble | None = None,
    allow_empty: bool = False,
    allow_shrink: bool = False,
) -> RunSummary:
    """Plan, score every bucket in this process (the model loaded once), finalize. On any failure the run is marked
    failed and the error re-raised; the score date's previous partition is then unchanged."""
    plan = plan_run(engine, settings, score_date, model_version=model_version, n_buckets=n_buckets,
                    orchestrator_run_id=orchestrator_run_id, allow_empty=allow_empty, allow_shrink=allow_shrink)
    try:
        ens = ensemble if ensemble is not None else load_model(engine, settings, plan.model_version)
        for batch in plan.batches:
            score_batch(engine, settings, batch, ensemble=ens)
        return finalize_run(engine, settings, plan.run_id)
    except BaseException as e:
        # issue 15: the losing side of two runs of one date says which run won (whatever step noticed it)
        race = isinstance(e, Exception) and not isinstance(e, RunSuperseded)
        lost = lost_error(engine, plan.run_id) if race else None
        if lost is not None:
            raise lost from e
        fail_run(engine, plan.run_id, f"{type(e).__name__}: {e}")
        raise
