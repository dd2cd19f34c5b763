"""Per-arm scoring, publishing and the API variant with two real (small) trained models: champion vs challenger.

One private database per session holds generated events and two registered models (the champion: LightGBM +
XGBoost; the challenger: LightGBM only, no tuning); an experiment splits the users 50/50 between them.
"""

from __future__ import annotations

import datetime as dt
import math
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from ml import experiments as X
from ml.db import create_database, drop_database, make_engine
from ml.settings import Settings

pytestmark = pytest.mark.integration

SCORE_DAY = dt.date(2019, 11, 8)


@dataclass
class AbWorld:
    url: str
    state_dir: Path
    champion: str
    challenger: str
    experiment_id: str

    def settings(self, **kw: object) -> Settings:
        return Settings(postgres_url=self.url, state_dir=self.state_dir, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def ab(server_pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AbWorld]:
    import pandas as pd

    from ml import features as F
    from ml.dev.generate import GeneratorConfig, generate_events
    from ml.ingest import load_events_frame
    from ml.train import as_training_data, run_training

    name = f"ab_{uuid.uuid4().hex[:10]}"
    url = create_database(server_pg_url, name)
    engine = make_engine(url)
    state = tmp_path_factory.mktemp("ab_world")
    load_events_frame(engine, generate_events(GeneratorConfig(days=42, n_users=250, n_products=150, seed=3)),
                      file_id=1)
    s = Settings(postgres_url=url, state_dir=state)
    frames = []
    for day in (15, 22, 29):
        as_of = dt.datetime(2019, 10, day, tzinfo=dt.UTC)
        frame = F.read_pair_features_arrow(engine, as_of, s, with_labels=True).to_pandas()
        frames.append(frame.assign(as_of=pd.Timestamp(as_of)))
    data = as_training_data(pd.concat(frames, ignore_index=True), F.FEATURE_COLUMNS, s)
    champ = run_training(engine, s, data=data, n_trials=0, members=["lightgbm", "xgboost"], force_promote=True,
                         write_report=False).version
    chall = run_training(engine, s, data=data, n_trials=0, members=["lightgbm"], write_report=False).version
    with engine.begin() as conn:  # the gate may have promoted the challenger: the champion is the first model
        conn.execute(sa.text("update ml.model_versions set status = 'candidate' where version = :v"), {"v": chall})
        conn.execute(sa.text("update ml.model_versions set status = 'champion' where version = :v"), {"v": champ})
    eid = "ab-test"
    X.create_experiment(engine, eid, f"control={champ},challenger={chall}", split="50,50", start_date=SCORE_DAY,
                        end_date=SCORE_DAY + dt.timedelta(days=2), allow_past=True, mde=0.05)
    X.start_experiment(engine, eid)
    engine.dispose()
    yield AbWorld(url, state, champ, chall, eid)
    drop_database(server_pg_url, name)


@pytest.fixture
def abengine(ab: AbWorld) -> Iterator[sa.Engine]:
    eng = make_engine(ab.url)
    yield eng
    eng.dispose()


def scored(engine: sa.Engine, day: dt.date) -> list[sa.Row]:
    with engine.connect() as c:
        return c.execute(sa.text(
            "select user_id, product_id, probability, model_version, experiment_id, arm, base_value, contributions,"
            " experiments.assign_arm(:e, user_id) as sql_arm from scoring.scores where score_date = :d"),
            {"d": day, "e": "ab-test"}).all()


def test_every_row_is_scored_by_its_arms_model_with_additivity(ab: AbWorld, abengine: sa.Engine) -> None:
    from ml.score import load_model, run_scoring

    s = ab.settings()
    summary = run_scoring(abengine, s, SCORE_DAY, n_buckets=2)
    rows = scored(abengine, SCORE_DAY)
    assert rows and summary.scored_pairs == len(rows)
    exp = X.get_experiment(abengine, ab.experiment_id)
    want = {a.name: a.model_version for a in exp.arms}
    for r in rows:
        assert r.experiment_id == ab.experiment_id and r.arm == r.sql_arm
        assert r.model_version == want[r.arm]
        z = math.log(r.probability) - math.log1p(-r.probability)
        assert abs(sum(r.contributions) + r.base_value - z) <= s.score_additivity_tolerance * 5
    assert set(summary.arms) == {"control", "challenger"}
    assert {a: v["model_version"] for a, v in summary.arms.items()} == want
    assert any(c.rule == "arm_model_version_matches" and c.success for c in summary.checks)
    # the challenger's rows equal what the challenger model alone computes for them (not the champion's)
    import numpy as np

    from ml import features as F

    table = F.read_pair_features_arrow(abengine, dt.datetime(2019, 11, 8, tzinfo=dt.UTC), s).to_pandas()
    by_pair = {(r.user_id, r.product_id): r for r in rows}
    for version, arm in ((ab.challenger, "challenger"), (ab.champion, "control")):
        ens = load_model(abengine, s, version)
        sub = table[[by_pair[(u, p)].arm == arm for u, p in zip(table.user_id, table.product_id, strict=True)]]
        p = ens.predict_proba(sub[ens.feature_names].to_numpy(np.float64))
        stored = np.array([by_pair[(u, q)].probability for u, q in zip(sub.user_id, sub.product_id, strict=True)])
        assert np.allclose(p, stored, atol=1e-9)


def test_explicit_model_version_scores_everyone_without_arms(ab: AbWorld, abengine: sa.Engine) -> None:
    from ml.score import run_scoring

    day = SCORE_DAY + dt.timedelta(days=1)
    summary = run_scoring(abengine, ab.settings(), day, model_version=ab.challenger, n_buckets=1)
    rows = scored(abengine, day)
    assert summary.arms == {}
    assert {(r.model_version, r.experiment_id, r.arm) for r in rows} == {(ab.challenger, None, None)}


def test_publish_and_api_return_each_users_arm_and_count_exposure(ab: AbWorld, abengine: sa.Engine, redis_url: str,
                                                                  redis_client) -> None:
    from fastapi.testclient import TestClient

    from ml.api import create_app
    from ml.api_auth import new_api_key
    from ml.keyspace import KeySpace
    from ml.publish import publish_version
    from ml.score import run_scoring

    key, key_hash = new_api_key()
    s = ab.settings(redis_url=redis_url, redis_prefix=f"ab{uuid.uuid4().hex[:6]}", api_key_hashes=[key_hash],
                    publish_min_probability=0.0)
    run_scoring(abengine, s, SCORE_DAY, n_buckets=1)
    result = publish_version(abengine, redis_client, s, SCORE_DAY)
    ks = KeySpace(s.redis_prefix)
    meta = {k.decode(): v.decode() for k, v in redis_client.hgetall(ks.meta(result.version)).items()}
    assert meta["experiment_id"] == ab.experiment_id and meta["model_version"] == ab.champion
    rows = scored(abengine, SCORE_DAY)
    arm_of = {r.user_id: r.arm for r in rows}
    want_model = {"control": ab.champion, "challenger": ab.challenger}
    users = sorted(arm_of)[:40]
    served = {"control": 0, "challenger": 0}
    with TestClient(create_app(s)) as client:
        for user in users:
            body = client.get(f"/v1/users/{user}/recommendations", headers={"Authorization": f"Bearer {key}"}).json()
            assert (body["experiment_id"], body["variant"], body["model_version"]) == (
                ab.experiment_id, arm_of[user], want_model[arm_of[user]])
            assert body["variant"] == X.get_experiment(abengine, ab.experiment_id).arms[
                int(X.assign_arms(X.get_experiment(abengine, ab.experiment_id), [user])[0])].name
            served[body["variant"]] += 1
            product = body["items"][0]["product_id"]
            pair = client.get(f"/v1/users/{user}/products/{product}", headers={"Authorization": f"Bearer {key}"})
            assert (pair.json()["variant"], pair.json()["model_version"]) == (arm_of[user], want_model[arm_of[user]])
        # a user outside the experiment's scores: no arm key -> champion, variant null (404: nothing to serve)
        redis_client.zadd(ks.recs(result.version, 10**12), {"5": 0.5})
        body = client.get(f"/v1/users/{10**12}/recommendations", headers={"Authorization": f"Bearer {key}"}).json()
        assert (body["experiment_id"], body["variant"], body["model_version"]) == (None, None, ab.champion)
    assert min(served.values()) > 0
    moved = {r["arm"]: r for r in X.move_exposures(abengine, redis_client, s, dt.datetime.now(dt.UTC).date())}
    assert {a: moved[a]["users"] for a in served} == served  # HyperLogLog is exact at this size
    assert {a: moved[a]["req"] for a in served} == {a: 2 * n for a, n in served.items()}
