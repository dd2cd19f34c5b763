"""The records of a scoring run: what crosses task boundaries (XCom), what a batch writes, what a run ends with.

:class:`BatchSpec` is all a mapped batch task receives (run, date, bucket: never data); :class:`RunPlan` is what
planning returns; :class:`BatchResult` and :class:`RunSummary` close a batch and a run (the summary is also stored in
``scoring.runs.summary`` as :meth:`RunSummary.as_dict`, and read back with :meth:`RunSummary.from_dict`);
:class:`ScoredBlock` is one block of scored rows on its way from the model to the COPY encoder.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ml.dates import utc_date
from ml.insights import Insights

# pipeline order of the per-stage seconds in timings (batches sum theirs; the run adds check and swap)
STAGE_ORDER = ("plan", "load_model", "features", "predict", "explain", "insights", "encode", "copy", "total", "check",
               "swap")


@dataclass(frozen=True)
class BatchSpec:
    """What one mapped batch task receives (through XCom): which run, date and bucket; never data."""

    run_id: str
    score_date: str  # ISO date (UTC)
    bucket: int
    n_buckets: int
    model_version: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | BatchSpec) -> BatchSpec:
        if isinstance(d, BatchSpec):
            return d
        return cls(run_id=str(d["run_id"]), score_date=str(d["score_date"]), bucket=int(d["bucket"]),
                   n_buckets=int(d["n_buckets"]), model_version=str(d["model_version"]))


@dataclass(frozen=True)
class RunPlan:
    """A planned run: ``batches[k]`` scores bucket k, which holds ``bucket_pairs[k]`` active pairs."""

    run_id: str
    score_date: dt.date
    model_version: str
    n_buckets: int
    planned_pairs: int
    bucket_pairs: list[int]
    stage_table: str
    feature_names: list[str]
    batches: list[BatchSpec]
    dropped_stages: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "score_date": self.score_date.isoformat(), "model_version": self.model_version,
                "n_buckets": self.n_buckets, "planned_pairs": self.planned_pairs, "stage_table": self.stage_table,
                "batches": [b.as_dict() for b in self.batches]}


@dataclass(frozen=True)
class BatchResult:
    """What one batch wrote: rows, seconds per stage, the largest additivity residual (log-odds)."""

    run_id: str
    bucket: int
    rows: int
    seconds: float
    timings: dict[str, float]
    max_residual: float

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rows_per_s": round(self.rows_per_s)}


@dataclass(frozen=True)
class CheckResult:
    """One output check (a Great Expectations expectation) of a run's stage table."""

    rule: str
    success: bool
    observed: Any
    expected: str


@dataclass(frozen=True)
class RunSummary:
    """The closing record of a finalized run (also stored in ``scoring.runs.summary``)."""

    run_id: str
    score_date: dt.date
    model_version: str
    status: str
    planned_pairs: int
    scored_pairs: int
    buckets: int
    partition: str
    replaced_previous: bool
    timings: dict[str, float]
    wall_seconds: float
    tiers: dict[str, int]
    reasons: dict[str, int]
    checks: list[CheckResult]
    arms: dict[str, dict[str, Any]] = field(default_factory=dict)  # arm -> experiment_id, model_version, pairs, users

    @property
    def rows_per_s(self) -> float:
        return self.scored_pairs / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["score_date"] = self.score_date.isoformat()
        d["rows_per_s"] = round(self.rows_per_s)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunSummary:
        """The summary of :meth:`as_dict` (as stored in ``scoring.runs.summary``)."""
        return cls(
            run_id=d["run_id"], score_date=utc_date(d["score_date"], what="score_date"),
            model_version=d["model_version"], status=d["status"], planned_pairs=int(d["planned_pairs"]),
            scored_pairs=int(d["scored_pairs"]), buckets=int(d["buckets"]), partition=d["partition"],
            replaced_previous=bool(d["replaced_previous"]), timings=dict(d["timings"]),
            wall_seconds=float(d["wall_seconds"]), tiers=dict(d["tiers"]), reasons=dict(d["reasons"]),
            checks=[CheckResult(**c) for c in d["checks"]], arms=dict(d.get("arms") or {}),
        )

    def lines(self) -> list[str]:
        """Human-readable summary lines (the end of the task log / CLI output)."""
        stage_s = format_timings(self.timings)
        tiers = ", ".join(f"{k} {v:,}" for k, v in self.tiers.items())
        top = ", ".join(f"{k} {v:,}" for k, v in list(self.reasons.items())[:6])
        return [
            f"scoring run {self.run_id}: {self.status}; score_date {self.score_date}, model {self.model_version}",
            f"  pairs: {self.scored_pairs:,} scored of {self.planned_pairs:,} planned in {self.buckets} buckets; "
            f"{self.wall_seconds:,.1f}s wall, {self.rows_per_s:,.0f} pairs/s",
            f"  stage seconds (summed over batches): {stage_s}",
            f"  tiers: {tiers}",
            f"  top reasons: {top or 'none'}",
            f"  checks: {sum(c.success for c in self.checks)}/{len(self.checks)} passed; partition scoring."
            f"{self.partition} {'replaced' if self.replaced_previous else 'created'}",
            *[f"  arm {name}: model {a['model_version']}, {a['users']:,} users, {a['pairs']:,} pairs"
              + (f" (experiment {a['experiment_id']})" if a["experiment_id"] else "") for name, a in self.arms.items()],
        ]


@dataclass
class ScoredBlock:
    """n scored rows: keys, calibrated logit and probability, contributions (n, f) and base (n,) in log-odds, the
    insights, and the largest additivity residual of the stored (float32) contributions."""

    user_id: np.ndarray
    product_id: np.ndarray
    logit: np.ndarray
    probability: np.ndarray
    contributions: np.ndarray
    base_value: np.ndarray
    insights: Insights
    max_residual: float

    def __len__(self) -> int:
        return len(self.user_id)


def format_timings(timings: Mapping[str, float]) -> str:
    """``plan 0.1s, features 2.0s, ...`` in pipeline order; ``*_rows`` entries are counts."""
    order = {k: i for i, k in enumerate(STAGE_ORDER)}
    return ", ".join(
        f"{k} {int(v):,}" if k.endswith("_rows") else f"{k} {v:,.2f}s"
        for k, v in sorted(timings.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))
