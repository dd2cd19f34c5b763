"""Monitoring configuration that cannot run here (no Docker): the Prometheus rules mirror the Settings thresholds,
the Grafana dashboards refer only to provisioned datasources, and compose wires Grafana and the rules."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml

from ml.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "docker" / "prometheus-alerts.yml"
DASHBOARDS = sorted((ROOT / "docker" / "grafana" / "dashboards").glob("*.json"))
DATASOURCES = ROOT / "docker" / "grafana" / "provisioning" / "datasources" / "propensity.yml"


def rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def test_rules_mirror_the_settings_thresholds() -> None:
    defaults = Settings()
    mirrored = [r for r in rules() if "setting" in r["labels"]]
    assert {r["labels"]["setting"] for r in mirrored} == {
        "psi_warn", "psi_alert", "performance_drop_alert", "served_max_age_days"}
    for r in mirrored:
        value = getattr(defaults, r["labels"]["setting"])
        assert float(r["annotations"]["threshold"]) == float(value), r["alert"]
        numbers = [float(x) for x in re.findall(r"(?<![\w.])\d+(?:\.\d+)?", r["expr"])]
        assert float(value) in numbers, f"{r['alert']}: {value} not in {r['expr']!r}"
        assert r["labels"]["severity"] in ("warning", "critical")


def test_rules_use_only_exported_gauges() -> None:
    from ml.api_metrics import ApiMetrics
    from ml.pipeline_metrics import PipelineGauges

    names = {m.name for reg in (ApiMetrics().registry, PipelineGauges().registry) for m in reg.collect()}
    names |= {n + "_total" for n in names} | {n + "_bucket" for n in names} | {"up"}
    seen = set()
    for r in rules():
        for metric in re.findall(r"\b(propensity_\w+|up)\b(?=\s*[{<>=!*/)\s]|$)", r["expr"]):
            assert metric in names, f"{r['alert']} uses {metric}, which nothing exports"
            seen.add(metric)
    assert len(seen) >= 7, seen


def test_rules_pass_promtool_where_it_exists() -> None:
    """promtool is not installed on the development machine; where it is (CI images with Prometheus), it checks the
    rules too. The YAML structure is checked above either way."""
    if shutil.which("promtool"):
        subprocess.run(["promtool", "check", "rules", str(RULES)], check=True)
    for r in rules():
        assert {"alert", "expr", "labels", "annotations"} <= set(r), r


def test_prometheus_loads_the_rules_and_scrapes_the_api() -> None:
    prom = yaml.safe_load((ROOT / "docker" / "prometheus.yml").read_text())
    assert prom["rule_files"] == ["/etc/prometheus/alerts.yml"]
    assert any(j["job_name"] == "scores-api" for j in prom["scrape_configs"])


def test_dashboards_use_provisioned_datasource_uids() -> None:
    provisioned = {d["uid"]: d["type"] for d in yaml.safe_load(DATASOURCES.read_text())["datasources"]}
    assert {"propensity-pg", "propensity-prom"} <= set(provisioned)
    assert len(DASHBOARDS) == 4
    uids = set()
    for path in DASHBOARDS:
        d = json.loads(path.read_text())
        uids.add(d["uid"])
        assert d["panels"], path.name
        for p in d["panels"]:
            for ds in [p["datasource"], *(t["datasource"] for t in p["targets"])]:
                assert ds["uid"] in provisioned, f"{path.name}: panel {p['title']!r} uses unknown uid {ds['uid']}"
                assert ds["type"] == provisioned[ds["uid"]], f"{path.name}: {p['title']!r} type"
            for t in p["targets"]:
                if p["datasource"]["uid"] == "propensity-pg":
                    assert re.search(r"\bfrom\s+bi\.", t["rawSql"]), f"{p['title']}: the BI role reads bi.* only"
    assert len(uids) == len(DASHBOARDS)


def test_compose_runs_grafana_with_provisioning() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
    g = compose["services"]["grafana"]
    assert g["healthcheck"]["test"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in g["volumes"]}
    assert mounts["/etc/grafana/provisioning"] == "./docker/grafana/provisioning"
    assert mounts["/var/lib/grafana/dashboards"] == "./docker/grafana/dashboards"
    provider = yaml.safe_load((ROOT / "docker/grafana/provisioning/dashboards/propensity.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    assert g["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "grafana-data" in compose["volumes"]
    prom_mounts = compose["services"]["prometheus"]["volumes"]
    assert "./docker/prometheus-alerts.yml:/etc/prometheus/alerts.yml:ro" in prom_mounts
    datasources = yaml.safe_load((ROOT / "docker/grafana/provisioning/datasources/propensity.yml").read_text())
    pg = next(d for d in datasources["datasources"] if d["uid"] == "propensity-pg")
    assert pg["user"] == "propensity_bi_user"  # the least-privilege BI login of docker/postgres-init.sql
