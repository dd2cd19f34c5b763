"""The Propensity plugin page and its file route refuse anonymous requests and serve an authenticated Airflow user,
through the api-server's real application (``airflow.api_fastapi.app.create_app``: plugins mounted, the configured
auth manager, Airflow's JWT signer), run in a subprocess so its configuration stays private."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.airflow]

SCRIPT = r"""
import json, sys
from fastapi.testclient import TestClient
from airflow.api_fastapi.app import create_app, get_auth_manager
from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

report = sys.argv[1]
app = create_app("core")
out = {}
with TestClient(app) as client:
    token = get_auth_manager().generate_jwt(SimpleAuthManagerUser(username="viewer1", role="viewer"))
    for name, kwargs in {
        "anonymous": {},
        "bad_token": {"headers": {"Authorization": "Bearer not.a.token"}},
        "bearer": {"headers": {"Authorization": f"Bearer {token}"}},
        "cookie": {"cookies": {"_token": token}},
    }.items():
        client.cookies.clear()
        page = client.get("/propensity/", **kwargs)
        file = client.get("/propensity/files", params={"path": report}, **kwargs)
        out[name] = [page.status_code, file.status_code, "Propensity" in page.text, "secret-rows" in file.text]
print(json.dumps(out))
"""


def test_plugin_page_and_files_require_an_airflow_user(airflow_db, pg_url: str, tmp_path: Path) -> None:  # noqa: ANN001
    reports = tmp_path / "reports"
    reports.mkdir()
    report = reports / "model_report.html"
    report.write_text("<html>secret-rows user_id 123</html>")
    env = {
        **os.environ,
        "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "viewer1:viewer",
        "AIRFLOW__API_AUTH__JWT_SECRET": "test-plugin-auth-secret-0123456789",
        "AIRFLOW_CONN_PROPENSITY_POSTGRES": json.dumps({"conn_type": "postgres", "extra": {"url": pg_url}}),
        "PROPENSITY_REPORTS_URL": str(reports),
        "PROPENSITY_STATE_DIR": str(tmp_path / "state"),
    }
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(report)], check=False, env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["anonymous"][:2] == [401, 401] and not got["anonymous"][3], got
    assert got["bad_token"][:2] in ([401, 401], [403, 403]) and not got["bad_token"][3], got
    assert got["bearer"] == [200, 200, True, True], got
    assert got["cookie"] == [200, 200, True, True], got  # the UI's session cookie, as a browser sends it
