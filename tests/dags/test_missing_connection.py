"""In Airflow, a missing connection fails the task with a message naming the connection id, and nothing is started:
no embedded PostgreSQL/Redis process, no state directory (the embedded servers are development tooling only)."""

from __future__ import annotations

import logging

import psutil
import pytest

pytestmark = pytest.mark.airflow


def _states(run) -> dict[str, list[str]]:  # noqa: ANN001
    out: dict[str, list[str]] = {}
    for ti in run.get_task_instances():
        out.setdefault(ti.task_id, []).append(str(ti.state))
    return out


def _servers_under(path) -> list[str]:  # noqa: ANN001
    """Command lines of running processes that refer to ``path`` (the embedded servers daemonize: ppid 1, so they are
    not our children; their command line names their data directory or socket under the state dir)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info.get("cmdline") or [])
        if str(path) in cmd:
            found.append(cmd)
    return found


def test_task_without_postgres_connection_fails_naming_it_and_starts_no_server(
    airflow_db: None, monkeypatch: pytest.MonkeyPatch, tmp_path, caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from ingest_events import ingest_events_dag as dag

    for var in ("AIRFLOW_CONN_PROPENSITY_POSTGRES", "AIRFLOW_CONN_PROPENSITY_REDIS", "PROPENSITY_POSTGRES_URL",
                "PROPENSITY_REDIS_URL"):
        monkeypatch.delenv(var, raising=False)
    state_dir = tmp_path / "state"
    monkeypatch.setenv("PROPENSITY_STATE_DIR", str(state_dir))
    for t in dag.tasks:  # the task would fail the same way on each retry: fail the first try, without backoff waits
        monkeypatch.setattr(t, "retries", 0)

    with caplog.at_level(logging.ERROR):
        run = dag.test()

    states = _states(run)
    assert run.state == "failed" and states["discover"] == ["failed"], states
    # the failure callback's summary line (Airflow's task logging may go to stdout or to the logging module)
    logged = caplog.text.splitlines() + capsys.readouterr().out.splitlines()
    failures = [line for line in logged if "FAILED ingest_events.discover" in line]
    assert failures, "the failure callback logs the task's error"
    assert all("ConfigError" in m and "Airflow connection 'propensity_postgres' is not defined" in m
               and "AIRFLOW_CONN_PROPENSITY_POSTGRES" in m for m in failures), failures
    assert not state_dir.exists(), "no embedded service state was created"
    assert _servers_under(tmp_path) == [], "no server process was started"
