"""Benchmark: validate + load throughput of the ingest step, against pandas ``to_sql`` after the same validation.

What runs (all in one process, one fresh database, same machine, same run):

1. ``ingest_files`` on daily REES46 CSV files of ~5M generated events: read, structural checks, typed parsing,
   the Great Expectations suite, the validation record, and the exactly-once load (numpy-built binary COPY in one
   transaction with the file record). Reported end to end and per stage.
2. The baseline: the same validation, then ``DataFrame.to_sql`` (pandas' default row inserts) on a subset of the
   files (``--baseline-rows``; to_sql on all 5M rows would take minutes), reported as rows/s.
3. Load-only practical limits on the same subset: our binary COPY, psycopg 3 ``write_row`` binary COPY from Python
   objects, CSV COPY built by Arrow's CSV writer, and ``to_sql``.

Usage: ``.venv/bin/python bench/bench_ingest.py [--events 5000000] [--days 28] [--baseline-rows 200000]``.
Writes the "ingest" section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


from bench._report import md_table, write_section  # noqa: E402

log = logging.getLogger("bench.ingest")


def _copy_write_row(engine, table, file_id: int) -> None:  # noqa: ANN001
    """psycopg 3 binary COPY from Python objects (one write_row per event): the usual hand-written loader."""
    from ml.ingest import COPY_COLUMNS
    from ml.pgcopy import connect as _psycopg_connect

    cols = {name: table.column(name).to_pylist() for name in table.column_names}
    sessions = [uuid.UUID(s) if s else None for s in cols["user_session"]]
    with _psycopg_connect(engine) as conn, conn.cursor() as cur:
        with cur.copy(f"copy raw.events ({', '.join(COPY_COLUMNS)}) from stdin (format binary)") as copy:
            copy.set_types(["timestamptz", "int8", "int8", "float8", "int8", "int8", "int4", "uuid", "text", "text",
                            "text"])
            for row in zip(cols["event_time"], cols["product_id"], cols["category_id"], cols["price"], cols["user_id"],
                           [file_id] * len(sessions), cols["line_no"], sessions, cols["event_type"],
                           cols["category_code"], cols["brand"], strict=True):
                copy.write_row(row)
        conn.commit()


def _copy_csv(engine, table, file_id: int) -> None:  # noqa: ANN001
    """CSV COPY with the CSV text built by Arrow's (C++) CSV writer."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    from ml.ingest import COPY_COLUMNS
    from ml.pgcopy import connect as _psycopg_connect

    t = table.append_column("file_id", pa.array([file_id] * table.num_rows, pa.int64())).select(list(COPY_COLUMNS))
    buf = io.BytesIO()
    pcsv.write_csv(t, buf, pcsv.WriteOptions(include_header=False))
    with _psycopg_connect(engine) as conn, conn.cursor() as cur:
        with cur.copy(f"copy raw.events ({', '.join(COPY_COLUMNS)}) from stdin (format csv)") as copy:
            copy.write(buf.getvalue())
        conn.commit()


def _copy_unindexed(engine, table, file_id: int) -> None:  # noqa: ANN001
    """Our binary COPY into an index-free copy of raw.events: what the client and the heap alone can do."""
    from ml.ingest import COPY_COLUMNS, encode_events_binary
    from ml.pgcopy import connect as _psycopg_connect

    with _psycopg_connect(engine) as conn:
        conn.execute("create table if not exists public.bench_events_noidx (like raw.events)")
        sql = f"copy public.bench_events_noidx ({', '.join(COPY_COLUMNS)}) from stdin (format binary)"
        with conn.cursor() as cur, cur.copy(sql) as cp:
            for chunk in encode_events_binary(table, file_id):
                cp.write(chunk)
        conn.commit()


def _to_sql(engine, table, file_id: int) -> None:  # noqa: ANN001
    df = table.to_pandas()
    df["file_id"] = file_id
    df.to_sql("events", engine, schema="raw", if_exists="append", index=False, chunksize=10_000)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=5_000_000, help="Target number of generated events (default 5M).")
    ap.add_argument("--days", type=int, default=28, help="Days generated = daily files ingested (default 28).")
    ap.add_argument("--baseline-rows", type=int, default=200_000,
                    help="Rows (whole files, at least one) for the to_sql baseline and the load-only comparison.")
    ap.add_argument("--data-docs", action="store_true", help="Also build GX Data Docs per file (about 1 s/file).")
    ap.add_argument("--seed", type=int, default=7, help="Generator seed.")
    ap.add_argument("--keep", action="store_true", help="Keep the benchmark database and files.")
    ap.add_argument("--no-write", action="store_true", help="Print the table; do not update docs/BENCHMARKS.md.")
    args = ap.parse_args()

    from ml.db import make_engine
    from ml.dev.generate import GeneratorConfig, generate_events, write_daily_files
    from ml.ingest import (
        ensure_partitions,
        event_days,
        ingest_files,
        load_events_table,
    )
    from ml.observe import setup_logging
    from ml.dev.services import resolve_services
    from ml.settings import get_settings
    from ml.validate import EVENT_COLUMNS, GxRunner, validate_bytes

    setup_logging("INFO")
    base = get_settings()
    server = resolve_services(base).postgres_url
    from ml.db import create_database, drop_database

    db_name = f"bench_ingest_{uuid.uuid4().hex[:8]}"
    url = create_database(server, db_name)
    work = Path(tempfile.mkdtemp(prefix="bench_ingest_"))
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
        landing = work / "landing"
        files = write_daily_files(df, landing)
        n_events = len(df)
        del df
        log.info("generated %s events in %d files (%.0fs)", f"{n_events:,}", len(files), time.perf_counter() - t0)
        s = base.model_copy(update={
            "postgres_url": url, "state_dir": work, "data_docs_enabled": args.data_docs,
            "row_count_min_history": 10**9,
        })
        engine = make_engine(url)
        GxRunner(None)  # import Great Expectations once (seconds) before the clock starts: a per-process cost

        # 1. the pipeline: ingest_files end to end
        t0 = time.perf_counter()
        results = ingest_files([str(p) for p in files], s, engine)
        total_s = time.perf_counter() - t0
        bad = [r for r in results if r.status != "loaded"]
        assert not bad, [r.message for r in bad]
        rows = sum(r.rows_loaded for r in results)
        stages = {k: sum(r.timings.get(k, 0.0) for r in results) for k in ("read", "validate", "load", "move")}

        # 2. baseline + load-only on a subset of whole files (copies taken from the archive)
        archive = Path(s.location("archive"))
        subset, n_sub = [], 0
        for p in files:
            subset.append(archive / p.name)
            n_sub += sum(1 for _ in open(archive / p.name, "rb")) - 1
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
        for t in tables:
            ensure_partitions(engine, event_days(t))

        def timed(fn) -> float:  # noqa: ANN001
            t0 = time.perf_counter()
            for i, t in enumerate(tables):
                fn(engine, t, 10_000 + i)
            return time.perf_counter() - t0

        def without_rollups(e, t, f) -> None:  # noqa: ANN001
            """The load as on main before issue 17: the rollup triggers off (bench database only)."""
            with e.begin() as c:
                c.exec_driver_sql("alter table raw.events disable trigger events_rollups_insert")
            try:
                load_events_table(e, t, file_id=f)
            finally:
                with e.begin() as c:
                    c.exec_driver_sql("alter table raw.events enable trigger events_rollups_insert")

        load = {
            "binary COPY, numpy-built (ours, + rollups in the same transaction)":
                timed(lambda e, t, f: load_events_table(e, t, file_id=f)),
            "the same without the rollup triggers (the previous path, main before issue 17)": timed(without_rollups),
            "the same into raw.events' shape without indexes (limit)": timed(_copy_unindexed),
            "binary COPY, psycopg 3 write_row": timed(_copy_write_row),
            "CSV COPY, CSV built by Arrow": timed(_copy_csv),
            "pandas to_sql (baseline)": timed(_to_sql),
        }

        to_sql_rps = n_sub / (validate_sub_s + load["pandas to_sql (baseline)"])
        ours_rps = rows / total_s
        table_rows = [
            ["ingest_files: validate (structure + GX) + binary COPY, exactly-once", f"{rows:,}", total_s, ours_rps,
             ours_rps / to_sql_rps],
            ["  of which: read + sha256", f"{rows:,}", stages["read"], rows / max(stages["read"], 1e-9), ""],
            ["  of which: parse + GX validation + record", f"{rows:,}", stages["validate"],
             rows / max(stages["validate"], 1e-9), ""],
            ["  of which: partitions + COPY + file record (one transaction)", f"{rows:,}", stages["load"],
             rows / max(stages["load"], 1e-9), ""],
            ["baseline: same validation + pandas to_sql (subset)", f"{n_sub:,}",
             validate_sub_s + load["pandas to_sql (baseline)"], to_sql_rps, 1.0],
        ]
        load_rows = [[name, f"{n_sub:,}", sec, n_sub / sec, (n_sub / sec) / (n_sub / load["pandas to_sql (baseline)"])]
                     for name, sec in load.items()]
        load_avg = os.getloadavg()[0]
        body = (
            f"Load average at the end of the run: {load_avg:.1f} on {os.cpu_count()} cores (PostgreSQL runs on the "
            "same machine; other jobs shared it, so read the ratios rather than the absolute rows/s).\n\n"
            f"{n_events:,} generated events (seed {args.seed}) in {len(files)} daily REES46 CSV files "
            f"(~{n_events // max(len(files), 1):,} rows each), loaded into a fresh database with raw.events' two "
            f"indexes in place. Data Docs {'on' if args.data_docs else 'off'} (about 1 s per file when on). "
            f"The to_sql baseline runs on the first {len(subset)} file(s) ({n_sub:,} rows) and is reported as "
            "rows/s: on all rows it would take several minutes.\n\n"
            + md_table(["path", "rows", "seconds", "rows/s", "x to_sql"], table_rows)
            + "\n\nLoad only (no validation), same subset, into raw.events:\n\n"
            + md_table(["loader", "rows", "seconds", "rows/s", "x to_sql"], load_rows)
            + "\n\nThe rollups of issue 17 (docs/features.md) are aggregated by statement triggers from the rows "
            "each COPY writes, in the same transaction: the first two load rows show what that costs per loaded "
            "row against the previous path, measured in the same run."
            + "\n\nReading the numbers: on the loading side the server's maintenance of raw.events' two B-tree "
            "indexes ((user_id, event_time), (product_id, event_time)) is the limit, not the client: the same COPY "
            "into an index-free table is several times faster. Rows are sent sorted by (user_id, event_time) so one "
            "of the two indexes is filled in order. On the validating side, GX's per-expectation pandas passes and "
            "a fixed cost per file (about 0.5-1 s: a fresh ephemeral context, ~25 expectations) dominate. The "
            "per-row Python loaders (psycopg write_row, to_sql) are bound by building Python objects."
        )
        print(body)
        if not args.no_write:
            write_section("ingest", "Ingest: validate + load (bench/bench_ingest.py)", body)
        engine.dispose()
    finally:
        if not args.keep:
            drop_database(server, db_name)
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept database {url} and files in {work}")


if __name__ == "__main__":
    main()
