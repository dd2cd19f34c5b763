"""Benchmark: exact TreeSHAP with ml.explain against each library's own TreeSHAP, member by member.

The benchmark model is the ensemble's shape: 300 trees of depth 6 per member (LightGBM num_leaves=63, XGBoost
max_depth=6, CatBoost depth=6, LightGBM boosting_type="rf") on numeric features with missing values. For each
member, in the same run and on the same rows:

* native TreeSHAP (LightGBM ``pred_contrib``, XGBoost ``pred_contribs``, CatBoost ``ShapValues``) and
  ``shap.TreeExplainer`` (which delegates to the same code) - the baselines;
* ml.explain ``shap_values`` on a large batch and at several batch sizes;
* the largest difference between the two on the baseline rows (the check that both computed the same thing).

Timings alternate baseline and ml.explain runs and keep the best of ``--repeats``; both wall-clock rows/s (all
threads) and rows per CPU-second are reported, because the machine is shared and CPU time is steadier under load.
Results go to the "explain" section of docs/BENCHMARKS.md (``--no-write`` to skip).
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._report import md_table, write_section  # noqa: E402

log = logging.getLogger("bench.explain")
BATCHES = (1, 16, 256, 1024, 4096, 32_768)


def make_data(n: int, f: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Numeric features (some heavy-tailed, some coarse, ~5% NaN) and a nonlinear binary label."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, f))
    X[:, : f // 4] = np.exp(X[:, : f // 4])  # skewed, count-like
    X[:, f // 4 : f // 2] = np.round(X[:, f // 4 : f // 2] * 3)  # coarse, many ties
    X[rng.random(X.shape) < 0.05] = np.nan
    z = np.nan_to_num(X)
    w = rng.normal(size=f) / np.sqrt(f)
    logit = z @ w + np.sin(2 * z[:, -1]) + 0.5 * z[:, -2] * (z[:, -3] > 0) - 0.5 * np.isnan(X[:, -4])
    y = (logit + rng.logistic(size=n) * 0.8 > 0).astype(int)
    return X, y


def fit_members(X: np.ndarray, y: np.ndarray, trees: int, depth: int, threads: int, seed: int) -> dict[str, object]:
    import lightgbm as lgb
    import xgboost as xgb
    from catboost import CatBoostClassifier

    leaves = 2**depth - 1
    members: dict[str, object] = {}
    t0 = time.perf_counter()
    members["LightGBM"] = lgb.LGBMClassifier(
        n_estimators=trees, num_leaves=leaves, max_depth=depth, learning_rate=0.05, min_child_samples=5,
        n_jobs=threads, random_state=seed, verbose=-1,
    ).fit(X, y)  # fmt: skip
    members["XGBoost"] = xgb.XGBClassifier(
        n_estimators=trees, max_depth=depth, learning_rate=0.05, tree_method="hist", n_jobs=threads, random_state=seed
    ).fit(X, y)
    members["CatBoost"] = CatBoostClassifier(
        iterations=trees, depth=depth, learning_rate=0.05, thread_count=threads, random_seed=seed, verbose=0
    ).fit(X, y)
    members["LightGBM rf"] = lgb.LGBMClassifier(
        boosting_type="rf", n_estimators=trees, num_leaves=leaves, max_depth=depth, bagging_freq=1,
        bagging_fraction=0.632, feature_fraction=0.6, min_child_samples=5, n_jobs=threads, random_state=seed,
        verbose=-1,
    ).fit(X, y)  # fmt: skip
    log.info("fitted 4 members x %d trees in %.1fs", trees, time.perf_counter() - t0)
    return members


def native_contributions(name: str, model: object, X: np.ndarray, threads: int) -> np.ndarray:
    """The library's own TreeSHAP, (n, f) float64 without the bias column."""
    if name.startswith("LightGBM"):
        out = model.predict(X, pred_contrib=True, num_threads=threads)  # type: ignore[attr-defined]
    elif name == "XGBoost":
        import xgboost as xgb

        booster = model.get_booster()  # type: ignore[attr-defined]
        booster.set_param({"nthread": threads})
        out = booster.predict(xgb.DMatrix(X, nthread=threads), pred_contribs=True)
    else:
        from catboost import Pool

        out = model.get_feature_importance(  # type: ignore[attr-defined]
            Pool(X), type="ShapValues", thread_count=threads
        )
    return np.asarray(out, dtype=np.float64)[:, :-1]


def timed(fn, repeats: int) -> tuple[float, float]:  # noqa: ANN001
    """Best wall seconds and best CPU seconds (all threads of this process) over ``repeats`` calls."""
    wall, cpu = float("inf"), float("inf")
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall = min(wall, time.perf_counter() - w0)
        cpu = min(cpu, time.process_time() - c0)
    return wall, cpu


def cold_compile_seconds() -> dict[str, float]:
    """First-call times of the numba kernels in a fresh process with an empty cache, then with the cache warm."""
    code = textwrap.dedent(
        """
        import json, time, numpy as np, lightgbm as lgb
        t0 = time.perf_counter()
        from ml.explain import TreeExplainer
        rng = np.random.default_rng(0); X = rng.normal(size=(500, 5)); y = (X[:, 0] > 0).astype(int)
        m = lgb.LGBMClassifier(n_estimators=3, num_leaves=7, verbose=-1).fit(X, y)
        t1 = time.perf_counter(); ex = TreeExplainer.from_model(m); t2 = time.perf_counter()
        ex.predict_margin(X); t3 = time.perf_counter(); ex.shap_values(X); t4 = time.perf_counter()
        print(json.dumps({"tables": t2 - t1, "predict": t3 - t2, "shap": t4 - t3}))
        """
    )
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache, "PYTHONPATH": str(ROOT)}
        for label in ("cold", "warm"):
            res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
            import json

            out[label] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trees", type=int, default=300, help="trees per member (default 300)")
    ap.add_argument("--depth", type=int, default=6, help="tree depth; LightGBM num_leaves = 2^depth - 1 (default 6)")
    ap.add_argument("--features", type=int, default=36, help="numeric features (default 36)")
    ap.add_argument("--train-rows", type=int, default=20_000, help="training rows (default 20000)")
    ap.add_argument("--rows", type=int, default=32_768, help="rows explained by ml.explain per run (default 32768)")
    ap.add_argument(
        "--native-rows", type=int, default=1_000,
        help="rows explained by the LightGBM/XGBoost baselines (default 1000); CatBoost's ShapValues has a large "
        "fixed cost per call, so its baseline explains all --rows",
    )  # fmt: skip
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="threads for every method (default: all)")
    ap.add_argument("--repeats", type=int, default=3, help="timed repetitions, best kept (default 3)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ap.add_argument("--no-write", action="store_true", help="print the results only; leave docs/BENCHMARKS.md alone")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    import shap

    from ml.explain import TreeExplainer

    load_start = os.getloadavg()[0]
    X, y = make_data(args.train_rows + args.rows, args.features, args.seed)
    Xtr, ytr = X[: args.train_rows], y[: args.train_rows]
    rows = X[args.train_rows :]
    members = fit_members(Xtr, ytr, args.trees, args.depth, args.threads, args.seed)

    main_rows, batch_rows, notes = [], [], []
    for name, model in members.items():
        base_rows = rows if name == "CatBoost" else rows[: args.native_rows]
        t0 = time.process_time()
        ex = TreeExplainer.from_model(model)
        build = time.process_time() - t0
        ex.shap_values(rows[:64], n_threads=args.threads)  # load the compiled kernels
        st = ex.stats()
        ours = ex.shap_values(base_rows, n_threads=args.threads)
        nat = native_contributions(name, model, base_rows, args.threads)
        diff = float(np.max(np.abs(ours - nat)))
        additivity = float(np.max(np.abs(ours.sum(1) + ex.expected_value - ex.predict_margin(base_rows))))
        # alternate baseline and ours; best of repeats each
        nat_wall, nat_cpu = float("inf"), float("inf")
        our_wall, our_cpu = float("inf"), float("inf")
        for _ in range(args.repeats):
            w, c = timed(lambda: native_contributions(name, model, base_rows, args.threads), 1)
            nat_wall, nat_cpu = min(nat_wall, w), min(nat_cpu, c)
            w, c = timed(lambda: ex.shap_values(rows, n_threads=args.threads), 1)
            our_wall, our_cpu = min(our_wall, w), min(our_cpu, c)
        explainer = shap.TreeExplainer(model)
        shap_wall, _ = timed(lambda: explainer.shap_values(base_rows, check_additivity=False), 1)
        nb, nr = len(base_rows), len(rows)
        r_nat, r_our = nb / nat_wall, nr / our_wall
        c_nat, c_our = nb / nat_cpu, nr / our_cpu
        log.info("%s: native %.0f rows/s, ml.explain %.0f rows/s (x%.0f wall, x%.0f per CPU-s), max diff %.1e",
                 name, r_nat, r_our, r_our / r_nat, c_our / c_nat, diff)  # fmt: skip
        main_rows.append([
            name, round(nb / shap_wall), round(r_nat), round(r_our), f"{r_our / r_nat:,.0f}x",
            round(c_nat), round(c_our), f"{c_our / c_nat:,.0f}x", f"{diff:.1e}", f"{additivity:.1e}",
            f"{st['table_bytes'] / 2**20:,.1f}", f"{build:.2f}",
        ])  # fmt: skip
        notes.append(
            f"{name}: {st['n_groups']:,} groups (bits: {st['group_bits']}), {st['fallback_leaves']} fallback leaves"
        )
        # batch-size sweep: small batches lose most of the gain (one block runs on one thread)
        sweep: list[object] = []
        for bs in BATCHES:
            if bs > len(rows):
                sweep.append("-")
                continue
            batch = rows[:bs]
            reps = max(3, min(200, 20_000 // bs))
            w, _ = timed(lambda: ex.shap_values(batch, n_threads=args.threads), reps)
            sweep.append(round(bs / w))
        batch_rows.append([name, *sweep, f"{1e3 / float(sweep[0]):.2f}"])

    load_end = os.getloadavg()[0]
    compile_s = cold_compile_seconds()
    title = "Exact TreeSHAP (ml.explain) vs the libraries' own TreeSHAP"
    body = [
        f"Model per member: {args.trees} trees, depth {args.depth} (LightGBM num_leaves={2**args.depth - 1}), "
        f"{args.features} numeric features with ~5% NaN, trained on {args.train_rows:,} rows. ml.explain explains "
        f"{len(rows):,} rows per run; the LightGBM/XGBoost baselines the first {args.native_rows:,} of them, "
        f"CatBoost's all {len(rows):,} (its ShapValues has a large fixed cost per call); {args.threads} threads "
        f"everywhere, best of {args.repeats} alternating runs. `max diff` compares ml.explain with the native values "
        "on the baseline rows (XGBoost's own are float32); `additivity` is max |sum(phi) + base - margin| of "
        "ml.explain. Rows per CPU-second are steadier than wall-clock rows/s when the machine is shared. "
        "`build s` is the CPU time of `TreeExplainer.from_model` (parse + tables). 1-minute load average at the "
        f"start / end of the run: {load_start:.1f} / {load_end:.1f} on {os.cpu_count()} cores (above the core count, "
        "other jobs shared the machine and wall-clock figures are depressed for both sides).",
        "",
        md_table(
            ["member", "shap.TreeExplainer rows/s", "native rows/s", "ml.explain rows/s", "speed-up (wall)",
             "native rows/CPU-s", "ml.explain rows/CPU-s", "speed-up (CPU)", "max diff", "additivity",
             "tables MiB", "build s"],
            main_rows,
        ),  # fmt: skip
        "",
        "Batch size (rows per `shap_values` call) against throughput (rows/s, wall); the last column is the latency "
        "of one row in ms. Rows are split into blocks (2,048 rows here) processed in parallel, so batches below two "
        "blocks use one core, and tiny batches pay the per-call overhead:",
        "",
        md_table(["member", *[f"{b:,}" for b in BATCHES], "1-row ms"], batch_rows),
        "",
        "Groups: " + "; ".join(notes) + ".",
        "",
        "numba compile (first call in a fresh process): cold cache "
        + ", ".join(f"{k} {v:.1f}s" for k, v in compile_s["cold"].items())
        + "; warm cache (`cache=True`) "
        + ", ".join(f"{k} {v:.2f}s" for k, v in compile_s["warm"].items())
        + ".",
    ]
    text = "\n".join(body)
    print(text)
    if not args.no_write:
        path = write_section("explain", title, text)
        log.info("wrote %s", path)


if __name__ == "__main__":
    main()
