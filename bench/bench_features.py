"""Benchmark: point-in-time pair features from PostgreSQL (ml.features) at scale.

Builds (or, with --reuse, reuses) a database of synthetic REES46 events (ml.dev.generate; the defaults give about 22M
events over 84 days and about 1.4M active pairs at the last labelled as_of), then measures in the same run:

* ``item statistics``: the product/category/brand aggregate over every user's lookback events, materialised once
  per as_of (ml.features.prepare_item_stats);
* ``K buckets``: the features of each hash bucket of users (what each nightly scoring task runs), COPY-ed to Arrow
  and converted to pandas, over the materialised item statistics;
* ``full table``: build_pair_features(bucket=None), the default for training snapshots (the same K buckets plus
  the item statistics, concatenated into one DataFrame);
* baseline ``one statement``: the same full table as ONE SQL statement (feature_buckets = 1);
* baseline ``pandas.read_sql``: bucket 0 through a psycopg2 cursor into pandas instead of COPY -> Arrow;
* floor ``raw events out``: COPY of bucket 0's lookback events to Arrow, the least a client-side (pandas) feature
  pipeline would have to move before computing anything;
* index: bucket 0 with and without an expression index on ml.user_hash32(user_id) (interleaved runs);
* where the time goes: EXPLAIN (ANALYZE, FORMAT JSON) of bucket 0 and of the item statistics, summed per CTE.

Peak memory is this process's peak RSS (VmHWM, reset before each step through /proc/self/clear_refs); PostgreSQL's
side is bounded by work_mem per hash/sort node (setting ``feature_work_mem``) and reported as temp-file spill.
The first run generates and loads the data (about 8 minutes on 2 cores); later runs with --reuse skip that.
Writes its section of docs/BENCHMARKS.md (--no-doc: print only).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402

from bench._report import md_table, peak_mib, reset_peak, write_section  # noqa: E402

log = logging.getLogger("bench.features")


# --- memory and spill ------------------------------------------------------------------------------------------------


def temp_bytes(engine: sa.Engine) -> int:
    with engine.connect() as c:
        return int(c.execute(sa.text(
            "select coalesce(temp_bytes, 0) from pg_stat_database where datname = current_database()")).scalar_one())


class Step:
    """Time one step; record seconds, peak RSS (MiB) and PostgreSQL temp-file bytes written."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def __enter__(self) -> Step:
        import gc

        gc.collect()
        reset_peak()
        self.temp0 = temp_bytes(self.engine)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.t0
        self.peak = peak_mib()
        time.sleep(0.6)  # cumulative statistics are flushed at most once a second
        self.spill_mib = (temp_bytes(self.engine) - self.temp0) / 2**20


# --- data ------------------------------------------------------------------------------------------------------------
def prepare_database(server_url: str, name: str, n_users: int, n_products: int, days: int, reuse: bool) -> str:
    """Create (or reuse) database ``name`` on the server of ``server_url`` with generated events; return its URL."""
    from ml.db import make_engine, migrate
    from ml.dev.generate import GeneratorConfig, generate_events
    from ml.ingest import load_events_frame

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
                log.info("reusing database %s with %s events", name, f"{n:,}")
                admin.dispose()
                return url
        quoted = '"' + name.replace('"', '""') + '"'
        c.execute(sa.text(f"drop database if exists {quoted} with (force)"))
        c.execute(sa.text(f"create database {quoted}"))
    admin.dispose()
    eng = make_engine(url)
    migrate(eng)
    t = time.perf_counter()
    frame = generate_events(GeneratorConfig(n_users=n_users, n_products=n_products, days=days, seed=7))
    log.info("generated %s events in %.0fs", f"{len(frame):,}", time.perf_counter() - t)
    t = time.perf_counter()
    for start in range(0, len(frame), 2_000_000):
        load_events_frame(eng, frame.iloc[start : start + 2_000_000], file_id=1, line_start=start + 1)
        log.info("loaded %s / %s events", f"{min(start + 2_000_000, len(frame)):,}", f"{len(frame):,}")
    del frame
    with eng.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        c.execute(sa.text("vacuum analyze raw.events"))
    log.info("loaded and analysed in %.0fs", time.perf_counter() - t)
    eng.dispose()
    return url


# --- measurements ----------------------------------------------------------------------------------------------------
def read_sql_baseline(engine: sa.Engine, as_of: dt.datetime, settings: Any, key: str, k: int, n: int) -> int:
    """pandas.read_sql of the same bucket query through a psycopg2 cursor (the usual client path)."""
    import pandas as pd

    from ml import features as F

    window = F.FeatureWindow.at(as_of, settings)
    params = F._pair_params(window, k, n, False, 1.0, settings.seed)
    params["item_stats_key"] = key
    sql = F.render_sql("pair_features", item_stats="item_stats_cached")
    with engine.connect() as conn:
        conn.execute(sa.text("select set_config('work_mem', :w, true), set_config('enable_nestloop', 'off', true)"),
                     {"w": settings.feature_work_mem})
        frame = pd.read_sql_query(sa.text(sql), conn, params=params)
    return len(frame)


def raw_events_out(engine: sa.Engine, as_of: dt.datetime, settings: Any, k: int, n: int) -> tuple[int, float]:
    """COPY bucket k's lookback events (every column a feature needs) to Arrow: rows and Arrow MiB."""
    import io

    import pyarrow.csv as pacsv

    from ml import features as F

    window = F.FeatureWindow.at(as_of, settings)
    sql = (
        "copy (select e.user_id, e.product_id, e.event_type, e.event_time, e.price, e.user_session, e.category_id,"
        " e.brand from raw.events as e where e.event_time >= %(since)s and e.event_time < %(as_of)s"
        " and ml.user_hash32(e.user_id) >= ml.bucket_hash_lo(%(b)s, %(n)s)"
        " and ml.user_hash32(e.user_id) < ml.bucket_hash_lo(%(b)s + 1, %(n)s)) to stdout (format csv)"
    )
    with F._connect(engine) as conn, conn.cursor() as cur:
        with cur.copy(sql, {**window.params(), "b": k, "n": n}) as copy:
            stream = io.BufferedReader(F._CopyStream(iter(copy)), buffer_size=1 << 20)
            table = pacsv.read_csv(stream, read_options=pacsv.ReadOptions(autogenerate_column_names=True))
    return table.num_rows, table.nbytes / 2**20


def _node_label(node: dict[str, Any], owner: str) -> str:
    kind = node.get("Node Type", "?")
    if node.get("Strategy") in ("Hashed", "Sorted", "Mixed") and kind == "Aggregate":
        kind = {"Hashed": "HashAggregate", "Sorted": "GroupAggregate", "Mixed": "MixedAggregate"}[node["Strategy"]]
    detail = node.get("Group Key") or node.get("Sort Key") or node.get("Hash Cond") or node.get("Merge Cond") or ""
    if isinstance(detail, list):
        detail = ", ".join(detail)
    if kind in ("Append", "Parallel Append") or node.get("Relation Name", "").startswith("events_p"):
        detail = "raw.events daily partitions"
    detail = detail.replace("stg_events_1.", "").replace("stg_events.", "")
    if len(detail) > 60:
        detail = detail[:57] + "..."
    where = f"[{owner}] " if owner else ""
    return f"{where}{kind} {detail}".strip()


def explain_breakdown(
    engine: sa.Engine, sql: str, params: dict[str, Any], settings: Any
) -> tuple[list[list[Any]], float]:
    """EXPLAIN (ANALYZE, FORMAT JSON) of ``sql``: exclusive wall milliseconds per plan node (node total minus its
    children's; a CTE Scan counts 0 because the CTE's producer is counted where it runs; inside a parallel section
    a node's time is its per-process average), merged by label, top 10. The label names the materialised CTE a
    node runs in ([name]) and its grouping/sort/join keys (single-use CTEs are inlined by the planner and show up
    through their keys). Returns rows [label, ms, share of execution] and the execution time in ms."""
    import psycopg

    from ml import features as F

    with F._connect(engine) as conn:
        cur = psycopg.ClientCursor(conn)
        cur.execute(F._SESSION_SQL, F._session_params(settings))
        query = cur.mogrify(F.to_pyformat(sql), params)
        cur.execute("explain (analyze, buffers, format json) " + query)
        doc = cur.fetchone()[0]
        doc = doc if isinstance(doc, list) else json.loads(doc)
    totals: dict[str, float] = {}

    def wall(node: dict[str, Any], parallel: bool) -> float:
        t = node.get("Actual Total Time", 0.0)
        return t if parallel else t * (node.get("Actual Loops", 1) or 1)

    def walk(node: dict[str, Any], owner: str, parallel: bool) -> None:
        name = node.get("Subplan Name", "")
        if name.startswith("CTE "):
            owner = name[4:]
        inner_parallel = parallel or node.get("Node Type") in ("Gather", "Gather Merge")
        children = node.get("Plans", [])
        child = sum(wall(c, inner_parallel) for c in children if not c.get("Subplan Name", "").startswith("CTE "))
        own = 0.0 if node.get("Node Type") == "CTE Scan" else max(wall(node, parallel) - child, 0.0)
        if node.get("Relation Name", "").startswith("events_p") or node.get("Parent Relationship") == "Member":
            label = _node_label({"Node Type": "Seq Scan", "Relation Name": "events_p"}, owner)
        else:
            label = _node_label(node, owner)
        totals[label] = totals.get(label, 0.0) + own
        for c in children:
            walk(c, owner, inner_parallel)

    walk(doc[0]["Plan"], "", False)
    execution = float(doc[0]["Execution Time"])
    rows = sorted(([k, v, v / max(execution, 1e-9)] for k, v in totals.items()), key=lambda r: -r[1])[:10]
    return rows, execution


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=150_000, help="generated users (150k: about 22M events)")
    parser.add_argument("--products", type=int, default=50_000, help="generated products")
    parser.add_argument("--days", type=int, default=84, help="days of events from 2019-10-01")
    parser.add_argument("--buckets", type=int, default=8, help="hash buckets K (the scoring fan-out)")
    parser.add_argument("--database", default="bench_features", help="database created on the server")
    parser.add_argument("--server-url", default=None, help="libpq URL of the server (default: settings / embedded)")
    parser.add_argument("--reuse", action="store_true", help="reuse the database if it already holds events")
    parser.add_argument("--skip-single", action="store_true", help="skip the one-statement baseline (slowest step)")
    parser.add_argument("--skip-index", action="store_true", help="skip the expression-index experiment")
    parser.add_argument("--prepare-only", action="store_true", help="build the database and stop")
    parser.add_argument("--no-doc", action="store_true", help="print the section instead of writing docs/BENCHMARKS.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("ml.progress").setLevel(logging.WARNING)

    from ml import features as F
    from ml import snapshots as S
    from ml.db import make_engine
    from ml.dev.services import resolve_services
    from ml.settings import get_settings

    base = get_settings()
    server = args.server_url or resolve_services(base).postgres_url
    url = prepare_database(server, args.database, args.users, args.products, args.days, args.reuse)
    if args.prepare_only:
        print(url)
        return
    engine = make_engine(url)
    settings = get_settings(postgres_url=url, feature_buckets=args.buckets)
    load_before = os.getloadavg()[0]

    span = S.event_time_range(engine)
    assert span is not None, "no events"
    as_of = S.snapshot_dates(engine, settings)[-1]
    window = F.FeatureWindow.at(as_of, settings)
    with engine.connect() as c:
        n_events = c.execute(sa.text("select count(*) from raw.events")).scalar_one()
        n_lookback = c.execute(sa.text("select count(*) from raw.events where event_time >= :a and event_time < :b"),
                               {"a": window.since, "b": as_of}).scalar_one()
    n_active = F.count_active_pairs(engine, as_of, settings)
    log.info("as_of %s: %s events (%s in the lookback), %s active pairs", as_of, f"{n_events:,}", f"{n_lookback:,}",
             f"{n_active:,}")
    K = args.buckets
    results: dict[str, Any] = {}

    # 1. item statistics, once per as_of
    key = f"bench-{int(time.time())}"
    F.drop_item_stats(engine)
    with Step(engine) as st:
        F.prepare_item_stats(engine, as_of, settings, key)
    results["items"] = st
    log.info("item statistics: %.1fs", st.seconds)

    # 2. each bucket (what a scoring task runs)
    bucket_steps = []
    for k in range(K):
        with Step(engine) as st:
            frame = F.build_pair_features(engine, as_of, settings, bucket=k, n_buckets=K, item_stats_key=key)
        st.rows = len(frame)
        del frame
        bucket_steps.append(st)
        log.info("bucket %d/%d: %s rows in %.1fs", k, K, f"{st.rows:,}", st.seconds)
    results["buckets"] = bucket_steps

    # 3. the full table, default path (K buckets over item statistics computed once)
    with Step(engine) as st:
        frame = F.build_pair_features(engine, as_of, settings)
    st.rows, st.frame_mib = len(frame), frame.memory_usage(deep=True).sum() / 2**20
    del frame
    results["full"] = st
    log.info("full table (K=%d): %s rows in %.1fs", K, f"{st.rows:,}", st.seconds)

    # 4. baseline: one statement for everything
    if not args.skip_single:
        with Step(engine) as st:
            frame = F.build_pair_features(engine, as_of, settings.model_copy(update={"feature_buckets": 1}))
        st.rows = len(frame)
        del frame
        results["single"] = st
        log.info("one statement: %.1fs", st.seconds)

    # 5. transfer baselines on bucket 0
    with Step(engine) as st:
        st.rows = read_sql_baseline(engine, as_of, settings, key, 0, K)
    results["read_sql"] = st
    with Step(engine) as st:
        st.rows, st.arrow_mib = raw_events_out(engine, as_of, settings, 0, K)
    results["raw_out"] = st
    log.info("read_sql bucket 0: %.1fs; raw events out: %.1fs", results["read_sql"].seconds, st.seconds)

    # 6. the expression index on ml.user_hash32(user_id), interleaved with runs without it
    if not args.skip_index:
        timings: dict[str, list[float]] = {"without": [], "with": []}
        t = time.perf_counter()
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            c.execute(sa.text("set maintenance_work_mem = '512MB'"))
            c.execute(sa.text("create index if not exists bench_events_user_hash_idx on raw.events "
                              "(ml.user_hash32(user_id))"))
            c.execute(sa.text("analyze raw.events"))
        index_build = time.perf_counter() - t
        with engine.connect() as c:
            index_mib = c.execute(sa.text(
                "select sum(pg_relation_size(i.indexrelid)) / 1048576.0 from pg_index i join pg_class c "
                "on c.oid = i.indexrelid where c.relname like '%user_hash32%'")).scalar_one()
        try:
            for state in ("with", "without", "with", "without"):
                # "without": the index stays, its use is switched off for the feature query's session (libpq
                # reads PGOPTIONS when the connection opens)
                if state == "without":
                    os.environ["PGOPTIONS"] = "-c enable_bitmapscan=off -c enable_indexscan=off"
                t = time.perf_counter()
                try:
                    F.build_pair_features(engine, as_of, settings, bucket=1, n_buckets=K, item_stats_key=key)
                finally:
                    os.environ.pop("PGOPTIONS", None)
                timings[state].append(time.perf_counter() - t)
        finally:
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
                c.execute(sa.text("drop index if exists raw.bench_events_user_hash_idx"))
        results["index"] = {"build_s": index_build, "mib": float(index_mib or 0), **timings}
        log.info("index: %s", results["index"])

    # 7. where the time goes
    params = F._pair_params(window, 0, K, False, 1.0, settings.seed)
    params["item_stats_key"] = key
    cte_rows, cte_ms = explain_breakdown(
        engine, F.render_sql("pair_features", item_stats="item_stats_cached"), params, settings
    )
    item_rows, item_ms = explain_breakdown(engine, F.render_sql("item_stats"), window.params(), settings)
    F.drop_item_stats(engine, key)
    load_after = os.getloadavg()[0]

    # --- report ------------------------------------------------------------------------------------------------------
    b = results["buckets"]
    per_bucket = [s.seconds for s in b]
    full, items = results["full"], results["items"]
    rows = [
        ["item statistics (once per as_of, every user's events)", f"{items.seconds:.1f}", "-", f"{items.peak:,.0f}",
         f"{items.spill_mib:,.0f}"],
        [f"one bucket of {K} (median; min-max {min(per_bucket):.1f}-{max(per_bucket):.1f} s)",
         f"{statistics.median(per_bucket):.1f}", f"{statistics.median(s.rows for s in b):,.0f}",
         f"{max(s.peak for s in b):,.0f}", f"{max(s.spill_mib for s in b):,.0f}"],
        [f"all {K} buckets + item statistics (a scoring run, serial)", f"{items.seconds + sum(per_bucket):.1f}",
         f"{sum(s.rows for s in b):,}", f"{max(s.peak for s in b):,.0f}", "-"],
        [f"full table, default (build_pair_features, K={K}, one DataFrame)", f"{full.seconds:.1f}", f"{full.rows:,}",
         f"{full.peak:,.0f}", f"{full.spill_mib:,.0f}"],
    ]
    if "single" in results:
        s1 = results["single"]
        rows.append(["baseline: the full table as ONE statement (feature_buckets=1)", f"{s1.seconds:.1f}",
                     f"{s1.rows:,}", f"{s1.peak:,.0f}", f"{s1.spill_mib:,.0f}"])
    rs, ro = results["read_sql"], results["raw_out"]
    b0 = b[0]
    rows += [
        ["bucket 0, COPY -> Arrow -> pandas (ours)", f"{b0.seconds:.1f}", f"{b0.rows:,}", f"{b0.peak:,.0f}", "-"],
        ["baseline: bucket 0 via pandas.read_sql (psycopg2 rows)", f"{rs.seconds:.1f}", f"{rs.rows:,}",
         f"{rs.peak:,.0f}", "-"],
        [f"floor: bucket 0's raw lookback events out (COPY -> Arrow, {ro.arrow_mib:,.0f} MiB)", f"{ro.seconds:.1f}",
         f"{ro.rows:,}", f"{ro.peak:,.0f}", "-"],
    ]
    body = [
        f"Data: {n_events:,} events ({args.users:,} users, {args.products:,} products, {args.days} days; "
        f"{n_lookback:,} in the {settings.lookback_days}-day lookback), as_of {as_of:%Y-%m-%d}, "
        f"**{n_active:,} active pairs** ({settings.active_window_days}-day window). "
        f"work_mem {settings.feature_work_mem}; load average {load_before:.1f} before, {load_after:.1f} after "
        "(other jobs shared the 2 cores: compare rows of this table, not runs on other days).",
        "",
        md_table(["step", "seconds", "rows", "peak RSS MiB (client)", "PG temp spill MiB"], rows),
        "",
    ]
    if "single" in results:
        s1 = results["single"]
        body.append(
            f"Full table: K buckets over item statistics computed once take {full.seconds:.0f} s, the single "
            f"statement {s1.seconds:.0f} s (**{s1.seconds / full.seconds:.2f}x** the bucketed time; "
            f"{s1.spill_mib:,.0f} MiB vs {full.spill_mib:,.0f} MiB spilled to temp files)."
        )
    body.append(
        f"Bucket 0 through COPY -> Arrow -> pandas: {b0.seconds:.1f} s; through pandas.read_sql: {rs.seconds:.1f} s "
        f"({rs.seconds / b0.seconds:.2f}x). Only moving the bucket's raw lookback events to the client takes "
        f"{ro.seconds:.1f} s ({ro.rows:,} rows, {ro.arrow_mib:,.0f} MiB; {ro.seconds / b0.seconds:.2f}x the "
        "whole in-database feature computation), before any client-side aggregation."
    )
    if "index" in results:
        ix = results["index"]
        w, wo = statistics.mean(ix["with"]), statistics.mean(ix["without"])
        body.append(
            f"\nExpression index on ml.user_hash32(user_id) (bucket = hash range, so it serves bucket k as a range "
            f"scan): bucket 1 in {w:.1f} s with it vs {wo:.1f} s without (mean of 2 interleaved runs each; "
            f"{wo / w:.2f}x). It costs {ix['mib']:,.0f} MiB and {ix['build_s']:.0f} s to build, and slows every "
            "load into raw.events; not created by default (see docs/features.md)."
        )
    body += [
        "",
        f"Where the time goes, bucket 0 of {K} (EXPLAIN ANALYZE, {cte_ms / 1000:.1f} s with its timing overhead; "
        "top plan nodes by exclusive time, [materialised CTE]):",
        "",
        md_table(["plan node", "ms", "share"], [[r[0], f"{r[1]:,.0f}", f"{r[2]:.0%}"] for r in cte_rows]),
        "",
        f"Item statistics ({item_ms / 1000:.1f} s under EXPLAIN ANALYZE):",
        "",
        md_table(["plan node", "ms", "share"], [[r[0], f"{r[1]:,.0f}", f"{r[2]:.0%}"] for r in item_rows]),
        "",
        "Partitions: every scan is pruned at plan time to the daily partitions of its window (bounds are bound as "
        f"literals): {settings.lookback_days} of {(span[1].date() - span[0].date()).days + 1} days for the "
        f"lookback, {settings.active_window_days} for the active pairs, {settings.label_horizon_days} for labels.",
    ]
    text = "\n".join(body)
    if args.no_doc:
        print(text)
    else:
        path = write_section("features", "Features: point-in-time pair features in PostgreSQL", text)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
