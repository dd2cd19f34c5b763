"""Issue 15 (1): publishing never goes backwards by accident; killed publishes are reconciled (real Redis, Postgres)."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from ml.errors import PublishError
from ml.publish import cleanup_versions, current_version, publish_version, served_score_date
from tests.integration.test_publish import insert_scores, make_rows

pytestmark = pytest.mark.integration


def _day(n: int) -> dt.date:
    return dt.date(2033, 3, 1) + dt.timedelta(days=n)


def test_an_older_date_is_refused_unless_allowed_and_recorded(engine, settings, pg_url, redis_client) -> None:
    old, new = _day(0), _day(7)
    insert_scores(pg_url, old, make_rows(range(1, 20), 3, seed=1))
    insert_scores(pg_url, new, make_rows(range(1, 20), 3, seed=2))
    publish_version(engine, redis_client, settings, new)
    served = current_version(redis_client, settings)

    with pytest.raises(PublishError, match=r"older than the served score_date 2033-03-08.*--allow-older"):
        publish_version(engine, redis_client, settings, old)
    assert current_version(redis_client, settings) == served
    assert served_score_date(redis_client, settings) == (served, new)

    publish_version(engine, redis_client, settings, new)  # re-publishing the served date is not going backwards
    r = publish_version(engine, redis_client, settings, old, allow_older=True)
    assert served_score_date(redis_client, settings) == (r.version, old)
    with engine.connect() as c:
        rows = c.execute(sa.text("select score_date, status, allowed_older from scoring.publications"
                                 " where redis_prefix = :p order by version"), {"p": settings.redis_prefix}).all()
    assert [(r.score_date, r.status, r.allowed_older) for r in rows] == [
        (new, "published", False), (new, "published", False), (old, "published", True)]


def test_a_killed_publish_row_is_reconciled_by_the_next_publish_and_by_cleanup(engine, settings, pg_url,
                                                                              redis_client) -> None:
    day = _day(20)
    insert_scores(pg_url, day, make_rows(range(1, 10), 2, seed=3))
    with engine.begin() as c:  # what a publisher killed with SIGKILL between its record and its flip leaves
        for v in (900, 901):
            c.execute(sa.text("insert into scoring.publications (redis_prefix, version, score_date, status, top_n,"
                              " min_probability) values (:p, :v, :d, 'publishing', 5, 0)"),
                      {"p": settings.redis_prefix, "v": v, "d": day})
    publish_version(engine, redis_client, settings, day)
    with engine.connect() as c:
        st = dict(c.execute(sa.text("select version, status from scoring.publications where redis_prefix = :p"),
                            {"p": settings.redis_prefix}).all())
    assert st[900] == st[901] == "failed"
    with engine.begin() as c:
        c.execute(sa.text("insert into scoring.publications (redis_prefix, version, score_date, status, top_n,"
                          " min_probability) values (:p, 9999, :d, 'publishing', 5, 0)"),
                  {"p": settings.redis_prefix, "d": day})
    cleanup_versions(redis_client, settings, engine=engine)
    with engine.connect() as c:
        row = c.execute(sa.text("select status, error from scoring.publications where redis_prefix = :p"
                                " and version = 9999"), {"p": settings.redis_prefix}).one()
    assert row.status == "failed" and "abandoned" in row.error
