"""Run a real, local Airflow 3 (scheduler + dag-processor + api-server, LocalExecutor) for the demo and the
scheduler test, with its metadata database in the pipeline's PostgreSQL (a separate database).

This module never imports airflow: it starts the ``airflow`` CLI as subprocesses with a prepared environment and
talks to the api-server's REST API (``/api/v2``) over HTTP.

Environment prepared for every Airflow process (see :func:`airflow_env`):
- ``AIRFLOW_HOME`` under the state dir; ``dags/`` and ``plugins/`` of this repository;
- ``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN`` on the embedded (or configured) PostgreSQL, database ``airflow``;
- ``AIRFLOW_CONN_PROPENSITY_POSTGRES`` / ``AIRFLOW_CONN_PROPENSITY_REDIS`` carrying the pipeline URLs;
- ``AIRFLOW__CORE__EXECUTION_API_SERVER_URL`` matching the api-server port (tasks fail with "connection refused"
  otherwise); the virtual environment's ``bin`` first on PATH (``airflow`` spawns ``airflow`` by name).
- Simple auth manager with every user an admin (a local, single-user setup; never use this in production).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from ml.errors import PipelineError
from ml.settings import Settings

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
COMPONENTS = ("scheduler", "dag-processor", "api-server", "triggerer")


class AirflowError(PipelineError):
    """The local Airflow could not start, or a DAG run failed or timed out."""


def ensure_api_port_free(port: int) -> None:
    """One clear error (:class:`ml.errors.ServiceError`) when ``port`` is taken, before an api-server is started."""
    from ml.dev.services import ensure_port_free

    ensure_port_free(port, "Airflow api-server", "another Airflow may be running (`propensity airflow down` stops "
                     "this project's): stop it or pass --port")


@dataclass
class LocalAirflow:
    """A local Airflow installation rooted at ``home`` whose processes are started by :meth:`start`."""

    home: Path
    metadata_url: str
    pipeline_pg_url: str
    pipeline_redis_url: str
    port: int = 8080
    extra_env: dict[str, str] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _token_headers: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """The environment every Airflow process of this installation gets."""
        from ml.db import sqlalchemy_url

        secret_file = self.home / ".secret"
        if not secret_file.exists():
            self.home.mkdir(parents=True, exist_ok=True)
            secret_file.write_text(secrets.token_hex(32))
        secret = secret_file.read_text().strip()
        venv_bin = str(Path(sys.executable).parent)
        env = {
            **os.environ,
            "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""),
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__BASE_URL": self.base_url,
            "AIRFLOW__API__SECRET_KEY": secret,
            "AIRFLOW__API_AUTH__JWT_SECRET": secret,
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sqlalchemy_url(self.metadata_url),
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "15",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.home / "logs"),
            "AIRFLOW_CONN_PROPENSITY_POSTGRES": json.dumps(
                {"conn_type": "postgres", "extra": {"url": self.pipeline_pg_url}}
            ),
            "AIRFLOW_CONN_PROPENSITY_REDIS": json.dumps({"conn_type": "redis", "extra": {"url": self.pipeline_redis_url}}),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")])),
            "NO_PROXY": "127.0.0.1,localhost",
        }
        env.update(self.extra_env)
        return env

    # --- lifecycle ------------------------------------------------------------------------------------------------
    def migrate(self) -> None:
        """``airflow db migrate`` (idempotent)."""
        self._run_cli(["db", "migrate"], timeout=600)

    def _run_cli(self, args: list[str], timeout: float = 300) -> str:
        proc = subprocess.run(
            [shutil.which("airflow", path=self.env()["PATH"]) or "airflow", *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if proc.returncode != 0:
            raise AirflowError(f"airflow {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        return proc.stdout

    def start(self, components: tuple[str, ...] = ("scheduler", "dag-processor", "api-server")) -> None:
        """Start the components in the background (logs under ``home/logs/<component>.log``); wait for the API."""
        if "api-server" in components:
            ensure_api_port_free(self.port)
        logs = self.home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        env = self.env()
        exe = shutil.which("airflow", path=env["PATH"]) or "airflow"
        for comp in components:
            args = [exe, comp] + (["--port", str(self.port)] if comp == "api-server" else [])
            out = open(logs / f"{comp}.log", "ab")  # noqa: SIM115 - handed to the child process
            self.processes[comp] = subprocess.Popen(
                args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
            (self.home / f"{comp}.pid").write_text(str(self.processes[comp].pid))
        self.wait_healthy()

    def wait_healthy(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for comp, p in self.processes.items():
                if p.poll() is not None:
                    tail = (self.home / "logs" / f"{comp}.log").read_text(errors="replace")[-3000:]
                    raise AirflowError(f"airflow {comp} exited with {p.returncode}:\n{tail}")
            try:
                r = httpx.get(f"{self.base_url}/api/v2/monitor/health", timeout=2)
                if r.status_code == 200 and r.json().get("scheduler", {}).get("status") == "healthy":
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise AirflowError(f"local Airflow not healthy on {self.base_url} after {timeout:.0f}s (logs: {self.home}/logs)")

    def stop(self, grace_s: float = 20.0) -> None:
        """Stop every component started by this object (or recorded in pid files): SIGTERM, then SIGKILL to whatever
        still runs after ``grace_s`` seconds."""
        pids: dict[str, int] = {c: p.pid for c, p in self.processes.items()}
        for comp in COMPONENTS:
            pidfile = self.home / f"{comp}.pid"
            if pidfile.exists():
                pids.setdefault(comp, int(pidfile.read_text()))
                pidfile.unlink()
        for pid in pids.values():
            _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for pid in pids.values():
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            _signal_group(pid, signal.SIGKILL)
        self.processes.clear()

    # --- REST API -------------------------------------------------------------------------------------------------
    def _client(self) -> httpx.Client:
        return httpx.Client(base_url=f"{self.base_url}/api/v2", timeout=30, headers=self._auth_headers())

    def _auth_headers(self) -> dict[str, str]:
        # simple auth manager with all_admins still issues tokens; ask for one (no credentials needed), once
        if self._token_headers:
            return self._token_headers
        try:
            r = httpx.get(f"{self.base_url}/auth/token", timeout=10)
            if r.status_code in (200, 201):
                self._token_headers = {"Authorization": f"Bearer {r.json()['access_token']}"}
                return self._token_headers
        except httpx.HTTPError:
            pass
        return {}

    def wait_for_dags(self, dag_ids: list[str], timeout: float = 240) -> None:
        """Wait until the dag-processor has parsed every DAG in ``dag_ids``; fail with any import errors."""
        deadline = time.monotonic() + timeout
        with self._client() as c:
            while time.monotonic() < deadline:
                known = {d["dag_id"] for d in c.get("/dags", params={"limit": 100}).json().get("dags", [])}
                if set(dag_ids) <= known:
                    return
                errors = c.get("/importErrors").json().get("import_errors", [])
                if errors:
                    raise AirflowError("DAG import errors:\n" + "\n".join(e["stack_trace"][-1500:] for e in errors))
                time.sleep(2)
        raise AirflowError(f"DAGs {dag_ids} not parsed after {timeout:.0f}s")

    def ensure_pool(self, name: str, slots: int, description: str = "") -> None:
        """Create or resize a pool (e.g. the scoring COPY writers' pool)."""
        with self._client() as c:
            body = {"name": name, "slots": slots, "description": description}
            r = c.patch(f"/pools/{name}", json=body)
            if r.status_code == 404:
                r = c.post("/pools", json=body)
            if r.status_code >= 300:
                raise AirflowError(f"pool {name}: {r.status_code} {r.text}")

    def unpause(self, dag_id: str) -> None:
        with self._client() as c:
            c.patch(f"/dags/{dag_id}", json={"is_paused": False}).raise_for_status()

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> str:
        """Trigger a manual run now; returns its run id."""
        from datetime import UTC, datetime

        with self._client() as c:
            r = c.post(
                f"/dags/{dag_id}/dagRuns",
                json={"logical_date": datetime.now(UTC).isoformat(), "conf": conf or {}},
            )
            if r.status_code >= 300:
                raise AirflowError(f"trigger {dag_id} failed: {r.status_code} {r.text}")
            return r.json()["dag_run_id"]

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        with self._client() as c:
            r = c.get(f"/dags/{dag_id}/dagRuns", params={"order_by": "-run_after", "limit": 50})
            r.raise_for_status()
            return r.json().get("dag_runs", [])

    def task_states(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        with self._client() as c:
            r = c.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 1000})
            r.raise_for_status()
            return r.json().get("task_instances", [])

    def wait_for_run(
        self,
        dag_id: str,
        *,
        run_id: str | None = None,
        after: str | None = None,
        timeout: float = 1800,
        allow_failed: bool = False,
    ) -> dict[str, Any]:
        """Wait for a run of ``dag_id`` (a given run id, or the first run created after ISO time ``after``) to
        finish; log progress; return the run. Raises :class:`AirflowError` on time-out, and on failure unless
        ``allow_failed`` (e.g. an ingest run that quarantined a file but loaded the others)."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            runs = self.runs(dag_id)
            run = next(
                (
                    r
                    for r in runs
                    if (run_id and r["dag_run_id"] == run_id) or (not run_id and after and (r.get("run_after") or "") > after)
                ),
                None,
            )
            if run:
                tis = self.task_states(dag_id, run["dag_run_id"])
                done = sum(1 for t in tis if t["state"] in ("success", "skipped"))
                line = f"{dag_id} {run['dag_run_id']}: {run['state']} ({done}/{len(tis)} tasks done)"
                if line != last:
                    log.info(line)
                    last = line
                if run["state"] == "success":
                    return run
                if run["state"] == "failed" and allow_failed:
                    return run
                if run["state"] == "failed":
                    failed = [f"{t['task_id']}[{t.get('map_index', -1)}]" for t in tis if t["state"] == "failed"]
                    raise AirflowError(
                        f"{dag_id} run {run['dag_run_id']} failed; failed tasks: {', '.join(failed)}; "
                        f"logs under {self.home / 'logs'}"
                    )
            time.sleep(3)
        raise AirflowError(f"{dag_id}: no finished run after {timeout:.0f}s")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def local_airflow(
    settings: Settings, *, port: int = 8080, home: Path | None = None, metadata_db: str | None = None
) -> LocalAirflow:
    """A :class:`LocalAirflow` for these settings: its metadata DB (default ``airflow``) lives on the same
    PostgreSQL server as the pipeline DB, created if missing."""
    import sqlalchemy as sa

    from ml.db import make_engine
    from ml.dev.services import AIRFLOW_DB, resolve_services

    svc = resolve_services(settings)
    db = metadata_db or AIRFLOW_DB
    meta = sa.engine.make_url(svc.postgres_url).set(database=db)
    admin = make_engine(svc.postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        if not c.execute(sa.text("select 1 from pg_database where datname = :d"), {"d": db}).first():
            c.execute(sa.text(f'create database "{db}"'))
    admin.dispose()
    return LocalAirflow(
        home=home or settings.state_dir / "airflow",
        metadata_url=meta.render_as_string(hide_password=False),
        pipeline_pg_url=svc.postgres_url,
        pipeline_redis_url=svc.redis_url,
        port=port,
        extra_env={
            k: v
            for k, v in {
                "PROPENSITY_STATE_DIR": str(settings.state_dir),
                "PROPENSITY_REDIS_PREFIX": settings.redis_prefix,
            }.items()
        },
    )
