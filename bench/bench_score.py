"""Benchmark: the nightly scoring path (features -> predict -> exact SHAP -> insights -> COPY) against the seed-style
baseline (shap.TreeExplainer per member + per-row Python insights + DataFrame.to_sql), on the same model, in the same
run, on the same machine.

What it does:

1. makes a private database on the configured (or embedded) PostgreSQL, generates REES46-style events
   (``ml.dev.generate``), loads them, and trains one ensemble of realistic size (CatBoost depth 6, XGBoost depth 6 and
   LightGBM 31 leaves with ``--trees`` trees each, a LightGBM random forest with half as many) on weekly snapshots;
2. runs the whole pipeline once on that data (``ml.score.run_scoring``: features SQL, predict, SHAP, insights, COPY,
   Great Expectations checks, partition swap) to measure the features stage on real SQL;
3. builds ``--pairs`` feature rows by resampling the real feature rows (unique keys) and times the nightly path
   *given features*, block by block exactly as a batch task runs it, into a stage table;
4. times the baseline on ``--baseline-rows`` of the same rows (reported as rows/s) and each member's explainer
   (ml.explain vs shap.TreeExplainer) on the same rows;
5. writes its section of docs/BENCHMARKS.md.

Peak memory is the process's peak RSS (VmHWM) over each measured step, reset before it (/proc/self/clear_refs).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import logging
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._report import md_table, peak_mib, reset_peak, write_section  # noqa: E402

log = logging.getLogger("bench_score")
MEMBERS = ("catboost", "xgboost", "lightgbm", "random_forest")


# --- memory -----------------------------------------------------------------------------------------------------------


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Step:
    """Times a step and records its peak RSS above the RSS at its start."""

    def __init__(self, name: str, rows: int, out: dict[str, dict[str, float]]) -> None:
        self.name, self.rows, self.out = name, rows, out

    def __enter__(self) -> Step:
        gc.collect()
        reset_peak()
        self.base = rss_mib()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        seconds = time.perf_counter() - self.t0
        self.out[self.name] = {"rows": self.rows, "seconds": seconds, "rows_per_s": self.rows / seconds,
                               "peak_mib": peak_mib(), "extra_mib": max(0.0, peak_mib() - self.base)}
        log.info("%s: %s rows in %.2fs (%s rows/s), peak RSS %.0f MiB", self.name, f"{self.rows:,}", seconds,
                 f"{self.rows / seconds:,.0f}", peak_mib())


# --- setup ------------------------------------------------------------------------------------------------------------
def train_model(engine: Any, settings: Any, as_ofs: list[dt.datetime], trees: int) -> tuple[Any, dict[str, Any]]:
    """Fixed-size members (no early stopping) on weekly snapshots; blend + Platt on the last snapshot."""
    import pandas as pd

    from ml import features as F
    from ml.ensemble import Ensemble, as_matrix, fit_blend, member_kind, nan_fill_values
    from ml.tune import default_params

    frames = [F.read_pair_features_arrow(engine, t, settings, with_labels=True).to_pandas().assign(as_of=t)
              for t in as_ofs]
    train = pd.concat(frames[:-1], ignore_index=True)
    valid = frames[-1]
    names = list(F.FEATURE_COLUMNS)
    fill = nan_fill_values(names)
    Xt, Xv = as_matrix(train, names, fill), as_matrix(valid, names, fill)
    yt, yv = train["label"].to_numpy(float), valid["label"].to_numpy(float)
    models, info = {}, {}
    for m in MEMBERS:
        t0 = time.perf_counter()
        params = default_params(m)
        size = trees if m != "random_forest" else max(1, trees // 2)
        for key in ("iterations", "n_estimators"):
            if key in params:
                params[key] = size
        kind = member_kind(m)
        data = kind.prepare(Xt, yt, np.ones(len(yt)), Xv, yv, np.ones(len(yv)), names)
        fitted = kind.fit(params, data, feature_names=names, seed=7, threads=0, early_stopping_rounds=None)
        models[m] = fitted.model
        info[m] = {"trees": kind.n_trees(fitted.model), "fit_s": time.perf_counter() - t0}
        log.info("trained %s: %d trees in %.1fs", m, info[m]["trees"], info[m]["fit_s"])
    margins = np.column_stack([member_kind(m).predict_margin(models[m], Xv, 0) for m in MEMBERS])
    blend = fit_blend(margins, yv)
    weights = {m: float(w) for m, w in zip(MEMBERS, blend.weights)}
    if min(weights.values()) <= 0:  # every member must take part, or the benchmark would skip one
        weights = {m: 1.0 / len(MEMBERS) for m in MEMBERS}
        from ml.ensemble import fit_platt

        a, b = fit_platt(margins.mean(axis=1), yv)
    else:
        a, b = blend.a, blend.b
    ens = Ensemble(models, weights, (a, b), names, threshold=0.5, nan_fill=fill, threads=0)
    return ens, {"members": info, "train_rows": len(yt), "valid_rows": len(yv), "positives": int(yt.sum())}


def register(engine: Any, settings: Any, ens: Any) -> str:
    from ml import registry

    version = registry.new_version_id()
    uri = registry.artifact_uri(settings, version)
    manifest = registry.save_artifacts(ens, uri)
    registry.register_version(engine, registry.ModelVersion(
        version=version, members=list(ens.members), params={}, weights=ens.weights,
        calibration={"a": ens.calibration[0], "b": ens.calibration[1]}, features=list(ens.feature_names),
        training_window={"nan_fill": ens.nan_fill}, data_fingerprint="bench", library_versions=manifest.get(
            "library_versions", {}), metrics={"ensemble": {}}, artifact_uri=uri))
    registry.promote_version(engine, version, reason="benchmark")
    return version


def resample(frame: Any, names: list[str], n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n rows drawn with replacement from the real feature rows; unique synthetic (user_id, product_id) keys."""
    rng = np.random.default_rng(seed)
    X = frame[names].to_numpy(dtype=np.float64, na_value=np.nan)
    Xn = np.ascontiguousarray(X[rng.integers(0, len(X), n)])
    users = 1_000_000_000 + np.arange(n, dtype=np.int64) // 8
    products = 1_000 + np.arange(n, dtype=np.int64) % 8 + 10 * (np.arange(n, dtype=np.int64) // 8 % 997)
    return users, products, Xn


# --- the new path (given features) ----------------------------------------------------------------------------------------
def run_new_path(engine: Any, settings: Any, ens: Any, users: np.ndarray, products: np.ndarray, X: np.ndarray,
                 day: dt.date, version: str) -> tuple[dict[str, float], float, float, int]:
    """score_block + encode_score_rows + binary COPY, block by block, into a stage table. Returns (seconds per
    stage, wall seconds, peak RSS MiB, native fallback rows)."""
    import sqlalchemy as sa
    from psycopg.copy import QueuedLibpqWriter

    from ml.pgcopy import COPY_HEADER, COPY_TRAILER, connect
    from ml.score import SCORE_COLUMNS, encode_score_rows, score_block

    with engine.begin() as c:
        c.execute(sa.text("drop table if exists scoring.bench_stage"))
        c.execute(sa.text("create table scoring.bench_stage (like scoring.scores including defaults"
                          " including constraints including indexes)"))  # logged, with its PK: as a real stage
    timings: dict[str, float] = {}
    block = settings.score_block_rows
    run_id = f"{day:%Y%m%d}_{'0' * 12}"
    gc.collect()
    reset_peak()
    t0 = time.perf_counter()
    with connect(engine) as conn:
        with conn.cursor() as cur, cur.copy(f"copy scoring.bench_stage ({', '.join(SCORE_COLUMNS)})"
                                            " from stdin (format binary)", writer=QueuedLibpqWriter(cur)) as cp:
            cp.write(COPY_HEADER)
            for start in range(0, len(X), block):
                sl = slice(start, start + block)
                scored = score_block(ens, users[sl], products[sl], X[sl], settings, timings)
                t = time.perf_counter()
                payload = encode_score_rows(scored, day, version, run_id)
                t1 = time.perf_counter()
                cp.write(payload)
                t2 = time.perf_counter()
                timings["encode"] = timings.get("encode", 0.0) + t1 - t
                timings["copy"] = timings.get("copy", 0.0) + t2 - t1
            cp.write(COPY_TRAILER)
            t = time.perf_counter()
        timings["copy"] = timings.get("copy", 0.0) + time.perf_counter() - t
    wall = time.perf_counter() - t0
    peak = peak_mib()
    with engine.connect() as c:
        n = c.execute(sa.text("select count(*) from scoring.bench_stage")).scalar_one()
    if n != len(X):
        raise RuntimeError(f"stage holds {n} rows, expected {len(X)}")
    return timings, wall, peak, int(timings.pop("native_fallback_rows", 0))


# --- the baseline ---------------------------------------------------------------------------------------------------------
def baseline_explain(ens: Any, X: np.ndarray, out: dict[str, dict[str, float]]) -> tuple[np.ndarray, np.ndarray]:
    """shap.TreeExplainer per member (the library's default, tree_path_dependent), blended in logit space."""
    import shap

    arr = ens.matrix(X)
    a, b = ens.calibration
    contrib = np.zeros(arr.shape)
    base = b
    for m in ens.active_members():
        with Step(f"baseline shap {m}", len(arr), out):
            explainer = shap.TreeExplainer(ens.members[m])
            sv = explainer.shap_values(arr)
            sv = np.asarray(sv[1] if isinstance(sv, list) else sv, dtype=np.float64)
            if sv.ndim == 3:
                sv = sv[:, :, -1]
            ev = np.asarray(explainer.expected_value, dtype=np.float64).reshape(-1)[-1]
        scale = _margin_scale(m, ens.members[m])
        contrib += a * ens.weights[m] * scale * sv
        base += a * ens.weights[m] * scale * float(ev)
    return contrib, np.full(len(arr), base)


def _margin_scale(member: str, model: Any) -> float:
    """The ensemble's scale of a member's raw tree sum (1, or 1/trees for the LightGBM random forest)."""
    from ml.ensemble import member_kind

    kind = member_kind(member)
    return float(kind.margin_scale(model)) if hasattr(kind, "margin_scale") else 1.0


def baseline_insights(ens: Any, X: np.ndarray, phi: np.ndarray, p: np.ndarray, k: int, bands: dict[str, float]) -> list[dict]:
    """Seed style: one Python loop per row (sorted contributions, dicts, json), and a fixed message per tier."""
    names = ens.feature_names
    fixed = {"hot": "Customers like you often buy this", "warm": "You might like this",
             "cool": "Popular in this category", "cold": "Recommended for you"}
    ordered = sorted(bands.items(), key=lambda kv: -kv[1])
    rows = []
    for i in range(len(X)):
        order = sorted(range(len(names)), key=lambda j: -abs(phi[i, j]))[:k]
        top = [{"feature": names[j], "value": None if np.isnan(X[i, j]) else float(X[i, j]), "shap": float(phi[i, j])}
               for j in order]
        tier = next((name for name, lo in ordered if p[i] >= lo), "cold")
        rows.append({"tier": tier, "reason_codes": [], "reason_texts": [fixed[tier]], "top_contributions": json.dumps(top),
                     "contributions": [float(v) for v in phi[i]]})
    return rows


def baseline_write(engine: Any, users: np.ndarray, products: np.ndarray, p: np.ndarray, base: np.ndarray,
                   rows: list[dict], day: dt.date, version: str) -> None:
    import pandas as pd
    import sqlalchemy as sa
    from sqlalchemy.dialects.postgresql import ARRAY, JSONB, REAL, TEXT

    with engine.begin() as c:
        c.execute(sa.text("drop table if exists scoring.bench_baseline"))
        c.execute(sa.text("create unlogged table scoring.bench_baseline (like scoring.scores including defaults"
                          " including constraints including indexes)"))
    df = pd.DataFrame({
        "score_date": day, "user_id": users, "product_id": products, "probability": p, "model_version": version,
        "run_id": "baseline", "tier": [r["tier"] for r in rows], "reason_codes": [r["reason_codes"] for r in rows],
        "reason_texts": [r["reason_texts"] for r in rows],
        "top_contributions": [json.loads(r["top_contributions"]) for r in rows], "base_value": base,
        "contributions": [r["contributions"] for r in rows],
    })
    df.to_sql("bench_baseline", engine, schema="scoring", if_exists="append", index=False, chunksize=1000,
              dtype={"reason_codes": ARRAY(TEXT), "reason_texts": ARRAY(TEXT), "top_contributions": JSONB,
                     "contributions": ARRAY(REAL)})


# --- main -------------------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--pairs", type=int, default=1_000_000, help="pairs scored on the new path (given features)")
    ap.add_argument("--baseline-rows", type=int, default=2_000, help="rows for the baseline (rows/s are reported)")
    ap.add_argument("--explainer-rows", type=int, default=50_000, help="rows per member for ml.explain alone")
    ap.add_argument("--users", type=int, default=3_500, help="generated users (sets the real feature rows)")
    ap.add_argument("--products", type=int, default=2_000, help="generated products")
    ap.add_argument("--days", type=int, default=63, help="generated days from 2019-10-01")
    ap.add_argument("--trees", type=int, default=300, help="trees per boosted member (the random forest gets half)")
    ap.add_argument("--block-rows", type=int, default=65_536, help="rows per block (settings.score_block_rows)")
    ap.add_argument("--verify-fraction", type=float, default=0.05,
                    help="score_verify_fraction of the second, sampled-verification run of the new path")
    ap.add_argument("--postgres-url", default=None, help="PostgreSQL server URL (default: settings / embedded)")
    ap.add_argument("--keep", action="store_true", help="keep the benchmark database")
    ap.add_argument("--no-doc", action="store_true", help="do not write docs/BENCHMARKS.md")
    args = ap.parse_args(argv)

    from ml.observe import setup_logging

    setup_logging("INFO")
    logging.getLogger("bench_score").setLevel("INFO")

    from ml import features as F
    from ml.db import make_engine
    from ml.dev.generate import GeneratorConfig, generate_events
    from ml.ingest import load_events_frame
    from ml.score import load_model, run_scoring
    from ml.dev.services import resolve_services
    from ml.settings import get_settings

    base_settings = get_settings()
    server = args.postgres_url or resolve_services(base_settings).postgres_url
    from ml.db import create_database, drop_database

    db_name = f"bench_score_{uuid.uuid4().hex[:8]}"
    url = create_database(server, db_name)
    state = Path(base_settings.state_dir) / "bench-score"
    settings = get_settings(postgres_url=url, state_dir=state, score_block_rows=args.block_rows)
    engine = make_engine(url)
    results: dict[str, dict[str, float]] = {}
    try:
        start = dt.date(2019, 10, 1)
        t = time.perf_counter()
        events = generate_events(GeneratorConfig(start=start, days=args.days, n_users=args.users,
                                                 n_products=args.products, seed=11))
        load_events_frame(engine, events, file_id=1)
        n_events = len(events)
        del events
        log.info("events: %s generated and loaded in %.1fs", f"{n_events:,}", time.perf_counter() - t)
        last = start + dt.timedelta(days=args.days)
        as_ofs = [dt.datetime.combine(last - dt.timedelta(days=7 * w + 8), dt.time(), dt.UTC) for w in (4, 3, 2, 1)]
        ens, train_info = train_model(engine, settings, as_ofs, args.trees)
        version = register(engine, settings, ens)
        day = last - dt.timedelta(days=1)

        # (1) the whole pipeline on real SQL features (features, predict, SHAP, insights, COPY, checks, swap)
        summary = run_scoring(engine, settings, day, n_buckets=2)
        ens = load_model(engine, settings, version)  # the registry's copy, as a batch task loads it
        real_pairs = summary.scored_pairs
        results["features (SQL, real data)"] = {"rows": real_pairs, "seconds": summary.timings["features"],
                                                "rows_per_s": real_pairs / summary.timings["features"],
                                                "peak_mib": float("nan"), "extra_mib": float("nan")}

        # (2) the nightly path given features, on --pairs rows
        frame = F.build_pair_features(engine, dt.datetime.combine(day, dt.time(), dt.UTC), settings)
        users, products, X = resample(frame, ens.feature_names, args.pairs, seed=5)
        ens.explain(X[:1024])  # explainer tables built once per task (as in a batch task), outside the timing
        timings, wall, peak, fallback = run_new_path(engine, settings, ens, users, products, X, day, version)
        fast_settings = settings.model_copy(update={"score_verify_fraction": args.verify_fraction})
        timings_s, wall_s, peak_s, fallback_s = run_new_path(engine, fast_settings, ens, users, products, X, day,
                                                             version)
        native_members = sorted(getattr(ens, "_native_only", set()))  # members whose fast explainer was refused
        for stage in ("predict", "explain", "insights", "encode", "copy"):
            results[f"new {stage}"] = {"rows": args.pairs, "seconds": timings[stage],
                                       "rows_per_s": args.pairs / timings[stage], "peak_mib": float("nan"),
                                       "extra_mib": float("nan")}

        # (3) the baseline on a subset of the same rows
        nb = min(args.baseline_rows, args.pairs)
        Xb, ub, pb_ = X[:nb], users[:nb], products[:nb]
        with Step("baseline predict", nb, results):
            zb = ens.predict_logit(Xb)
        pb = 1.0 / (1.0 + np.exp(-zb))
        phib, baseb = baseline_explain(ens, Xb, results)
        resid_b = float(np.max(np.abs(phib.sum(1) + baseb - zb)))
        with Step("baseline insights", nb, results):
            rows = baseline_insights(ens, Xb, phib, pb, settings.top_k_contributions, settings.tier_bands)
        with Step("baseline to_sql", nb, results):
            baseline_write(engine, ub, pb_, pb, baseb, rows, day, version)

        # (4) each member's explainer: ml.explain vs shap.TreeExplainer on the same rows
        from ml import explain as fast
        from ml.ensemble import member_kind

        members = []
        arr = ens.matrix(X[: args.explainer_rows])
        for m in ens.active_members():
            gc.collect()
            reset_peak()
            before = rss_mib()
            t = time.perf_counter()
            ex = fast.TreeExplainer.from_model(ens.members[m])
            build = time.perf_counter() - t
            t = time.perf_counter()
            phi_f = ex.shap_values(arr)
            fast_s = time.perf_counter() - t
            fast_peak = peak_mib() - before
            st = ex.stats()
            margin = member_kind(m).predict_margin(ens.members[m], arr, 0)
            scale = _margin_scale(m, ens.members[m])
            resid_f = float(np.max(np.abs(scale * (phi_f.sum(1) + ex.expected_value) - margin)))
            shap_rps = results[f"baseline shap {m}"]["rows_per_s"]
            members.append([m, st["n_trees"], f"{len(arr) / fast_s:,.0f}", f"{shap_rps:,.0f}",
                            f"{len(arr) / fast_s / shap_rps:,.0f}x", f"{build:.2f}",
                            f"{st['total_bytes'] / 2**20:,.1f}", f"{fast_peak:,.0f}", f"{resid_f:.1e}"])
    finally:
        engine.dispose()
        if not args.keep:
            import shutil

            drop_database(server, db_name)
            shutil.rmtree(state, ignore_errors=True)  # the benchmark's model artifacts

    base_shap = sum(results[f"baseline shap {m}"]["seconds"] for m in ens.active_members())
    base_stage = {"predict": results["baseline predict"]["seconds"], "explain": base_shap,
                  "insights": results["baseline insights"]["seconds"], "write": results["baseline to_sql"]["seconds"]}
    base_rps = {k: nb / v for k, v in base_stage.items()}
    base_total = sum(base_stage.values())
    stage_rows = [
        ["features (SQL, real data)", f"{results['features (SQL, real data)']['rows_per_s']:,.0f}", "same SQL",
         "-", f"{real_pairs:,} real pairs, 2 buckets"],
        ["predict (4 members)", f"{args.pairs / timings['predict']:,.0f}", f"{base_rps['predict']:,.0f}", "1x",
         "the same call (the libraries' own predict) on both paths; the difference is batch size and noise"],
        ["exact SHAP (4 members)", f"{args.pairs / timings['explain']:,.0f}", f"{base_rps['explain']:,.0f}",
         f"{(args.pairs / timings['explain']) / base_rps['explain']:,.0f}x",
         f"ml.explain vs shap.TreeExplainer; rows recomputed natively: {fallback:,}; members explained natively "
         f"(fast explainer refused by the ensemble's check): {', '.join(native_members) or 'none'}"],
        ["insights (tiers, reasons, top-k)", f"{args.pairs / timings['insights']:,.0f}",
         f"{base_rps['insights']:,.0f}", f"{(args.pairs / timings['insights']) / base_rps['insights']:,.0f}x",
         "baseline: per-row Python, fixed messages"],
        ["write (encode + binary COPY)", f"{args.pairs / (timings['encode'] + timings['copy']):,.0f}",
         f"{base_rps['write']:,.0f}",
         f"{(args.pairs / (timings['encode'] + timings['copy'])) / base_rps['write']:,.0f}x",
         f"encode {args.pairs / timings['encode']:,.0f}/s, COPY {args.pairs / timings['copy']:,.0f}/s; "
         "baseline DataFrame.to_sql"],
        ["**whole path given features**", f"**{args.pairs / wall:,.0f}**", f"**{nb / base_total:,.1f}**",
         f"**{(args.pairs / wall) / (nb / base_total):,.0f}x**",
         f"{args.pairs:,} pairs in **{wall:,.1f} s** wall (goal <= 45 s), peak RSS {peak:,.0f} MiB; every row "
         "also predicted by the libraries (score_verify_fraction = 1, the default)"],
        [f"**whole path, score_verify_fraction = {args.verify_fraction:g}**", f"**{args.pairs / wall_s:,.0f}**",
         f"**{nb / base_total:,.1f}**", f"**{(args.pairs / wall_s) / (nb / base_total):,.0f}x**",
         f"{args.pairs:,} pairs in **{wall_s:,.1f} s** wall, peak RSS {peak_s:,.0f} MiB; probability = "
         f"sigmoid(base + sum of exact contributions), library predict on a {args.verify_fraction:.0%} sample "
         f"(predict {timings_s['predict']:,.1f} s, explain {timings_s['explain']:,.1f} s); "
         f"rows recomputed natively: {fallback_s:,}"],
    ]
    body = [
        f"Model: CatBoost/XGBoost/LightGBM with {args.trees} trees each (depth 6 / depth 6 / 31 leaves) and a "
        f"LightGBM random forest with {args.trees // 2}; trained on {train_info['train_rows']:,} snapshot rows of "
        f"{n_events:,} generated events ({args.users:,} users, {args.days} days). Weights "
        + ", ".join(f"{m} {w:.2f}" for m, w in ens.weights.items()) + ".",
        "",
        f"New path: {args.pairs:,} pairs resampled from the {real_pairs:,} real feature rows of the score date, scored "
        f"in blocks of {args.block_rows:,} rows exactly as a batch task does (`ml.score.score_block` + "
        "`encode_score_rows` + psycopg 3 binary COPY into a stage table). Baseline: the same model on the first "
        f"{nb:,} of those rows (reported as rows/s): native predict, `shap.TreeExplainer` per member (blended in "
        "logit space), a per-row Python loop for tiers/top-k/fixed messages, `DataFrame.to_sql` (chunks of 1,000).",
        "",
        md_table(["stage", "new rows/s", "baseline rows/s", "speed-up", "notes"], stage_rows),
        "",
        "Per-member explainers on the same rows (ml.explain on "
        f"{len(arr):,} rows, shap.TreeExplainer on {nb:,}; 2 threads; memory = compiled tables, and peak RSS growth "
        "while explaining):",
        "",
        md_table(["member", "trees", "ml.explain rows/s", "shap rows/s", "speed-up", "build s", "tables MiB",
                  "peak +MiB", "max additivity error"], members),
        "",
        f"Baseline additivity (shap, blended) max error {resid_b:.1e}; new path max error is checked per block "
        f"(<= {settings.score_additivity_tolerance:g}). End-to-end `run_scoring` on the real data (features SQL, "
        f"checks, swap included): {summary.scored_pairs:,} pairs in {summary.wall_seconds:,.1f} s.",
    ]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    body.append("")
    body.append(f"Machine load average (1/5/15 min) at the end of the run: {load} (other jobs share these 2 cores; "
                "compare ratios). Run: `.venv/bin/python bench/bench_score.py` (`--help` for sizes).")
    text = "\n".join(body)
    print(text)
    if not args.no_doc:
        path = write_section("score", "Nightly scoring: features -> predict -> SHAP -> insights -> COPY", text)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
