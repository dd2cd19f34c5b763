"""Benchmark: one weekly training run with the default budget on the demo dataset.

Builds (or, with ``--reuse``, reuses) a database of generated events shaped like ``propensity demo``'s (3,000 users,
1,500 products, 63 days, seed 7), builds the weekly training snapshots through ``ml.features`` (checked and recorded,
as the DAG does), then in the same process:

- the baseline: every member fitted once with untuned default parameters (``n_trials=0``, no Optuna), blended and
  calibrated the same way;
- the weekly run: ``ml.train.run_training`` with the default budget (``Settings.n_trials`` trials and
  ``tune_timeout_s`` per member, Optuna studies in Postgres, artifacts, registry, gate, HTML report).

Records wall time per stage, peak resident memory during each run (sampled every 0.1 s), trials per minute per
member, and the holdout metrics of each member alone, equal weights, the fitted blend and the untuned baseline, into
docs/BENCHMARKS.md. Run: ``.venv/bin/python bench/bench_train.py`` (a few minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._report import md_table, write_section  # noqa: E402

log = logging.getLogger("bench.train")


class PeakRSS:
    """Samples this process's resident set size (VmRSS) every ``every_s`` seconds; ``peak_mib`` after ``stop``."""

    def __init__(self, every_s: float = 0.1) -> None:
        self.every_s, self.peak_kib, self._stop = every_s, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def rss_kib() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, self.rss_kib())
            self._stop.wait(self.every_s)

    def __enter__(self) -> PeakRSS:
        self.start_kib = self.rss_kib()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kib = max(self.peak_kib, self.rss_kib())

    @property
    def peak_mib(self) -> float:
        return self.peak_kib / 1024

    @property
    def growth_mib(self) -> float:
        return (self.peak_kib - self.start_kib) / 1024


def _metrics_row(name: str, m: dict[str, Any]) -> list[Any]:
    def f(v: Any) -> str:
        return "-" if v is None else f"{v:.4f}"

    return [name, f(m.get("roc_auc")), f(m.get("pr_auc")), f(m.get("log_loss")), f(m.get("brier")), f(m.get("ece")),
            f(m.get("f1")), f(m.get("hit_rate_at_10"))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=3000, help="generated users (the demo's default)")
    parser.add_argument("--products", type=int, default=1500, help="generated products (the demo's default)")
    parser.add_argument("--days", type=int, default=63, help="days of events (the demo's default)")
    parser.add_argument("--database", default="bench_train", help="database created on the server")
    parser.add_argument("--server-url", default=None, help="a libpq URL of the server (default: the embedded one)")
    parser.add_argument("--reuse", action="store_true", help="reuse the database if it already holds events")
    parser.add_argument("--n-trials", type=int, default=None, help="trials per member (default: Settings.n_trials)")
    parser.add_argument("--threads", type=int, default=0, help="threads per fit (0: every CPU, the default setting)")
    parser.add_argument("--no-write", action="store_true", help="print, do not write docs/BENCHMARKS.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    import tempfile

    import optuna

    from bench.bench_features import prepare_database
    from ml.db import make_engine
    from ml.dev.services import resolve_services
    from ml.settings import Settings, get_settings
    from ml.train import run_training, train_prepared
    from ml.training_data import prepare_training_data, split_training_data
    from ml.tune import open_storage, study_name

    server = args.server_url or resolve_services(get_settings()).postgres_url
    load_before = os.getloadavg()
    t = time.perf_counter()
    url = prepare_database(server, args.database, args.users, args.products, args.days, args.reuse)
    prep_s = time.perf_counter() - t
    state = Path(tempfile.mkdtemp(prefix="bench-train-"))
    settings = Settings(postgres_url=url, state_dir=state, train_threads=args.threads)
    n_trials = settings.n_trials if args.n_trials is None else args.n_trials
    engine = make_engine(url)

    t = time.perf_counter()
    with PeakRSS() as snap_mem:
        data = prepare_training_data(engine, settings)
    snapshots_s = time.perf_counter() - t
    prepared = split_training_data(data, settings)
    window = prepared.window
    log.info("training rows: %s (train %s, validation %s, holdout %s)", f"{len(data.frame):,}",
             f"{window['n_train']:,}", f"{window['n_validation']:,}", f"{window['n_holdout']:,}")

    # baseline: untuned defaults, same split, same blend and calibration
    t = time.perf_counter()
    with PeakRSS() as base_mem:
        baseline = train_prepared(prepared, settings, n_trials=0)
    baseline_s = time.perf_counter() - t

    # a fresh study per member, so the budget is spent here (re-runs on reused data would otherwise resume)
    storage = open_storage(url)
    for m in settings.members:
        try:
            optuna.delete_study(study_name=study_name(m, window, data.fingerprint), storage=storage)
        except KeyError:
            pass
    t = time.perf_counter()
    with PeakRSS() as run_mem:
        run = run_training(engine, settings, n_trials=n_trials, data=data, dag_run_id="bench_train")
    run_s = time.perf_counter() - t
    engine.dispose()
    load_after = os.getloadavg()

    tuned = run.metrics
    rows = [_metrics_row("ensemble (fitted weights)", tuned["ensemble"]),
            _metrics_row("equal weights", tuned["equal_weights"])]
    rows += [_metrics_row(f"{m} alone", v) for m, v in tuned["members"].items()]
    rows += [_metrics_row("untuned baseline ensemble", baseline.metrics["ensemble"])]
    rows += [_metrics_row(f"untuned {m} alone", v) for m, v in baseline.metrics["members"].items()]

    trial_rows = []
    for m, tsum in run.tuning.items():
        trial_rows.append([m, tsum["n_new_trials"], tsum["n_complete"], tsum["n_pruned"], f"{tsum['seconds']:.1f}",
                           f"{tsum['trials_per_minute']:.1f}", tsum["n_trees"],
                           f"{baseline.timings.get(f'tune_{m}_s', 0):.1f}", f"{tsum['best_value']:.5f}",
                           f"{baseline.tuning[m]['best_value']:.5f}"])
    total_trials = sum(t["n_new_trials"] for t in run.tuning.values())
    tune_s = sum(run.timings.get(f"tune_{m}_s", 0.0) for m in run.tuning)
    ens = run.metrics["ensemble"]
    stage_rows = [
        ["generate + load events (setup, not part of the weekly run)", f"{prep_s:.1f}", "-"],
        ["training snapshots (features SQL + GX checks + Parquet)", f"{snapshots_s:.1f}", f"{snap_mem.peak_mib:,.0f}"],
        ["baseline: 4 members untuned, blend, evaluate", f"{baseline_s:.1f}", f"{base_mem.peak_mib:,.0f}"],
        [f"weekly run: tune {n_trials} trials x {len(run.tuning)} members", f"{tune_s:.1f}", "-"],
        ["weekly run: blend + evaluate + register + gate + report",
         f"{run_s - tune_s - run.timings.get('snapshots_s', 0):.1f}", "-"],
        ["weekly run total (run_training, snapshots given)", f"{run_s:.1f}", f"{run_mem.peak_mib:,.0f}"],
    ]
    body = "\n\n".join([
        f"Demo-shaped data: {args.users:,} users, {args.products:,} products, {args.days} days (seed 7) -> "
        f"{len(data.frame):,} training rows in {window['train_snapshots'] + window['validation_snapshots'] + 1} weekly "
        f"snapshots (train {window['n_train']:,} / validation {window['n_validation']:,} / holdout "
        f"{window['n_holdout']:,}, {len(data.feature_names)} features). Default budget: {n_trials} Optuna trials per "
        f"member (timeout {settings.tune_timeout_s}s each), threads per fit: {args.threads or 'all'}. 1-minute load "
        f"average {load_before[0]:.1f} at the start and {load_after[0]:.1f} at the end (other jobs shared the cores; "
        "compare ratios within this run).",
        md_table(["stage", "wall s", "peak RSS MiB"], stage_rows),
        f"**{total_trials} trials in {tune_s:.0f}s: {60 * total_trials / tune_s:.1f} trials/minute** overall; "
        "the weekly "
        f"run took {run_s / baseline_s:.1f}x the untuned baseline's wall time. Version `{run.version}` -> "
        f"{run.status} ({run.decision.reason}).",
        md_table(["member", "new trials", "complete", "pruned", "tune s", "trials/min", "trees (best)",
                  "untuned fit s", "best val loss", "untuned val loss"], trial_rows),
        "Holdout metrics (the latest labelled snapshot; F1 at the validation-chosen threshold):",
        md_table(["model", "ROC-AUC", "PR-AUC", "log loss", "Brier", "ECE", "F1", "hit-rate@10"], rows),
        f"Blend weights: {', '.join(f'{m} {w:.3f}' for m, w in run_weights(run).items())}. Ensemble PR-AUC vs best "
        f"single member: {ens['pr_auc']:.4f} vs {max(v['pr_auc'] for v in tuned['members'].values()):.4f}; vs "
        f"untuned baseline ensemble: {baseline.metrics['ensemble']['pr_auc']:.4f}.",
    ])
    print(body)
    if not args.no_write:
        path = write_section("train", "Weekly training run (bench/bench_train.py)", body)
        print(f"wrote {path}")


def run_weights(run: Any) -> dict[str, float]:
    """The blend weights of the version a run registered."""
    import json

    manifest = json.loads((Path(run.artifact_uri) / "manifest.json").read_text())
    return manifest["weights"]


if __name__ == "__main__":
    main()
