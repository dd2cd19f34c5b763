"""The score_active_pairs DAG through Airflow's dag.test(): real Postgres (events + a champion model), real Redis."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from tests.integration.test_publish_cluster import cluster_url  # noqa: F401 - a 3-node Redis Cluster fixture
from tests.integration.test_score import World, build_world, drop_world

pytestmark = [pytest.mark.airflow, pytest.mark.integration]


@pytest.fixture(scope="module")
def world(server_pg_url: str, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> World:
    w = build_world(server_pg_url, tmp_path_factory.mktemp("score_world"))
    request.addfinalizer(drop_world)
    return w


@pytest.fixture
def dag_env(world: World, airflow_db: None, airflow_conns, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN001, ANN201
    """Airflow connections pointing at the scoring world's database and the test Redis (private prefix)."""
    import json

    monkeypatch.setenv("AIRFLOW_CONN_PROPENSITY_POSTGRES",
                       json.dumps({"conn_type": "postgres", "extra": {"url": world.url}}))
    monkeypatch.setenv("PROPENSITY_SCORE_DB_POOL", "default_pool")
    return airflow_conns.model_copy(update={"postgres_url": world.url})


def _task_states(run) -> dict[str, list[str]]:  # noqa: ANN001
    states: dict[str, list[str]] = {}
    for ti in run.get_task_instances():
        states.setdefault(ti.task_id, []).append(str(ti.state))
    return states


def test_nightly_run_scores_publishes_and_records_drift(dag_env, world: World, redis_client) -> None:  # noqa: ANN001
    from score_active_pairs import score_active_pairs_dag

    from ml.db import make_engine
    from ml.publish import current_version, rollback_version, version_meta

    engine = make_engine(world.url)
    try:
        dag = score_active_pairs_dag
        first = dag.test(run_conf={"score_date": "2019-11-04", "buckets": 2})
        assert first.state == "success", _task_states(first)
        states = _task_states(first)
        assert states["score_bucket"] == ["success", "success"]
        assert states["rollback_redis"] == ["skipped"] and states["mark_failed"] == ["skipped"]
        with engine.connect() as c:
            run = c.execute(sa.text("select * from scoring.runs where score_date = '2019-11-04'"
                                    " and status = 'succeeded'")).one()
            rows = c.execute(sa.text("select count(*) from scoring.scores where score_date = '2019-11-04'")).scalar_one()
            metrics = c.execute(sa.text("select count(*) from monitoring.metrics where metric_date = '2019-11-04'"
                                        " and kind = 'row_count'")).scalar_one()
        assert run.orchestrator_run_id == first.run_id and run.buckets == 2
        assert rows == run.planned_pairs == run.scored_pairs > 0 and metrics == 1
        v1 = current_version(redis_client, dag_env)
        assert v1 is not None and version_meta(redis_client, dag_env, v1)["score_date"] == "2019-11-04"

        # a newer version is served; rollback_redis=true flips the pointer back without scoring anything
        from ml.publish import publish_version

        v2 = publish_version(engine, redis_client, dag_env, "2019-11-04").version
        assert current_version(redis_client, dag_env) == v2 != v1
        back = dag.test(run_conf={"rollback_redis": True})
        assert back.state == "success", _task_states(back)
        states = _task_states(back)
        assert states["rollback_redis"] == ["success"] and states["plan"] == ["skipped"]
        assert current_version(redis_client, dag_env) == v1
        rollback_version(redis_client, dag_env, to_version=v2)  # leave the newest served
    finally:
        engine.dispose()


def test_publish_and_rollback_tasks_use_a_redis_cluster(dag_env, world: World, cluster_url: str,  # noqa: F811
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """With PROPENSITY_REDIS_CLUSTER on, the DAG's publish and rollback_redis tasks talk to the cluster (a plain
    redis.Redis client there fails with MOVED on most keys)."""
    import json

    from score_active_pairs import score_active_pairs_dag as dag

    from ml.db import make_engine
    from ml.keyspace import KeySpace
    from ml.publish import (
        connect_redis,
        current_version,
        publish_version,
        read_hot_items,
        stored_versions,
        version_meta,
    )

    monkeypatch.setenv("AIRFLOW_CONN_PROPENSITY_REDIS",
                       json.dumps({"conn_type": "redis", "extra": {"url": cluster_url}}))
    monkeypatch.setenv("PROPENSITY_REDIS_CLUSTER", "true")
    s = dag_env.model_copy(update={"redis_url": cluster_url, "redis_cluster": True})
    cluster = connect_redis(s)
    engine = make_engine(world.url)
    try:
        assert current_version(cluster, s) is None  # a private key prefix: nothing published under it yet
        # every param given: dag.test() keeps an earlier run's conf in the shared DAG object's params
        run = dag.test(run_conf={"score_date": "2019-11-05", "buckets": 1, "rollback_redis": False})
        assert run.state == "success", _task_states(run)
        version = current_version(cluster, s)
        assert version is not None and version_meta(cluster, s, version)["score_date"] == "2019-11-05"
        ks = KeySpace(s.redis_prefix)
        keys = list(cluster.scan_iter(match=ks.version_glob(), count=1000))  # SCAN on every node
        assert keys and {ks.version_of(k) for k in keys} == {version}
        assert len({cluster.keyslot(k) for k in keys}) > 1  # spread over slots (and so over nodes)
        with engine.connect() as c:
            user, product = c.execute(sa.text("select user_id, product_id from scoring.scores where score_date = "
                                              "'2019-11-05' order by probability desc limit 1")).one()
        served_version, items = read_hot_items(cluster, s, user)
        assert served_version == version and product == items[0].product_id  # the user's best pair comes first

        newer = publish_version(engine, cluster, s, "2019-11-05").version
        back = dag.test(run_conf={"rollback_redis": True})
        assert back.state == "success", _task_states(back)
        assert current_version(cluster, s) == version and stored_versions(cluster, s)[-1] == newer
    finally:
        cluster.close()
        engine.dispose()


def test_dag_shape_and_params() -> None:
    from score_active_pairs import score_active_pairs_dag as dag

    assert "0 3 * * *" in repr(dag.timetable) or dag.schedule == "0 3 * * *"  # 03:00 UTC nightly
    assert {t.task_id for t in dag.tasks} == {"choose_path", "plan", "score_bucket", "finalize", "publish", "drift",
                                              "mark_failed", "rollback_redis", "freshness_gate", "drift_vs_reference"}
    assert [o.name for o in dag.get_task("finalize").outlets] == ["scores"]
    assert dag.get_task("score_bucket").pool in ("propensity_db_writers", "default_pool")
    assert set(dag.params) == {"score_date", "model_version", "buckets", "rollback_redis", "skip_freshness_check",
                               "publish", "allow_older", "allow_empty", "allow_shrink"}
    assert dag.max_active_runs == 1


def test_a_backfill_of_an_older_date_scores_but_does_not_publish_unless_asked(dag_env, world: World,  # noqa: ANN001
                                                                              redis_client) -> None:
    """Issue 15: never go backwards by accident. publish=auto (default) leaves an older date in Postgres only;
    publish=always + allow_older=true serves it, recorded in scoring.publications.allowed_older."""
    from score_active_pairs import score_active_pairs_dag

    from ml.db import make_engine
    from ml.publish import publish_version, served_score_date

    engine = make_engine(world.url)
    try:
        newest = score_active_pairs_dag.test(run_conf={"score_date": "2019-11-03", "buckets": 1,
                                                       "rollback_redis": False, "skip_freshness_check": True,
                                                       "publish": "auto", "allow_older": False})
        assert newest.state == "success", _task_states(newest)
        served, day = served_score_date(redis_client, dag_env)
        if str(day) < "2019-11-03":  # another test of this module may have served an older date last
            served = publish_version(engine, redis_client, dag_env, "2019-11-03", allow_older=True).version
        served, day = served_score_date(redis_client, dag_env)
        backfill = score_active_pairs_dag.test(run_conf={"score_date": "2019-11-02", "buckets": 1,
                                                         "rollback_redis": False, "skip_freshness_check": True,
                                                         "publish": "auto", "allow_older": False})
        assert backfill.state == "success", _task_states(backfill)
        assert served_score_date(redis_client, dag_env) == (served, day)  # not flipped to the older date
        with engine.connect() as c:
            assert c.execute(sa.text("select count(*) from scoring.scores where score_date = '2019-11-02'")).scalar() > 0
        forced = score_active_pairs_dag.test(run_conf={"score_date": "2019-11-02", "buckets": 1,
                                                       "rollback_redis": False, "skip_freshness_check": True,
                                                       "publish": "always", "allow_older": True})
        assert forced.state == "success", _task_states(forced)
        v, d = served_score_date(redis_client, dag_env)
        assert str(d) == "2019-11-02" and v != served
        with engine.connect() as c:
            assert c.execute(sa.text("select allowed_older from scoring.publications where redis_prefix = :p"
                                     " and version = :v"), {"p": dag_env.redis_prefix, "v": v}).scalar() is True
        publish_version(engine, redis_client, dag_env, str(day), allow_older=True)  # leave the newer date served
    finally:
        engine.dispose()
