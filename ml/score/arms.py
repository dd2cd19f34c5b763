"""Per-arm scoring while an A/B experiment runs (issue 14; :mod:`ml.experiments`).

:func:`plan_arms` (called by :func:`ml.score.plan.plan_run`) finds the experiment running on the score date and
stores its arms in ``scoring.runs.params['experiment']``: ``{"experiment_id", "arms": [{"arm", "model_version",
"bucket_from", "bucket_to", "is_control"}]}``. Every batch reads them back (:class:`RunArms`), splits each block of
pairs by the users' arms (:func:`ml.experiments.assign_arms`, the same hash as SQL ``experiments.assign_arm``) and
scores each part with its arm's model; rows carry ``experiment_id`` and ``arm``. Users the experiment does not enroll
(``traffic_percent`` < 100) are scored by the control arm's model, the champion, with ``experiment_id`` and ``arm``
null. A run with an explicit ``model_version`` or no running experiment covering the date has no arms: every row
is scored by that one model, as before.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunArm:
    name: str
    model_version: str
    bucket_from: int
    bucket_to: int
    is_control: bool


@dataclass(frozen=True)
class RunArms:
    """The experiment arms of one scoring run (as stored in ``scoring.runs.params['experiment']``)."""

    experiment_id: str
    arms: tuple[RunArm, ...]

    @property
    def control(self) -> RunArm:
        return next(a for a in self.arms if a.is_control)

    @property
    def model_versions(self) -> list[str]:
        return [a.model_version for a in self.arms]

    def as_dict(self) -> dict[str, Any]:
        return {"experiment_id": self.experiment_id,
                "arms": [{"arm": a.name, "model_version": a.model_version, "bucket_from": a.bucket_from,
                          "bucket_to": a.bucket_to, "is_control": a.is_control} for a in self.arms]}

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None) -> RunArms | None:
        exp = (params or {}).get("experiment")
        if not exp:
            return None
        return cls(str(exp["experiment_id"]), tuple(
            RunArm(str(a["arm"]), str(a["model_version"]), int(a["bucket_from"]), int(a["bucket_to"]),
                   bool(a["is_control"])) for a in exp["arms"]))

    def split(self, user_id: np.ndarray) -> Iterator[tuple[RunArm | None, np.ndarray]]:
        """(arm, row mask) per arm present in ``user_id`` (rows), then (None, mask) for users not enrolled."""
        from ml.experiments import assignment_buckets

        users, inverse = np.unique(np.asarray(user_id, np.int64), return_inverse=True)
        bucket = assignment_buckets(self.experiment_id, users.tolist())[inverse]
        enrolled = np.zeros(len(bucket), dtype=bool)
        for arm in self.arms:
            mask = (bucket >= arm.bucket_from) & (bucket < arm.bucket_to)
            enrolled |= mask
            if mask.any():
                yield arm, mask
        if not enrolled.all():
            yield None, ~enrolled


def plan_arms(engine: Engine, day: dt.date, model_version: str | None) -> RunArms | None:
    """The arms of the experiment running on ``day`` (None with an explicit ``model_version`` or no experiment)."""
    if model_version:
        return None
    from ml.experiments import running_experiment

    exp = running_experiment(engine, day)
    if exp is None:
        return None
    from ml.registry import champion

    champ = champion(engine)
    if champ is None or champ.version != exp.control.model_version:
        log.warning("experiment %s: the control arm keeps its model %s although the champion is now %s",
                    exp.experiment_id, exp.control.model_version, champ.version if champ else None)
    arms = RunArms(exp.experiment_id, tuple(RunArm(a.name, a.model_version, a.bucket_from, a.bucket_to, a.is_control)
                                            for a in exp.arms))
    log.info("experiment %s is running on %s: scoring per arm (%s)", exp.experiment_id, day,
             ", ".join(f"{a.name}={a.model_version}" for a in arms.arms))
    return arms
