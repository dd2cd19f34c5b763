"""Pipeline gauges for Prometheus, exported by the lookup API's ``/metrics`` (the exporter path, issue 13).

The API reads Redis only, so the pipeline publishes what Prometheus should see into Redis and the API turns it into
gauges on every scrape:

* the served version's meta hash (``P:v{V}:meta``, written at publish): served score date -> its age in days,
  scored and published pairs, the model's holdout PR-AUC / ROC-AUC (``holdout_metrics``);
* the ``P:monitor`` hash (``ml.monitor.push_monitor_summary``, written after the nightly drift task and the
  monitor_outcomes DAG): largest feature PSI and the score's PSI against the training reference, open alerts per
  severity, and the latest realized ROC-AUC / PR-AUC per model version.

Redis down at scrape time: the gauges keep their last values and ``propensity_pipeline_scrape_ok`` is 0; the API's
own request metrics are still served.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, generate_latest

from ml.keyspace import KeySpace

log = logging.getLogger(__name__)


class PipelineGauges:
    """The pipeline gauges, in their own registry (so they add to the API's exposition in every worker mode)."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.scrape_ok = Gauge("propensity_pipeline_scrape_ok", "1 when Redis answered the last refresh.", registry=r)
        self.score_date_age = Gauge("propensity_served_score_date_age_days",
                                    "Days between today (UTC) and the served score date.", registry=r)
        self.scored_pairs = Gauge("propensity_scored_pairs", "Pairs scored on the served score date.", registry=r)
        self.published_pairs = Gauge("propensity_published_pairs", "Hot pairs in the served version.", registry=r)
        self.max_psi = Gauge("propensity_max_feature_psi",
                             "Largest feature PSI vs the training reference, newest night.", registry=r)
        self.score_psi = Gauge("propensity_score_psi", "Score PSI vs the training reference, newest night.",
                               registry=r)
        self.open_alerts = Gauge("propensity_open_alerts", "Open alerts (monitoring.alerts).", ["severity"],
                                 registry=r)
        self.realized = Gauge("propensity_realized_metric", "Latest realized metric per model version.",
                              ["model_version", "metric"], registry=r)
        self.expected = Gauge("propensity_holdout_metric", "Holdout metric of the served model version.",
                              ["model_version", "metric"], registry=r)

    async def refresh(self, client: Any, keys: KeySpace, today: dt.date | None = None) -> bool:
        """Read the served meta and ``P:monitor`` from Redis and set the gauges. Returns False when Redis failed."""
        from redis.exceptions import RedisError

        try:
            current = await client.get(keys.current())
            meta = ({k.decode(): v.decode() for k, v in (await client.hgetall(keys.meta(int(current)))).items()}
                    if current else {})
            mon = {k.decode(): v.decode() for k, v in (await client.hgetall(keys.monitor())).items()}
        except RedisError as e:
            log.warning("pipeline gauges: redis unreachable: %s", e)
            self.scrape_ok.set(0)
            return False
        self.scrape_ok.set(1)
        today = today or dt.datetime.now(dt.UTC).date()
        if meta.get("score_date"):
            self.score_date_age.set((today - dt.date.fromisoformat(meta["score_date"])).days)
        for gauge, field in ((self.scored_pairs, "scored_pairs"), (self.published_pairs, "pairs")):
            if meta.get(field, "").isdigit():
                gauge.set(int(meta[field]))
        holdout = _json(meta.get("holdout_metrics")) or {}
        for name in ("roc_auc", "pr_auc"):
            if holdout.get(name) is not None:
                self.expected.labels(meta.get("model_version", ""), name).set(float(holdout[name]))
        for gauge, field in ((self.max_psi, "max_psi"), (self.score_psi, "score_psi")):
            if field in mon:
                gauge.set(float(mon[field]))
        for sev in ("warning", "critical"):
            self.open_alerts.labels(sev).set(int(mon.get(f"open_alerts:{sev}", 0)))
        for key, value in mon.items():
            if key.startswith(("realized_roc_auc:", "realized_pr_auc:")):
                metric, version = key.split(":", 1)
                self.realized.labels(version, metric.removeprefix("realized_")).set(float(value))
        return True

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def _json(text: str | None) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None
