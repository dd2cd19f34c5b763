"""Issue 15 (4): every bad command gives ONE line on stderr naming what is wrong and a non-zero exit, never a
traceback (``--debug`` shows it). Runs the real ``python -m ml`` against the test Postgres and Redis."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def run(settings, *args: str, debug: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PROPENSITY_POSTGRES_URL": settings.postgres_url,
           "PROPENSITY_REDIS_URL": settings.redis_url, "PROPENSITY_STATE_DIR": str(settings.state_dir),
           "PROPENSITY_REDIS_PREFIX": settings.redis_prefix}
    argv = [sys.executable, "-m", "ml", *(["--debug"] if debug else []), *args]
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)


def one_line(p: subprocess.CompletedProcess) -> str:
    lines = [line for line in p.stderr.splitlines() if line.strip() and " INFO " not in line]
    assert p.returncode != 0, p.stdout
    assert "Traceback" not in p.stderr, p.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["score", "--score-date", "2019-13-45"], "--score-date '2019-13-45'"),
        (["score", "--score-date", "2019-11-01", "--bogus"], "No such option: --bogus"),
        (["publish", "--score-date", "yesterday"], "--score-date"),
        (["features", "--as-of", "2019-11-01", "--bucket", "3"], "--bucket and --buckets together"),
        (["features", "--as-of", "2019-11-01", "--bucket", "3", "--buckets", "2"], "--bucket must be in 0..1"),
        (["requeue"], "Missing argument"),
        (["promote"], "give either VERSION or --previous"),
        (["generate", "--format", "xml"], "--format must be csv, parquet or both"),
        # 0, negative and out-of-range numbers are refused before anything starts (a bad --port started a whole
        # Airflow; --workers 0 a server; --limit -3 reached PostgreSQL's LIMIT)
        (["models", "--limit", "0"], "'--limit': Input should be greater than or equal to 1"),
        (["models", "--limit", "-3"], "'--limit': Input should be greater than or equal to 1"),
        (["monitor", "alerts", "--limit", "-1"], "'--limit': Input should be greater than or equal to 1"),
        (["train", "--n-trials", "-1"], "'--n-trials': Input should be greater than or equal to 0"),
        (["train", "--timeout", "0"], "'--timeout': Input should be greater than or equal to 1"),
        (["publish", "--score-date", "2019-11-01", "--top-n", "0"], "'--top-n'"),
        (["publish", "--score-date", "2019-11-01", "--min-probability", "2"], "'--min-probability'"),
        (["publish", "--score-date", "2019-11-01", "--min-probability", "nan"], "'--min-probability'"),
        (["rollback-scores", "--to-version", "0"], "'--to-version'"),
        (["demo", "--port", "70000"], "'--port': Input should be less than or equal to 65535"),
        (["demo", "--api-port", "0"], "'--api-port'"),
        (["airflow", "up", "--port", "0"], "'--port'"),
        (["api", "--port", "-1"], "'--port'"),
        (["api", "--workers", "0"], "'--workers'"),
        (["backfill-fingerprints", "--limit", "0"], "'--limit'"),
        (["score", "--score-date", "2019-11-01", "--buckets", "abc"], "'--buckets'"),
    ],
)
def test_usage_errors_are_one_line_exit_2(settings, args: list[str], expect: str) -> None:
    p = run(settings, *args)
    assert expect in one_line(p) and p.returncode == 2, p.stderr


def test_pipeline_refusals_are_one_line_exit_1(settings, tmp_path: Path) -> None:
    (tmp_path / "x.bin").write_bytes(b"\x00\x01")
    outside = tmp_path / "events_2019-10-01.csv"
    outside.write_text("event_time\n")
    cases = [
        (["ingest", "/nonexistent/landing/events.csv"], "/nonexistent/landing/events.csv: no such file or folder"),
        (["ingest", str(tmp_path / "x.bin")], "unsupported file type"),
        (["requeue", str(outside)], "not a file in the quarantine location"),
        (["requeue", "never-quarantined.csv"], "no such quarantined file"),
        (["score", "--score-date", "2019-11-01", "--buckets", "0"], "bucket count must be in 1..512"),
        (["score", "--score-date", "2019-11-01", "--model-version", "no-such-model"], "no-such-model"),
        (["promote", "no-such-model"], "no-such-model"),
        (["rollback-scores"], "nothing is published"),
    ]
    for args, expect in cases:
        p = run(settings, *args)
        assert expect in one_line(p) and p.returncode == 1, (args, p.stderr)
    assert outside.exists()  # requeue never moves a file from outside quarantine
    p = run(settings, "ingest", "/nonexistent/landing/events.csv", debug=True)
    assert p.returncode == 1 and "Traceback" in p.stderr and "no such file or folder" in p.stderr


def test_ingest_of_a_folder_without_event_files_says_where_it_looked(settings, tmp_path: Path) -> None:
    """Nothing to do is not an error (exit 0, cron-friendly), but the line names the folder and what counts as an
    event file, so a wrong path or a wrong extension is visible."""
    folder = tmp_path / "drop"
    folder.mkdir()
    (folder / "events.txt").write_text("not an event file\n")
    (folder / "_events_2019-10-01.csv").write_text("event_time\n")  # an upload in progress
    p = run(settings, "ingest", str(folder))
    assert p.returncode == 0, p.stderr
    assert f"no files to ingest in {folder}" in p.stdout and ".parquet" in p.stdout and "'_'" in p.stdout
