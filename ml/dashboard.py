"""Data and HTML for the "Propensity" page in the Airflow UI (served by plugins/propensity_ui.py).

The page shows the open alerts, realized vs expected performance of matured score dates (with a plot), drift
against the training reference, the model leaderboard (champion, challengers, metrics), the latest
ingest/train/score/publish runs with counts and timings, validation failures, day-over-day drift, and links to the
model reports and Data Docs. Read-only SQL;
tables that do not exist yet (a fresh install) show as empty sections.
"""

from __future__ import annotations

import datetime as dt

import base64
import html
import io
import json
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

_QUERIES: dict[str, tuple[str, str]] = {
    # name: (table that must exist, query)
    "models": (
        "ml.model_versions",
        "select version, status, created_at, metrics, report_uri from ml.model_versions "
        "order by created_at desc limit 20",
    ),
    "score_runs": (
        "scoring.runs",
        "select run_id, score_date, model_version, status, planned_pairs, scored_pairs, buckets, timings, error, "
        "started_at, finished_at from scoring.runs order by started_at desc limit 15",
    ),
    "ingested": (
        "raw.ingested_files",
        "select file_name, row_count, min_event_time, max_event_time, ingested_at from raw.ingested_files "
        "order by ingested_at desc limit 15",
    ),
    "failures": (
        "quality.validation_runs",
        "select file_name, suite_name, failed_rules, row_count, quarantine_uri, report_uri, validated_at "
        "from quality.validation_runs where not success order by validated_at desc limit 20",
    ),
    "publications": (
        "scoring.publications",
        "select version, score_date, model_version, status, users, pairs, seconds, published_at "
        "from scoring.publications order by started_at desc limit 10",
    ),
    "drift": (
        "monitoring.metrics",
        "select metric_date, kind, name, value from monitoring.metrics "
        "where kind in ('score_psi', 'feature_psi') order by metric_date desc, kind, name limit 40",
    ),
    "alerts": (
        "monitoring.alerts",
        "select kind, severity, subject, message, occurrences, raised_at, last_seen_at from monitoring.alerts "
        "where status = 'open' order by raised_at desc limit 30",
    ),
    "performance": (
        "monitoring.realized_metrics",
        "select score_date, model_version, arm, segment, pairs, positives, realized_roc_auc, expected_roc_auc, "
        "realized_pr_auc, expected_pr_auc, realized_brier, expected_brier, realized_ece, expected_ece, k, "
        "precision_at_k, realized_hit_rate_at_k from bi.model_performance order by score_date desc, model_version, "
        "arm <> '(all)', arm, segment limit 60",
    ),
    "reference_drift": (
        "monitoring.reference_distributions",
        "select metric_date, kind, name, value, model_version from monitoring.metrics where kind like 'ref\\_%' "
        "and metric_date = (select max(metric_date) from monitoring.metrics where kind like 'ref\\_%') "
        "order by kind, value desc nulls last",
    ),
    "experiments": (  # issue 14: latest A/B results per experiment and arm (ml.experiments.results_html)
        "experiments.results",
        "select * from bi.experiment_results order by status = 'running' desc, computed_at desc, experiment_id,"
        " is_control desc, arm limit 40",
    ),
    "daily_scores": (
        "scoring.runs",
        "select distinct on (score_date) score_date, scored_pairs from scoring.runs where status = 'succeeded' "
        "order by score_date desc, finished_at desc limit 60",
    ),
}


@dataclass
class DashboardData:
    sections: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def collect_dashboard(engine: sa.Engine) -> DashboardData:
    """Run the page's read-only queries; a section whose table does not exist yet is an empty list."""
    data = DashboardData()
    with engine.connect() as c:
        for name, (table, sql) in _QUERIES.items():
            if c.execute(sa.text("select to_regclass(:t)"), {"t": table}).scalar() is None:
                data.sections[name] = []
                continue
            data.sections[name] = [dict(r) for r in c.execute(sa.text(sql)).mappings()]
    return data


def _metric(metrics: Any, key: str) -> str:
    if isinstance(metrics, str):
        metrics = json.loads(metrics)
    if not isinstance(metrics, dict):
        return ""
    for scope in (metrics.get("ensemble"), metrics.get("holdout"), metrics):  # registry: metrics["ensemble"]
        if isinstance(scope, dict) and isinstance(scope.get(key), (int, float)):
            return f"{scope[key]:.4f}"
    return ""


def _link(uri: Any, files_base: str, label: str) -> str:
    if not uri:
        return ""
    uri = str(uri)
    href = uri if "://" in uri else f"{files_base}?path={html.escape(uri)}"
    return f'<a href="{href}" target="_blank">{html.escape(label)}</a>'


def _table(headers: list[str], rows: list[list[str]]) -> str:
    if not rows:
        return "<p class='empty'>nothing yet</p>"
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _plot_daily(rows: list[dict[str, Any]]) -> str:
    """A small PNG (base64 <img>) of scored pairs per score date, or '' with fewer than two dates."""
    if len(rows) < 2:
        return ""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda r: r["score_date"])
    fig, ax = plt.subplots(figsize=(7, 2.2), dpi=100)
    ax.plot([r["score_date"] for r in rows], [r["scored_pairs"] or 0 for r in rows], marker="o")
    ax.set_ylabel("pairs scored")
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="pairs scored per night" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _plot_performance(rows: list[dict[str, Any]]) -> str:
    """A small PNG of realized vs expected (holdout) PR-AUC and ROC-AUC per score date (segment 'all', every pair of
    the model version, one line per model version), or '' with no realized metric yet."""
    rows = [r for r in rows if r["segment"] == "all" and r.get("arm", "(all)") == "(all)"
            and r["realized_pr_auc"] is not None]
    if not rows:
        return ""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 2.4), dpi=100)
    for ax, metric in zip(axes, ("pr_auc", "roc_auc"), strict=True):
        for version in sorted({r["model_version"] for r in rows}):
            mine = sorted((r for r in rows if r["model_version"] == version), key=lambda r: r["score_date"])
            dates = [r["score_date"] for r in mine]
            ax.plot(dates, [r[f"realized_{metric}"] for r in mine], marker="o", label=f"{version} realized")
            if mine[0][f"expected_{metric}"] is not None:
                ax.plot(dates, [r[f"expected_{metric}"] for r in mine], linestyle="--", marker="_", markersize=14,
                        label=f"{version} expected")
        ax.set_title(metric.replace("_", "-").upper(), fontsize=9)
        days = sorted({r["score_date"] for r in rows})
        ax.set_xlim(days[0] - dt.timedelta(days=3), days[-1] + dt.timedelta(days=3))  # one date: a week, not years
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.autofmt_xdate()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return (f'<img alt="realized vs expected PR-AUC and ROC-AUC" '
            f'src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">')


def _plot_reference_psi(rows: list[dict[str, Any]], warn: float, alert: float, top: int = 20) -> str:
    """A horizontal bar PNG of the newest night's largest PSI values against the training reference (features and
    the score), with the warn and alert thresholds drawn, or '' with no PSI row."""
    rows = sorted((r for r in rows if r["kind"] in ("ref_feature_psi", "ref_score_psi") and r["value"] is not None),
                  key=lambda r: r["value"], reverse=True)[:top]
    if not rows:
        return ""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = rows[::-1]  # largest at the top
    fig, ax = plt.subplots(figsize=(7, 0.22 * len(rows) + 0.8), dpi=100)
    values = [r["value"] for r in rows]
    colors = ["#c0392b" if v >= alert else "#e67e22" if v >= warn else "#5b8def" for v in values]
    ax.barh([r["name"] for r in rows], values, color=colors)
    for x, label in ((warn, f"warn {warn:g}"), (alert, f"alert {alert:g}")):
        ax.axvline(x, color="#555", linestyle="--", linewidth=0.8)
        ax.text(x, len(rows) - 0.4, label, fontsize=7, ha="left", va="bottom")
    ax.set_xlabel(f"PSI vs the training reference of {rows[0]['model_version']}, {rows[0]['metric_date']}")
    ax.tick_params(axis="y", labelsize=7)
    ax.grid(axis="x", alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return (f'<img alt="largest PSI against the training reference" '
            f'src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">')


def _num(v: Any, fmt: str = ".4f") -> str:
    return "" if v is None else format(v, fmt)


def _experiments_html(rows: list[dict[str, Any]]) -> str:
    from ml.experiments import results_html

    return results_html(rows)


def render_dashboard(data: DashboardData, *, files_base: str = "files", data_docs_href: str | None = None) -> str:
    """The page as one self-contained HTML document. ``files_base`` is the relative URL serving report files."""
    e = html.escape
    s = data.sections
    models = _table(
        ["version", "status", "created", "PR-AUC", "ROC-AUC", "log loss", "ECE", "report"],
        [
            [
                e(str(m["version"])),
                f"<b>{e(m['status'])}</b>" if m["status"] == "champion" else e(str(m["status"])),
                e(f"{m['created_at']:%Y-%m-%d %H:%M}"),
                _metric(m["metrics"], "pr_auc"),
                _metric(m["metrics"], "roc_auc"),
                _metric(m["metrics"], "log_loss"),
                _metric(m["metrics"], "ece"),
                _link(m.get("report_uri"), files_base, "report"),
            ]
            for m in s.get("models", [])
        ],
    )
    runs = _table(
        ["run", "score date", "model", "status", "planned", "scored", "buckets", "stage seconds", "finished"],
        [
            [
                e(str(r["run_id"])),
                e(str(r["score_date"])),
                e(str(r["model_version"])),
                e(r["status"]) + (f"<br><small>{e(str(r['error'])[:200])}</small>" if r.get("error") else ""),
                f"{r['planned_pairs'] or 0:,}",
                f"{r['scored_pairs'] or 0:,}",
                str(r["buckets"] or ""),
                e(", ".join(f"{k} {v:.1f}" for k, v in (r["timings"] or {}).items() if isinstance(v, (int, float)))),
                e(f"{r['finished_at']:%Y-%m-%d %H:%M}" if r.get("finished_at") else ""),
            ]
            for r in s.get("score_runs", [])
        ],
    )
    ingested = _table(
        ["file", "rows", "events from", "events to", "loaded"],
        [
            [e(f["file_name"]), f"{f['row_count']:,}", e(str(f["min_event_time"])), e(str(f["max_event_time"])),
             e(f"{f['ingested_at']:%Y-%m-%d %H:%M}")]
            for f in s.get("ingested", [])
        ],
    )
    failures = _table(
        ["file", "failed rules", "rows", "quarantined at", "report", "when"],
        [
            [e(f["file_name"]), e(", ".join(f["failed_rules"] or [])), f"{f['row_count'] or 0:,}",
             e(str(f["quarantine_uri"] or "")), _link(f.get("report_uri"), files_base, "report"),
             e(f"{f['validated_at']:%Y-%m-%d %H:%M}")]
            for f in s.get("failures", [])
        ],
    )
    pubs = _table(
        ["version", "score date", "model", "status", "users", "hot pairs", "seconds", "published"],
        [
            [e(str(p["version"])), e(str(p["score_date"])), e(str(p["model_version"])), e(p["status"]),
             f"{p['users'] or 0:,}", f"{p['pairs'] or 0:,}", f"{p['seconds'] or 0:.1f}",
             e(f"{p['published_at']:%Y-%m-%d %H:%M}" if p.get("published_at") else "")]
            for p in s.get("publications", [])
        ],
    )
    drift = _table(
        ["date", "kind", "name", "PSI"],
        [[e(str(d["metric_date"])), e(d["kind"]), e(d["name"]), f"{d['value']:.4f}" if d["value"] is not None else ""]
         for d in s.get("drift", [])],
    )
    alerts = _table(
        ["severity", "kind", "subject", "message", "seen", "raised", "last seen"],
        [[f"<b>{e(a['severity'])}</b>" if a["severity"] == "critical" else e(a["severity"]), e(a["kind"]),
          e(a["subject"]), e(a["message"]), str(a["occurrences"]), e(f"{a['raised_at']:%Y-%m-%d %H:%M}"),
          e(f"{a['last_seen_at']:%Y-%m-%d %H:%M}")] for a in s.get("alerts", [])],
    )
    perf = _table(
        ["score date", "model", "arm", "pairs", "positives", "PR-AUC realized", "expected", "ROC-AUC realized",
         "expected", "Brier realized", "expected", "ECE realized", "expected", "precision@k", "hit-rate@k"],
        [[e(str(r["score_date"])),
          e(str(r["model_version"])) + ("" if r["segment"] == "all" else " <small>(published pairs)</small>"),
          e(str(r.get("arm", "(all)"))),
          f"{r['pairs']:,}", f"{r['positives']:,}", _num(r["realized_pr_auc"]), _num(r["expected_pr_auc"]),
          _num(r["realized_roc_auc"]), _num(r["expected_roc_auc"]), _num(r["realized_brier"]),
          _num(r["expected_brier"]), _num(r["realized_ece"]), _num(r["expected_ece"]), _num(r["precision_at_k"]),
          _num(r["realized_hit_rate_at_k"])] for r in s.get("performance", [])],
    )
    ref_drift = _table(
        ["date", "model", "metric", "name", "value"],
        [[e(str(d["metric_date"])), e(str(d["model_version"])), e(d["kind"].removeprefix("ref_")), e(d["name"]),
          _num(d["value"])] for d in s.get("reference_drift", [])],
    )
    docs = f'<p><a href="{data_docs_href}" target="_blank">Great Expectations Data Docs</a></p>' if data_docs_href else ""
    from ml.settings import get_settings

    configured = get_settings()  # the thresholds the alerts use
    psi_plot = _plot_reference_psi(s.get("reference_drift", []), configured.psi_warn, configured.psi_alert)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Propensity pipeline</title>
<style>body{{font-family:system-ui,sans-serif;margin:1.2em;color:#222}}h2{{margin-top:1.4em;font-size:1.1em}}
table{{border-collapse:collapse;font-size:.85em}}td,th{{border:1px solid #ddd;padding:3px 7px;text-align:left}}
th{{background:#f3f3f3}}.empty{{color:#888}}</style></head><body>
<h1>Propensity pipeline</h1>{docs}
<h2>Open alerts</h2>{alerts}
<h2>Realized vs expected performance (matured score dates)</h2>{_plot_performance(s.get("performance", []))}{perf}
<h2>Drift against the training reference (newest night)</h2>{psi_plot}{ref_drift}
<h2>Model leaderboard</h2>{models}
<h2>Scoring runs</h2>{_plot_daily(s.get("daily_scores", []))}{runs}
<h2>Redis publications</h2>{pubs}
<h2>Validation failures (quarantined files)</h2>{failures}
<h2>Latest ingested files</h2>{ingested}
<h2>Drift (PSI against the previous score date)</h2>{drift}
<h2>A/B experiments</h2>{_experiments_html(s.get("experiments", []))}
</body></html>"""
