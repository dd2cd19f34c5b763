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



def _upsert_metrics(conn: sa.Connection, day: dt.date, metrics: list[DriftMetric], model_version: str | None) -> None:
    """Upsert ``metrics`` of ``day`` into ``monitoring.metrics`` (one row per (date, kind, name); NaN/inf as null)."""
    for m in metrics:
        value = None if m.value is None or not np.isfinite(m.value) else float(m.value)
        conn.execute(sa.text(
            "insert into monitoring.metrics (metric_date, kind, name, value, model_version, details)"
            " values (:d, :k, :n, :v, :m, cast(:x as jsonb))"
            " on conflict (metric_date, kind, name) do update set value = excluded.value,"
            " model_version = excluded.model_version, details = excluded.details, recorded_at = now()"),
            {"d": day, "k": m.kind, "n": m.name, "v": value, "m": model_version, "x": dumps(m.details)})

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
        _upsert_metrics(conn, day, metrics, model_version)
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


# --- drift against the training reference (issue 13) ----------------------------------------------------------------
# Day-over-day drift above compares neighbouring nights, so a slow drift never shows; these compare every night with
# the distribution the model was trained on: the holdout's, stored with the model version at registration.
# monitoring.metrics kinds: ref_score_psi (name 'probability', every scored pair, binned in SQL), ref_feature_psi
# and ref_null_rate (name = feature, on the night's feature samples), ref_unseen_share (name 'pairs').


@dataclass(frozen=True)
class Reference:
    """The reference distribution of one feature (or of the score) on the holdout: inner bin ``edges``, ``counts``
    per bin (len(edges) + 1 finite bins, then the missing-value bin: :func:`histogram`), rows and null rate."""

    kind: str
    name: str
    edges: list[float]
    counts: list[int]
    rows: int
    null_rate: float


def reference_distributions(frame: Any, feature_names: list[str], probabilities: np.ndarray,
                            bins: int) -> list[Reference]:
    """The reference of every feature of ``frame`` (raw values: NaN = missing, before any NaN fill) and of the
    ``probabilities`` on the same rows, on ``bins`` quantile bins (:func:`quantile_edges`)."""
    out = []
    columns = [("feature", n, np.asarray(frame[n], dtype=np.float64)) for n in feature_names]
    columns.append(("score", "probability", np.asarray(probabilities, dtype=np.float64)))
    for kind, name, values in columns:
        edges = quantile_edges(values, bins)
        counts = histogram(values, edges)
        n = len(values)
        out.append(Reference(kind, name, [float(e) for e in edges], [int(c) for c in counts], n,
                             float(counts[-1] / n) if n else 0.0))
    return out


def record_reference(engine: Engine, settings: Settings, model_version: str, frame: Any, feature_names: list[str],
                     probabilities: np.ndarray) -> list[Reference]:
    """Store the holdout reference of ``model_version`` in ``monitoring.reference_distributions`` (replacing it)."""
    refs = reference_distributions(frame, feature_names, probabilities, settings.drift_bins)
    with engine.begin() as conn:
        conn.execute(sa.text("delete from monitoring.reference_distributions where model_version = :m"),
                     {"m": model_version})
        conn.execute(sa.text(
            "insert into monitoring.reference_distributions (model_version, kind, name, edges, counts, rows, null_rate)"
            " values (:m, :k, :n, :e, :c, :r, :z)"),
            [{"m": model_version, "k": r.kind, "n": r.name, "e": r.edges, "c": r.counts, "r": r.rows,
              "z": r.null_rate} for r in refs])
    log.info("reference distributions of %s stored: %d features + the score, %d holdout rows", model_version,
             len(refs) - 1, refs[-1].rows if refs else 0)
    return refs


def load_references(conn: sa.Connection, model_version: str) -> dict[tuple[str, str], Reference]:
    rows = conn.execute(sa.text(
        "select kind, name, edges, counts, rows, null_rate from monitoring.reference_distributions"
        " where model_version = :m"), {"m": model_version}).all()
    return {(r.kind, r.name): Reference(r.kind, r.name, list(r.edges), list(r.counts), int(r.rows),
                                        float(r.null_rate)) for r in rows}


def _served_model(conn: sa.Connection, day: dt.date) -> str | None:
    return conn.execute(sa.text(
        "select model_version from scoring.runs where score_date = :d and status = 'succeeded'"
        " order by finished_at desc nulls last limit 1"), {"d": day}).scalar_one_or_none()


def reference_drift_metrics(engine: Engine, settings: Settings, score_date: dt.date | str
                            ) -> tuple[str | None, list[DriftMetric]]:
    """Compute (do not record) the drift of UTC ``score_date`` against its model's training reference: returns
    (model version or None, metrics). No reference stored (a model registered before this existed): no metrics."""
    day = utc_date(score_date, what="score_date")
    metrics: list[DriftMetric] = []
    with engine.connect() as conn:
        version = _served_model(conn, day)
        refs = load_references(conn, version) if version else {}
        if not refs:
            return version, metrics
        score_ref = refs.get(("score", "probability"))
        if score_ref is not None:
            rows = conn.execute(sa.text(
                "select width_bucket(probability, cast(:e as float8[])) as b, count(*) as n from scoring.scores"
                " where score_date = :d group by 1"), {"e": score_ref.edges, "d": day}).all()
            current = np.zeros(len(score_ref.counts), dtype=np.int64)
            for r in rows:
                current[int(r.b)] = int(r.n)
            if current.sum():
                metrics.append(DriftMetric("ref_score_psi", "probability", psi(np.array(score_ref.counts), current), {
                    "reference_model": version, "edges": score_ref.edges, "reference": score_ref.counts,
                    "current": current.tolist()}))
        names, X = _samples(conn, day)
        holdout_as_of = conn.execute(sa.text("select holdout_as_of from ml.model_versions where version = :v"),
                                     {"v": version}).scalar_one_or_none()
        if len(X) and holdout_as_of is not None:
            # unseen at training: the pair has no event before the model's holdout as_of, so no training snapshot
            # can have held it (sampled pairs; the index on (user_id, event_time) answers each probe)
            unseen = conn.execute(sa.text(
                "select avg((not exists (select 1 from raw.events e where e.user_id = s.user_id"
                " and e.product_id = s.product_id and e.event_time < :t))::integer)"
                " from scoring.feature_samples s join scoring.runs r using (run_id)"
                " where s.score_date = :d and r.status = 'succeeded'"), {"d": day, "t": holdout_as_of}).scalar_one()
            if unseen is not None:
                metrics.append(DriftMetric("ref_unseen_share", "pairs", float(unseen), {
                    "reference_model": version, "holdout_as_of": holdout_as_of.isoformat(), "sample_rows": len(X)}))
    for j, name in enumerate(names):
        ref = refs.get(("feature", name))
        if ref is None:
            continue
        col = X[:, j]
        current = histogram(col, np.asarray(ref.edges, dtype=np.float64))
        metrics.append(DriftMetric("ref_feature_psi", name, psi(np.array(ref.counts), current), {
            "reference_model": version, "edges": ref.edges, "reference": ref.counts, "current": current.tolist()}))
        metrics.append(DriftMetric("ref_null_rate", name, float(np.mean(~np.isfinite(col))), {
            "reference_model": version, "reference": ref.null_rate}))
    return version, metrics


def record_reference_drift(engine: Engine, settings: Settings, score_date: dt.date | str) -> list[DriftMetric]:
    """Compute the drift of UTC ``score_date`` against the training reference, upsert it into
    ``monitoring.metrics`` and raise/resolve alerts on the thresholds (:func:`check_drift`). Returns the metrics."""
    day = utc_date(score_date, what="score_date")
    version, metrics = reference_drift_metrics(engine, settings, day)
    with engine.begin() as conn:
        _upsert_metrics(conn, day, metrics, version)
    if not metrics:
        log.info("drift vs reference %s: no training reference stored for model %s", day, version)
        return metrics
    check_drift(engine, settings, day, version, metrics)
    worst = max((m for m in metrics if m.kind.endswith("psi") and m.value is not None and np.isfinite(m.value)),
                key=lambda m: m.value, default=None)
    log.info("drift vs reference %s (model %s): %d metrics; largest PSI %s", day, version, len(metrics),
             f"{worst.name} {worst.value:.4f}" if worst else "n/a")
    return metrics


def check_drift(engine: Engine, settings: Settings, day: dt.date, version: str | None,
                metrics: list[DriftMetric]) -> list[Any]:
    """Raise an alert per metric over its threshold (PSI >= psi_warn: warning, >= psi_alert: critical; null rate
    above the reference's by more than null_rate_increase_alert; unseen share above unseen_share_alert) and resolve
    the open drift alerts that no longer hold."""
    from ml.alerts import Alert, raise_alert, resolve_alerts

    raised = []
    for m in metrics:
        if m.value is None or not np.isfinite(m.value):
            continue
        subject, sev, threshold = f"{m.kind}:{m.name}", None, None
        if m.kind in ("ref_score_psi", "ref_feature_psi"):
            if m.value >= settings.psi_alert:
                sev, threshold = "critical", settings.psi_alert
            elif m.value >= settings.psi_warn:
                sev, threshold = "warning", settings.psi_warn
            what = f"PSI of {m.name} vs the training reference of {version} is {m.value:.3f}"
        elif m.kind == "ref_null_rate":
            threshold = float(m.details.get("reference", 0.0)) + settings.null_rate_increase_alert
            sev = "warning" if m.value > threshold else None
            what = f"null rate of {m.name} is {m.value:.1%} (training {m.details.get('reference', 0.0):.1%})"
        elif m.kind == "ref_unseen_share":
            threshold = settings.unseen_share_alert
            sev = "warning" if m.value > threshold else None
            what = f"{m.value:.1%} of sampled active pairs were unseen at training of {version}"
        else:
            continue
        if sev is not None:
            raised.append(raise_alert(engine, settings, Alert(
                "drift", subject, sev, f"{what} on {day} (threshold {threshold:g})", value=float(m.value),
                threshold=float(threshold), metric_date=day, model_version=version)))
    resolve_alerts(engine, "drift", keep_subjects=[a.subject for a in raised])
    return raised
