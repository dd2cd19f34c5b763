"""Planning a scoring run: resolve the model, drop abandoned stages, count the active pairs per bucket, record the
run and create its stage table (step 1 of the :mod:`ml.score` life of a run)."""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from psycopg import sql as psql
from sqlalchemy.engine import Engine

from ml.dates import midnight_utc, utc_date
from ml.errors import ModelError, ScoringError
from ml.jsonutil import dumps
from ml.score.records import BatchSpec, RunPlan
from ml.score.tables import STAGE_PREFIX, scoring_table, sql_text, stage_name
from ml.settings import Settings

if TYPE_CHECKING:
    from ml.ensemble import Ensemble

log = logging.getLogger(__name__)

MAX_BUCKETS = 512  # mapped fan-out stays well under Airflow's max_map_length (1024)


def run_row(conn: sa.Connection, run_id: str) -> Any:
    """The ``scoring.runs`` row of ``run_id`` (None if there is none)."""
    return conn.execute(sa.text(sql_text("run_record")), {"run_id": run_id}).one_or_none()


def _feature_names_of(engine: Engine, version: str) -> list[str]:
    with engine.connect() as conn:
        names = conn.execute(sa.text(sql_text("plan_model_features")), {"model_version": version}).scalar_one_or_none()
    if names is None:
        raise ScoringError(f"model version {version!r} is not in the registry (ml.model_versions)")
    return list(names)


def resolve_model_version(engine: Engine, model_version: str | None) -> str:
    """``model_version`` if given, else the registry's champion. Raises ScoringError when there is none."""
    if model_version:
        return model_version
    from ml.registry import champion

    mv = champion(engine)
    if mv is None:
        raise ScoringError("no champion model to score with: train one (propensity train) or pass --model-version")
    return mv.version


_MODEL_CACHE: dict[tuple[str, str], Ensemble] = {}
_MODEL_CACHE_SIZE = 4  # models kept per process: every arm of a running experiment


def load_model(engine: Engine, settings: Settings, version: str) -> Ensemble:
    """The ensemble of ``version`` from the registry, cached per process (so explainer tables are built once per
    task or CLI run, not per block or bucket)."""
    from ml.registry import load_version

    key = (engine.url.render_as_string(hide_password=True), version)
    if key not in _MODEL_CACHE:
        try:
            _, ens = load_version(engine, settings, version)
        except ModelError as e:
            raise ScoringError(f"cannot load model version {version}: {e}") from e
        while len(_MODEL_CACHE) >= _MODEL_CACHE_SIZE:  # the arms of an experiment; older versions are dropped
            _MODEL_CACHE.pop(next(iter(_MODEL_CACHE)))
        _MODEL_CACHE[key] = ens
    return _MODEL_CACHE[key]


def fit_bucket_count(counts: Sequence[int], min_pairs: int) -> tuple[int, list[int]]:
    """The bucket count for a night whose pairs per bucket at ``len(counts)`` buckets are ``counts``: the largest
    divisor m of ``len(counts)`` that leaves at least ``min_pairs`` pairs per bucket on average (1 at the least;
    ``min_pairs`` 0: unchanged), with the counts merged accordingly. Exact because bucket b of K is
    ``floor(hash32 * K / 2^32)``, so bucket j of m = K / g holds buckets j*g .. j*g + g - 1 of K."""
    k, total = len(counts), sum(counts)
    if min_pairs <= 0 or k <= 1:
        return k, list(counts)
    m = max([d for d in range(1, k + 1) if k % d == 0 and d * min_pairs <= max(total, min_pairs)])
    g = k // m
    return m, [sum(counts[j * g: (j + 1) * g]) for j in range(m)]


def count_pairs_by_bucket(engine: Engine, settings: Settings, day: dt.date, n_buckets: int) -> list[int]:
    """Active pairs at ``day`` 00:00 UTC per user_id hash bucket (one scan; the definition is ml.features')."""
    from ml.features import FeatureWindow, feature_sql

    window = FeatureWindow.at(midnight_utc(day), settings)
    sql = sql_text("plan_pairs_by_bucket", active_pairs=psql.SQL(feature_sql("active_pairs", window, settings)))
    params = {**window.params(), "bucket": None, "n_buckets": None, "bucket_count": n_buckets}
    counts = [0] * n_buckets
    with engine.connect() as conn:
        for bucket, pairs in conn.execute(sa.text(sql), params):
            counts[int(bucket)] = int(pairs)
    return counts


def cleanup_stages(engine: Engine, settings: Settings, score_date: dt.date | None = None) -> list[str]:
    """Drop stage tables that no live run needs: those of failed or succeeded runs, of runs ``running`` for longer
    than ``stage_max_age_hours`` (crashed), of runs without a record, and (with ``score_date``) every stage of that
    date (a new run of the date supersedes them; the DAG runs one night at a time). Returns the dropped names."""
    with engine.begin() as conn:
        stages = conn.execute(sa.text(sql_text("cleanup_stage_tables"))).scalars().all()
        runs = {r.run_id: r for r in conn.execute(sa.text(sql_text("cleanup_stage_runs")),
                                                  {"stale_hours": settings.stage_max_age_hours,
                                                   "stage_tables": list(stages)})}
        dropped = []
        for name in stages:
            run_id = name[len(STAGE_PREFIX):]
            run = runs.get(run_id)
            if (run is None or run.status != "running" or run.stale
                    or (score_date is not None and run.score_date == score_date)):
                conn.execute(sa.text(sql_text("drop_table", table=scoring_table(name))))
                if run is not None and run.status == "running":
                    conn.execute(sa.text(sql_text("cleanup_abandon_run")), {"run_id": run_id})
                conn.execute(sa.text(sql_text("cleanup_delete_samples")), {"run_id": run_id})
                dropped.append(name)
    if dropped:
        log.info("dropped %d stale stage table(s): %s", len(dropped), ", ".join(dropped))
    return dropped


def plan_run(
    engine: Engine,
    settings: Settings,
    score_date: dt.date | dt.datetime | str,
    *,
    model_version: str | None = None,
    n_buckets: int | None = None,
    orchestrator_run_id: str | None = None,
    allow_empty: bool = False,
    allow_shrink: bool = False,
) -> RunPlan:
    """Plan a scoring run of ``score_date`` (features at its 00:00 UTC): see :mod:`ml.score`, step 1.

    ``model_version`` defaults to the champion, or, while an experiment runs on the date, to per-arm scoring
    (:mod:`ml.score.arms`: each user by the model of the user's arm; the run's ``model_version`` is the control's);
    ``n_buckets`` to ``settings.score_buckets`` (1..512). Raises ScoringError when there is no model or the bucket
    count is out of range, and when the date has no active pair unless ``allow_empty``; ``allow_shrink`` is kept
    for finalize's shrink guard.
    """
    t0 = time.perf_counter()
    day = utc_date(score_date, what="score_date")
    k = int(settings.score_buckets if n_buckets is None else n_buckets)
    if not 1 <= k <= MAX_BUCKETS:
        raise ScoringError(f"bucket count must be in 1..{MAX_BUCKETS} (mapped fan-out), not {k}")
    from ml.score.arms import plan_arms

    arms = plan_arms(engine, day, model_version)
    version = arms.control.model_version if arms else resolve_model_version(engine, model_version)
    features = _feature_names_of(engine, version)
    for arm in arms.arms if arms else ():
        if _feature_names_of(engine, arm.model_version) != features:
            raise ScoringError(f"experiment {arms.experiment_id}: arm {arm.name} ({arm.model_version}) has another "
                               "feature list than the control arm")
    dropped = cleanup_stages(engine, settings, day)
    run_id = f"{day:%Y%m%d}_{uuid.uuid4().hex[:12]}"
    # The run's product/category/brand statistics, once, here, on a second connection while this one counts the
    # active pairs (two server processes, two cores): every bucket task then finds them ready. Before, the first
    # bucket computed them (~4 s of a 1.1M-pair night) while the other buckets waited on its lock.
    from concurrent.futures import ThreadPoolExecutor, wait

    from ml.features import drop_item_stats, prepare_item_stats

    with ThreadPoolExecutor(1, thread_name_prefix="item-stats") as pool:
        stats = pool.submit(prepare_item_stats, engine, midnight_utc(day), settings, run_id)
        try:
            counts = count_pairs_by_bucket(engine, settings, day, k)
            if n_buckets is None:  # an explicit count is kept; the default shrinks for a small night
                k, counts = fit_bucket_count(counts, settings.score_bucket_min_pairs)
            if not sum(counts) and not allow_empty:  # issue 15: missing upstream data must not look like a quiet night
                raise ScoringError(f"score_date {day}: no active pairs (no events in the {settings.active_window_days} "
                                   "days before it?); nothing scored. Load the events first, or pass --allow-empty")
            stats.result()
        except BaseException:
            wait([stats])
            try:
                drop_item_stats(engine, run_id)
            except sa.exc.SQLAlchemyError:  # never hide the plan's own error behind the cleanup's
                log.exception("could not drop the item statistics of run %s", run_id)
            raise
    stage = stage_name(run_id)
    params = {"n_buckets": k, "top_k": settings.top_k_contributions, "tier_bands": settings.tier_bands,
              "reason_top_features": settings.reason_top_features, "max_reasons": settings.max_reasons,
              "lookback_days": settings.lookback_days, "active_window_days": settings.active_window_days,
              "as_of": midnight_utc(day).isoformat(), "allow_shrink": bool(allow_shrink)}
    if arms:
        params["experiment"] = arms.as_dict()
    with engine.begin() as conn:
        conn.execute(
            sa.text(sql_text("plan_insert_run")),
            {"run_id": run_id, "score_date": day, "model_version": version, "planned_pairs": sum(counts),
             "buckets": k, "timings": dumps({"plan": round(time.perf_counter() - t0, 3)}), "stage_table": stage,
             "feature_names": features, "params": dumps(params), "orchestrator_run_id": orchestrator_run_id},
        )
        conn.execute(
            sa.text(sql_text("plan_insert_batch")),
            [{"run_id": run_id, "bucket": b, "planned_pairs": n} for b, n in enumerate(counts)],
        )
        conn.execute(sa.text(sql_text("plan_create_stage", stage=scoring_table(stage))))
        conn.execute(sa.text(sql_text("plan_pin_stage_day", stage=scoring_table(stage),
                                      constraint=psql.Identifier(stage + "_day"))),
                     {"score_date": day})
    batches = [BatchSpec(run_id, day.isoformat(), b, k, version) for b in range(k)]
    plan = RunPlan(run_id, day, version, k, sum(counts), counts, stage, features, batches, dropped)
    log.info("planned scoring run %s: score_date %s, model %s, %s active pairs in %d buckets (largest %s)",
             run_id, day, version, f"{plan.planned_pairs:,}", k, f"{max(counts):,}")
    return plan
