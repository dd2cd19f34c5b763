"""Experiments as data: configuration errors, lifecycle, and the assignment hash identical in SQL and Python
(real PostgreSQL; model versions are registry rows, no model is trained here)."""

from __future__ import annotations

import datetime as dt
import uuid

import numpy as np
import pytest
import sqlalchemy as sa

from ml import experiments as X
from ml.errors import ExperimentError

pytestmark = pytest.mark.integration

TODAY = dt.date(2030, 1, 10)


def register_fake(engine, status: str = "candidate", features: list[str] | None = None) -> str:
    """A registry row (no artifacts): enough for configuration and assignment."""
    version = f"v-{uuid.uuid4().hex[:10]}"
    with engine.begin() as conn:
        if status == "champion":
            conn.execute(sa.text("update ml.model_versions set status = 'retired' where status = 'champion'"))
        conn.execute(sa.text(
            "insert into ml.model_versions (version, status, members, params, weights, calibration, features,"
            " training_window, data_fingerprint, library_versions, metrics, artifact_uri) values (:v, :s,"
            " '{lgbm}', '{}', '{}', '{}', :f, '{}', 'x', '{}', '{}', '/nonexistent')"),
            {"v": version, "s": status, "f": features or ["a", "b"]})
    return version


@pytest.fixture
def versions(engine):
    with engine.begin() as conn:
        conn.execute(sa.text("update experiments.experiments set status = 'stopped' where status = 'running'"))
    return register_fake(engine, "champion"), register_fake(engine)


def new_id() -> str:
    return f"exp-{uuid.uuid4().hex[:8]}"


def create(engine, versions, **kw):
    champ, chall = versions
    eid = kw.pop("experiment_id", None) or new_id()
    args = {"arms": f"control={champ},challenger={chall}", "split": "50,50", "start_date": TODAY,
            "end_date": TODAY + dt.timedelta(days=13), "today": TODAY}
    args.update(kw)
    return X.create_experiment(engine, eid, **args)


def test_create_start_stop_and_lifecycle(engine, versions) -> None:
    exp = create(engine, versions, description="demo")
    assert exp.status == "draft" and exp.control.name == "control" and exp.control.model_version == versions[0]
    assert [(a.bucket_from, a.bucket_to) for a in exp.arms] == [(0, 5000), (5000, 10000)]
    assert X.start_experiment(engine, exp.experiment_id).status == "running"
    assert X.running_experiment(engine, TODAY).experiment_id == exp.experiment_id
    assert X.running_experiment(engine, TODAY - dt.timedelta(days=1)) is None
    other = create(engine, versions)
    with pytest.raises(ExperimentError, match="already running on the same traffic"):
        X.start_experiment(engine, other.experiment_id)
    stopped = X.stop_experiment(engine, exp.experiment_id, reason="done")
    assert stopped.status == "stopped" and stopped.stop_reason == "done" and stopped.stopped_by
    with engine.connect() as conn:
        actions = conn.execute(sa.text("select action from experiments.lifecycle where experiment_id = :e"
                                       " order by event_id"), {"e": exp.experiment_id}).scalars().all()
    assert actions == ["create", "start", "stop"]
    with pytest.raises(ExperimentError, match="already stopped"):
        X.stop_experiment(engine, exp.experiment_id)
    with pytest.raises(ExperimentError, match="only a draft can start"):
        X.start_experiment(engine, exp.experiment_id)


@pytest.mark.parametrize(("kw", "message"), [
    ({"split": "60,30"}, "sum to 1"),
    ({"split": "0.7,0.2"}, "sum to 1"),
    ({"split": "50,50,0"}, "3 share"),
    ({"split": "a,b"}, "not a comma-separated list"),
    ({"split": "-50,150"}, "must be > 0"),
    ({"start_date": TODAY - dt.timedelta(days=1)}, "in the past"),
    ({"end_date": TODAY - dt.timedelta(days=30), "allow_past": True}, "before start_date"),
    ({"start_date": "2030-13-01"}, "start_date"),
    ({"experiment_id": "Bad Id!"}, "id must match"),
    ({"mde": 0}, "mde must be"),
    ({"horizon_days": 0}, "horizon_days"),
    ({"primary_metric": "revenue"}, "primary_metric"),
    ({"control": "nobody"}, "control arm 'nobody'"),
    ({"control": "challenger"}, "must be the champion"),
])
def test_bad_configurations_name_the_rule(engine, versions, kw, message) -> None:
    eid = kw.pop("experiment_id", new_id())
    with pytest.raises(ExperimentError, match=message):
        create(engine, versions, experiment_id=eid, **kw)
    with engine.connect() as conn:
        assert conn.execute(sa.text("select count(*) from experiments.experiments where experiment_id = :e"),
                            {"e": eid}).scalar() == 0


def test_unknown_archived_and_mismatched_versions_are_refused(engine, versions) -> None:
    champ, _ = versions
    with pytest.raises(ExperimentError, match="unknown model version 'nope'"):
        create(engine, versions, arms=f"control={champ},b=nope")
    retired = register_fake(engine, "retired")
    with pytest.raises(ExperimentError, match="archived"):
        create(engine, versions, arms=f"control={champ},b={retired}")
    other_features = register_fake(engine, features=["a", "c"])
    with pytest.raises(ExperimentError, match="different feature list"):
        create(engine, versions, arms=f"control={champ},b={other_features}")
    with pytest.raises(ExperimentError, match="own model version"):
        create(engine, versions, arms=f"control={champ},b={champ}")
    with pytest.raises(ExperimentError, match="NAME=MODEL_VERSION"):
        create(engine, versions, arms=f"control={champ},oops")
    with pytest.raises(ExperimentError, match="at least two arms"):
        create(engine, versions, arms=f"control={champ}", split=None)
    exp = create(engine, versions)
    with pytest.raises(ExperimentError, match="already exists"):
        create(engine, versions, experiment_id=exp.experiment_id)


def test_sql_and_python_assign_the_same_arm(engine, versions) -> None:
    exp = create(engine, versions, split="20,30,50",
                 arms=f"control={versions[0]},b={versions[1]},c={register_fake(engine)}", traffic_percent=80)
    users = np.random.default_rng(5).integers(1, 2**62, size=3000).tolist() + [0, 1, 512475445]
    in_sql = X.sql_assignment(engine, exp.experiment_id, users)
    idx = X.assign_arms(exp, users)
    in_py = {u: (exp.arms[i].name if i >= 0 else None) for u, i in zip(users, idx, strict=True)}
    assert in_sql == in_py
    assert X.assign_arms(exp, users).tolist() == idx.tolist()  # stable across calls
    with engine.connect() as conn:
        buckets = conn.execute(sa.text("select experiments.assignment_bucket(:e, u) from unnest(cast(:u as bigint[]))"
                                       " with ordinality as t(u, o) order by o"),
                               {"e": exp.experiment_id, "u": users}).scalars().all()
    assert buckets == X.assignment_buckets(exp.experiment_id, users).tolist()
    shares = {a: sum(v == a for v in in_py.values()) / len(users) for a in ("control", "b", "c", None)}
    assert shares[None] == pytest.approx(0.2, abs=0.03) and shares["c"] == pytest.approx(0.4, abs=0.03)
