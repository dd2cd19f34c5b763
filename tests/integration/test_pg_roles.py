"""Least privilege on PostgreSQL, on a real server: the roles of migration 0160 exist, a BI login reads every bi.*
view and is refused everywhere else, the pipeline login reads and writes its schemas, and BI views carry comments."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from ml.db import make_engine

pytestmark = pytest.mark.integration

VIEWS_0060 = [
    "latest_scores", "daily_score_summary", "tier_distribution", "reason_code_frequency", "scoring_runs",
    "daily_events", "validation_failures",
]


def _login(engine: sa.Engine, pg_url: str, group: str) -> Iterator[sa.Engine]:
    """A throw-away LOGIN user, member of ``group``, and an engine connected as it; both dropped afterwards."""
    user = f"t_{group.removeprefix('propensity_')}_{uuid.uuid4().hex[:8]}"
    password = uuid.uuid4().hex
    with engine.begin() as conn:
        conn.exec_driver_sql(f"create role {user} login password '{password}' in role {group}")
    url = make_url(engine.url).set(username=user, password=password)
    as_user = make_engine(url.render_as_string(hide_password=False))
    try:
        yield as_user
    finally:
        as_user.dispose()
        with engine.begin() as conn:
            conn.exec_driver_sql(f"drop owned by {user}")
            conn.exec_driver_sql(f"drop role {user}")


@pytest.fixture
def bi_engine(engine: sa.Engine, pg_url: str) -> Iterator[sa.Engine]:
    yield from _login(engine, pg_url, "propensity_bi")


@pytest.fixture
def pipeline_engine(engine: sa.Engine, pg_url: str) -> Iterator[sa.Engine]:
    yield from _login(engine, pg_url, "propensity_pipeline")


def test_roles_exist_as_nologin_groups(engine: sa.Engine) -> None:
    with engine.connect() as conn:
        rows = dict(conn.execute(sa.text(
            "select rolname, rolcanlogin from pg_roles where rolname like 'propensity\\_%'"
        )).all())
    assert {"propensity_owner", "propensity_pipeline", "propensity_bi"} <= set(rows)
    assert not any(rows[r] for r in ("propensity_owner", "propensity_pipeline", "propensity_bi"))


def test_migration_is_rerunnable(engine: sa.Engine) -> None:
    from ml.db import MIGRATIONS_DIR

    sql = (MIGRATIONS_DIR / "0160_create_roles.sql").read_text()
    with engine.connect() as conn:
        with conn.connection.cursor() as cur:  # the same way ml.db.migrate runs a file
            cur.execute(sql)
            cur.execute(sql)
        conn.rollback()


def test_bi_reads_every_bi_view(engine: sa.Engine, bi_engine: sa.Engine) -> None:
    with engine.connect() as conn:
        views = conn.execute(sa.text(
            "select table_name from information_schema.views where table_schema = 'bi' order by 1"
        )).scalars().all()
    assert set(VIEWS_0060) <= set(views)
    with bi_engine.connect() as conn:
        for view in views:
            conn.execute(sa.text(f"select * from bi.{view} limit 1")).all()


REFUSED = [
    "select * from raw.events limit 1",
    "select * from scoring.scores limit 1",
    "select * from ml.model_registry limit 1",
    "select * from public.schema_migrations limit 1",
    ("insert into raw.events (event_time, event_type, product_id, category_id, price, user_id) "
     "values (now(), 'view', 1, 1, 1, 1)"),
    "delete from quality.validation_runs",
    "update bi.latest_scores set probability = 1",
    "delete from bi.scoring_runs",
    "insert into bi.latest_scores (user_id) values (1)",
    "create table bi.bi_was_here (x int)",
    "create view bi.bi_view as select 1 as x",
    "create table public.bi_was_here (x int)",
    "create schema bi_schema",
    "truncate bi.latest_scores",
]


@pytest.mark.parametrize("statement", REFUSED, ids=range(len(REFUSED)))
def test_bi_is_refused_outside_reads_of_bi(bi_engine: sa.Engine, statement: str) -> None:
    with bi_engine.connect() as conn:
        with pytest.raises(sa.exc.DBAPIError) as err:
            conn.execute(sa.text(statement))
        conn.rollback()
    code = getattr(err.value.orig, "pgcode", None)
    assert code in ("42501", "42809"), f"{statement}: {err.value.orig}"  # insufficient_privilege / wrong_object_type


def test_pipeline_reads_and_writes_its_schemas(pipeline_engine: sa.Engine) -> None:
    with pipeline_engine.connect() as conn:
        conn.execute(sa.text("select count(*) from raw.events")).scalar_one()
        conn.execute(sa.text("select count(*) from scoring.scores")).scalar_one()
        conn.execute(sa.text("select * from bi.latest_scores limit 1")).all()
        conn.execute(sa.text("create table scoring.t_pipeline_stage (x int)"))
        conn.execute(sa.text("insert into scoring.t_pipeline_stage values (1)"))
        conn.rollback()


def test_bi_views_and_columns_carry_comments(engine: sa.Engine) -> None:
    with engine.connect() as conn:
        missing = conn.execute(sa.text(
            """
            select c.relname || coalesce('.' || a.attname, '')
            from pg_class c
            join pg_namespace n on n.oid = c.relnamespace and n.nspname = 'bi'
            left join pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
            where c.relkind = 'v' and c.relname = any(:views)
              and (obj_description(c.oid, 'pg_class') is null
                   or (a.attname is not null and col_description(c.oid, a.attnum) is null))
            """
        ), {"views": VIEWS_0060}).scalars().all()
    assert not missing, f"bi objects without COMMENT ON: {missing}"
