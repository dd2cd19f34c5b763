"""Issue 15 (5): a PostgreSQL restart in the middle of a scoring run, on a PRIVATE server (pgserver's initdb/pg_ctl in
a temporary directory; the machine's shared server is never touched).

A real ``propensity score`` process is held at one point of its run while the test restarts the server under it:
inside the COPY of its second bucket (``pg_ctl restart -m fast``: backends terminated) or inside its swap
transaction after the detach/rename/attach and before COMMIT (``-m immediate``: no shutdown checkpoint, crash
recovery on start). Each time: the process exits 1 with one line, the old partition of the date is byte-identical,
the run is marked failed, its stage holds only whole committed buckets, and a re-run succeeds.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from ml.db import create_database, make_engine
from tests.integration.test_score import fetch, wengine, world  # noqa: F401 - shared session fixtures

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class PrivatePg:
    url: str
    pgdata: Path
    user: str | None

    def restart(self, mode: str) -> None:
        from pgserver.postgres_server import pg_ctl

        pg_ctl(["-w", "restart", "-m", mode], pgdata=self.pgdata, user=self.user)


@pytest.fixture(scope="module")
def private_pg(world):  # noqa: ANN001, ANN201, F811
    """A private PostgreSQL with the scoring world's events and its champion model (the registry row copied; the
    artifacts are the world's files)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver
        from pgserver.postgres_server import pg_ctl

    from ml.dev.generate import GeneratorConfig, generate_events
    from ml.ingest import load_events_frame

    root = Path(tempfile.mkdtemp(prefix="pgr", dir="/tmp"))  # short: the server's unix socket lives in its pgdata
    pgdata = root / "pg"
    user = "pgserver" if os.geteuid() == 0 else None  # pgserver runs postgres as this user when we are root
    server = pgserver.get_server(pgdata, cleanup_mode=None)
    try:
        url = create_database(server.get_uri("postgres"), "restart_mid_score")
        eng = make_engine(url)
        load_events_frame(eng, generate_events(GeneratorConfig(days=42, n_users=250, n_products=150, seed=3)),
                          file_id=1)  # the world's events (same config)
        src = make_engine(world.url)
        with src.connect() as c:
            row = c.execute(sa.text("select to_jsonb(m) from ml.model_versions as m where version = :v"),
                            {"v": world.version}).scalar_one()
        src.dispose()
        with eng.begin() as c:
            c.execute(sa.text("insert into ml.model_versions select * from"
                              " jsonb_populate_record(null::ml.model_versions, cast(:r as jsonb))"),
                      {"r": json.dumps(row)})
        eng.dispose()
        yield PrivatePg(url, pgdata, user)
    finally:
        pg_ctl(["-w", "stop", "-m", "immediate"], pgdata=pgdata, user=user)
        shutil.rmtree(root, ignore_errors=True)


# The scoring process: pauses at the given point (touches `ready`), goes on when the test touches `done`.
_SCRIPT = """
import pathlib, sys, time
import ml.score.batch as B
import ml.score.finalize as F

ready, done, phase = pathlib.Path({ready!r}), pathlib.Path({done!r}), {phase!r}

def pause():
    ready.touch()
    deadline = time.monotonic() + 120
    while not done.exists():
        if time.monotonic() > deadline:
            sys.exit("the test never restarted PostgreSQL")
        time.sleep(0.05)

if phase == "copy":
    real_block, calls = B.score_block, []
    def score_block(*a, **k):
        out = real_block(*a, **k)
        calls.append(1)
        if len(calls) == 2:  # bucket 1's first block: its COPY is open; bucket 0 has committed
            pause()
        return out
    B.score_block = score_block
else:
    real_swap = F._swap_partition
    def swap(*a, **k):
        out = real_swap(*a, **k)  # old partition detached and dropped, stage renamed and attached: not committed
        pause()
        return out
    F._swap_partition = swap

from ml.cli import main
main(["score", "--score-date", {day!r}, "--buckets", "2", "--no-drift"])
"""


@pytest.mark.parametrize(("phase", "mode", "day"), [("copy", "fast", dt.date(2019, 11, 4)),
                                                    ("swap", "immediate", dt.date(2019, 11, 3))])
def test_postgres_restart_mid_score_keeps_the_old_partition(private_pg: PrivatePg, world, tmp_path: Path,  # noqa: F811
                                                            phase: str, mode: str, day: dt.date) -> None:
    from ml.score import run_scoring

    settings = world.settings().model_copy(update={"postgres_url": private_pg.url})
    engine = make_engine(private_pg.url)
    try:
        first = run_scoring(engine, settings, day, n_buckets=2)
        before = fetch(engine, day)
        assert len(before) == first.scored_pairs > 0

        ready, done = tmp_path / "ready", tmp_path / "done"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PROPENSITY_POSTGRES_URL": private_pg.url,
               "PROPENSITY_STATE_DIR": str(world.state_dir), "PROPENSITY_DEBUG": ""}
        proc = subprocess.Popen(
            [sys.executable, "-c", _SCRIPT.format(ready=str(ready), done=str(done), phase=phase, day=day.isoformat())],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 240
            while not ready.exists():
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
                time.sleep(0.05)
            private_pg.restart(mode)
            done.touch()
            _, err = proc.communicate(timeout=240)
        finally:
            if proc.poll() is None:
                proc.kill()
        errors = [x for x in err.splitlines() if x.startswith("error")]  # the rest of stderr is the log
        assert proc.returncode == 1 and len(errors) == 1 and "Traceback" not in err, err[-3000:]
        assert f"score_date {day}" in errors[0], errors[0]

        assert fetch(engine, day) == before  # byte-identical, every column and the run_id
        with engine.connect() as c:
            run = c.execute(sa.text("select run_id, status, stage_table, planned_pairs from scoring.runs"
                                    " where score_date = :d order by started_at desc limit 1"), {"d": day}).one()
            done_pairs = c.execute(sa.text("select coalesce(sum(scored_pairs), 0) from scoring.run_batches"
                                           " where run_id = :r and status = 'succeeded'"), {"r": run.run_id}).scalar()
            stage_rows = c.execute(sa.text(f'select count(*) from scoring."{run.stage_table}"')).scalar()
            dupes = c.execute(sa.text("select count(*) - count(distinct (user_id, product_id)) from scoring.scores"
                                      " where score_date = :d"), {"d": day}).scalar()
        assert run.run_id != first.run_id and run.status == "failed"
        assert dupes == 0
        if phase == "copy":  # bucket 0 committed whole; nothing of the interrupted bucket 1
            assert 0 < stage_rows == done_pairs < run.planned_pairs
        else:  # the swap rolled back: the stage is whole and still a stage
            assert stage_rows == done_pairs == run.planned_pairs

        again = run_scoring(engine, settings, day, n_buckets=2)
        rows = fetch(engine, day)
        assert [r[:-1] for r in rows] == [r[:-1] for r in before] and {r[-1] for r in rows} == {again.run_id}
    finally:
        engine.dispose()
