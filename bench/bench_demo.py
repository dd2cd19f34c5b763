"""Benchmark: `make demo` from a fresh clone, per phase, against a baseline in the same run.

What runs: for each variant, a ``git clone`` of this repository at ``--rev`` (default ``HEAD``: the committed state,
not uncommitted edits) into a new temporary folder, then ``make demo`` in it exactly as a new user types it (no
``PROPENSITY_*`` URLs, so the demo starts its embedded PostgreSQL and Redis; no outer virtualenv on ``PATH``). The
download caches of pip and uv are whatever this machine has (warm after the first run: the issue's "dependencies
cached"). Each output line is timestamped as it arrives, and the phases are cut at the lines the Makefile and the
demo print:

- ``install``: the virtualenv and the pinned requirements (until ``make`` echoes the warmup command);
- ``warmup``: ``propensity warmup`` (numba kernels into the on-disk cache);
- ``setup``: embedded services, migrations, generated data, Airflow's metadata migration and start;
- ``ingest``, ``train``, ``score``: the DAG runs, as the demo reports them finished;
- ``backfill + monitor``: a matured date scored as a backfill, then the ``monitor_outcomes`` DAG;
- ``summary + A/B``: the summary queries, the API lookup, the challenger and the A/B experiment.

The run counts only if the summary is complete (the quarantine, the champion, the scored pairs, the publication, a
200 from the API, the A/B block). Baseline (default): the same commit with ``make demo INSTALLER=pip`` (the install
as it was before uv; everything else equal); ``--baseline-rev REV`` times another commit's demo instead. Afterwards
each clone's embedded services are stopped and the clone is removed (``--keep`` keeps them).

Usage: ``.venv/bin/python bench/bench_demo.py [--runs 1] [--rev HEAD] [--no-baseline | --baseline-rev REV]
[--no-doc]``. Takes about 4 minutes per demo. Writes the "demo" section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._report import md_table, write_section

log = logging.getLogger("bench.demo")

GOAL_S = 240.0
#: (phase, substring of the line that ends it), in order
PHASES = [
    ("install", "-m ml --log-level WARNING warmup"),
    ("warmup", "touch .venv/.installed"),
    ("setup", "[demo] triggered ingest_events"),
    ("ingest", "[demo] ingest_events finished"),
    ("train", "[demo] train_ensemble finished"),
    ("score", "[demo] score_active_pairs finished"),
    ("backfill + monitor", "[demo] monitor_outcomes finished"),
]
#: what a complete summary shows
SUMMARY_MARKS = [
    "events loaded:", "files quarantined: 1", "champion model:", "pairs scored:", "hot pairs published to Redis:",
    "/recommendations?limit=3  -> 200", "A/B experiment", "Airflow UI:",
]


@dataclass
class DemoRun:
    label: str
    rev: str
    installer: str
    seconds: float = 0.0
    returncode: int | None = None
    phases: dict[str, float] = field(default_factory=dict)
    summary_complete: bool = False
    missing: list[str] = field(default_factory=list)
    log_path: str = ""


def cut_phases(lines: list[tuple[float, str]], total: float) -> dict[str, float]:
    """Seconds per phase from ``(seconds since start, line)`` pairs: each phase ends at the first line after the
    previous phase's end that contains its mark (:data:`PHASES`); the last phase runs to ``total``. Phases whose mark
    never came (a failed demo) are absent, and so is the last one then."""
    phases: dict[str, float] = {}
    start, i = 0.0, 0
    for name, mark in PHASES:
        while i < len(lines) and mark not in lines[i][1]:
            i += 1
        if i == len(lines):
            return phases
        phases[name] = lines[i][0] - start
        start = lines[i][0]
    phases["summary + A/B"] = total - start
    return phases


def missing_marks(lines: Iterable[str]) -> list[str]:
    """The parts of a complete demo summary (:data:`SUMMARY_MARKS`) that no line shows."""
    text = "\n".join(lines)
    return [m for m in SUMMARY_MARKS if m not in text]


def _clean_env() -> dict[str, str]:
    """This environment minus what would make the clone use our services or our virtualenv."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PROPENSITY_", "AIRFLOW", "MAKE", "MFLAGS")) and k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    ours = str(ROOT / ".venv" / "bin")
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p and p != ours)
    return env


def run_demo(label: str, rev: str, installer: str, keep: bool) -> DemoRun:
    """Clone ``rev`` into a new folder, run ``make demo INSTALLER=installer`` there, time its phases."""
    run = DemoRun(label, rev, installer)
    base = Path(tempfile.mkdtemp(prefix="bench-demo-"))
    clone = base / "p"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    subprocess.run(["git", "-C", str(clone), "checkout", "-q", rev], check=True)
    shared = ROOT.parent / "shared"
    if shared.exists():  # the layout the project is developed in (../shared beside the checkout)
        (base / "shared").symlink_to(shared.resolve())
    out = base / "demo.log"
    run.log_path = str(out)
    log.info("%s: make demo INSTALLER=%s in %s (rev %s) ...", label, installer or "(its Makefile's)", clone, rev)
    t0 = time.perf_counter()
    lines: list[tuple[float, str]] = []
    with out.open("w") as f:
        cmd = ["make", "demo"] + ([f"INSTALLER={installer}"] if installer else [])  # "": the rev's own Makefile
        proc = subprocess.Popen(cmd, cwd=clone, env=_clean_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        assert proc.stdout is not None
        for line in proc.stdout:
            t = time.perf_counter() - t0
            lines.append((t, line.rstrip("\n")))
            f.write(f"{t:7.1f} {line}")
            if line.startswith("[demo]") or "requirements.txt with" in line:
                log.info("%s %6.1fs %s", label, t, line.rstrip()[:140])
        run.returncode = proc.wait()
    run.seconds = time.perf_counter() - t0
    run.phases = cut_phases(lines, run.seconds)
    run.missing = missing_marks(line for _, line in lines)
    run.summary_complete = run.returncode == 0 and not run.missing
    log.info("%s: %.1fs, exit %s, summary %s", label, run.seconds, run.returncode,
             "complete" if run.summary_complete else f"INCOMPLETE (missing {run.missing})")
    if (clone / ".venv" / "bin" / "python").exists():
        subprocess.run([str(clone / ".venv" / "bin" / "python"), "-m", "ml", "services", "down"], check=False,
                       cwd=clone,
                       env=_clean_env(), capture_output=True, timeout=120)
    if not keep:
        kept = ROOT / ".local" / "bench" / f"demo-{label.replace(' ', '_')}.log"
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out, kept)
        run.log_path = str(kept)
        shutil.rmtree(base, ignore_errors=True)
    return run


def _fmt(s: float) -> str:
    return f"{int(s // 60)}:{s % 60:04.1f}"


def report(runs: list[DemoRun], head: str, write_doc: bool) -> str:
    names = [n for n, _ in PHASES] + ["summary + A/B"]
    rows = [[n, *[f"{r.phases[n]:,.1f}" if n in r.phases else "-" for r in runs]] for n in names]
    rows.append(["**total**", *[f"**{r.seconds:,.1f}** ({_fmt(r.seconds)})" for r in runs]])
    rows.append(["summary complete", *["yes" if r.summary_complete else f"no (exit {r.returncode}, missing "
                                       f"{', '.join(r.missing) or '-'})" for r in runs]])
    new = [r for r in runs if not r.label.startswith("baseline")]
    ok = [r for r in new if r.summary_complete]
    met = bool(ok) and len(ok) == len(new) and all(r.seconds <= GOAL_S for r in ok)
    worst = max((r.seconds for r in new), default=float("nan"))
    body = (
        f"`bench/bench_demo.py`: `make demo` from a fresh `git clone` of `{head}`, as a new user types it (embedded "
        "PostgreSQL and Redis, download caches of pip and uv warm), seconds per phase, cut at the lines the Makefile "
        "and the demo print (see the script's docstring). Baseline: "
        + ("the same commit with `make demo INSTALLER=pip` (the install before uv; everything else equal)"
           if any(r.label == "baseline" and r.rev == new[0].rev for r in runs) else
           ", ".join(f"`{r.rev}`'s own `make demo`" for r in runs if r.label.startswith("baseline"))
           or "none in this run")
        + ". Run in sequence on the same machine; the VM's identical runs differ by 10-20 %.\n\n"
        + md_table(["phase (s)", *[f"{r.label} ({r.installer or r.rev})" for r in runs]], rows)
        + f"\n\n**Goal: `make demo` from a fresh clone in at most {GOAL_S:.0f} s: {'met' if met else 'not met'}** "
        f"(slowest new run {worst:,.1f} s, {len(ok)}/{len(new)} with a complete summary).\n"
    )
    if write_doc:
        log.info("wrote %s", write_section("demo", "`make demo` from a fresh clone (issue 17)", body))
    return body


def main(argv: list[str] | None = None) -> list[DemoRun]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rev", default="HEAD", help="commit to clone and time (default: HEAD, the committed state)")
    ap.add_argument("--runs", type=int, default=1, help="demos of --rev, one after the other (default 1)")
    ap.add_argument("--baseline-rev", default=None,
                    help="time this commit's demo as the baseline (default: --rev with INSTALLER=pip)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the baseline demo")
    ap.add_argument("--no-doc", action="store_true", help="do not write docs/BENCHMARKS.md")
    ap.add_argument("--keep", action="store_true", help="keep the clones (services stopped) and their logs")
    args = ap.parse_args(argv)
    if args.runs < 1:
        ap.error(f"--runs must be at least 1, got {args.runs}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.rev], check=True,
                              capture_output=True, text=True).stdout.strip()
    except subprocess.CalledProcessError:
        ap.error(f"--rev {args.rev!r} is not a commit of {ROOT}")
    if subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                      check=False, capture_output=True, text=True).stdout.strip() and args.rev == "HEAD":
        log.warning("uncommitted changes are not measured: the clone holds HEAD (%s)", head)
    runs = [run_demo(f"run {i + 1}" if args.runs > 1 else "new", head, "uv", args.keep) for i in range(args.runs)]
    if not args.no_baseline:
        rev = args.baseline_rev or head
        runs.append(run_demo("baseline", rev, "pip" if args.baseline_rev is None else "", args.keep))
    print(report(runs, head, not args.no_doc))
    return runs


if __name__ == "__main__":
    main()
