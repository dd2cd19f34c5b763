"""Issue 15 (5): regression tests for what held, as real processes on real services: concurrent ingest of one
landing folder, SIGKILL mid-score, a publisher killed while holding the publish lock."""

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
