"""Realized performance: did last week's scores come true?

For every score date whose label horizon has matured (``score_date + label_horizon_days`` at or before the newest
loaded event), the date's ``scoring.scores`` rows are joined to the purchases in ``[score_date, score_date +
horizon)`` with the trainer's own label definition (``sql/features/label_purchases.sql``, never a second one) and
evaluated per (score_date, model_version, segment, arm):

* arm ``(all)``: every pair the model version scored; on a date an A/B experiment scored (``scoring.runs.params``
  names it, :mod:`ml.score.arms`), also one row set per experiment arm (``scoring.scores.arm``) and ``(unenrolled)``
  for the pairs of users it did not enroll, each ranked on its own pairs;
* segment ``all``: every scored pair; segment ``published``: only the pairs the latest publication of the date
  put in Redis (top ``top_n`` per user at or above its ``min_probability``: what the storefront saw);
* ``monitoring.realized_metrics``: pairs, users, positives, base rate, mean probability, ROC-AUC, PR-AUC (average
  precision), log loss, Brier, ECE (15 equal-width bins), precision@k and hit-rate@k per user;
* ``monitoring.calibration_bins``: the reliability curve; ``monitoring.tier_outcomes``: conversion and lift per tier.

Everything is aggregated in PostgreSQL in one statement (``sql/monitoring/realized.sql``; the pairs never leave the
server): one pass ranks each user's pairs, one sort by probability gives every pair the labels ranked at or above
it (ROC-AUC and PR-AUC exactly as scikit-learn computes them, ties included), and one hashed aggregate sums the
pairs into (model version, arm, calibration bin, tier) cells that roll up into the metrics, the reliability curve and the
tiers of both segments. Labels are read from ``raw.events``' day partitions of the label window (the trainer's
``label_purchases.sql``), not from the purchase rollups: ``raw.rollup_pair_day`` is keyed by (user, product, day)
without a day index, so a window of 7 days would scan its whole history. A date is written in one transaction that
replaces its rows, so a re-evaluation never duplicates. A date is re-evaluated when its ``labels_signature`` (the
ingested files overlapping its label window) changed: late events arrive in a new file.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ml.dates import midnight_utc, utc_date
from ml.db import read_sql
from ml.settings import Settings

log = logging.getLogger(__name__)

CALIBRATION_BINS = 15  # the trainer's ECE bins (ml.evaluate.expected_calibration_error)
SEGMENTS = ("all", "published")
ALL_ARMS = "(all)"  # monitoring.*.arm of the rows over every pair of a model version (migration 0200)
UNENROLLED = "(unenrolled)"  # the arm of the pairs an experiment did not enroll (scoring.scores.arm null)

#: The two static fragments of realized.sql, ``{{ arm }}`` and ``{{ arm_ranking }}``: for a date an experiment
#: scored (True) and for any other date (False: no arm rows, no second sort).
ARM_FRAGMENTS: dict[bool, tuple[str, str]] = {
    True: (f"coalesce(s.arm, '{UNENROLLED}') collate \"C\"",
           "count(*) filter (where label = 1) over by_arm_score                                 as tp_arm,\n"
           "        count(*) filter (where label = 0) over by_arm_score                                 as fp_arm,\n"
           "        count(*) filter (where label = 1 and published) over by_arm_score                   as tp_arm_pub,\n"
           "        count(*) filter (where label = 0 and published) over by_arm_score                   as fp_arm_pub"),
    False: ("cast(null as text)",
            "null::bigint as tp_arm, null::bigint as fp_arm, null::bigint as tp_arm_pub, null::bigint as fp_arm_pub"),
}


@dataclass
class DateEvaluation:
    """The outcome of evaluating one score date: rows written per model version and segment."""

    score_date: dt.date
    labels_signature: str
    metrics: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # seconds per step


def _sql(name: str, *, per_arm: bool = False) -> str:
    from ml.features import render_sql

    arm, arm_ranking = ARM_FRAGMENTS[per_arm]
    text = read_sql(f"monitoring/{name}.sql").replace("{{ arm }}", arm).replace("{{ arm_ranking }}", arm_ranking)
    return text.replace("{{ label_purchases }}", render_sql("label_purchases")).rstrip().rstrip(";")


def _experiment(conn: sa.Connection, day: dt.date) -> str | None:
    """The experiment whose arms scored ``day`` (``scoring.runs.params['experiment']`` of its latest succeeded run,
    :mod:`ml.score.arms`), or None."""
    return conn.execute(sa.text(
        "select params -> 'experiment' ->> 'experiment_id' from scoring.runs where score_date = :d"
        " and status = 'succeeded' order by finished_at desc nulls last limit 1"), {"d": day}).scalar_one_or_none()


def newest_event_time(conn: sa.Connection) -> dt.datetime | None:
    """The newest loaded event (from ``raw.ingested_files``; the events table itself when no file is recorded)."""
    t = conn.execute(sa.text("select max(max_event_time) from raw.ingested_files")).scalar_one()
    if t is None:
        t = conn.execute(sa.text("select max(event_time) from raw.events")).scalar_one()
    return t


def labels_signature(conn: sa.Connection, as_of: dt.datetime, label_until: dt.datetime) -> str:
    """Identity of the data behind a label window: count, newest id and rows of the ingested files overlapping
    ``[as_of, label_until)``, plus the newest event in the window when events were loaded without a file record.
    A late file changes it."""
    n, top, rows = conn.execute(sa.text(
        "select count(*), coalesce(max(file_id), 0), coalesce(sum(row_count), 0) from raw.ingested_files"
        " where max_event_time >= :a and min_event_time < :b"), {"a": as_of, "b": label_until}).one()
    purchases = conn.execute(sa.text(
        "select count(*) from raw.events where event_type = 'purchase' and event_time >= :a and event_time < :b"),
        {"a": as_of, "b": label_until}).scalar_one()
    return f"files={n};max_file={top};rows={rows};purchases={purchases}"


def matured_dates(engine: Engine, settings: Settings) -> list[dt.date]:
    """Score dates (of succeeded runs) whose label horizon has matured: ``midnight(d) + label_horizon_days`` is at
    or before the newest loaded event. Ascending."""
    with engine.connect() as conn:
        newest = newest_event_time(conn)
        if newest is None:
            return []
        days = conn.execute(sa.text(
            "select distinct score_date from scoring.runs where status = 'succeeded' order by 1")).scalars().all()
    horizon = dt.timedelta(days=settings.label_horizon_days)
    return [d for d in days if midnight_utc(d) + horizon <= newest]


def _publication(conn: sa.Connection, day: dt.date, settings: Settings) -> tuple[int | None, float]:
    row = conn.execute(sa.text(
        "select top_n, min_probability from scoring.publications where score_date = :d and redis_prefix = :p"
        " and status = 'published' order by published_at desc limit 1"),
        {"d": day, "p": settings.redis_prefix}).one_or_none()
    return (None, 1.0) if row is None else (int(row.top_n), float(row.min_probability))


def evaluate_date(engine: Engine, settings: Settings, score_date: dt.date | str, *, force: bool = False,
                  ) -> DateEvaluation | None:
    """Evaluate UTC ``score_date`` and replace its rows in ``monitoring.realized_metrics``, ``calibration_bins``
    and ``tier_outcomes`` (one transaction). Returns None, writing nothing, when the horizon has not matured or
    (unless ``force``) the date was already evaluated on the same ``labels_signature``. Raises
    :class:`ml.errors.ConfigError` when ``score_date`` is not a date."""
    from ml.features import FeatureWindow

    day = utc_date(score_date, what="score_date")
    window = FeatureWindow.at(midnight_utc(day), settings)
    t0 = time.perf_counter()
    k = settings.monitor_top_k
    with engine.begin() as conn:
        newest = newest_event_time(conn)
        if newest is None or window.label_until > newest:
            log.info("monitor %s: label horizon not matured (needs events until %s, newest %s)", day,
                     window.label_until.isoformat(), newest)
            return None
        signature = labels_signature(conn, window.as_of, window.label_until)
        done = conn.execute(sa.text(
            "select min(labels_signature) from monitoring.realized_metrics where score_date = :d"),
            {"d": day}).scalar_one()
        if done == signature and not force:
            log.info("monitor %s: already evaluated on the same labels (%s)", day, signature)
            return None
        top_n, floor = _publication(conn, day, settings)
        conn.execute(sa.text("set local work_mem = '256MB'"))
        # JIT compiling this plan's expressions costs ~1 s, more than it saves on 1M rows
        conn.execute(sa.text("set local jit = off"))
        timings: dict[str, float] = {"signature": time.perf_counter() - t0}
        t = time.perf_counter()
        experiment = _experiment(conn, day)
        rows = conn.execute(sa.text(_sql("realized", per_arm=experiment is not None)), {
            **window.params(), "score_date": day, "top_n": top_n, "min_probability": floor, "bucket": None,
            "n_buckets": None, "k": k, "n_bins": CALIBRATION_BINS}).mappings().all()
        timings["aggregate"] = time.perf_counter() - t
        t = time.perf_counter()
        _check_keys(rows)
        metrics, bins, tiers = _unpivot(rows)
        for table in ("realized_metrics", "calibration_bins", "tier_outcomes"):
            conn.execute(sa.text(f"delete from monitoring.{table} where score_date = :d"), {"d": day})
        out = DateEvaluation(day, signature, timings=timings)
        for m in metrics:
            m.update(score_date=day, label_horizon_days=settings.label_horizon_days, k=k, labels_signature=signature,
                     experiment_id=experiment)
        if metrics:
            cols = list(metrics[0])
            conn.execute(sa.text(f"insert into monitoring.realized_metrics ({', '.join(cols)}) values ("
                                 + ", ".join(f":{c}" for c in cols) + ")"), metrics)
        if bins:
            conn.execute(sa.text(
                "insert into monitoring.calibration_bins (score_date, model_version, segment, arm, bin, lower_bound,"
                " upper_bound, pairs, mean_probability, observed_rate) values (:d, :model_version, :segment, :arm,"
                " :bin, :lower_bound, :upper_bound, :pairs, :mean_probability, :observed_rate)"),
                [{**b, "d": day} for b in bins])
        if tiers:
            conn.execute(sa.text(
                "insert into monitoring.tier_outcomes (score_date, model_version, segment, arm, tier, pairs,"
                " positives, mean_probability, conversion, lift) values (:d, :model_version, :segment, :arm, :tier,"
                " :pairs, :positives, :mean_probability, :conversion, :lift)"), [{**r, "d": day} for r in tiers])
        out.metrics = sorted(metrics, key=lambda m: (m["model_version"], m["arm"] != ALL_ARMS, m["arm"],
                                                     m["segment"]))
        timings["write"] = time.perf_counter() - t
    out.seconds = time.perf_counter() - t0
    log.info("monitor %s: step seconds %s", day, ", ".join(f"{k} {v:.2f}" for k, v in out.timings.items()))
    for m in out.metrics:
        log.info("monitor %s %s [%s]: %d pairs, %d positives, ROC-AUC %s, PR-AUC %s, precision@%d %s (%.2fs)",
                 day, m["model_version"], m["segment"], m["pairs"], m["positives"], _fmt(m["roc_auc"]),
                 _fmt(m["pr_auc"]), k, _fmt(m["precision_at_k"]), out.seconds)
    return out


def _check_keys(rows: list[Any]) -> None:
    """realized.sql ranks within 64-bit hashes of the model version and of the arm; two model versions (or two arms
    of one model version) of a date with the same hash would be ranked together. Never seen (~1e-19 for a few
    texts), but then the metrics would be wrong: raise rather than record them."""
    from ml.errors import PipelineError

    summary = [r for r in rows if r["level"] == "summary"]
    models = {(r["model_version"], r["model_key"]) for r in summary if r["arm"] == ALL_ARMS}
    arms = {(r["model_version"], r["arm"], r["arm_key"]) for r in summary if r["arm"] not in (ALL_ARMS, None)}
    if len({k for _, k in models}) < len(models) or len({(m, k) for m, _, k in arms}) < len(arms):
        raise PipelineError(f"realized metrics: two model versions or arms share a hash key ({sorted(models)}, "
                        f"{sorted(arms)}); rename one")


def _unpivot(rows: list[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Turn the rows of ``realized.sql`` (one per level and key, the two segments as ``*_all`` / ``*_pub`` column
    pairs) into the rows of ``monitoring.realized_metrics``, ``calibration_bins`` and ``tier_outcomes``, keyed by
    (model version, segment, arm). A segment without pairs (no publication) gives no rows, nor does a null arm (a
    date no experiment scored has only the ``(all)`` rows)."""
    metrics: dict[tuple[str, str, str], dict[str, Any]] = {}
    bins, tiers = [], []
    sums: dict[tuple[str, str, str], float] = {}  # sum over bins of |positives - sum of probabilities| (ECE)
    for r in rows:
        if r["arm"] is None:
            continue
        for segment, x in (("all", "_all"), ("published", "_pub")):
            n = int(r["pairs" + x])
            if n == 0:
                continue
            pos, sp = int(r["positives" + x]), float(r["sum_probability" + x])
            key = (r["model_version"], segment, r["arm"])
            if r["level"] == "bin":
                b = int(r["bin"])
                sums[key] = sums.get(key, 0.0) + abs(pos - sp)
                bins.append({"model_version": key[0], "segment": segment, "arm": key[2], "bin": b,
                             "lower_bound": b / CALIBRATION_BINS, "upper_bound": (b + 1) / CALIBRATION_BINS,
                             "pairs": n, "mean_probability": sp / n, "observed_rate": pos / n})
            elif r["level"] == "tier":
                tiers.append({"model_version": key[0], "segment": segment, "arm": key[2], "tier": r["tier"],
                              "pairs": n,
                              "positives": pos, "mean_probability": sp / n, "conversion": pos / n})
            else:
                neg = n - pos
                both = pos > 0 and neg > 0
                shown, users = int(r["shown" + x]), int(r["positive_users" + x])
                metrics[key] = {
                    "model_version": key[0], "segment": segment, "arm": key[2], "pairs": n,
                    "users": int(r["users" + x]),
                    "positives": pos, "base_rate": pos / n, "mean_probability": sp / n,
                    "roc_auc": 0.5 + (float(r["tp_sum" + x]) - float(r["fp_sum" + x])) / (2.0 * pos * neg)
                    if both else None,
                    "pr_auc": float(r["ap_sum" + x]) / pos if both else None,
                    "log_loss": float(r["sum_log_loss" + x]) / n, "brier": float(r["sum_brier" + x]) / n,
                    "precision_at_k": int(r["top_hits" + x]) / shown if shown else None,
                    "hit_rate_at_k": int(r["hit_users" + x]) / users if users else None,
                }
    for key, m in metrics.items():
        m["ece"] = sums.get(key, 0.0) / m["pairs"]
    for t in tiers:
        base = metrics[(t["model_version"], t["segment"], t["arm"])]["base_rate"]
        t["lift"] = t["conversion"] / base if base else None
    return list(metrics.values()), bins, tiers


def run_monitor(engine: Engine, settings: Settings, *, score_dates: list[dt.date] | None = None,
                force: bool = False) -> list[DateEvaluation]:
    """Evaluate every matured score date (or the given ones) that is new or whose labels changed; then check the
    realized metrics against their thresholds (:func:`ml.alerts.check_performance`). Returns what was evaluated."""
    days = matured_dates(engine, settings) if score_dates is None else [utc_date(d) for d in score_dates]
    done = []
    for day in days:
        ev = evaluate_date(engine, settings, day, force=force)
        if ev is not None:
            done.append(ev)
    log.info("monitor: %d matured score date(s), %d (re-)evaluated", len(days), len(done))
    if done:
        from ml.alerts import check_performance

        check_performance(engine, settings, [ev.score_date for ev in done])
    return done


def expected_vs_realized(engine: Engine, score_date: dt.date | str, segment: str = "all") -> list[dict[str, Any]]:
    """Rows of ``bi.model_performance`` for one score date and segment (for the demo, the CLI and the UI): per
    model version its ``(all)`` row first, then its experiment arms' rows (a date an experiment scored)."""
    day = utc_date(score_date, what="score_date")
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.text(
            "select * from bi.model_performance where score_date = :d and segment = :s"
            " order by model_version, arm <> :a, arm"), {"d": day, "s": segment, "a": ALL_ARMS}).mappings()]


def _f(v: Any) -> float | None:
    return None if v is None else float(v)


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


# --- what the serving side sees: the version's Redis meta and the P:monitor hash -----------------------------------
HOLDOUT_KEYS = ("roc_auc", "pr_auc", "log_loss", "brier", "ece", "hit_rate_at_10", "n", "positives")
REALIZED_KEYS = ("score_date", "pairs", "positives", "base_rate", "roc_auc", "pr_auc", "log_loss", "brier", "ece",
                 "k", "precision_at_k", "hit_rate_at_k")
TOP_FEATURES = 10
SHAP_SAMPLE_ROWS = 20_000


def _latest_realized(conn: sa.Connection, model_version: str) -> dict[str, Any] | None:
    row = conn.execute(sa.text(
        "select " + ", ".join(REALIZED_KEYS) + " from monitoring.realized_metrics where model_version = :m"
        " and segment = 'all' and arm = :a order by score_date desc limit 1"),
        {"m": model_version, "a": ALL_ARMS}).mappings().one_or_none()
    if row is None:
        return None
    return {k: (v.isoformat() if isinstance(v, dt.date) else _f(v) if k not in ("pairs", "positives", "k") else v)
            for k, v in row.items()}


def top_features(conn: sa.Connection, score_date: dt.date, n: int = TOP_FEATURES) -> list[dict[str, Any]]:
    """The ``n`` features with the largest mean |SHAP| (log-odds) over up to SHAP_SAMPLE_ROWS pairs of the date."""
    names = conn.execute(sa.text(
        "select feature_names from scoring.runs where score_date = :d and status = 'succeeded'"
        " order by finished_at desc nulls last limit 1"), {"d": score_date}).scalar_one_or_none()
    if not names:
        return []
    rows = conn.execute(sa.text(
        "with s as (select contributions from scoring.scores where score_date = :d limit :n)"
        " select u.ord, avg(abs(u.c)) as v from s cross join lateral unnest(s.contributions) with ordinality"
        " as u(c, ord) group by u.ord order by v desc limit :k"),
        {"d": score_date, "n": SHAP_SAMPLE_ROWS, "k": n}).all()
    return [{"feature": names[int(r.ord) - 1], "mean_abs_shap": float(r.v)} for r in rows if r.ord <= len(names)]


def publish_meta(engine: Engine, model_version: str | None, score_date: dt.date) -> dict[str, str]:
    """Fields added to a version's ``P:v{V}:meta`` hash at publish time, each a JSON text: ``holdout_metrics`` (the
    model's holdout metrics), ``realized_metrics`` (its latest realized metrics, segment 'all'; null before any
    matured date), ``top_features`` (mean |SHAP|). Never raises: a failure is logged and yields no fields (the
    publish itself must not fail for monitoring extras)."""
    from ml.jsonutil import dumps

    try:
        with engine.connect() as conn:
            metrics = conn.execute(sa.text("select metrics from ml.model_versions where version = :v"),
                                   {"v": model_version}).scalar_one_or_none() or {}
            ens = metrics.get("ensemble", {})
            return {
                "holdout_metrics": dumps({k: ens.get(k) for k in HOLDOUT_KEYS}),
                "realized_metrics": dumps(_latest_realized(conn, model_version) if model_version else None),
                "top_features": dumps(top_features(conn, score_date)),
            }
    except Exception:  # noqa: BLE001 - see the docstring
        log.exception("could not collect the model metadata of %s for publishing", model_version)
        return {}


def monitor_summary(engine: Engine) -> dict[str, str]:
    """Pipeline health figures (text values) for the ``P:monitor`` hash: the newest night's largest PSI against
    the training reference (``max_psi``, ``max_psi_name``, ``score_psi``, ``psi_date``), open alerts in total and
    per severity, and per model version its latest realized ROC-AUC / PR-AUC and their score date."""
    out: dict[str, str] = {"updated_at": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()}
    with engine.connect() as conn:
        day = conn.execute(sa.text(
            "select max(metric_date) from monitoring.metrics where kind = 'ref_feature_psi'")).scalar_one()
        if day is not None:
            top = conn.execute(sa.text(
                "select name, value from monitoring.metrics where metric_date = :d and kind = 'ref_feature_psi'"
                " and value is not null order by value desc limit 1"), {"d": day}).one_or_none()
            score = conn.execute(sa.text(
                "select value from monitoring.metrics where metric_date = :d and kind = 'ref_score_psi'"),
                {"d": day}).scalar_one_or_none()
            out["psi_date"] = day.isoformat()
            if top is not None:
                out["max_psi"], out["max_psi_name"] = repr(float(top.value)), top.name
            if score is not None:
                out["score_psi"] = repr(float(score))
        for sev, n in conn.execute(sa.text(
                "select severity, count(*) from monitoring.alerts where status = 'open' group by 1")).all():
            out[f"open_alerts:{sev}"] = str(n)
        out["open_alerts"] = str(sum(int(v) for k, v in out.items() if k.startswith("open_alerts:")))
        for r in conn.execute(sa.text(
                "select distinct on (model_version) model_version, score_date, roc_auc, pr_auc"
                " from monitoring.realized_metrics where segment = 'all' and arm = :a"
                " order by model_version, score_date desc"), {"a": ALL_ARMS}):
            out[f"realized_score_date:{r.model_version}"] = r.score_date.isoformat()
            for name in ("roc_auc", "pr_auc"):
                if getattr(r, name) is not None:
                    out[f"realized_{name}:{r.model_version}"] = repr(float(getattr(r, name)))
    return out


def push_monitor_summary(engine: Engine, redis_client: Any, settings: Settings) -> dict[str, str]:
    """Replace the ``P:monitor`` hash with :func:`monitor_summary` (one MULTI: readers see the old or the new)."""
    from ml.keyspace import KeySpace

    summary = monitor_summary(engine)
    key = KeySpace(settings.redis_prefix).monitor()
    pipe = redis_client.pipeline(transaction=True)
    pipe.delete(key)
    pipe.hset(key, mapping=summary)
    pipe.execute()
    return summary
