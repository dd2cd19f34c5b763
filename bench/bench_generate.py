"""Benchmark the vectorised REES46 generator and its daily-file writer against naive baselines (same run).

Measures:
- generation: ``ml.dev.generate.generate_events`` on a ~10M-event config, events/s (wall and CPU), peak memory;
  baseline: a per-session Python-loop generator of the same funnel (users, sessions, views -> cart -> remove ->
  purchase, uuid4 sessions), run on a subset and extrapolated per event;
- CSV writing: ``write_daily_files`` (Arrow string kernels, one thread per day file) vs ``DataFrame.to_csv`` with
  the REES46 date/price formats on a subset, rows/s; Parquet writing for reference.

Run: ``.venv/bin/python bench/bench_generate.py`` (about 2-4 minutes on 2 cores). ``--users 6800`` gives ~1M events.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import shutil
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._report import md_table, write_section  # noqa: E402
from ml.dev.generate import CATEGORY_TREE, GeneratorConfig, generate_events, write_daily_files  # noqa: E402


def naive_generate(n_sessions: int, n_users: int, n_products: int, seed: int = 0) -> pd.DataFrame:
    """The straightforward generator: one Python loop iteration per session, product visit and event, rows as
    dicts, ``uuid.uuid4()`` per session, ``datetime`` arithmetic per event, then ``pd.DataFrame(rows)``."""
    rng = np.random.default_rng(seed)
    start = datetime(2019, 10, 1, tzinfo=UTC)
    users = rng.integers(510_000_000, 610_000_000, n_users)
    propensity = rng.normal(0, 1, n_users)
    products = rng.integers(1_000_000, 61_000_000, n_products)
    leaf = rng.integers(0, len(CATEGORY_TREE), n_products)
    prices = rng.lognormal(4.5, 0.7, n_products).round(2)
    rows: list[dict[str, object]] = []
    for _ in range(n_sessions):
        u = int(rng.integers(n_users))
        t = start + timedelta(days=int(rng.integers(84)), hours=int(rng.integers(24)), seconds=int(rng.integers(3600)))
        session = str(uuid.uuid4())
        buys = []
        for _ in range(1 + rng.poisson(1.5)):
            p = int(rng.integers(n_products))
            lf = CATEGORY_TREE[leaf[p]]
            base = {"product_id": int(products[p]), "category_id": 2053013552326770905 + int(leaf[p]),
                    "category_code": lf.code, "brand": lf.brands[0], "price": float(prices[p]),
                    "user_id": int(users[u]), "user_session": session}
            for _ in range(1 + rng.poisson(1.2)):
                t += timedelta(seconds=max(1, int(rng.lognormal(3.5, 0.9))))
                rows.append({"event_time": t, "event_type": "view", **base})
            if rng.random() < 1 / (1 + math.exp(3.2 - 0.9 * propensity[u])):
                t += timedelta(seconds=max(1, int(rng.lognormal(3.5, 0.9))))
                rows.append({"event_time": t, "event_type": "cart", **base})
                if rng.random() < 0.3:
                    t += timedelta(seconds=max(1, int(rng.lognormal(3.5, 0.9))))
                    rows.append({"event_time": t, "event_type": "remove_from_cart", **base})
                elif rng.random() < 0.5:
                    buys.append(base)
        for base in buys:
            t += timedelta(seconds=max(1, int(rng.lognormal(3.5, 0.9))))
            rows.append({"event_time": t, "event_type": "purchase", **base})
    df = pd.DataFrame(rows)
    return df.sort_values("event_time", kind="stable").reset_index(drop=True)


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=68_000, help="users of the big config (68k x 84 days ~ 10M events)")
    ap.add_argument("--products", type=int, default=50_000, help="products of the big config")
    ap.add_argument("--days", type=int, default=84, help="days of the big config")
    ap.add_argument("--baseline-sessions", type=int, default=20_000, help="sessions for the naive loop baseline")
    ap.add_argument("--baseline-csv-rows", type=int, default=1_000_000, help="rows for the pandas to_csv baseline")
    ap.add_argument("--no-write", action="store_true", help="skip the file-writing measurements")
    ap.add_argument("--no-report", action="store_true", help="print only; do not update docs/BENCHMARKS.md")
    args = ap.parse_args()

    load_start = os.getloadavg()[0]

    # --- generation: vectorised vs naive loop ------------------------------------------------------------------
    t, c = time.perf_counter(), time.process_time()
    naive = naive_generate(args.baseline_sessions, n_users=5_000, n_products=args.products)
    naive_wall, naive_cpu = time.perf_counter() - t, time.process_time() - c
    naive_rate = len(naive) / naive_wall
    print(f"naive loop: {len(naive):,} events in {naive_wall:.2f}s ({naive_rate:,.0f} events/s)")

    cfg = GeneratorConfig(days=args.days, n_users=args.users, n_products=args.products, seed=42)
    rss0 = peak_rss_gib()
    t, c = time.perf_counter(), time.process_time()
    df = generate_events(cfg)
    gen_wall, gen_cpu = time.perf_counter() - t, time.process_time() - c
    gen_rss = peak_rss_gib()
    n = len(df)
    print(f"vectorised: {n:,} events in {gen_wall:.2f}s wall / {gen_cpu:.2f}s CPU ({n / gen_wall:,.0f} events/s); "
          f"peak RSS {gen_rss:.2f} GiB")
    frame_mib = df.memory_usage(deep=False).sum() / 2**20
    naive_cpu_rate = len(naive) / naive_cpu
    rows = [
        ["naive per-session Python loop (baseline)", f"{len(naive):,}", naive_wall, naive_cpu, naive_rate,
         naive_cpu_rate, 1.0, 1.0],
        ["generate_events (numpy, vectorised)", f"{n:,}", gen_wall, gen_cpu, n / gen_wall, n / gen_cpu,
         (n / gen_wall) / naive_rate, (n / gen_cpu) / naive_cpu_rate],
    ]
    naive_10m = 10_000_000 / naive_rate

    # --- writing: Arrow-built daily CSV vs pandas to_csv -------------------------------------------------------
    wrows: list[list[object]] = []
    if not args.no_write:
        out = Path(tempfile.mkdtemp(prefix="bench_generate_"))
        try:
            # the baseline gets plain string columns (pandas writes categoricals of 1M+ uuids far slower still)
            sub = df.iloc[: args.baseline_csv_rows].copy()
            for col in ("event_type", "category_code", "brand", "user_session"):
                sub[col] = sub[col].astype("str")
            t, c = time.perf_counter(), time.process_time()
            sub.to_csv(out / "pandas.csv", index=False, date_format="%Y-%m-%d %H:%M:%S UTC", float_format="%.2f")
            pd_wall, pd_cpu = time.perf_counter() - t, time.process_time() - c
            pd_rate = len(sub) / pd_wall
            pd_cpu_rate = len(sub) / pd_cpu
            wrows.append(["DataFrame.to_csv, REES46 formats, str columns (baseline)", f"{len(sub):,}", pd_wall,
                          pd_cpu, pd_rate, 1.0, 1.0, (out / "pandas.csv").stat().st_size / 2**20])
            for workers in (1, 2):
                d = out / f"csv{workers}"
                t, c = time.perf_counter(), time.process_time()
                paths = write_daily_files(df, d, formats=("csv",), workers=workers)
                w_wall, w_cpu = time.perf_counter() - t, time.process_time() - c
                size = sum(p.stat().st_size for p in paths) / 2**20
                wrows.append([f"write_daily_files csv, {workers} thread(s), {len(paths)} files", f"{n:,}", w_wall,
                              w_cpu, n / w_wall, (n / w_wall) / pd_rate, (n / w_cpu) / pd_cpu_rate, size])
                print(f"csv x{workers}: {w_wall:.2f}s wall / {w_cpu:.2f}s CPU, {size:,.0f} MiB")
            d = out / "pq"
            t, c = time.perf_counter(), time.process_time()
            paths = write_daily_files(df, d, formats=("parquet",), workers=2)
            w_wall, w_cpu = time.perf_counter() - t, time.process_time() - c
            size = sum(p.stat().st_size for p in paths) / 2**20
            wrows.append(["write_daily_files parquet (zstd), 2 threads", f"{n:,}", w_wall, w_cpu, n / w_wall,
                          (n / w_wall) / pd_rate, (n / w_cpu) / pd_cpu_rate, size])
            print(f"parquet: {w_wall:.2f}s wall / {w_cpu:.2f}s CPU, {size:,.0f} MiB")
        finally:
            shutil.rmtree(out, ignore_errors=True)

    vc = df["event_type"].value_counts(normalize=True)
    body = (
        f"Config: {cfg.days} days, {cfg.n_users:,} users, {cfg.n_products:,} products, seed {cfg.seed} "
        f"-> {n:,} events ({', '.join(f'{k} {v:.1%}' for k, v in vc.items())}). Frame in memory: "
        f"{frame_mib:,.0f} MiB (string columns are categoricals); peak RSS after generation {gen_rss:.2f} GiB "
        f"(before: {rss0:.2f} GiB). Load average (1 min) at start / end: {load_start:.1f} / {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} cores: with other jobs running, wall times stretch and the CPU columns are the "
        "better comparison.\n\n"
        "**Generation** (events/s on wall time; CPU seconds are less sensitive to other jobs on the machine):\n\n"
        + md_table(["generator", "events", "wall s", "CPU s", "events/s", "events/CPU-s", "speed-up (wall)",
                    "speed-up (CPU)"], rows)
        + f"\n\nAt the naive loop's rate, {10_000_000:,} events would take {naive_10m:,.0f} s; the vectorised "
        f"generator makes {n:,} in {gen_wall:.1f} s. The baseline loop models less (no revisits, follow-up "
        "sessions or null calibration), so the speed-up is a lower bound.\n"
    )
    if wrows:
        body += (
            "\n**Writing daily files** (generation excluded):\n\n"
            + md_table(["writer", "rows", "wall s", "CPU s", "rows/s", "speed-up vs to_csv (wall)", "(CPU)", "MiB"],
                       wrows)
            + "\nCPU seconds include Arrow's worker threads; the 2-thread row shows what a second core buys.\n"
            + "\n"
        )
    print(body)
    if not args.no_report:
        print(f"wrote {write_section('generate', 'Synthetic REES46 generator', body)}")


if __name__ == "__main__":
    main()
