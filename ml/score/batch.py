"""Scoring one bucket of a planned run (step 2 of the :mod:`ml.score` life of a run): stream the bucket's features,
predict, explain, derive insights, and COPY the rows into the run's stage table in one transaction.

:func:`score_block` is the pure part (n rows of features in, a :class:`~ml.score.records.ScoredBlock` out);
:func:`score_batch` wraps it with the database: the bucket's bookkeeping in ``scoring.run_batches``, the feature
stream, the binary COPY of scores and of the deterministic feature sample (the drift reference).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import sqlalchemy as sa
from psycopg import sql as psql
from sqlalchemy.engine import Engine

from ml.dates import midnight_utc, utc_date
from ml.errors import ScoringError
from ml.insights import derive_insights
from ml.jsonutil import dumps
from ml.observe import Progress
from ml.pgcopy import COPY_HEADER, COPY_TRAILER, connect
from ml.score.arms import RunArm, RunArms
from ml.score.encode import SCORE_COLUMNS, encode_sample_rows, encode_score_rows
from ml.score.plan import load_model, run_row
from ml.score.race import lost_error
from ml.score.records import BatchResult, BatchSpec, ScoredBlock, format_timings
from ml.score.tables import scoring_table, sql_text
from ml.settings import Settings

if TYPE_CHECKING:
    from ml.ensemble import Ensemble

log = logging.getLogger(__name__)


# --- one block: predict, explain, derive insights ------------------------------------------------------------------
def _residuals(phi: np.ndarray, base: np.ndarray, z: np.ndarray) -> np.ndarray:
    """|sum(float32-rounded contributions) + base - logit| per row (what scoring.scores.contributions will hold)."""
    stored = phi.astype(np.float32).astype(np.float64)
    return np.abs(stored.sum(axis=1) + base - z)


def sample_mask(user_id: np.ndarray, product_id: np.ndarray, rate: float) -> np.ndarray:
    """Deterministic pseudo-random sample of pairs: a stable 32-bit hash of (user, product) below rate * 2^32."""
    from ml.features import user_hash32

    h = user_hash32(np.asarray(user_id, np.int64) ^ user_hash32(np.asarray(product_id, np.int64)))
    return h < int(rate * 2**32)


def score_block(
    ensemble: Ensemble,
    user_id: np.ndarray,
    product_id: np.ndarray,
    X: np.ndarray,
    settings: Settings,
    timings: dict[str, float] | None = None,
) -> ScoredBlock:
    """Predict, explain and derive insights for n rows of features ``X`` (n, f) in ``ensemble.feature_names`` order.

    Probability: with ``settings.score_verify_fraction`` = 1 (default) every row is predicted by the libraries
    themselves (``Ensemble.predict_logit``) and its exact SHAP contributions must add up to that logit. Below 1, the
    logit is ``base + sum(contributions)`` (the trees' exact float64 sums from the explainer) and only a
    deterministic sample of rows is predicted by the libraries as a check; any disagreement on the sample makes the
    whole block take the first path. Either way, rows whose contributions do not add up to the libraries' logit are
    recomputed with the libraries' own TreeSHAP.

    ``timings`` (optional) accumulates seconds under ``predict``, ``explain`` and ``insights``, and counts rows that
    fell back to native TreeSHAP under ``native_fallback_rows``.
    """
    from ml.ensemble import sigmoid

    timings = timings if timings is not None else {}
    tol = settings.score_additivity_tolerance
    n = len(X)
    t = time.perf_counter()
    phi, base = ensemble.explain(X)
    base = np.array(np.broadcast_to(np.asarray(base, dtype=np.float64), (n,)))
    t1 = time.perf_counter()
    z: np.ndarray | None = None
    if settings.score_verify_fraction < 1.0:
        check = sample_mask(user_id, product_id, settings.score_verify_fraction)
        if n and not check.any():
            check[:: max(1, n // 16)] = True  # tiny blocks: still check a few rows
        z_sum = phi.sum(axis=1) + base
        z_check = ensemble.predict_logit(X[check]) if check.any() else np.empty(0)
        if np.all(np.abs(z_sum[check] - z_check) <= tol):
            z = z_sum
        else:
            log.warning("explainer sums disagree with the libraries' predictions on the check sample; predicting "
                        "every row of this block natively")
    if z is None:
        z = ensemble.predict_logit(X)
    t2 = time.perf_counter()
    residual = _residuals(phi, base, z)
    bad = residual > tol
    if bad.any():
        # The fast explainer disagrees with the model on these rows: the libraries' own TreeSHAP is exact (slower);
        # use it for exactly those rows (a per-row decision, so the output does not depend on blocking) and say so.
        log.warning("fast SHAP residual up to %.3g > %g on %d of %d rows: recomputing them with native TreeSHAP",
                    float(residual.max()), tol, int(bad.sum()), n)
        phi_n, base_n = ensemble.explain(X[bad], method="native")
        phi = phi.copy()
        phi[bad] = phi_n
        base[bad] = np.broadcast_to(np.asarray(base_n, dtype=np.float64), (int(bad.sum()),))
        residual = _residuals(phi, base, z)
        timings["native_fallback_rows"] = timings.get("native_fallback_rows", 0.0) + float(bad.sum())
    max_residual = float(residual.max()) if n else 0.0
    p = sigmoid(z)
    t3 = time.perf_counter()
    insights = derive_insights(
        X, phi, p, ensemble.feature_names, bands=settings.tier_bands, top_k=settings.top_k_contributions,
        top_features=settings.reason_top_features, max_reasons=settings.max_reasons,
        window_days=settings.lookback_days,
    )
    t4 = time.perf_counter()
    for key, seconds in (("explain", t1 - t + (t3 - t2)), ("predict", t2 - t1), ("insights", t4 - t3)):
        timings[key] = timings.get(key, 0.0) + seconds
    return ScoredBlock(np.asarray(user_id, np.int64), np.asarray(product_id, np.int64), z, p, phi, base, insights,
                       max_residual)


# --- one bucket: features in, COPY out -----------------------------------------------------------------------------
def _feature_blocks(
    engine: Engine, settings: Settings, spec: BatchSpec, feature_names: Sequence[str], timings: dict[str, float]
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(user_id, product_id, X) blocks of about ``settings.score_block_rows`` rows of the bucket's active pairs;
    time spent reading features accumulates in ``timings['features']``."""
    import pyarrow as pa

    from ml.features import iter_pair_feature_batches

    day = utc_date(spec.score_date, what="score_date")
    # one product/category/brand statistics cache per run: the first bucket computes it, the others reuse it
    batches = iter_pair_feature_batches(
        engine, midnight_utc(day), settings, spec.bucket, spec.n_buckets, item_stats_key=spec.run_id
    )
    size = max(1, int(settings.score_block_rows))
    pending: list[Any] = []
    rows = 0
    t = time.perf_counter()
    done = False
    while not done:
        try:
            rb = next(batches)
            pending.append(pa.Table.from_batches([rb]))
            rows += rb.num_rows
        except StopIteration:
            done = True
        while pending and (rows >= size or done):
            table = pa.concat_tables(pending) if len(pending) > 1 else pending[0]
            block, rest = table.slice(0, size), table.slice(size)
            pending, rows = ([rest] if rest.num_rows else []), rest.num_rows
            uid = block.column("user_id").to_numpy()
            pid = block.column("product_id").to_numpy()
            X = np.empty((block.num_rows, len(feature_names)), dtype=np.float64)
            for j, name in enumerate(feature_names):
                X[:, j] = block.column(name).to_numpy(zero_copy_only=False)
            timings["features"] = timings.get("features", 0.0) + time.perf_counter() - t
            yield uid, pid, X
            t = time.perf_counter()
    timings["features"] = timings.get("features", 0.0) + time.perf_counter() - t


def score_batch(
    engine: Engine,
    settings: Settings,
    batch: BatchSpec | Mapping[str, Any],
    *,
    ensemble: Ensemble | None = None,
) -> BatchResult:
    """Score one bucket of a planned run into the run's stage table (:mod:`ml.score`, step 2).

    ``batch``: a :class:`BatchSpec` or its dict (XCom). ``ensemble``: an already loaded model (default: loaded from
    the registry, once per process). Idempotent: re-running a bucket replaces its rows. Raises ScoringError (the
    bucket is marked failed; nothing of this attempt stays in the stage) on any failure, including an additivity
    residual above ``settings.score_additivity_tolerance``.
    """
    from psycopg.copy import QueuedLibpqWriter

    spec = BatchSpec.from_dict(batch)
    day = utc_date(spec.score_date, what="score_date")
    what = f"scoring run {spec.run_id} (score_date {day}) bucket {spec.bucket}/{spec.n_buckets}"
    with engine.begin() as conn:
        run = run_row(conn, spec.run_id)
        if run is None:
            raise ScoringError(f"{what}: no such run in scoring.runs")
        if run.status != "running":
            raise lost_error(conn, spec.run_id) or ScoringError(f"{what}: the run is {run.status}; plan a new run")
        prev = conn.execute(sa.text(sql_text("batch_start")),
                            {"run_id": spec.run_id, "bucket": spec.bucket}).one_or_none()
    if prev is None:
        raise ScoringError(f"{what}: bucket not planned (scoring.run_batches has no row)")
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    try:
        ens = ensemble if ensemble is not None else load_model(engine, settings, spec.model_version)
        arms = RunArms.from_params(run.params)
        models = {spec.model_version: ens}
        for arm in arms.arms if arms else ():  # per-arm scoring: every arm's model, loaded once per process
            if arm.model_version not in models:
                models[arm.model_version] = load_model(engine, settings, arm.model_version)
        timings["load_model"] = time.perf_counter() - t0
        for version, model in models.items():
            if list(model.feature_names) != list(run.feature_names):
                raise ScoringError(f"{what}: model {version} features differ from the run's feature list")
        stage = scoring_table(run.stage_table)
        copy_scores = sql_text("batch_copy_scores", stage=stage,
                               columns=psql.SQL(", ").join(psql.Identifier(c) for c in SCORE_COLUMNS))
        keys = {"run_id": spec.run_id, "bucket": spec.bucket, "bucket_count": spec.n_buckets}
        progress = Progress(what, total=int(prev.planned_pairs), unit="pairs")
        rows = 0
        max_residual = 0.0
        samples: list[bytes] = []
        with connect(engine) as pg, pg.transaction(), pg.cursor() as cur:
            cur.execute(sql_text("batch_session"))
            if prev.attempts > 0:  # an earlier attempt may have committed rows: replace them, never duplicate
                cur.execute(sql_text("batch_delete_scores", pyformat=True, stage=stage), keys)
                cur.execute(sql_text("batch_delete_samples", pyformat=True), keys)
            # a queued writer: a thread streams block k to the server while block k + 1 is being computed
            with cur.copy(copy_scores, writer=QueuedLibpqWriter(cur)) as copy:
                copy.write(COPY_HEADER)
                blocks = (_feature_blocks(engine, settings, spec, ens.feature_names, timings)
                          if prev.planned_pairs else iter(()))  # an empty bucket reads nothing
                for uid, pid, X in blocks:
                    payloads = []
                    for arm, rows_of in _arm_parts(arms, uid):
                        version = arm.model_version if arm else spec.model_version
                        part = (uid, pid, X) if rows_of is None else (uid[rows_of], pid[rows_of], X[rows_of])
                        block = score_block(models[version], *part, settings, timings)
                        if block.max_residual > settings.score_additivity_tolerance:
                            raise ScoringError(
                                f"{what}: additivity residual {block.max_residual:.3g} exceeds "
                                f"{settings.score_additivity_tolerance:g} (sum(contributions) + base != logit(p))"
                                + (f" in arm {arm.name} ({version})" if arm else ""))
                        max_residual = max(max_residual, block.max_residual)
                        t = time.perf_counter()
                        payloads.append(encode_score_rows(block, day, version, spec.run_id,
                                                          arms.experiment_id if arm else None,
                                                          arm.name if arm else None))
                        timings["encode"] = timings.get("encode", 0.0) + time.perf_counter() - t
                    t = time.perf_counter()
                    keep = sample_mask(uid, pid, settings.drift_sample_rate)
                    if keep.any():
                        samples.append(encode_sample_rows(day, spec.run_id, spec.bucket, uid[keep], pid[keep],
                                                          X[keep]))
                    t1 = time.perf_counter()
                    for payload in payloads:
                        copy.write(payload)
                    t2 = time.perf_counter()
                    timings["encode"] = timings.get("encode", 0.0) + t1 - t
                    timings["copy"] = timings.get("copy", 0.0) + t2 - t1  # time blocked on the server
                    rows += len(uid)
                    progress.advance(len(uid))
                copy.write(COPY_TRAILER)
                t = time.perf_counter()
            timings["copy"] = timings.get("copy", 0.0) + time.perf_counter() - t  # the COPY's final flush
            if samples:
                with cur.copy(sql_text("batch_copy_samples")) as copy:
                    copy.write(COPY_HEADER)
                    for chunk in samples:
                        copy.write(chunk)
                    copy.write(COPY_TRAILER)
            seconds = time.perf_counter() - t0
            timings = {k: round(v, 4) for k, v in timings.items()}
            cur.execute(sql_text("batch_succeeded", pyformat=True),
                        {**keys, "scored_pairs": rows, "timings": dumps({**timings, "total": round(seconds, 4)}),
                         "max_residual": max_residual})
    except Exception as e:
        _mark_batch_failed(engine, spec, e)
        if isinstance(e, ScoringError):
            raise
        # issue 15: a newer run of the date dropped this run's stage under it (mid-COPY): say who won, not the raw error
        raise (lost_error(engine, spec.run_id) or ScoringError(f"{what} failed: {type(e).__name__}: {e}")) from e
    progress.finish()
    result = BatchResult(spec.run_id, spec.bucket, rows, time.perf_counter() - t0, timings, max_residual)
    log.info("%s: %s pairs in %.1fs (%s pairs/s); %s", what, f"{rows:,}", result.seconds,
             f"{result.rows_per_s:,.0f}", format_timings(timings))
    return result


def _arm_parts(arms: RunArms | None, uid: np.ndarray) -> Iterator[tuple[RunArm | None, np.ndarray | None]]:
    """(arm, row mask) per arm of the block's users; (None, None): the whole block, no experiment."""
    if arms is None:
        yield None, None
        return
    yield from arms.split(uid)


def _mark_batch_failed(engine: Engine, spec: BatchSpec, error: BaseException) -> None:
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(sql_text("batch_failed")),
                         {"error": f"{type(error).__name__}: {error}"[:4000], "run_id": spec.run_id,
                          "bucket": spec.bucket})
    except sa.exc.SQLAlchemyError:  # never hide the original failure behind the bookkeeping
        log.exception("could not mark bucket %d of run %s failed", spec.bucket, spec.run_id)
