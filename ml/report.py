"""The model report: one self-contained HTML page per model version (plots embedded as base64 PNG).

Contents: the gate decision; holdout metrics of the ensemble against the champion (on the same holdout), each member
alone and equal weights; blend weights and calibration; ROC, PR and calibration curves; a SHAP beeswarm and global
importance drawn by the ``shap`` package on a holdout sample (contributions from ``Ensemble.explain(...,
method="native")``, the libraries' own exact TreeSHAP, in calibrated log-odds: a sample needs no JIT-compiled fast
path); the Optuna history of every member; parameters and library versions.

Written to ``settings.location("reports")/models/<version>.html`` (local path or fsspec URL) and recorded in
``ml.model_versions.report_uri``.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy.engine import Engine

from ml.ensemble import MEMBER_NAMES, Ensemble, member_kind
from ml.evaluate import METRIC_NAMES, curves
from ml.settings import Settings
from ml.training_data import load_training_data

log = logging.getLogger(__name__)

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
td,th{border:1px solid #ddd;padding:4px 8px;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}.ok{color:#17692c}.bad{color:#a4161a}
.muted{color:#666;font-size:.9em}img{max-width:100%}.grid{display:flex;flex-wrap:wrap;gap:1em}.grid img{max-width:48%}
code{background:#f4f4f4;padding:1px 4px}
"""


def report_path(settings: Settings, version: str) -> str:
    """``<reports location>/models/<version>.html``."""
    return f"{settings.location('reports').rstrip('/')}/models/{version}.html"


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    return html.escape(str(v))


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c if isinstance(c, _Raw) else _fmt(c)}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _canonical(names: Any) -> list[str]:
    """Member names in the canonical order (jsonb and JSON manifests reorder keys)."""
    return [m for m in MEMBER_NAMES if m in names] + sorted(m for m in names if m not in MEMBER_NAMES)


class _Raw(str):
    """Already-escaped HTML for a table cell."""


def _curves_figures(y: np.ndarray, w: np.ndarray, scores: dict[str, np.ndarray], probs: dict[str, np.ndarray]) -> str:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    out = []
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    for name, s in scores.items():
        c = curves(y, s, w)
        if "roc" not in c:
            continue
        lw = 2.4 if name in ("ensemble", "champion") else 1.0
        ax1.plot(*c["roc"], label=name, lw=lw)
        ax2.plot(*c["pr"], label=name, lw=lw)
    ax1.plot([0, 1], [0, 1], ls=":", c="grey")
    ax1.set(title="ROC (holdout)", xlabel="false positive rate", ylabel="true positive rate")
    ax2.set(title="Precision-recall (holdout)", xlabel="recall", ylabel="precision")
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=8)
    out.append(_png(fig))
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for name, p in probs.items():
        mean_p, frac, _ = curves(y, p, w)["calibration"]
        ax.plot(mean_p, frac, marker="o", label=name)
    ax.plot([0, 1], [0, 1], ls=":", c="grey")
    ax.set(title="Calibration (holdout, 15 bins)", xlabel="mean predicted probability", ylabel="observed frequency")
    ax.legend(fontsize=8)
    out.append(_png(fig))
    return "<div class='grid'>" + "".join(out) + "</div>"


def _shap_figures(ensemble: Ensemble, X: pd.DataFrame, method: str = "native") -> tuple[str, pd.DataFrame]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import shap

    contrib, base = ensemble.explain(X, method=method)
    names = list(ensemble.feature_names)
    expl = shap.Explanation(values=contrib, base_values=base, data=X[names].to_numpy(dtype=np.float64),
                            feature_names=names)
    out = []
    plt.figure()
    shap.plots.beeswarm(expl, max_display=20, show=False)
    out.append(_png(plt.gcf()))
    plt.figure()
    shap.plots.bar(expl, max_display=20, show=False)
    out.append(_png(plt.gcf()))
    importance = pd.DataFrame({"feature": names, "mean_abs_shap": np.abs(contrib).mean(axis=0)}) \
        .sort_values("mean_abs_shap", ascending=False, kind="stable")
    return "<div class='grid'>" + "".join(out) + "</div>", importance


def _history_figure(tuning: dict[str, Any]) -> str:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    members = [m for m in _canonical(tuning) if tuning[m].get("history")]
    if not members:
        return "<p class='muted'>No Optuna study (zero-trial budget).</p>"
    fig, axes = plt.subplots(1, len(members), figsize=(3.6 * len(members), 3.4), squeeze=False)
    for ax, m in zip(axes[0], members):
        hist = sorted(tuning[m]["history"], key=lambda t: t["number"])
        done = [(t["number"], t["value"]) for t in hist if t["state"] == "COMPLETE" and t["value"] is not None]
        pruned = [t["number"] for t in hist if t["state"] == "PRUNED"]
        if done:
            xs, vs = zip(*done)
            ax.scatter(xs, vs, s=18, label="complete")
            best = np.minimum.accumulate(np.asarray(vs, dtype=float))
            ax.step(xs, best, where="post", c="C3", label="best so far")
        for p in pruned:
            ax.axvline(p, c="grey", ls=":", lw=0.8)
        ax.set(title=f"{m} ({len(pruned)} pruned)", xlabel="trial", ylabel="val log loss (Platt)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def render_report(
    *,
    row: Any,
    ensemble: Ensemble,
    holdout: pd.DataFrame | None,
    y: np.ndarray | None,
    w: np.ndarray | None,
    champion: tuple[str, Ensemble] | None,
    decisions: list[dict[str, Any]],
    shap_rows: int = 1000,
    seed: int = 0,
) -> str:
    """The report's HTML for registry ``row`` (a :class:`ml.registry.ModelVersion`) and its loaded ``ensemble``.
    ``holdout``/``y``/``w``: the holdout rows (features), labels and weights for curves and SHAP (None: metrics only);
    ``champion``: (version, ensemble) drawn on the same curves; ``decisions``: gate decisions about this version."""
    metrics = row.metrics or {}
    ens_m = metrics.get("ensemble", {})
    champ_m = None
    decision = decisions[0] if decisions else None
    if decision and decision.get("champion_metrics"):
        champ_m = decision["champion_metrics"]
    cols: list[tuple[str, dict[str, Any]]] = [("ensemble (fitted weights)", ens_m)]
    if champ_m:
        cols.append((f"champion {decision.get('champion_version')}", champ_m))
    cols.append(("equal weights", metrics.get("equal_weights", {})))
    member_metrics = metrics.get("members", {})
    cols += [(f"{m} alone", member_metrics[m]) for m in _canonical(member_metrics)]
    metric_rows = [[k] + [c.get(k) for _, c in cols] for k in (*METRIC_NAMES, "threshold", "n", "positives")]
    parts = [f"<h1>Model {html.escape(row.version)}</h1>"]
    status_cls = "ok" if row.status == "champion" else "bad" if row.status in ("rejected", "rolled_back") else ""
    parts.append(
        f"<p>Status: <b class='{status_cls}'>{html.escape(row.status)}</b> &middot; created "
        f"{_fmt(row.created_at)} &middot; data fingerprint <code>{html.escape(row.data_fingerprint[:16])}</code>"
        f"{' &middot; DAG run ' + html.escape(row.dag_run_id) if row.dag_run_id else ''}</p>"
    )
    if decision:
        parts.append(
            f"<p>Gate decision ({'manual' if decision.get('manual') else 'automatic'}, "
            f"{_fmt(decision.get('decided_at'))}): <b>{html.escape(decision['action'])}</b>: "
            f"{html.escape(decision['reason'])}</p>"
        )
    win = row.training_window or {}
    parts.append(
        "<p class='muted'>Training window: train "
        f"{_fmt(win.get('train_start'))} .. {_fmt(win.get('train_end'))} ({_fmt(win.get('n_train'))} rows), "
        f"validation {_fmt(win.get('validation_start'))} .. {_fmt(win.get('validation_end'))} "
        f"({_fmt(win.get('n_validation'))} rows), holdout {_fmt(win.get('holdout'))} "
        f"({_fmt(win.get('n_holdout'))} rows). Time-based split; the holdout is the latest labelled snapshot.</p>"
    )
    parts.append("<h2>Holdout metrics</h2>")
    parts.append("<p class='muted'>Champion metrics are measured on this version's holdout. F1/precision/recall at the "
                 "threshold chosen on validation (max F1). hit_rate_at_10: share of users with a purchase whose top-10 "
                 "pairs contain it. Weighted by row weight (1/negative sampling rate) except hit-rate.</p>")
    parts.append(_table(["metric"] + [c for c, _ in cols], metric_rows))
    parts.append("<h2>Blend and calibration</h2>")
    a, b = ensemble.calibration
    parts.append(_table(["member", "weight", "trees", "best val loss", "trials (complete / pruned)"],
                        [[m, ensemble.weights[m], member_kind(m).n_trees(ensemble.members[m]),
                          (row.tuning or {}).get(m, {}).get("best_value"),
                          f"{(row.tuning or {}).get(m, {}).get('n_complete', 0)} / "
                          f"{(row.tuning or {}).get(m, {}).get('n_pruned', 0)}"]
                         for m in _canonical(ensemble.members)]))
    parts.append(f"<p>logit(p) = {a:.5f} &times; &Sigma;<sub>m</sub> w<sub>m</sub> margin<sub>m</sub>(x) "
                 f"+ {b:.5f} (Platt, fitted on validation). Members blend in log-odds; weights are non-negative and "
                 "sum to 1, fitted by minimising validation log loss.</p>")
    importance = None
    if holdout is not None and y is not None and len(holdout):
        hold_X = ensemble.matrix(holdout)
        margins = ensemble.member_margins(hold_X)
        scores: dict[str, np.ndarray] = {"ensemble": ensemble.predict_logit(hold_X)}
        probs: dict[str, np.ndarray] = {"ensemble": ensemble.predict_proba(hold_X)}
        if champion is not None:
            try:
                probs["champion"] = champion[1].predict_proba(holdout)
                scores["champion"] = np.asarray(probs["champion"])
            except Exception as e:  # noqa: BLE001 - a champion on other features only loses its curve
                log.warning("champion %s not drawn: %s", champion[0], e)
        scores.update({m: margins[m] for m in _canonical(margins)})
        parts.append("<h2>Curves</h2>")
        parts.append(_curves_figures(y, w if w is not None else np.ones(len(y)), scores, probs))
        parts.append("<h2>SHAP</h2>")
        rng = np.random.default_rng(seed)
        idx = np.sort(rng.choice(len(holdout), size=min(shap_rows, len(holdout)), replace=False))
        sample = holdout.iloc[idx]
        figs, importance = _shap_figures(ensemble, sample)
        parts.append(f"<p class='muted'>Exact TreeSHAP (the libraries' own) of the blended, calibrated model on "
                     f"{len(sample):,} holdout rows, in log-odds (sum of contributions + base value = logit(p)). "
                     "Drawn with the shap "
                     "package.</p>")
        parts.append(figs)
        parts.append(_table(["feature", "mean |SHAP|"], importance.head(25).values.tolist()))
    else:
        parts.append("<p class='muted'>Training data not available: curves and SHAP omitted.</p>")
    parts.append("<h2>Optuna history</h2>")
    parts.append("<p class='muted'>Objective: validation log loss after Platt scaling (lower is better); dotted lines "
                 "mark pruned trials. Studies: " + ", ".join(
                     f"<code>{html.escape(str(t.get('study_name')))}</code>" for t in (row.tuning or {}).values())
                 + "</p>")
    parts.append(_history_figure(row.tuning or {}))
    parts.append("<h2>Parameters and libraries</h2>")
    parts.append("<pre>" + html.escape(json.dumps({"params": row.params, "library_versions": row.library_versions,
                                                   "features": row.features}, indent=1, default=str)) + "</pre>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Model {html.escape(row.version)}</title>"
            f"<style>{_CSS}</style></head><body>{''.join(parts)}</body></html>")


def write_version_report(engine: Engine, settings: Settings, version: str) -> str:
    """Render and write the report of ``version`` (registry row, artifacts, its training data when still on disk,
    the champion for comparison); record ``report_uri``; return it."""
    from ml import registry

    row, ensemble = registry.load_version(engine, settings, version, threads=settings.train_threads)
    holdout = y = w = None
    data_uri = (row.training_window or {}).get("data_uri")
    if data_uri and Path(data_uri).exists():
        data = load_training_data(data_uri)
        times = data.frame[data.time]
        hold_t = times.max()
        mask = (times == hold_t).to_numpy()
        holdout = data.frame.loc[mask].reset_index(drop=True)
        y = holdout[data.label].to_numpy(dtype=np.float64)
        w = holdout[data.weight].to_numpy(dtype=np.float64) if data.weight else None
    decisions = registry.gate_decisions(engine, version)
    champion = None
    if decisions and decisions[0].get("champion_version") and decisions[0]["champion_version"] != version:
        try:
            champion = (decisions[0]["champion_version"],
                        registry.load_version(engine, settings, decisions[0]["champion_version"])[1])
        except Exception as e:  # noqa: BLE001 - the report is still useful without the champion's curves
            log.warning("could not load champion %s for the report: %s", decisions[0]["champion_version"], e)
    page = render_report(row=row, ensemble=ensemble, holdout=holdout, y=y, w=w, champion=champion,
                         decisions=decisions, shap_rows=settings.report_shap_rows, seed=settings.seed)
    uri = report_path(settings, version)
    if "://" in uri and not uri.startswith("file://"):
        import fsspec

        with fsspec.open(uri, "w") as f:
            f.write(page)
    else:
        p = Path(uri.removeprefix("file://"))
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(page)
    registry.set_report_uri(engine, version, uri)
    log.info("model report for %s: %s", version, uri if "://" in uri else Path(uri).as_uri())
    return uri
