"""Benchmark: point-in-time pair features from PostgreSQL (ml.features) at scale.

Builds (or reuses) a database of synthetic REES46 events (ml.generate; default about 21M events over 84 days and
about 1.2M active pairs at the last labelled as_of), then measures, in the same run:

* the feature query for every active pair in one statement (K = 1), COPY-ed into Arrow, then pandas;
* the same rows fetched in K hash buckets (what the nightly scoring tasks do), with and without item statistics
  materialised once per run;
* baselines: the classic ``pandas.read_sql`` (psycopg2 cursor, rows to Python objects) of the same query; and the
  practical limit of a client-side pipeline: COPY of the lookback's raw events to the client (``events out``)
  before any aggregation;
* where the time goes: EXPLAIN (ANALYZE, BUFFERS) of the K = 1 query, summarised per CTE.

Peak memory is the maximum resident set of a fresh worker process per measurement (``ru_maxrss``); PostgreSQL's
own memory is bounded by ``work_mem`` per hash node (setting ``feature_work_mem``) and reported as temp spill.
Writes its section of docs/BENCHMARKS.md. Run ``.venv/bin/python bench/bench_features.py --help``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import logging
import multiprocessing as mp
import re
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402

from bench._report import md_table, write_section  # noqa: E402

log = logging.getLogger("bench.features")
EVENT_COLUMNS = ["event_time", "event_type", "product_id", "category_id", "category_code", "brand", "price", "user_id",
                 "user_session", "file_id", "line_no"]


# --- data ------------------------------------------------------------------------------------------------------------
def load_events(url: str, frame, file_id: int = 1, chunk_rows: int = 1_000_000) -> int:  # noqa: ANN001
    """COPY a REES46 frame into raw.events (partitions made on demand), in CSV chunks built by pyarrow."""
    import numpy as np
    import psycopg
    import pyarrow as pa
    import pyarrow.csv as pacsv

    from ml.db import libpq_url

    days = sorted({d.date() for d in frame["event_time"].dt.floor("D").unique()})
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        for d in days:
            conn.execute("select raw.ensure_event_partition(%s)", (d,))
    total = 0
    with psycopg.connect(libpq_url(url)) as conn, conn.cursor() as cur:
        with cur.copy(f"copy raw.events ({', '.join(EVENT_COLUMNS)}) from stdin (format csv)") as copy:
            for start in range(0, len(frame), chunk_rows):
                part = frame.iloc[start : start + chunk_rows].copy()
                part["file_id"] = file_id
                part["line_no"] = np.arange(start, start + len(part), dtype=np.int64) % 2_000_000_000
                table = pa.Table.from_pandas(part[EVENT_COLUMNS], preserve_index=False)
                buf = io.BytesIO()
                pacsv.write_csv(table, buf, pacsv.WriteOptions(include_header=False))
                copy.write(buf.getvalue())
                total += len(part)
                log.info("loaded %s / %s events", f"{total:,}", f"{len(frame):,}")
        conn.commit()
    return total


def prepare_database(server_url: str, name: str, n_users: int, n_products: int, days: int, reuse: bool) -> str:
    """Create (or reuse) database ``name`` on the server of ``server_url`` with generated events; return its URL."""
    from ml.db import make_engine, migrate
    from ml.generate import GeneratorConfig, generate_events

    admin = make_engine(server_url, isolation_level="AUTOCOMMIT")
    url = sa.engine.make_url(server_url).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as c:
        exists = c.execute(sa.text("select 1 from pg_database where datname = :n"), {"n": name}).first()
        if exists and reuse:
            eng = make_engine(url)
            migrate(eng)
            with eng.connect() as c2:
                n = c2.execute(sa.text("select count(*) from raw.events")).scalar_one()
            eng.dispose()
            if n > 0:
                log.info("reusing %s with %s events", name, f"{n:,}")
                return url
        c.execute(sa.text(f'drop database if exists "{name}"'))  # name comes from argparse, quoted
        c.execute(sa.text(f'create database "{name}"'))
    admin.dispose()
    eng = make_engine(url)
    migrate(eng)
    t = time.perf_counter()
    frame = generate_events(GeneratorConfig(n_users=n_users, n_products=n_products, days=days, seed=7))
    log.info("generated %s events in %.0fs", f"{len(frame):,}", time.perf_counter() - t)
    t = time.perf_counter()
    load_events(url, frame)
    del frame
    with eng.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        c.execute(sa.text("vacuum analyze raw.events"))
    log.info("loaded and analysed in %.0fs", time.perf_counter() - t)
    eng.dispose()
    return url


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=150_000, help="generated users (150k: about 21M events)")
    parser.add_argument("--products", type=int, default=50_000, help="generated products")
    parser.add_argument("--days", type=int, default=84, help="days of events from 2019-10-01")
    parser.add_argument("--database", default="bench_features", help="database created on the server")
    parser.add_argument("--server-url", default=None, help="a libpq URL of the server (default: the embedded one)")
    parser.add_argument("--reuse", action="store_true", help="reuse the database if it already holds events")
    parser.add_argument("--prepare-only", action="store_true", help="build the database and stop")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    from ml.services import resolve_services
    from ml.settings import get_settings

    server = args.server_url or resolve_services(get_settings()).postgres_url
    url = prepare_database(server, args.database, args.users, args.products, args.days, args.reuse)
    if args.prepare_only:
        print(url)
        return


if __name__ == "__main__":
    main()
