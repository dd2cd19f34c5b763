"""Drift of the nightly scores and of the model's input features against the previous score date.

Recorded in ``monitoring.metrics`` (one row per (metric_date, kind, name); a re-run of a date overwrites its rows):

* ``kind='score_psi'``, ``name='probability'``: PSI of the probability distribution of ``score_date`` against the
  latest earlier score date in ``scoring.scores``, on the reference's deciles (``settings.drift_bins`` quantile bins);
* ``kind='feature_psi'``, ``name=<feature>``: PSI of each feature on the runs' deterministic feature samples
  (``scoring.feature_samples``, ~``settings.drift_sample_rate`` of the pairs, by a stable hash of the pair);
  missing values (NaN) form their own bin;
* ``kind='row_count'``, ``name='scored_pairs'``: the date's scored pairs (details: the reference's count).

PSI = sum_b (a_b - e_b) * ln(a_b / e_b) over bins b, with shares a (current) and e (reference) floored at 1e-4.
Rules of thumb: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 major shift (documented in docs/scoring.md).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ml.dates import utc_date
from ml.jsonutil import dumps
from ml.settings import Settings

log = logging.getLogger(__name__)

PSI_FLOOR = 1e-4


@dataclass(frozen=True)
class DriftMetric:
    """One monitoring.metrics row."""

    kind: str
    name: str
    value: float | None
    details: dict[str, Any] = field(default_factory=dict)


def psi(expected: np.ndarray, actual: np.ndarray, floor: float = PSI_FLOOR) -> float:
    """Population stability index of two histograms (counts over the same bins)."""
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.sum() <= 0 or a.sum() <= 0:
        return float("nan")
    e = np.maximum(e / e.sum(), floor)
    a = np.maximum(a / a.sum(), floor)
    return float(np.sum((a - e) * np.log(a / e)))


def quantile_edges(reference: np.ndarray, bins: int) -> np.ndarray:
    """Inner bin edges from the interior quantiles of the finite reference values, each moved up to the midpoint
    between that quantile and the next larger distinct reference value (ties collapse bins).

    Why midpoints: many features take a few discrete levels (counts, per-category shares) that move a little from
    one day to the next; an edge placed exactly on a level would flip whole levels between bins on a tiny shift and
    report a false "major drift". For continuous values this changes the edges negligibly."""
    ref = np.sort(reference[np.isfinite(reference)])
    if ref.size == 0 or bins < 2:
        return np.empty(0)
    distinct = np.unique(ref)
    q = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1], method="inverted_cdf"))
    pos = np.searchsorted(distinct, q, side="right")  # index of the next larger distinct value
    keep = pos < len(distinct)
    return np.unique((q[keep] + distinct[pos[keep]]) / 2.0)


def histogram(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts per bin for ``edges`` (len(edges) + 1 finite bins; a value equal to an edge goes to the bin above,
    as SQL width_bucket does) plus a last bin for NaN/inf."""
    finite = np.isfinite(values)
    counts = np.bincount(np.searchsorted(edges, values[finite], side="right"), minlength=len(edges) + 1)
    return np.append(counts, np.count_nonzero(~finite))


def psi_of(reference: np.ndarray, current: np.ndarray, bins: int) -> tuple[float, dict[str, Any]]:
    """PSI of ``current`` against ``reference`` on the reference's quantile bins; also the bins and counts."""
    edges = quantile_edges(reference, bins)
    e, a = histogram(reference, edges), histogram(current, edges)
    return psi(e, a), {"edges": [float(x) for x in edges], "reference": e.tolist(), "current": a.tolist()}


def _score_psi(conn: sa.Connection, day: dt.date, ref_day: dt.date, bins: int) -> DriftMetric:
    qs = [i / bins for i in range(1, bins)]
    edges = conn.execute(sa.text(
        "select percentile_cont(cast(:q as float8[])) within group (order by probability)"
        " from scoring.scores where score_date = :d"), {"q": qs, "d": ref_day}).scalar_one()
    edges = sorted(set(float(x) for x in (edges or [])))
    counts = {}
    for which, d in (("reference", ref_day), ("current", day)):
        # width_bucket(p, edges) = the number of edges <= p: bins 0 .. len(edges), like histogram() below
        rows = conn.execute(sa.text(
            "select width_bucket(probability, cast(:e as float8[])) as b, count(*) as n from scoring.scores"
            " where score_date = :d group by 1"), {"e": edges, "d": d}).all()
        c = np.zeros(len(edges) + 1, dtype=np.int64)
        for r in rows:
            c[int(r.b)] = int(r.n)
        counts[which] = c
    value = psi(counts["reference"], counts["current"])
    return DriftMetric("score_psi", "probability", value, {
        "reference_date": ref_day.isoformat(), "edges": edges, "reference": counts["reference"].tolist(),
        "current": counts["current"].tolist()})


def _samples(conn: sa.Connection, day: dt.date) -> tuple[list[str], np.ndarray]:
    rows = conn.execute(sa.text(
        "select s.features, r.feature_names from scoring.feature_samples s join scoring.runs r using (run_id)"
        " where s.score_date = :d and r.status = 'succeeded' order by s.user_id, s.product_id"), {"d": day}).all()
    if not rows:
        return [], np.empty((0, 0))
    names = list(rows[0].feature_names)
    X = np.array([r.features for r in rows if list(r.feature_names) == names], dtype=np.float64)
    return names, X


def drift_metrics(
    engine: Engine, settings: Settings, score_date: dt.date | str
) -> tuple[dt.date | None, list[DriftMetric]]:
    """Compute (do not record) the drift metrics of UTC date ``score_date`` (a string or datetime is coerced once by
    :func:`ml.dates.utc_date`): returns (reference date or None, metrics)."""
    day = utc_date(score_date, what="score_date")
    with engine.connect() as conn:
        ref_day = conn.execute(sa.text("select max(score_date) from scoring.scores where score_date < :d"),
                               {"d": day}).scalar_one()
        n_now = conn.execute(sa.text("select count(*) from scoring.scores where score_date = :d"),
                             {"d": day}).scalar_one()
        metrics = []
        if ref_day is None:
            metrics.append(DriftMetric("row_count", "scored_pairs", float(n_now), {"reference_date": None}))
            return None, metrics
        n_ref = conn.execute(sa.text("select count(*) from scoring.scores where score_date = :d"),
                             {"d": ref_day}).scalar_one()
        metrics.append(DriftMetric("row_count", "scored_pairs", float(n_now),
                                   {"reference_date": ref_day.isoformat(), "reference": int(n_ref)}))
        if n_now and n_ref:
            metrics.append(_score_psi(conn, day, ref_day, settings.drift_bins))
        names_ref, X_ref = _samples(conn, ref_day)
        names_now, X_now = _samples(conn, day)
    if len(X_ref) and len(X_now):
        col_ref = {n: j for j, n in enumerate(names_ref)}
        for j, name in enumerate(names_now):
            if name not in col_ref:
                continue
            value, details = psi_of(X_ref[:, col_ref[name]], X_now[:, j], settings.drift_bins)
            metrics.append(DriftMetric("feature_psi", name, value, {
                "reference_date": ref_day.isoformat(), "reference_rows": len(X_ref), "current_rows": len(X_now),
                **details}))
    return ref_day, metrics


def record_drift(engine: Engine, settings: Settings, score_date: dt.date | str) -> list[DriftMetric]:
    """Compute the drift metrics of UTC date ``score_date`` and upsert them into ``monitoring.metrics`` (metric_date =
    score_date). Returns them; with no earlier score date only the row count is recorded. A string or datetime is
    coerced once by :func:`ml.dates.utc_date` (raises :class:`ml.errors.ConfigError` when it is not a date)."""
    day = utc_date(score_date, what="score_date")
    ref_day, metrics = drift_metrics(engine, settings, day)
    with engine.begin() as conn:
        model_version = conn.execute(sa.text(
            "select model_version from scoring.runs where score_date = :d and status = 'succeeded'"
            " order by finished_at desc limit 1"), {"d": day}).scalar_one_or_none()
        for m in metrics:
            value = None if m.value is None or not np.isfinite(m.value) else float(m.value)
            conn.execute(sa.text(
                "insert into monitoring.metrics (metric_date, kind, name, value, model_version, details)"
                " values (:d, :k, :n, :v, :m, cast(:x as jsonb))"
                " on conflict (metric_date, kind, name) do update set value = excluded.value,"
                " model_version = excluded.model_version, details = excluded.details, recorded_at = now()"),
                {"d": day, "k": m.kind, "n": m.name, "v": value, "m": model_version, "x": dumps(m.details)})
    score = next((m.value for m in metrics if m.kind == "score_psi"), None)
    top = sorted((m for m in metrics if m.kind == "feature_psi" and m.value is not None and np.isfinite(m.value)),
                 key=lambda m: -m.value)[:3]
    if ref_day is None:
        log.info("drift %s: no earlier score date to compare with; recorded the row count only", day)
    else:
        log.info("drift %s vs %s: score PSI %s; largest feature PSI: %s", day, ref_day,
                 f"{score:.4f}" if score is not None else "n/a",
                 ", ".join(f"{m.name} {m.value:.4f}" for m in top) or "n/a")
    return metrics
