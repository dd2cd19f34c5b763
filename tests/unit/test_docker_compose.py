"""docker-compose.yaml cannot run here (no Docker engine), so its structure is checked instead."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yaml").read_text())


REQUIRED = {
    "postgres", "redis", "scores-redis", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
    "airflow-triggerer", "airflow-worker", "airflow-init", "scores-api", "prometheus",
}


def test_required_services_present(compose: dict) -> None:
    assert REQUIRED <= set(compose["services"])


@pytest.mark.parametrize("name", sorted(REQUIRED - {"airflow-init"}))
def test_long_running_services_have_healthchecks(compose: dict, name: str) -> None:
    hc = compose["services"][name].get("healthcheck")
    assert hc and hc.get("test"), f"{name} has no healthcheck"


def test_airflow_services_share_common_block(compose: dict) -> None:
    common_env = compose["x-airflow-common"]["environment"]
    assert common_env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert "AIRFLOW_CONN_PROPENSITY_POSTGRES" in common_env and "AIRFLOW_CONN_PROPENSITY_REDIS" in common_env
    assert "scores-redis" in common_env["AIRFLOW_CONN_PROPENSITY_REDIS"]  # scores never go to the Celery broker
    for name in (n for n in REQUIRED if n.startswith("airflow-")):
        svc = compose["services"][name]
        assert svc.get("image") == compose["x-airflow-common"]["image"], name
        assert any("/opt/airflow/dags" in v for v in svc["volumes"]), name


def test_airflow_waits_for_healthy_dependencies(compose: dict) -> None:
    for name in ("airflow-scheduler", "airflow-apiserver", "airflow-worker", "airflow-dag-processor"):
        deps = compose["services"][name]["depends_on"]
        assert deps["postgres"]["condition"] == "service_healthy"
        assert deps["redis"]["condition"] == "service_healthy"
        assert deps["airflow-init"]["condition"] == "service_completed_successfully"


def test_named_volumes_declared(compose: dict) -> None:
    used = {
        v.split(":")[0]
        for svc in compose["services"].values()
        for v in svc.get("volumes", [])
        if not v.startswith((".", "/", "$"))
    }
    assert used <= set(compose["volumes"])


def test_dockerfile_matches_pinned_airflow() -> None:
    pin = next(line for line in (ROOT / "requirements.txt").read_text().splitlines() if line.startswith("apache-airflow=="))
    version = pin.split("==")[1]
    assert f"FROM apache/airflow:{version}-python3.11" in (ROOT / "Dockerfile").read_text()


def test_lookup_api_reads_the_scores_redis(compose: dict) -> None:
    api = compose["services"]["scores-api"]
    assert api["environment"]["PROPENSITY_REDIS_URL"].split("@", 1)[-1].startswith("scores-redis:")  # ACL user api
    assert "healthz" in " ".join(api["healthcheck"]["test"])
    assert api["depends_on"]["scores-redis"]["condition"] == "service_healthy"
    prom = yaml.safe_load((ROOT / "docker" / "prometheus.yml").read_text())
    assert any("scores-api:8000" in t for job in prom["scrape_configs"] for c in job["static_configs"] for t in c["targets"])
