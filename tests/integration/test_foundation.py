"""Migrations and embedded services against real servers."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from ml.db import make_engine, migrate

pytestmark = pytest.mark.integration


def _fresh_db(server_pg_url: str) -> str:
    from ml.db import create_database

    return create_database(server_pg_url, f"mig_{uuid.uuid4().hex[:8]}", migrated=False)


def test_migrate_twice_is_noop(server_pg_url: str) -> None:
    eng = make_engine(_fresh_db(server_pg_url))
    first = migrate(eng)
    assert first and first[0] == "0001_create_schemas"
    assert migrate(eng) == []
    with eng.connect() as c:
        schemas = set(c.execute(sa.text("select schema_name from information_schema.schemata")).scalars())
        n = c.execute(sa.text("select count(*) from public.schema_migrations")).scalar_one()
    assert {"raw", "quality", "ml", "scoring", "monitoring", "experiments", "bi"} <= schemas
    assert n == len(first)
    eng.dispose()


def test_concurrent_migrators_are_safe(server_pg_url: str) -> None:
    url = _fresh_db(server_pg_url)
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run() -> None:
        eng = make_engine(url)
        try:
            results.append(migrate(eng))
        except BaseException as e:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(e)
        finally:
            eng.dispose()

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    non_empty = [r for r in results if r]
    assert len(non_empty) == 1  # exactly one applier did the work; the others found nothing to do


def test_edited_migration_is_refused(server_pg_url: str, tmp_path: Path) -> None:
    from ml.errors import MigrationError

    (tmp_path / "0001_a.sql").write_text("create table if not exists public.t_edit (a int);")
    eng = make_engine(_fresh_db(server_pg_url))
    assert migrate(eng, tmp_path) == ["0001_a"]
    (tmp_path / "0001_a.sql").write_text("create table if not exists public.t_edit (a bigint);")
    with pytest.raises(MigrationError, match="0001_a.sql was edited"):
        migrate(eng, tmp_path)
    eng.dispose()


def test_event_partitions_are_created_on_demand(engine: sa.Engine) -> None:
    with engine.begin() as c:
        part = c.execute(sa.text("select raw.ensure_event_partition(date '2019-10-01')")).scalar_one()
        again = c.execute(sa.text("select raw.ensure_event_partition(date '2019-10-01')")).scalar_one()
    assert part == again == "events_p20191001"


def test_embedded_services_start_serve_and_stop(tmp_path: Path) -> None:
    import redis

    from ml.dev.services import resolve_services, service_status, stop_services
    from ml.settings import Settings

    s = Settings(state_dir=tmp_path / "st")
    svc = resolve_services(s)
    assert svc.embedded_postgres and svc.embedded_redis
    eng = make_engine(svc.postgres_url)
    with eng.connect() as c:
        assert c.execute(sa.text("select 41 + 1")).scalar_one() == 42
    eng.dispose()
    r = redis.Redis.from_url(svc.redis_url)
    r.set("k", "v")
    assert r.get("k") == b"v"
    r.close()
    assert "running" in service_status(s)["postgres"]
    # a second resolve reuses the running servers
    assert resolve_services(s).postgres_url == svc.postgres_url
    assert stop_services(s) == {"postgres": True, "redis": True}
    assert service_status(s) == {"postgres": "embedded, stopped", "redis": "embedded, stopped"}


def test_configured_urls_win(tmp_path: Path, pg_url: str, redis_url: str) -> None:
    from ml.dev.services import resolve_services
    from ml.settings import Settings

    svc = resolve_services(Settings(state_dir=tmp_path / "none", postgres_url=pg_url, redis_url=redis_url))
    assert (svc.postgres_url, svc.redis_url) == (pg_url, redis_url)
    assert not svc.embedded_postgres and not svc.embedded_redis
    assert not (tmp_path / "none" / "pg").exists()  # nothing embedded was started
