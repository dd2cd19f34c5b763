"""score_active_pairs under Airflow's CeleryExecutor with two real Celery worker processes (broker: the test Redis;
result backend and metadata: a fresh PostgreSQL database; tasks report to a real api-server's execution API).

Asserts the mapped score_bucket tasks ran on both workers (each worker reports its own hostname through
``[core] hostname_callable``) and that the scores equal an in-process ``dag.test()`` run of the same date."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from ml.db import create_database, drop_database, make_engine
from tests.integration.test_score import World, build_world, drop_world

pytestmark = [pytest.mark.integration, pytest.mark.airflow, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SCORE_DATE = "2019-11-06"
BUCKETS = 4

RUN = r"""
import json, sys
from score_active_pairs import score_active_pairs_dag as dag
run = dag.test(run_conf={"score_date": sys.argv[1], "buckets": int(sys.argv[2]), "rollback_redis": False, "skip_freshness_check": True}, use_executor=True)
print(json.dumps({"run_id": run.run_id, "state": str(run.state)}))
"""


@pytest.fixture(scope="module")
def world(server_pg_url: str, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> World:
    w = build_world(server_pg_url, tmp_path_factory.mktemp("celery_world"))
    request.addfinalizer(drop_world)
    return w


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _broker(redis_url: str) -> str:
    """A Celery broker URL on the test Redis, database 7 (unix sockets: redis+socket://)."""
    if redis_url.startswith("unix://"):
        return "redis+socket://" + redis_url[len("unix://"):].split("?")[0] + "?virtual_host=7"
    head = redis_url.rsplit("/", 1)[0] if redis_url.count("/") > 2 else redis_url
    return f"{head}/7"


def _scores(url: str) -> dict[tuple[int, int], tuple[float, list[float]]]:
    eng = make_engine(url)
    try:
        with eng.connect() as c:
            rows = c.execute(sa.text("select user_id, product_id, probability, contributions from scoring.scores "
                                     "where score_date = :d"), {"d": SCORE_DATE}).all()
    finally:
        eng.dispose()
    return {(r[0], r[1]): (r[2], list(r[3])) for r in rows}


def test_score_buckets_run_on_two_celery_workers(world: World, server_pg_url: str, redis_url: str,
                                                 airflow_db, airflow_conns, tmp_path: Path,  # noqa: ANN001
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from score_active_pairs import score_active_pairs_dag

    # 1. the Celery deployment: metadata DB, api-server (execution API), two workers
    meta_name = f"af_celery_{uuid.uuid4().hex[:8]}"
    meta_url = create_database(server_pg_url, meta_name, migrated=False)
    meta_sa = meta_url.replace("postgresql://", "postgresql+psycopg2://", 1)
    port = _free_port()
    (tmp_path / "p16_worker_host.py").write_text(
        "import os\n\ndef hostname():\n    return os.environ.get('P16_WORKER', 'unknown')\n")
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT), str(ROOT / "dags")]),
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": meta_sa,
        "AIRFLOW__CELERY__BROKER_URL": _broker(redis_url),
        "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + meta_url,
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": "1",
        "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__API_AUTH__JWT_SECRET": "celery-test-secret-0123456789abcdef",
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "p16_worker_host.hostname",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW_CONN_PROPENSITY_POSTGRES": json.dumps({"conn_type": "postgres", "extra": {"url": world.url}}),
        "PROPENSITY_SCORE_DB_POOL": "default_pool",
    }
    procs: list[subprocess.Popen] = []
    logs = tmp_path / "logs"
    logs.mkdir()
    try:
        migrate = subprocess.Popen([str(BIN / "airflow"), "db", "migrate"], env=env, stdout=(logs / "migrate.log").open(
            "w"), stderr=subprocess.STDOUT)
        # 2. meanwhile the reference: an in-process dag.test() of the same date
        monkeypatch.setenv("AIRFLOW_CONN_PROPENSITY_POSTGRES", json.dumps({"conn_type": "postgres",
                                                                          "extra": {"url": world.url}}))
        monkeypatch.setenv("PROPENSITY_SCORE_DB_POOL", "default_pool")
        ref_run = score_active_pairs_dag.test(run_conf={"score_date": SCORE_DATE, "buckets": BUCKETS, "rollback_redis": False, "skip_freshness_check": True})
        assert ref_run.state == "success"
        reference = _scores(world.url)
        assert reference
        assert migrate.wait(300) == 0, _tails(logs)
        procs.append(subprocess.Popen([str(BIN / "airflow"), "api-server", "--apps", "execution", "--port", str(port),
                                       "--host", "127.0.0.1"], env=env, stdout=(logs / "api.log").open("w"),
                                      stderr=subprocess.STDOUT))
        for name in ("w1", "w2"):
            procs.append(subprocess.Popen(
                [str(BIN / "airflow"), "celery", "worker", "-H", f"{name}@%h", "-c", "1", "--without-gossip",
                 "--without-mingle"], env={**env, "P16_WORKER": name}, stdout=(logs / f"{name}.log").open("w"),
                stderr=subprocess.STDOUT))
        _wait_http(port, procs, logs)
        _wait_workers(logs)
        # 3. the same date through the CeleryExecutor
        proc = subprocess.run([sys.executable, "-c", RUN, SCORE_DATE, str(BUCKETS)], check=False, env=env, capture_output=True,
                              text=True, timeout=600, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr[-3000:] + _tails(logs)
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        assert result["state"] == "success", result
        meta = make_engine(meta_url)
        try:
            with meta.connect() as c:
                tis = c.execute(sa.text("select task_id, map_index, hostname, pid, state from task_instance "
                                        "where run_id = :r"), {"r": result["run_id"]}).all()
        finally:
            meta.dispose()
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        drop_database(server_pg_url, meta_name)

    buckets = [t for t in tis if t.task_id == "score_bucket"]
    assert len(buckets) == BUCKETS and all(t.state == "success" for t in buckets), tis
    assert {t.hostname for t in buckets} == {"w1", "w2"}, [(t.map_index, t.hostname, t.pid) for t in buckets]
    assert len({t.pid for t in buckets}) == BUCKETS
    celery_scores = _scores(world.url)
    assert celery_scores.keys() == reference.keys()
    for key, (p, contrib) in reference.items():
        assert celery_scores[key][0] == pytest.approx(p, abs=1e-12)
        assert celery_scores[key][1] == pytest.approx(contrib, abs=1e-6)


def _tails(logs: Path) -> str:
    return "".join(f"\n--- {f.name}\n" + f.read_text()[-1500:] for f in sorted(logs.glob("*.log")))


def _wait_http(port: int, procs: list[subprocess.Popen], logs: Path, timeout_s: float = 300) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise AssertionError("a service exited early" + _tails(logs))
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/execution/health", timeout=2)
            return
        except urllib.error.HTTPError:
            return  # any HTTP answer: uvicorn serves the execution API
        except OSError:
            time.sleep(0.5)
    raise AssertionError("api-server did not answer" + _tails(logs))


def _wait_workers(logs: Path, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all("ready." in (logs / f"{n}.log").read_text() for n in ("w1", "w2")):
            return
        time.sleep(0.5)
    raise AssertionError("celery workers did not become ready" + _tails(logs))
