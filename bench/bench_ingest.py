"""Benchmark: validate + load throughput of the ingest step, against the previous path and pandas ``to_sql``.

What runs (one machine, one run; each path into its own fresh database, files copied into its own landing folder):

1. ``ingest_files`` end to end on daily REES46 CSV files of generated events: read, structural checks, typed
   parsing, the Great Expectations suite, the validation record, exactly-once checks (checksum and content
   fingerprint), and the load (raw.events + the feature rollups in one transaction per file; docs/ingest.md).
   Reported end to end and per stage (stage times are summed over files; they overlap, because the next files are
   validated in a child process while the previous ones load).
2. The previous path: the same ``ingest_files`` call run by the code of ``--previous-rev`` (default: main before
   issue 17: rollups kept by statement triggers, COPY through raw.events into indexed partitions, one file at a
   time), extracted with ``git archive`` and run in a subprocess against its own migrations; likewise
   ``--threaded-rev`` (main before validation moved to a forked child: validation and load on two threads).
3. The baseline: the same validation, then ``DataFrame.to_sql`` (pandas' default row inserts) on a subset of the
   files (``--baseline-rows``; to_sql on every row would take many minutes), reported as rows/s.
4. Load only (no validation), on the same subset, each into a fresh database: ours (new days: index-free tables
   attached at the end; then the same rows again into the existing days: COPY into indexed partitions + rollup
   upserts), the previous load (partitions created first, COPY through raw.events, rollups by the triggers; also
   twice), to_sql.
5. The content fingerprint (ml.events_io.content_fingerprint) alone on one large table (all files together).

Usage: ``.venv/bin/python bench/bench_ingest.py [--events 2000000] [--days 14] [--baseline-rows 150000]``.
Writes the "ingest" section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


from bench._report import md_table, write_section  # noqa: E402

log = logging.getLogger("bench.ingest")

#: main just before ingest moved to client-side rollups and index-free new days (issue 17 item 3)
PREVIOUS_REV = "3e96940"
#: main just before validation moved to a forked child process (validation and load on two threads of one process)
THREADED_REV = "412f3aa"

# run by the previous code in a subprocess: a fresh database migrated by its own migrations, then ingest_files
_PREVIOUS_RUN = """
import json, sys, time
from pathlib import Path
import ml
from ml.db import create_database, drop_database, make_engine
from ml.ingest import ingest_files
from ml.settings import get_settings
from ml.validate import GxRunner
server, db, state = sys.argv[1], sys.argv[2], Path(sys.argv[3])
url = create_database(server, db)
try:
    s = get_settings().model_copy(update={"postgres_url": url, "state_dir": state, "data_docs_enabled": False,
                                          "row_count_min_history": 10**9})
    engine = make_engine(url)
    GxRunner(None)
    files = sorted(str(p) for p in Path(s.location("landing")).glob("*.csv"))
    t0 = time.perf_counter()
    results = ingest_files(files, s, engine)
    seconds = time.perf_counter() - t0
    engine.dispose()
    print(json.dumps({"module": ml.__file__, "seconds": seconds, "statuses": sorted({r.status for r in results}),
                      "rows": sum(r.rows_loaded for r in results)}))
finally:
    drop_database(server, db)
"""


def _previous_path(rev: str, server: str, files: list[Path], work: Path) -> dict | None:
    """Run ``ingest_files`` of git revision ``rev`` on copies of ``files``; None (with a log line) when the
    revision cannot be extracted (no git, a shallow clone)."""
    src = work / f"previous_{rev}"
    archive = work / f"previous_{rev}.tar"
    try:
        subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", "-o", str(archive), rev, "ml", "sql"],
                       check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as e:
        log.warning("previous path skipped: cannot extract %s (%s)", rev, getattr(e, "stderr", e))
        return None
    src.mkdir()
    with tarfile.open(archive) as tar:
        tar.extractall(src, filter="data")
    state = work / f"previous_state_{rev}"
    landing = state / "landing"
    landing.mkdir(parents=True)
    for p in files:
        shutil.copy(p, landing / p.name)
    env = {**os.environ, "PYTHONPATH": str(src)}
    db = f"bench_ingest_prev_{uuid.uuid4().hex[:8]}"
    out = subprocess.run([sys.executable, "-c", _PREVIOUS_RUN, server, db, str(state)], cwd=src, env=env,
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"previous path failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if not result["module"].startswith(str(src)):
        raise RuntimeError(f"previous path imported {result['module']}, not the extracted {rev}")
    return result


def _load_previous(engine, table, file_id: int) -> None:  # noqa: ANN001
    """The previous load (main before this change): day partitions first, then one binary COPY through raw.events,
    whose statement triggers add the rollups from the written rows (migration 0180)."""
    from ml.events_load import COPY_COLUMNS, encode_events_binary, ensure_partitions, event_days
    from ml.pgcopy import connect

    import pyarrow.compute as pc

    ensure_partitions(engine, event_days(table))
    table = table.take(pc.sort_indices(table, sort_keys=[("user_id", "ascending"), ("event_time", "ascending")]))
    with connect(engine) as conn, conn.transaction():
        with conn.cursor() as cur, cur.copy(f"copy raw.events ({', '.join(COPY_COLUMNS)}) from stdin (format binary)"
                                            ) as copy:
            for chunk in encode_events_binary(table, file_id):
                copy.write(chunk)


def _to_sql(engine, table, file_id: int) -> None:  # noqa: ANN001
    from ml.events_load import ensure_partitions, event_days

    ensure_partitions(engine, event_days(table))
    df = table.to_pandas()
    df["file_id"] = file_id
    df.to_sql("events", engine, schema="raw", if_exists="append", index=False, chunksize=10_000)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=2_000_000, help="Target number of generated events (default 2M).")
    ap.add_argument("--days", type=int, default=14, help="Days generated = daily files ingested (default 14).")
    ap.add_argument("--baseline-rows", type=int, default=150_000,
                    help="Rows (whole files, at least one) for the to_sql baseline and the load-only comparison.")
    ap.add_argument("--previous-rev", default=PREVIOUS_REV,
                    help=f"Git revision whose ingest is the previous path (default {PREVIOUS_REV}); '' to skip.")
    ap.add_argument("--threaded-rev", default=THREADED_REV,
                    help=f"Git revision of the two-thread pipeline, also run on the same files (default {THREADED_REV}); "
                    "'' to skip.")
    ap.add_argument("--seed", type=int, default=7, help="Generator seed.")
    ap.add_argument("--repeat", type=int, default=3,
                    help="End-to-end runs of our path, each into a fresh database; the median is reported (default 3).")
    ap.add_argument("--keep", action="store_true", help="Keep the benchmark databases and files.")
    ap.add_argument("--no-write", action="store_true", help="Print the table; do not update docs/BENCHMARKS.md.")
    args = ap.parse_args()

    import pyarrow as pa
    import sqlalchemy as sa

    from ml.db import create_database, drop_database, make_engine
    from ml.dev.generate import GeneratorConfig, generate_events, write_daily_files
    from ml.dev.services import resolve_services
    from ml.events_io import content_fingerprint
    from ml.events_load import load_events_table
    from ml.ingest import ingest_files
    from ml.observe import setup_logging
    from ml.settings import get_settings
    from ml.validate import EVENT_COLUMNS, GxRunner, validate_bytes

    setup_logging("INFO")
    base = get_settings()
    server = resolve_services(base).postgres_url
    work = Path(tempfile.mkdtemp(prefix="bench_ingest_"))
    databases: list[str] = []

    def fresh_db() -> str:
        name = f"bench_ingest_{uuid.uuid4().hex[:8]}"
        databases.append(name)
        return create_database(server, name)

    def settle() -> None:
        """Before each timed end-to-end run: drop the databases of earlier runs (else autovacuum works through
        their 2M fresh rows during the next run: runs got slower in order, 174k -> 153k -> 147k rows/s) and
        CHECKPOINT (their dirty pages flushed now, not during the next run). Every path starts from the same state."""
        if not args.keep:
            while databases:
                drop_database(server, databases.pop())
        admin = make_engine(server)
        try:
            with admin.connect() as c:
                c.execution_options(isolation_level="AUTOCOMMIT").execute(sa.text("checkpoint"))
        except sa.exc.DBAPIError as e:  # CHECKPOINT needs a superuser or pg_checkpoint
            log.warning("no CHECKPOINT before the run (%s)", str(e).splitlines()[0])
        finally:
            admin.dispose()

    try:
        # about 1.8 events per user-day with the generator's defaults; one rescaling pass hits the target closely
        n_users = max(100, int(args.events / (1.8 * args.days)))
        t0 = time.perf_counter()
        for _ in range(2):
            cfg = GeneratorConfig(days=args.days, n_users=n_users, n_products=max(2_000, n_users // 2), seed=args.seed)
            df = generate_events(cfg)
            if abs(len(df) - args.events) <= 0.03 * args.events:
                break
            n_users = max(100, int(n_users * args.events / max(len(df), 1)))
        files = write_daily_files(df, work / "generated")
        n_events = len(df)
        del df
        log.info("generated %s events in %d files (%.0fs)", f"{n_events:,}", len(files), time.perf_counter() - t0)
        GxRunner(None)  # import Great Expectations once (seconds) before the clock starts: a per-process cost

        # 1. ours, end to end, files taken from landing (archived as they load); --repeat runs, each into a fresh
        # database, the median reported (this VM's wall times differ by 10-20 % between identical runs)
        runs = []
        for i in range(args.repeat):
            settle()
            url = fresh_db()
            s = base.model_copy(update={"postgres_url": url, "state_dir": work / f"ours{i}",
                                        "data_docs_enabled": False, "row_count_min_history": 10**9})
            landing = Path(s.location("landing"))
            landing.mkdir(parents=True)
            for p in files:
                shutil.copy(p, landing / p.name)
            engine = make_engine(url)
            load_before = os.getloadavg()[0]
            t0 = time.perf_counter()
            results = ingest_files([str(landing / p.name) for p in files], s, engine)
            total_s = time.perf_counter() - t0
            engine.dispose()
            bad = [r for r in results if r.status != "loaded"]
            assert not bad, [r.message for r in bad]
            runs.append((total_s, load_before, results))
            log.info("ours, run %d: %.2f s", i + 1, total_s)
        times = sorted(r[0] for r in runs)
        total_s, load_before, results = sorted(runs, key=lambda r: r[0])[len(runs) // 2]
        rows = sum(r.rows_loaded for r in results)
        stages = {k: sum(r.timings.get(k, 0.0) for r in results)
                  for k in ("read", "validate", "prepare", "content", "load")}

        # 2. the previous path, same files
        settle()
        load_prev = os.getloadavg()[0]
        previous = _previous_path(args.previous_rev, server, files, work) if args.previous_rev else None
        if previous is not None:
            assert previous["statuses"] == ["loaded"] and previous["rows"] == rows, previous
        settle()
        load_threaded = os.getloadavg()[0]
        threaded = _previous_path(args.threaded_rev, server, files, work) if args.threaded_rev else None
        if threaded is not None:
            assert threaded["statuses"] == ["loaded"] and threaded["rows"] == rows, threaded

        # 3. + 4. baseline and load only, on a subset of whole files
        subset, n_sub = [], 0
        for p in files:
            subset.append(p)
            n_sub += sum(1 for _ in open(p, "rb")) - 1
            if n_sub >= args.baseline_rows:
                break
        runner = GxRunner(None)
        t0 = time.perf_counter()
        tables = []
        for p in subset:
            report, parsed = validate_bytes(p.read_bytes(), s, file_name=p.name, runner=runner)
            assert report.success
            tables.append(parsed.table.select([*EVENT_COLUMNS, "line_no"]))
        validate_sub_s = time.perf_counter() - t0

        def timed(url: str, fn) -> float:  # noqa: ANN001
            eng = make_engine(url)
            t0 = time.perf_counter()
            for i, t in enumerate(tables):
                fn(eng, t, 10_000 + i)
            eng.dispose()
            return time.perf_counter() - t0

        def ours(e, t, f) -> None:  # noqa: ANN001
            load_events_table(e, t, file_id=f)

        ours_db, previous_db = fresh_db(), fresh_db()
        load = {
            "ours, new days (index-free tables attached at the end, rollups computed client-side)": timed(ours_db, ours),
            "ours, the same rows again into those days (indexed partitions, rollup upserts)": timed(ours_db, ours),
            "previous: partitions first, COPY through raw.events, rollups by the statement triggers":
                timed(previous_db, _load_previous),
            "previous, the same rows again into those days": timed(previous_db, _load_previous),
            "pandas to_sql (baseline; the triggers add the rollups)": timed(fresh_db(), _to_sql),
        }
        to_sql_s = load["pandas to_sql (baseline; the triggers add the rollups)"]

        # 5. the content fingerprint on one large table
        big = pa.concat_tables(
            validate_bytes(p.read_bytes(), s, file_name=p.name, runner=runner)[1].table.select(list(EVENT_COLUMNS))
            for p in files[: max(1, min(len(files), 8))]
        )
        t0 = time.perf_counter()
        content_fingerprint(big)
        fp_s = time.perf_counter() - t0

        to_sql_rps = n_sub / (validate_sub_s + to_sql_s)
        ours_rps = rows / total_s
        table_rows = [
            [f"ingest_files: validate (structure + GX) + exactly-once load (raw.events + rollups); median of "
             f"{len(times)} runs ({', '.join(f'{rows / t:,.0f}' for t in times)} rows/s)", f"{rows:,}", total_s,
             ours_rps, ours_rps / to_sql_rps, f"{load_before:.1f}"],
        ]
        if previous is not None:
            prev_rps = previous["rows"] / previous["seconds"]
            table_rows.append([f"previous path ({args.previous_rev}: main before this change), same files",
                               f"{previous['rows']:,}", previous["seconds"], prev_rps, prev_rps / to_sql_rps,
                               f"{load_prev:.1f}"])
        if threaded is not None:
            thr_rps = threaded["rows"] / threaded["seconds"]
            table_rows.append([f"two-thread pipeline ({args.threaded_rev}: main before the validating child process),"
                               " same files", f"{threaded['rows']:,}", threaded["seconds"], thr_rps,
                               thr_rps / to_sql_rps, f"{load_threaded:.1f}"])
        table_rows += [
            ["baseline: same validation + pandas to_sql (subset)", f"{n_sub:,}", validate_sub_s + to_sql_s, to_sql_rps,
             1.0, ""],
        ]
        stage_rows = [
            ["read + sha256", stages["read"], rows / max(stages["read"], 1e-9)],
            ["parse + GX validation (child process)", stages["validate"], rows / max(stages["validate"], 1e-9)],
            ["sort + content fingerprint (child process)", stages["prepare"], rows / max(stages["prepare"], 1e-9)],
            ["exactly-once by content (fingerprint, overlap count)", stages["content"],
             rows / max(stages["content"], 1e-9)],
            ["record + rollups + load (raw.events + rollups, one transaction)", stages["load"],
             rows / max(stages["load"], 1e-9)],
        ]
        load_rows = [[name, f"{n_sub:,}", sec, n_sub / sec, to_sql_s / sec] for name, sec in load.items()]
        load_end = os.getloadavg()[0]
        body = (
            f"Load average (1 min) when each end-to-end run started is in the table; {load_end:.1f} at the end, on "
            f"{os.cpu_count()} cores. PostgreSQL runs on the same machine, and other jobs shared it during the run, "
            "so read the ratios measured in this run rather than the absolute rows/s.\n\n"
            f"{n_events:,} generated events (seed {args.seed}) in {len(files)} daily REES46 CSV files "
            f"(~{n_events // max(len(files), 1):,} rows each), each path into a fresh database; before each "
            "end-to-end run the earlier runs' databases are dropped and a CHECKPOINT taken (otherwise autovacuum of "
            "the previous run's rows competes with the next run). Data Docs off. The "
            f"to_sql baseline runs on the first {len(subset)} file(s) ({n_sub:,} rows) and is reported as rows/s.\n\n"
            + md_table(["path", "rows", "seconds", "rows/s", "x to_sql", "load avg"], table_rows)
            + "\n\nStages of the median run, summed over files (they overlap: the next files are validated in a child "
            "process while earlier ones load, so they add up to more than the wall time):\n\n"
            + md_table(["stage", "seconds", "rows/s"], stage_rows)
            + "\n\nLoad only (no validation), same subset, each path into a fresh database:\n\n"
            + md_table(["loader", "rows", "seconds", "rows/s", "x to_sql"], load_rows)
            + f"\n\nContent fingerprint (exactly-once by content, `ml.events_io.content_fingerprint`) alone on one "
            f"table of {big.num_rows:,} events: {fp_s:.2f} s ({big.num_rows / fp_s:,.0f} rows/s).\n\n"
            "Where the time goes (profiled with py-spy and cProfile on the client, per-statement timing on the "
            "server; docs/ingest.md, \"Performance\"): a new day is COPYed into index-free tables (events and "
            "rollups) whose indexes are built once, sorted, when they are attached at the end of the file's "
            "transaction, and the rollups are aggregated by Arrow from the table already in memory. Validation "
            "(parsing and the Great Expectations suite: about 0.2 s of fixed work per file, then several pandas "
            "passes per expectation) runs in a forked child process, so it no longer takes turns with the loader on "
            "the interpreter lock: the child validates the next files while this process computes the rollups and "
            "streams the COPY of the previous one."
        )
        print(body)
        if not args.no_write:
            write_section("ingest", "Ingest: validate + load (bench/bench_ingest.py)", body)
    finally:
        if not args.keep:
            for name in databases:
                drop_database(server, name)
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept databases {databases} and files in {work}")


if __name__ == "__main__":
    main()
