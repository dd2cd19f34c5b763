"""bench/bench_demo.py: the phases of a `make demo` log and the completeness of its summary."""

from __future__ import annotations

from bench.bench_demo import PHASES, SUMMARY_MARKS, DemoRun, cut_phases, missing_marks, report

LOG = [
    (0.5, "test -x .venv/bin/python || python3.11 -m venv .venv"),
    (20.0, "installed requirements.txt with uv 0.13.9"),
    (21.0, ".venv/bin/python -m ml --log-level WARNING warmup  # numba kernels compiled once"),
    (38.0, "touch .venv/.installed"),
    (50.0, "[demo] triggered ingest_events (manual__x); train_ensemble and score_active_pairs follow by Assets"),
    (70.0, "[demo] ingest_events finished: failed (expected: ...) (20s)"),
    (80.0, "[demo] scored 2026-11-30 per arm in 2s"),  # not a mark: skipped
    (150.0, "[demo] train_ensemble finished: success (100s)"),
    (160.0, "[demo] score_active_pairs finished: success (110s)"),
    (170.0, "[demo] monitor_outcomes finished: success (120s)"),
]


def test_phases_are_cut_at_the_marks_in_order() -> None:
    phases = cut_phases(LOG, 200.0)
    assert phases == {"install": 21.0, "warmup": 17.0, "setup": 12.0, "ingest": 20.0, "train": 80.0, "score": 10.0,
                      "backfill + monitor": 10.0, "summary + A/B": 30.0}
    assert abs(sum(phases.values()) - 200.0) < 1e-9


def test_a_mark_before_its_turn_does_not_end_a_later_phase() -> None:
    # "train finished" printed before "ingest finished" (other order): ingest ends at its own line, and train,
    # whose mark came earlier, never ends -> the phases after it are absent, not given wrong numbers
    log = [LOG[2], LOG[3], LOG[4], LOG[7], LOG[5], LOG[8], LOG[9]]
    phases = cut_phases(log, 200.0)
    assert phases["ingest"] == 70.0 - 50.0
    assert "train" not in phases and "summary + A/B" not in phases


def test_a_demo_that_stops_early_has_no_later_phases() -> None:
    phases = cut_phases(LOG[:6], 75.0)
    assert list(phases) == [name for name, _ in PHASES[:4]]


def test_summary_completeness() -> None:
    full = [f"x {m} y" for m in SUMMARY_MARKS]
    assert missing_marks(full) == []
    assert missing_marks(full[:1] + full[2:]) == [SUMMARY_MARKS[1]]
    assert missing_marks(["GET /v1/users/1/recommendations?limit=3  -> 503"]) == SUMMARY_MARKS


def _run(label: str, rev: str, installer: str, seconds: float, complete: bool = True) -> DemoRun:
    phases = cut_phases(LOG, seconds)
    return DemoRun(label, rev, installer, seconds=seconds, returncode=0 if complete else 2, phases=phases,
                   summary_complete=complete, missing=[] if complete else ["A/B experiment"])


def test_report_goal_and_baseline_description() -> None:
    met = report([_run("new", "abc1234", "uv", 200.0), _run("baseline", "abc1234", "pip", 250.0)], "abc1234",
                 write_doc=False)
    assert "Goal: `make demo` from a fresh clone in at most 240 s: met**" in met
    assert "the same commit with `make demo INSTALLER=pip`" in met
    assert "**200.0** (3:20.0)" in met and "**250.0** (4:10.0)" in met
    slow = report([_run("run 1", "abc1234", "uv", 200.0), _run("run 2", "abc1234", "uv", 241.0)], "abc1234",
                  write_doc=False)
    assert "at most 240 s: not met** (slowest new run 241.0 s, 2/2" in slow and "none in this run" in slow
    broken = report([_run("new", "abc1234", "uv", 100.0, complete=False),
                     _run("baseline", "0ld0000", "", 300.0)], "abc1234", write_doc=False)
    assert "not met** (slowest new run 100.0 s, 0/1 with a complete summary)" in broken
    assert "`0ld0000`'s own `make demo`" in broken and "missing A/B experiment" in broken
