"""Nightly batch scoring: plan -> one batch per user_id hash bucket -> finalize (checks + atomic partition swap).

One row of ``scoring.scores`` is one (score_date, user_id, product_id) pair active at the score date's midnight
(UTC): its calibrated probability, exact SHAP contributions in log-odds (``sum(contributions) + base_value ==
logit(probability)``), the top-k contributions, reason codes with texts, and a recommendation tier.

Life of a run (the same functions serve the DAG ``score_active_pairs``, the CLI ``propensity score`` and the tests):

1. :func:`plan_run` resolves the model (default: the champion), drops stage tables left by failed or crashed runs,
   counts the active pairs per bucket, records a ``scoring.runs`` row (status ``running``) with one
   ``scoring.run_batches`` row per bucket, and creates the run's stage table ``scoring.scores_stage_<run_id>``
   (``LIKE scoring.scores`` with its primary key and checks, plus a check pinning ``score_date`` to the day, so the
   later ATTACH needs no scan). It returns small :class:`BatchSpec` descriptors (the DAG's XCom), never data.
2. :func:`score_batch` (one per bucket, in parallel) streams the bucket's features (``ml.features``), predicts,
   explains (exact TreeSHAP through ``Ensemble.explain``), derives insights (``ml.insights``) and writes the rows
   into the stage with one psycopg 3 binary COPY, block by block (rows encoded by one compiled numba pass; a writer
   thread streams block k while block k + 1 is computed). The COPY, a deterministic feature sample (the drift
   reference) and the batch's ``succeeded`` mark commit in one transaction; a retry of a bucket that had committed
   deletes its rows first, so retries never duplicate.
3. :func:`finalize_run` checks the stage with Great Expectations (row count == planned pairs, probabilities in
   [0, 1], no null or NaN contribution, the largest additivity residual on a sample <= tolerance), then in ONE
   transaction detaches and drops the day's old partition (if any), renames the stage to ``scores_pYYYYMMDD`` and
   attaches it. Readers see the old day or the new day, never a mix; a re-run replaces the day; a crash at any
   point before that commit leaves the previous partition untouched.

Errors raise :class:`ml.errors.ScoringError` naming the run, the date and the bucket.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import struct
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import sqlalchemy as sa
from numba import njit, prange
from sqlalchemy.engine import Engine

from ml.db import libpq_url
from ml.errors import ModelError, ScoringError
from ml.insights import Insights, derive_insights
from ml.observe import Progress
from ml.settings import Settings

if TYPE_CHECKING:
    from ml.ensemble import Ensemble

log = logging.getLogger(__name__)

MAX_BUCKETS = 512  # mapped fan-out stays well under Airflow's max_map_length (1024)
SCORE_COLUMNS: tuple[str, ...] = (
    "score_date", "user_id", "product_id", "probability", "model_version", "run_id", "tier", "reason_codes",
    "reason_texts", "top_contributions", "base_value", "contributions",
)
_RUN_ID_RE = re.compile(r"^[0-9]{8}_[0-9a-f]{12}$")
_STAGE_PREFIX = "scores_stage_"
_STAGE_ORDER = ("plan", "load_model", "features", "predict", "explain", "insights", "encode", "copy", "total", "check",
                "swap")
_SWAP_LOCK_NS = 7_262_040  # pg_advisory_xact_lock(namespace, day): one swap of a given day at a time


# --- records -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BatchSpec:
    """What one mapped batch task receives (through XCom): which run, date and bucket; never data."""

    run_id: str
    score_date: str  # ISO date (UTC)
    bucket: int
    n_buckets: int
    model_version: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | BatchSpec) -> BatchSpec:
        if isinstance(d, BatchSpec):
            return d
        return cls(run_id=str(d["run_id"]), score_date=str(d["score_date"]), bucket=int(d["bucket"]),
                   n_buckets=int(d["n_buckets"]), model_version=str(d["model_version"]))


@dataclass(frozen=True)
class RunPlan:
    """A planned run: ``batches[k]`` scores bucket k, which holds ``bucket_pairs[k]`` active pairs."""

    run_id: str
    score_date: dt.date
    model_version: str
    n_buckets: int
    planned_pairs: int
    bucket_pairs: list[int]
    stage_table: str
    feature_names: list[str]
    batches: list[BatchSpec]
    dropped_stages: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "score_date": self.score_date.isoformat(), "model_version": self.model_version,
                "n_buckets": self.n_buckets, "planned_pairs": self.planned_pairs, "stage_table": self.stage_table,
                "batches": [b.as_dict() for b in self.batches]}


@dataclass(frozen=True)
class BatchResult:
    """What one batch wrote: rows, seconds per stage, the largest additivity residual (log-odds)."""

    run_id: str
    bucket: int
    rows: int
    seconds: float
    timings: dict[str, float]
    max_residual: float

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rows_per_s": round(self.rows_per_s)}


@dataclass(frozen=True)
class CheckResult:
    """One output check (a Great Expectations expectation) of a run's stage table."""

    rule: str
    success: bool
    observed: Any
    expected: str


@dataclass(frozen=True)
class RunSummary:
    """The closing record of a finalized run (also stored in ``scoring.runs.summary``)."""

    run_id: str
    score_date: dt.date
    model_version: str
    status: str
    planned_pairs: int
    scored_pairs: int
    buckets: int
    partition: str
    replaced_previous: bool
    timings: dict[str, float]
    wall_seconds: float
    tiers: dict[str, int]
    reasons: dict[str, int]
    checks: list[CheckResult]

    @property
    def rows_per_s(self) -> float:
        return self.scored_pairs / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["score_date"] = self.score_date.isoformat()
        d["rows_per_s"] = round(self.rows_per_s)
        return d

    def lines(self) -> list[str]:
        """Human-readable summary lines (the end of the task log / CLI output)."""
        stage_s = _format_timings(self.timings)
        tiers = ", ".join(f"{k} {v:,}" for k, v in self.tiers.items())
        top = ", ".join(f"{k} {v:,}" for k, v in list(self.reasons.items())[:6])
        return [
            f"scoring run {self.run_id}: {self.status}; score_date {self.score_date}, model {self.model_version}",
            f"  pairs: {self.scored_pairs:,} scored of {self.planned_pairs:,} planned in {self.buckets} buckets; "
            f"{self.wall_seconds:,.1f}s wall, {self.rows_per_s:,.0f} pairs/s",
            f"  stage seconds (summed over batches): {stage_s}",
            f"  tiers: {tiers}",
            f"  top reasons: {top or 'none'}",
            f"  checks: {sum(c.success for c in self.checks)}/{len(self.checks)} passed; partition scoring."
            f"{self.partition} {'replaced' if self.replaced_previous else 'created'}",
        ]


# --- small helpers -------------------------------------------------------------------------------------------------
def _format_timings(timings: Mapping[str, float]) -> str:
    """``plan 0.1s, features 2.0s, ...`` in pipeline order; ``*_rows`` entries are counts."""
    order = {k: i for i, k in enumerate(_STAGE_ORDER)}
    return ", ".join(
        f"{k} {int(v):,}" if k.endswith("_rows") else f"{k} {v:,.2f}s"
        for k, v in sorted(timings.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


def as_date(value: dt.date | dt.datetime | str) -> dt.date:
    """A UTC calendar date from a date, an aware/naive (UTC) datetime or an ISO string."""
    if isinstance(value, dt.datetime):
        return (value.astimezone(dt.UTC) if value.tzinfo else value).date()
    if isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(str(value)[:10])


def as_of_of(day: dt.date) -> dt.datetime:
    """Features of score date ``day`` are computed at ``day`` 00:00 UTC (events strictly before the day)."""
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)


def partition_name(day: dt.date) -> str:
    return f"scores_p{day:%Y%m%d}"


def stage_name(run_id: str) -> str:
    if not _RUN_ID_RE.match(run_id):
        raise ScoringError(f"invalid scoring run id {run_id!r}")
    return _STAGE_PREFIX + run_id


def _q(*parts: str) -> str:
    """Quote identifiers for SQL text (identifiers only, never values)."""
    return ".".join('"' + p.replace('"', '""') + '"' for p in parts)


def _pg_conn(engine: Engine):  # noqa: ANN202 - psycopg.Connection, imported lazily
    import psycopg

    return psycopg.connect(libpq_url(engine.url.render_as_string(hide_password=False)))


def _feature_names_of(engine: Engine, version: str) -> list[str]:
    with engine.connect() as conn:
        names = conn.execute(sa.text("select features from ml.model_versions where version = :v"),
                             {"v": version}).scalar_one_or_none()
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
        _MODEL_CACHE.clear()  # one model per process is enough: a new version replaces the old one
        _MODEL_CACHE[key] = ens
    return _MODEL_CACHE[key]


# --- plan ----------------------------------------------------------------------------------------------------------
def count_pairs_by_bucket(engine: Engine, settings: Settings, day: dt.date, n_buckets: int) -> list[int]:
    """Active pairs at ``day`` 00:00 UTC per user_id hash bucket (one scan; the definition is ml.features')."""
    from ml.features import FeatureWindow, render_sql, user_bucket_sql

    window = FeatureWindow.at(as_of_of(day), settings)
    sql = (f"select {user_bucket_sql('a.user_id', ':k')} as bucket, count(*) as pairs "
           f"from ({render_sql('active_pairs')}) as a group by 1")
    params = {**window.params(), "bucket": None, "n_buckets": None, "k": n_buckets}
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
        stages = conn.execute(sa.text(
            "select c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace "
            "where n.nspname = 'scoring' and c.relkind = 'r' and c.relname like 'scores\\_stage\\_%'"
        )).scalars().all()
        runs = {r.run_id: r for r in conn.execute(sa.text(
            "select run_id, score_date, status, started_at < now() - make_interval(hours => :h) as stale "
            "from scoring.runs where stage_table = any(:names)"), {"h": settings.stage_max_age_hours,
                                                                   "names": list(stages)})}
        dropped = []
        for name in stages:
            run_id = name[len(_STAGE_PREFIX):]
            run = runs.get(run_id)
            if (run is None or run.status != "running" or run.stale
                    or (score_date is not None and run.score_date == score_date)):
                conn.execute(sa.text(f"drop table if exists {_q('scoring', name)}"))
                if run is not None and run.status == "running":
                    conn.execute(sa.text(
                        "update scoring.runs set status = 'failed', finished_at = now(), "
                        "error = coalesce(error, 'abandoned: superseded by a newer run or stale') where run_id = :r"),
                        {"r": run_id})
                conn.execute(sa.text("delete from scoring.feature_samples where run_id = :r"), {"r": run_id})
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
) -> RunPlan:
    """Plan a scoring run of ``score_date`` (features at its 00:00 UTC): see the module docstring, step 1.

    ``model_version`` defaults to the champion; ``n_buckets`` to ``settings.score_buckets`` (1..512). Raises
    ScoringError when there is no model or the bucket count is out of range.
    """
    t0 = time.perf_counter()
    day = as_date(score_date)
    k = int(n_buckets or settings.score_buckets)
    if not 1 <= k <= MAX_BUCKETS:
        raise ScoringError(f"bucket count must be in 1..{MAX_BUCKETS} (mapped fan-out), not {k}")
    version = resolve_model_version(engine, model_version)
    features = _feature_names_of(engine, version)
    dropped = cleanup_stages(engine, settings, day)
    counts = count_pairs_by_bucket(engine, settings, day, k)
    run_id = f"{day:%Y%m%d}_{uuid.uuid4().hex[:12]}"
    stage = stage_name(run_id)
    params = {"n_buckets": k, "top_k": settings.top_k_contributions, "tier_bands": settings.tier_bands,
              "reason_top_features": settings.reason_top_features, "max_reasons": settings.max_reasons,
              "lookback_days": settings.lookback_days, "active_window_days": settings.active_window_days,
              "as_of": as_of_of(day).isoformat()}
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "insert into scoring.runs (run_id, score_date, model_version, status, planned_pairs, buckets, timings,"
                " stage_table, feature_names, params, orchestrator_run_id)"
                " values (:r, :d, :m, 'running', :p, :k, cast(:t as jsonb), :s, :f, cast(:params as jsonb), :o)"
            ),
            {"r": run_id, "d": day, "m": version, "p": sum(counts), "k": k,
             "t": json.dumps({"plan": round(time.perf_counter() - t0, 3)}), "s": stage, "f": features,
             "params": json.dumps(params), "o": orchestrator_run_id},
        )
        conn.execute(
            sa.text("insert into scoring.run_batches (run_id, bucket, planned_pairs) values (:r, :b, :p)"),
            [{"r": run_id, "b": b, "p": n} for b, n in enumerate(counts)],
        )
        qs = _q("scoring", stage)
        conn.execute(sa.text(f"create table {qs} (like scoring.scores including defaults including constraints"
                             f" including indexes)"))
        # a check equal to the partition bound: ATTACH PARTITION then skips its validation scan
        # (psycopg2 binds client-side, so DDL takes bind parameters like any statement)
        conn.execute(sa.text(f"alter table {qs} add constraint {_q(stage + '_day')} "
                             "check (score_date >= cast(:d as date) and score_date < cast(:d as date) + 1)"),
                     {"d": day})
    batches = [BatchSpec(run_id, day.isoformat(), b, k, version) for b in range(k)]
    plan = RunPlan(run_id, day, version, k, sum(counts), counts, stage, features, batches, dropped)
    log.info("planned scoring run %s: score_date %s, model %s, %s active pairs in %d buckets (largest %s)",
             run_id, day, version, f"{plan.planned_pairs:,}", k, f"{max(counts):,}")
    return plan


# --- one block: predict, explain, derive insights ------------------------------------------------------------------
@dataclass
class ScoredBlock:
    """n scored rows: keys, calibrated logit and probability, contributions (n, f) and base (n,) in log-odds, the
    insights, and the largest additivity residual of the stored (float32) contributions."""

    user_id: np.ndarray
    product_id: np.ndarray
    logit: np.ndarray
    probability: np.ndarray
    contributions: np.ndarray
    base_value: np.ndarray
    insights: Insights
    max_residual: float

    def __len__(self) -> int:
        return len(self.user_id)


def _residuals(phi: np.ndarray, base: np.ndarray, z: np.ndarray) -> np.ndarray:
    """|sum(float32-rounded contributions) + base - logit| per row (what scoring.scores.contributions will hold)."""
    stored = phi.astype(np.float32).astype(np.float64)
    return np.abs(stored.sum(axis=1) + base - z)


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


# --- PostgreSQL binary COPY, built in one compiled pass ------------------------------------------------------------
# The COPY BINARY row format is: int16 field count, then per field int32 byte length + the value in network order.
# Fixed-width fields (date, bigint, double, constant texts; base_value and the real[] of a fixed length) are laid out
# per row with numpy structured dtypes; variable-width ones (tier, the two text[] of reasons, the jsonb of top
# contributions) come from small dictionaries of pre-encoded bytes indexed per row, plus numbers formatted in the
# kernel. One numba pass (rows split over threads) writes every row; there is no per-row Python.
COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
COPY_TRAILER = struct.pack(">h", -1)
_PG_EPOCH = dt.date(2000, 1, 1)
_TEXT_OID = 25
_FLOAT4_OID = 700
_NUM_MAX = 32  # bytes of the longest number the kernel writes ("-" + 19 digits + "." + 6 digits)
_ENCODE_CHUNK = 4096  # rows per parallel work item of the encoder


def _array_header_dtype() -> list[tuple[str, str]]:
    return [("len", ">i4"), ("ndim", ">i4"), ("flags", ">i4"), ("oid", ">u4"), ("dim", ">i4"), ("lb", ">i4")]


def _dictionary(items: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated bytes and offsets (len + 1) of ``items``."""
    off = np.zeros(len(items) + 1, dtype=np.int64)
    off[1:] = np.cumsum([len(b) for b in items])
    data = np.frombuffer(b"".join(items), dtype=np.uint8) if off[-1] else np.zeros(1, dtype=np.uint8)
    return data, off


def _len_prefixed(value: bytes) -> bytes:
    return struct.pack(">i", len(value)) + value


@njit(cache=True, inline="always")
def _put_i32(buf, pos, v):  # noqa: ANN001, ANN202
    buf[pos] = (v >> 24) & 255
    buf[pos + 1] = (v >> 16) & 255
    buf[pos + 2] = (v >> 8) & 255
    buf[pos + 3] = v & 255


@njit(cache=True, inline="always")
def _put_bytes(buf, pos, data, a, b):  # noqa: ANN001, ANN202
    for q in range(b - a):
        buf[pos + q] = data[a + q]
    return pos + b - a


@njit(cache=True)
def _put_number(buf, pos, x):  # noqa: ANN001, ANN202
    """JSON number of x rounded to 6 decimals (trailing zeros dropped); null for NaN, inf, |x| >= 9.2e18."""
    if not np.isfinite(x) or abs(x) >= 9.2e18:
        buf[pos] = 110  # n
        buf[pos + 1] = 117  # u
        buf[pos + 2] = 108  # l
        buf[pos + 3] = 108  # l
        return pos + 4
    ax = abs(x)
    if ax < 9.2e12:
        v = np.int64(ax * 1e6 + 0.5)
        ip = v // 1000000
        frac = v % 1000000
    else:
        ip = np.int64(ax + 0.5)
        frac = np.int64(0)
    if x < 0 and (ip > 0 or frac > 0):
        buf[pos] = 45  # -
        pos += 1
    nd = 1
    t = ip // 10
    while t > 0:
        nd += 1
        t //= 10
    for q in range(nd - 1, -1, -1):
        buf[pos + q] = 48 + ip % 10
        ip //= 10
    pos += nd
    if frac > 0:
        buf[pos] = 46  # .
        pos += 1
        width = 6
        while frac % 10 == 0:
            frac //= 10
            width -= 1
        for q in range(width - 1, -1, -1):
            buf[pos + q] = 48 + frac % 10
            frac //= 10
        pos += width
    return pos


@njit(cache=True)
def _put_text_array(buf, pos, idx, i, data, off):  # noqa: ANN001, ANN202
    """A text[] field (length, 20-byte header, elements) of the dictionary entries idx[i, :] (until the first -1)."""
    at = pos
    pos += 24
    count = 0
    for j in range(idx.shape[1]):
        c = idx[i, j]
        if c < 0:
            break
        pos = _put_bytes(buf, pos, data, off[c], off[c + 1])
        count += 1
    _put_i32(buf, at, pos - at - 4)
    _put_i32(buf, at + 4, 1)  # ndim (one dimension of length 0 is the empty array, as array_recv reads it)
    _put_i32(buf, at + 8, 0)  # flags: no nulls
    _put_i32(buf, at + 12, _TEXT_OID)
    _put_i32(buf, at + 16, count)
    _put_i32(buf, at + 20, 1)  # lower bound
    return pos


@njit(cache=True)
def _write_rows(buf, start, row0, row1, head, tail, tier, tier_d, tier_o, code, code_d, code_o, text, text_d,
                text_o, feat, feat_d, feat_o, tvalue, tshap, shap_key):  # noqa: ANN001, ANN202
    pos = start
    k = feat.shape[1]
    wh, wt = head.shape[1], tail.shape[1]
    for i in range(row0, row1):
        for q in range(wh):
            buf[pos + q] = head[i, q]
        pos += wh
        t = tier[i]
        pos = _put_bytes(buf, pos, tier_d, tier_o[t], tier_o[t + 1])
        pos = _put_text_array(buf, pos, code, i, code_d, code_o)
        pos = _put_text_array(buf, pos, text, i, text_d, text_o)
        at = pos
        pos += 4
        buf[pos] = 1  # jsonb binary format version, then the JSON text
        buf[pos + 1] = 91  # [
        pos += 2
        for j in range(k):
            f = feat[i, j]
            if f < 0:
                break
            if j > 0:
                buf[pos] = 44  # ,
                buf[pos + 1] = 32
                pos += 2
            pos = _put_bytes(buf, pos, feat_d, feat_o[f], feat_o[f + 1])
            pos = _put_number(buf, pos, tvalue[i, j])
            pos = _put_bytes(buf, pos, shap_key, 0, shap_key.shape[0])
            pos = _put_number(buf, pos, tshap[i, j])
            buf[pos] = 125  # }
            pos += 1
        buf[pos] = 93  # ]
        pos += 1
        _put_i32(buf, at, pos - at - 4)
        for q in range(wt):
            buf[pos + q] = tail[i, q]
        pos += wt
    return pos


@njit(cache=True, parallel=True)
def _encode_kernel(bound, chunk, head, tail, tier, tier_d, tier_o, code, code_d, code_o, text, text_d, text_o,
                   feat, feat_d, feat_o, tvalue, tshap, shap_key):  # noqa: ANN001, ANN202
    """Every row into one buffer: chunks of rows are written in parallel into regions of ``bound`` bytes per row,
    then compacted in order."""
    n = head.shape[0]
    n_chunks = (n + chunk - 1) // chunk
    buf = np.empty(max(n * bound, 1), dtype=np.uint8)
    ends = np.zeros(n_chunks, dtype=np.int64)
    for c in prange(n_chunks):
        row0 = c * chunk
        row1 = min(n, row0 + chunk)
        ends[c] = _write_rows(buf, row0 * bound, row0, row1, head, tail, tier, tier_d, tier_o, code, code_d,
                              code_o, text, text_d, text_o, feat, feat_d, feat_o, tvalue, tshap, shap_key)
    total = 0
    for c in range(n_chunks):
        total += ends[c] - c * chunk * bound
    out = np.empty(total, dtype=np.uint8)
    pos = 0
    for c in range(n_chunks):
        a = c * chunk * bound
        size = ends[c] - a
        out[pos : pos + size] = buf[a : ends[c]]
        pos += size
    return out


def encode_score_rows(block: ScoredBlock, score_date: dt.date, model_version: str, run_id: str) -> memoryview:
    """The COPY BINARY rows (no header/trailer) of ``block`` for the columns :data:`SCORE_COLUMNS`.

    ``top_contributions`` numbers are rounded to 6 decimals (``null`` for a missing feature value); contributions
    are stored as float32 (real[]), the full vector in the model's feature order."""
    n = len(block)
    f = block.contributions.shape[1]
    ins = block.insights
    mv, rid = model_version.encode(), run_id.encode()
    head = np.zeros(n, dtype=[
        ("nf", ">i2"), ("l_date", ">i4"), ("date", ">i4"), ("l_user", ">i4"), ("user", ">i8"), ("l_prod", ">i4"),
        ("prod", ">i8"), ("l_prob", ">i4"), ("prob", ">f8"), ("l_mv", ">i4"), ("mv", f"S{len(mv)}"),
        ("l_run", ">i4"), ("run", f"S{len(rid)}"),
    ])
    head["nf"] = len(SCORE_COLUMNS)
    head["l_date"], head["date"] = 4, (score_date - _PG_EPOCH).days
    head["l_user"], head["user"] = 8, block.user_id
    head["l_prod"], head["prod"] = 8, block.product_id
    head["l_prob"], head["prob"] = 8, block.probability
    head["l_mv"], head["mv"] = len(mv), mv
    head["l_run"], head["run"] = len(rid), rid
    tail = np.zeros(n, dtype=[("l_base", ">i4"), ("base", ">f8"), *_array_header_dtype(),
                              ("el", [("l", ">i4"), ("v", ">f4")], (f,))])
    tail["l_base"], tail["base"] = 8, block.base_value
    tail["len"], tail["ndim"], tail["oid"], tail["dim"], tail["lb"] = 20 + 8 * f, 1, _FLOAT4_OID, f, 1
    tail["el"]["l"] = 4
    tail["el"]["v"] = block.contributions.astype(np.float32)
    tiers = [_len_prefixed(t.encode()) for t in ins.tiers]
    codes = [_len_prefixed(c.encode()) for c in ins.codes]
    texts = [_len_prefixed(t.encode()) for t in ins.texts]
    heads = [('{"feature": ' + json.dumps(name) + ', "value": ').encode() for name in ins.feature_names]
    shap_key = np.frombuffer(b', "shap": ', dtype=np.uint8)
    r, k = ins.reason_code.shape[1], ins.top_feature.shape[1]
    bound = (head.dtype.itemsize + tail.dtype.itemsize + max(map(len, tiers), default=0) + 2 * 24
             + r * (max(map(len, codes), default=0) + max(map(len, texts), default=0))
             + 7 + k * (2 + max(map(len, heads), default=0) + 2 * _NUM_MAX + len(shap_key) + 1))
    out = _encode_kernel(
        bound, _ENCODE_CHUNK, head.view(np.uint8).reshape(n, -1), tail.view(np.uint8).reshape(n, -1),
        ins.tier.astype(np.int64), *_dictionary(tiers), np.ascontiguousarray(ins.reason_code), *_dictionary(codes),
        np.ascontiguousarray(ins.reason_text), *_dictionary(texts), np.ascontiguousarray(ins.top_feature),
        *_dictionary(heads), np.ascontiguousarray(ins.top_value, dtype=np.float64),
        np.ascontiguousarray(ins.top_shap, dtype=np.float64), shap_key)
    return memoryview(out)


def encode_sample_rows(
    score_date: dt.date, run_id: str, bucket: int, user_id: np.ndarray, product_id: np.ndarray, X: np.ndarray
) -> bytes:
    """COPY BINARY rows of scoring.feature_samples (score_date, run_id, bucket, user_id, product_id, features)."""
    n, f = X.shape
    rid = run_id.encode()
    rows = np.zeros(n, dtype=[
        ("nf", ">i2"), ("l_date", ">i4"), ("date", ">i4"), ("l_run", ">i4"), ("run", f"S{len(rid)}"),
        ("l_bucket", ">i4"), ("bucket", ">i4"), ("l_user", ">i4"), ("user", ">i8"), ("l_prod", ">i4"),
        ("prod", ">i8"), *_array_header_dtype(), ("el", [("l", ">i4"), ("v", ">f4")], (f,)),
    ])
    rows["nf"] = 6
    rows["l_date"], rows["date"] = 4, (score_date - _PG_EPOCH).days
    rows["l_run"], rows["run"] = len(rid), rid
    rows["l_bucket"], rows["bucket"] = 4, bucket
    rows["l_user"], rows["user"] = 8, user_id
    rows["l_prod"], rows["prod"] = 8, product_id
    rows["len"], rows["ndim"], rows["oid"], rows["dim"], rows["lb"] = 20 + 8 * f, 1, _FLOAT4_OID, f, 1
    rows["el"]["l"] = 4
    rows["el"]["v"] = X.astype(np.float32)
    return rows.tobytes()


def sample_mask(user_id: np.ndarray, product_id: np.ndarray, rate: float) -> np.ndarray:
    """Deterministic pseudo-random sample of pairs: a stable 32-bit hash of (user, product) below rate * 2^32."""
    from ml.features import user_hash32

    h = user_hash32(np.asarray(user_id, np.int64) ^ user_hash32(np.asarray(product_id, np.int64)))
    return h < int(rate * 2**32)


# --- batch ---------------------------------------------------------------------------------------------------------
def _run_row(conn: sa.Connection, run_id: str) -> Any:
    return conn.execute(sa.text(
        "select run_id, score_date, model_version, status, planned_pairs, buckets, stage_table, feature_names,"
        " timings, started_at, summary, orchestrator_run_id from scoring.runs where run_id = :r"),
        {"r": run_id}).one_or_none()


def _feature_blocks(
    engine: Engine, settings: Settings, spec: BatchSpec, feature_names: Sequence[str], timings: dict[str, float]
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(user_id, product_id, X) blocks of about ``settings.score_block_rows`` rows of the bucket's active pairs;
    time spent reading features accumulates in ``timings['features']``."""
    import pyarrow as pa

    from ml.features import iter_pair_feature_batches

    day = as_date(spec.score_date)
    # one product/category/brand statistics cache per run: the first bucket computes it, the others reuse it
    batches = iter_pair_feature_batches(
        engine, as_of_of(day), settings, spec.bucket, spec.n_buckets, item_stats_key=spec.run_id
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
    """Score one bucket of a planned run into the run's stage table (module docstring, step 2).

    ``batch``: a :class:`BatchSpec` or its dict (XCom). ``ensemble``: an already loaded model (default: loaded from
    the registry, once per process). Idempotent: re-running a bucket replaces its rows. Raises ScoringError (the
    bucket is marked failed; nothing of this attempt stays in the stage) on any failure, including an additivity
    residual above ``settings.score_additivity_tolerance``.
    """
    from psycopg import sql as psql
    from psycopg.copy import QueuedLibpqWriter

    spec = BatchSpec.from_dict(batch)
    day = as_date(spec.score_date)
    what = f"scoring run {spec.run_id} (score_date {day}) bucket {spec.bucket}/{spec.n_buckets}"
    with engine.begin() as conn:
        run = _run_row(conn, spec.run_id)
        if run is None:
            raise ScoringError(f"{what}: no such run in scoring.runs")
        if run.status != "running":
            raise ScoringError(f"{what}: the run is {run.status}; plan a new run")
        prev = conn.execute(sa.text(
            "update scoring.run_batches b set status = 'running', attempts = b.attempts + 1, started_at = now(),"
            " error = null from (select attempts from scoring.run_batches where run_id = :r and bucket = :b"
            " for update) old where b.run_id = :r and b.bucket = :b returning old.attempts, b.planned_pairs"),
            {"r": spec.run_id, "b": spec.bucket}).one_or_none()
    if prev is None:
        raise ScoringError(f"{what}: bucket not planned (scoring.run_batches has no row)")
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    try:
        ens = ensemble if ensemble is not None else load_model(engine, settings, spec.model_version)
        timings["load_model"] = time.perf_counter() - t0
        if list(ens.feature_names) != list(run.feature_names):
            raise ScoringError(f"{what}: model {spec.model_version} features differ from the run's feature list")
        stage = psql.Identifier("scoring", run.stage_table)
        copy_scores = psql.SQL("copy {} ({}) from stdin (format binary)").format(
            stage, psql.SQL(", ").join(psql.Identifier(c) for c in SCORE_COLUMNS))
        copy_samples = psql.SQL("copy scoring.feature_samples (score_date, run_id, bucket, user_id, product_id,"
                                " features) from stdin (format binary)")
        progress = Progress(what, total=int(prev.planned_pairs), unit="pairs")
        rows = 0
        max_residual = 0.0
        samples: list[bytes] = []
        with _pg_conn(engine) as pg, pg.transaction(), pg.cursor() as cur:
            cur.execute("set local synchronous_commit = off")  # the swap's commit is the durable one
            if prev.attempts > 0:  # an earlier attempt may have committed rows: replace them, never duplicate
                cur.execute(psql.SQL("delete from {} where ml.user_bucket(user_id, %s) = %s").format(stage),
                            (spec.n_buckets, spec.bucket))
                cur.execute("delete from scoring.feature_samples where run_id = %s and bucket = %s",
                            (spec.run_id, spec.bucket))
            # a queued writer: a thread streams block k to the server while block k + 1 is being computed
            with cur.copy(copy_scores, writer=QueuedLibpqWriter(cur)) as copy:
                copy.write(COPY_HEADER)
                blocks = (_feature_blocks(engine, settings, spec, ens.feature_names, timings)
                          if prev.planned_pairs else iter(()))  # an empty bucket reads nothing
                for uid, pid, X in blocks:
                    block = score_block(ens, uid, pid, X, settings, timings)
                    if block.max_residual > settings.score_additivity_tolerance:
                        raise ScoringError(
                            f"{what}: additivity residual {block.max_residual:.3g} exceeds "
                            f"{settings.score_additivity_tolerance:g} (sum(contributions) + base != logit(p))")
                    max_residual = max(max_residual, block.max_residual)
                    t = time.perf_counter()
                    payload = encode_score_rows(block, day, spec.model_version, spec.run_id)
                    keep = sample_mask(uid, pid, settings.drift_sample_rate)
                    if keep.any():
                        samples.append(encode_sample_rows(day, spec.run_id, spec.bucket, uid[keep], pid[keep],
                                                          X[keep]))
                    t1 = time.perf_counter()
                    copy.write(payload)
                    t2 = time.perf_counter()
                    timings["encode"] = timings.get("encode", 0.0) + t1 - t
                    timings["copy"] = timings.get("copy", 0.0) + t2 - t1  # time blocked on the server
                    rows += len(block)
                    progress.advance(len(block))
                copy.write(COPY_TRAILER)
                t = time.perf_counter()
            timings["copy"] = timings.get("copy", 0.0) + time.perf_counter() - t  # the COPY's final flush
            if samples:
                with cur.copy(copy_samples) as copy:
                    copy.write(COPY_HEADER)
                    for chunk in samples:
                        copy.write(chunk)
                    copy.write(COPY_TRAILER)
            seconds = time.perf_counter() - t0
            timings = {k: round(v, 4) for k, v in timings.items()}
            cur.execute(
                "update scoring.run_batches set status = 'succeeded', scored_pairs = %s, timings = %s::jsonb,"
                " max_residual = %s, finished_at = now() where run_id = %s and bucket = %s",
                (rows, json.dumps({**timings, "total": round(seconds, 4)}), max_residual, spec.run_id, spec.bucket))
    except Exception as e:
        _mark_batch_failed(engine, spec, e)
        if isinstance(e, ScoringError):
            raise
        raise ScoringError(f"{what} failed: {type(e).__name__}: {e}") from e
    progress.finish()
    result = BatchResult(spec.run_id, spec.bucket, rows, time.perf_counter() - t0, timings, max_residual)
    log.info("%s: %s pairs in %.1fs (%s pairs/s); %s", what, f"{rows:,}", result.seconds,
             f"{result.rows_per_s:,.0f}", _format_timings(timings))
    return result


def _mark_batch_failed(engine: Engine, spec: BatchSpec, error: BaseException) -> None:
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(
                "update scoring.run_batches set status = 'failed', error = :e, finished_at = now()"
                " where run_id = :r and bucket = :b"),
                {"e": f"{type(error).__name__}: {error}"[:4000], "r": spec.run_id, "b": spec.bucket})
    except sa.exc.SQLAlchemyError:  # never hide the original failure behind the bookkeeping
        log.exception("could not mark bucket %d of run %s failed", spec.bucket, spec.run_id)


# --- finalize: checks, then the partition swap ---------------------------------------------------------------------
_CHECK_SUITE = "score_output"


def check_stage(engine: Engine, settings: Settings, run_id: str) -> list[CheckResult]:
    """Great Expectations checks of a run's stage table (SQL datasource; the data never leaves PostgreSQL):

    * ``row_count_equals_planned``: rows == the pairs planned for the run;
    * ``probability_in_0_1`` and not-null checks of probability, base_value, contributions, top_contributions;
    * ``contributions_length`` / ``contributions_complete``: every vector has one entry per feature, none null/NaN;
    * ``additivity_residual_max``: on a sample of ``score_check_sample_rows`` rows (Bernoulli, repeatable),
      max |sum(contributions) + base_value - logit(probability)| <= ``score_additivity_tolerance``.

    The outcome is recorded in ``quality.validation_runs`` (suite ``score_output``).
    """
    import great_expectations as gx
    import great_expectations.expectations as gxe
    from great_expectations.data_context.types.base import ProgressBarsConfig

    with engine.connect() as conn:
        run = _run_row(conn, run_id)
    if run is None or run.stage_table is None:
        raise ScoringError(f"scoring run {run_id}: no run or no stage table to check")
    stage, planned, n_features = run.stage_table, int(run.planned_pairs or 0), len(run.feature_names)
    sample = stage + "_chk"
    pct = min(100.0, 100.0 * settings.score_check_sample_rows / max(planned, 1))
    with engine.begin() as conn:
        conn.execute(sa.text(f"drop table if exists {_q('scoring', sample)}"))
        conn.execute(sa.text(
            f"create table {_q('scoring', sample)} as select s.user_id, s.product_id,"
            " case when s.probability > 0 and s.probability < 1 then abs(s.base_value"
            " + (select sum(c::float8) from unnest(s.contributions) as c) - ln(s.probability / (1 - s.probability)))"
            " else 'Infinity'::float8 end as residual"
            f" from {_q('scoring', stage)} as s tablesample bernoulli (:pct) repeatable (0)"), {"pct": pct})
        sampled = conn.execute(sa.text(f"select count(*) from {_q('scoring', sample)}")).scalar_one()
    try:
        import warnings

        logging.getLogger("great_expectations").setLevel(logging.WARNING)
        warnings.filterwarnings("ignore", message=".*generic SQLDatasource.*")
        ctx = gx.get_context(mode="ephemeral")
        ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
        ds = ctx.data_sources.add_sql("scoring", connection_string=engine.url.render_as_string(hide_password=False))
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
                f" from {_q('scoring', stage)}")), [
                ("contributions_length", gxe.ExpectColumnValuesToBeBetween(
                    column="n_contributions", min_value=n_features, max_value=n_features)),
                ("contributions_complete", gxe.ExpectColumnValuesToBeInSet(
                    column="contributions_complete", value_set=[True])),
            ]),
        ]
        if sampled or planned:
            suites.append((ds.add_table_asset("residuals", table_name=sample, schema_name="scoring"), [
                ("additivity_sample_not_empty", gxe.ExpectTableRowCountToBeBetween(min_value=1)),
                ("additivity_residual_max", gxe.ExpectColumnMaxToBeBetween(
                    column="residual", max_value=settings.score_additivity_tolerance)),
            ]))
        checks: list[CheckResult] = []
        raw: list[dict[str, Any]] = []
        for asset, rules in suites:
            suite = gx.ExpectationSuite(name=f"{_CHECK_SUITE}_{asset.name}", expectations=[e for _, e in rules])
            batch = asset.add_batch_definition_whole_table("all").get_batch()
            result = batch.validate(suite)
            by_type: dict[str, list[Any]] = {}
            for r in result.results:
                by_type.setdefault(r.expectation_config.type, []).append(r)
            for rule, exp in rules:
                r = by_type[exp.expectation_type].pop(0)
                observed = r.result.get("observed_value", r.result.get("unexpected_count"))
                expected = json.dumps({k: v for k, v in exp.configuration.kwargs.items()
                                       if k in ("value", "min_value", "max_value", "value_set")}, default=str)
                checks.append(CheckResult(rule, bool(r.success), _jsonable(observed), expected))
                raw.append({"rule": rule, "success": bool(r.success), "observed": _jsonable(observed),
                            "expected": expected, "result": _jsonable(r.result)})
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f"drop table if exists {_q('scoring', sample)}"))
    failed = [c.rule for c in checks if not c.success]
    with engine.begin() as conn:
        conn.execute(sa.text(
            "insert into quality.validation_runs (suite_name, file_name, file_uri, success, row_count, statistics,"
            " results, failed_rules, dag_run_id) values (:s, :f, :u, :ok, :n, cast(:st as jsonb),"
            " cast(:res as jsonb), :failed, :dag)"),
            {"s": _CHECK_SUITE, "f": stage, "u": f"postgresql:scoring.{stage}", "ok": not failed, "n": planned,
             "st": json.dumps({"run_id": run_id, "score_date": str(run.score_date), "sampled_rows": sampled}),
             "res": json.dumps(raw, default=str), "failed": failed, "dag": run.orchestrator_run_id})
    return checks


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def fail_run(engine: Engine, run_id: str, error: BaseException | str) -> None:
    """Mark a running run failed (its stage stays for inspection until the next plan drops it). Never raises."""
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(
                "update scoring.runs set status = 'failed', error = :e, finished_at = now()"
                " where run_id = :r and status = 'running'"), {"e": str(error)[:8000], "r": run_id})
        from ml.features import drop_item_stats

        drop_item_stats(engine, run_id)  # a retry of the date plans a new run with a fresh cache
    except sa.exc.SQLAlchemyError:
        log.exception("could not mark scoring run %s failed", run_id)


def _stage_facts(conn: sa.Connection, stage: str) -> tuple[dict[str, int], dict[str, int]]:
    qs = _q("scoring", stage)
    tiers = {r.tier: int(r.n) for r in conn.execute(sa.text(
        f"select tier, count(*) as n from {qs} group by tier order by n desc, tier"))}
    reasons = {r.code: int(r.n) for r in conn.execute(sa.text(
        f"select code, count(*) as n from {qs}, unnest(reason_codes) as code group by code order by n desc, code"))}
    return tiers, reasons


def finalize_run(engine: Engine, settings: Settings, run_id: str) -> RunSummary:
    """Check the run's stage and swap it in as the score date's partition of scoring.scores, in one transaction
    (module docstring, step 3). Idempotent: finalizing a succeeded run returns its summary. Raises ScoringError
    (and marks the run failed) when a bucket did not succeed or a check fails; the previous partition is intact."""
    t0 = time.perf_counter()
    with engine.connect() as conn:
        run = _run_row(conn, run_id)
        if run is None:
            raise ScoringError(f"scoring run {run_id}: no such run")
        if run.status == "succeeded" and run.summary:
            log.info("scoring run %s is already finalized", run_id)
            return _summary_from_dict(run.summary)
        if run.status != "running":
            raise ScoringError(f"scoring run {run_id} (score_date {run.score_date}) is {run.status}; plan a new run")
        batches = conn.execute(sa.text(
            "select bucket, status, scored_pairs, timings from scoring.run_batches where run_id = :r order by bucket"),
            {"r": run_id}).all()
    day = run.score_date
    what = f"scoring run {run_id} (score_date {day})"
    unfinished = [b.bucket for b in batches if b.status != "succeeded"]
    if unfinished:
        msg = f"{what}: bucket(s) {unfinished} did not succeed; nothing was swapped"
        fail_run(engine, run_id, msg)
        raise ScoringError(msg)
    t = time.perf_counter()
    checks = check_stage(engine, settings, run_id)
    check_s = time.perf_counter() - t
    failed = [c for c in checks if not c.success]
    if failed:
        msg = f"{what}: output checks failed, partition not swapped: " + "; ".join(
            f"{c.rule} (observed {c.observed}, expected {c.expected})" for c in failed)
        fail_run(engine, run_id, msg)
        raise ScoringError(msg)
    timings: dict[str, float] = {"plan": float((run.timings or {}).get("plan", 0.0))}
    for b in batches:
        for key, value in (b.timings or {}).items():
            timings[key] = round(timings.get(key, 0.0) + float(value), 4)
    timings["check"] = round(check_s, 4)
    scored = sum(int(b.scored_pairs or 0) for b in batches)
    stage, part = run.stage_table, partition_name(day)
    with engine.connect() as conn:
        tiers, reasons = _stage_facts(conn, stage)
    t = time.perf_counter()
    try:
        with engine.begin() as conn:
            replaced = _swap_partition(conn, settings, stage, part, day)
            conn.execute(sa.text("delete from scoring.feature_samples where score_date = :d and run_id <> :r"),
                         {"d": day, "r": run_id})
            timings["swap"] = round(time.perf_counter() - t, 4)
            wall = float(conn.execute(sa.text(
                "select extract(epoch from clock_timestamp() - started_at) from scoring.runs where run_id = :r"),
                {"r": run_id}).scalar_one())
            summary = RunSummary(run_id, day, run.model_version, "succeeded", int(run.planned_pairs or 0), scored,
                                 int(run.buckets), part, replaced, timings, wall, tiers, reasons, checks)
            conn.execute(sa.text(
                "update scoring.runs set status = 'succeeded', scored_pairs = :n, finished_at = now(),"
                " timings = cast(:t as jsonb), summary = cast(:s as jsonb) where run_id = :r"),
                {"n": scored, "t": json.dumps(timings), "s": json.dumps(summary.as_dict(), default=str),
                 "r": run_id})
    except sa.exc.DBAPIError as e:
        raise ScoringError(f"{what}: partition swap failed (the previous partition is intact): {e.orig}") from e
    from ml.features import drop_item_stats

    drop_item_stats(engine, run_id)  # the run's feature statistics cache is no longer needed
    for line in summary.lines():
        log.info(line)
    log.debug("finalize took %.1fs", time.perf_counter() - t0)
    return summary


def _swap_partition(conn: sa.Connection, settings: Settings, stage: str, part: str, day: dt.date) -> bool:
    """Inside the caller's transaction: replace partition ``part`` of scoring.scores by table ``stage``. Returns
    whether a previous partition was replaced."""
    conn.execute(sa.text("select set_config('lock_timeout', :t, true)"), {"t": f"{settings.score_lock_timeout_s}s"})
    conn.execute(sa.text("select pg_advisory_xact_lock(:ns, :day)"),
                 {"ns": _SWAP_LOCK_NS, "day": (day - _PG_EPOCH).days})
    # take the strongest lock first (DETACH needs it anyway): no lock upgrade, so no deadlock with readers
    conn.execute(sa.text("lock table scoring.scores in access exclusive mode"))
    existing = conn.execute(sa.text(
        "select c.oid, exists (select 1 from pg_inherits i where i.inhrelid = c.oid"
        " and i.inhparent = 'scoring.scores'::regclass) as attached"
        " from pg_class c join pg_namespace n on n.oid = c.relnamespace where n.nspname = 'scoring' and c.relname = :p"),
        {"p": part}).one_or_none()
    if existing is not None:
        if existing.attached:
            conn.execute(sa.text(f"alter table scoring.scores detach partition {_q('scoring', part)}"))
        conn.execute(sa.text(f"drop table {_q('scoring', part)}"))
    conn.execute(sa.text(f"alter table {_q('scoring', stage)} rename to {_q(part)}"))
    for (index,) in conn.execute(sa.text(
            "select indexname from pg_indexes where schemaname = 'scoring' and tablename = :p"), {"p": part}).all():
        if index.startswith(stage):
            conn.execute(sa.text(f"alter index {_q('scoring', index)} rename to {_q(part + index[len(stage):])}"))
    conn.execute(sa.text(f"alter table {_q('scoring', part)} rename constraint {_q(stage + '_day')} "
                         f"to {_q(part + '_day')}"))
    conn.execute(sa.text(f"alter table scoring.scores attach partition {_q('scoring', part)}"
                         " for values from (cast(:d as date)) to (cast(:e as date))"),
                 {"d": day, "e": day + dt.timedelta(days=1)})
    return existing is not None and bool(existing.attached)


def _summary_from_dict(d: Mapping[str, Any]) -> RunSummary:
    return RunSummary(
        run_id=d["run_id"], score_date=as_date(d["score_date"]), model_version=d["model_version"],
        status=d["status"], planned_pairs=int(d["planned_pairs"]), scored_pairs=int(d["scored_pairs"]),
        buckets=int(d["buckets"]), partition=d["partition"], replaced_previous=bool(d["replaced_previous"]),
        timings=dict(d["timings"]), wall_seconds=float(d["wall_seconds"]), tiers=dict(d["tiers"]),
        reasons=dict(d["reasons"]), checks=[CheckResult(**c) for c in d["checks"]],
    )


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
) -> RunSummary:
    """Plan, score every bucket in this process (the model loaded once), finalize. On any failure the run is marked
    failed and the error re-raised; the score date's previous partition is then unchanged."""
    plan = plan_run(engine, settings, score_date, model_version=model_version, n_buckets=n_buckets,
                    orchestrator_run_id=orchestrator_run_id)
    try:
        ens = ensemble if ensemble is not None else load_model(engine, settings, plan.model_version)
        for batch in plan.batches:
            score_batch(engine, settings, batch, ensemble=ens)
        return finalize_run(engine, settings, plan.run_id)
    except BaseException as e:
        fail_run(engine, plan.run_id, f"{type(e).__name__}: {e}")
        raise
