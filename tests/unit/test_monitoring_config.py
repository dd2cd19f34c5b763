"""Monitoring configuration that cannot run here (no Docker): the Prometheus rules mirror the Settings thresholds,
the Grafana dashboards refer only to provisioned datasources, and compose wires Grafana and the rules."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from ml.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "docker" / "prometheus-alerts.yml"
DASHBOARDS = sorted((ROOT / "docker" / "grafana" / "dashboards").glob("*.json"))
DATASOURCES = ROOT / "docker" / "grafana" / "provisioning" / "datasources" / "propensity.yml"


def rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def parsed(expr: str) -> tuple[set[str], list[float]]:
    """(metric names, number literals) of a PromQL expression, from its syntax tree (promql-parser, the Rust
    port of Prometheus' own parser). Raises ValueError on invalid PromQL."""
    import promql_parser

    names: set[str] = set()
    numbers: list[float] = []

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)
        elif isinstance(node, promql_parser.NumberLiteral):
            numbers.append(float(node.val))

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names, numbers


def test_rules_file_is_valid_prometheus_rules() -> None:
    """What `promtool check rules` checks, without promtool: groups with unique names, every alert with a name,
    an expr that parses as PromQL, a `for` that parses as a duration, labels with a severity, a summary; template
    braces balanced. Runs everywhere (promtool is optional, the next test adds it where it exists)."""
    import promql_parser

    doc = yaml.safe_load(RULES.read_text())
    groups = doc["groups"]
    assert len({g["name"] for g in groups}) == len(groups) and groups
    names = set()
    for r in rules():
        assert set(r) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}, r
        assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", r["alert"]) and r["alert"] not in names, r["alert"]
        names.add(r["alert"])
        parsed(r["expr"])  # raises on invalid PromQL
        assert promql_parser.parse_duration(r["for"]).total_seconds() > 0, r["alert"]
        assert r["labels"]["severity"] in ("warning", "critical")
        assert r["annotations"]["summary"]
        for text in (*r["labels"].values(), *r["annotations"].values()):
            assert str(text).count("{{") == str(text).count("}}"), (r["alert"], text)


def test_the_promql_check_can_fail() -> None:
    """The parser used above refuses what Prometheus refuses (so the rules check is not vacuous)."""
    for bad in ("propensity_score_psi >=", "sum(rate(propensity_api_requests_total[5m])", "up{job=}",
                "propensity_open_alerts{severity=\"critical\"} >> 0"):
        with pytest.raises(ValueError):
            parsed(bad)


def test_rules_mirror_the_settings_thresholds() -> None:
    """Each rule naming a setting compares against that setting's default: the number is in the expression's
    syntax tree and in annotations.threshold."""
    defaults = Settings()
    mirrored = [r for r in rules() if "setting" in r["labels"]]
    assert {r["labels"]["setting"] for r in mirrored} == {
        "psi_warn", "psi_alert", "performance_drop_alert", "served_max_age_days"}
    for r in mirrored:
        value = getattr(defaults, r["labels"]["setting"])
        assert float(r["annotations"]["threshold"]) == float(value), r["alert"]
        _, numbers = parsed(r["expr"])
        assert float(value) in numbers, f"{r['alert']}: {value} not in {r['expr']!r}"


def test_rules_use_only_exported_gauges() -> None:
    from ml.api_metrics import ApiMetrics
    from ml.pipeline_metrics import PipelineGauges

    names = {m.name for reg in (ApiMetrics().registry, PipelineGauges().registry) for m in reg.collect()}
    names |= {n + "_total" for n in names} | {n + "_bucket" for n in names} | {"up"}
    seen = set()
    for r in rules():
        used, _ = parsed(r["expr"])
        assert used <= names, f"{r['alert']} uses {used - names}, which nothing exports"
        seen |= used
    assert len(seen) >= 7, seen


def test_rules_pass_promtool_where_it_exists() -> None:
    """Where promtool is on PATH (Debian's `prometheus` package ships it as /usr/bin/promtool; CI images with
    Prometheus), it checks the rules for real. The structural and PromQL checks above run everywhere."""
    promtool = shutil.which("promtool")
    if promtool:
        out = subprocess.run([promtool, "check", "rules", str(RULES)], check=True, capture_output=True, text=True)
        assert f"SUCCESS: {len(rules())} rules found" in out.stdout, out.stdout
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
