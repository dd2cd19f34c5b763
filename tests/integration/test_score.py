"""Nightly scoring against a real PostgreSQL with a real (small) trained ensemble: end to end, additivity,
idempotence, determinism, crash safety, retries and output checks.

One private database per session holds generated events (2019-10-01 .. +42 days) and one champion model trained
with default parameters (no tuning); each test scores its own score dates.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from ml.db import create_database, drop_database, make_engine
from ml.errors import ScoringError
from ml.settings import Settings

pytestmark = pytest.mark.integration

COLUMNS = ("user_id", "product_id", "probability", "model_version", "tier", "reason_codes", "reason_texts",
           "top_contributions", "base_value", "contributions")


@dataclass
class World:
    url: str
    state_dir: Path
    version: str
    features: list[str]

    def settings(self, **kw: object) -> Settings:
        return Settings(postgres_url=self.url, state_dir=self.state_dir, **kw)  # type: ignore[arg-type]


_WORLD: dict[str, World] = {}


def build_world(server_pg_url: str, state_dir: Path) -> World:
    """Create (once per process) the database with events and a champion model; shared with the DAG test."""
    if "world" in _WORLD:
        return _WORLD["world"]
    import pandas as pd

    from ml import features as F
    from ml.dev.generate import GeneratorConfig, generate_events
    from ml.ingest import load_events_frame
    from ml.train import as_training_data, run_training

    url = create_database(server_pg_url, f"score_{uuid.uuid4().hex[:10]}")
    engine = make_engine(url)
    load_events_frame(engine, generate_events(GeneratorConfig(days=42, n_users=250, n_products=150, seed=3)),
                      file_id=1)
    s = Settings(postgres_url=url, state_dir=state_dir)
    frames = []
    for day in (8, 15, 22, 29):  # weekly snapshots whose 7-day labels end before the data does (2019-11-11)
        as_of = dt.datetime(2019, 10, day, tzinfo=dt.UTC)
        frame = F.read_pair_features_arrow(engine, as_of, s, with_labels=True).to_pandas()
        frames.append(frame.assign(as_of=pd.Timestamp(as_of)))
    data = as_training_data(pd.concat(frames, ignore_index=True), F.FEATURE_COLUMNS, s)
    trained = run_training(engine, s, data=data, n_trials=0, force_promote=True, write_report=False)
    engine.dispose()
    _WORLD["world"] = World(url, state_dir, trained.version, list(F.FEATURE_COLUMNS))
    _WORLD["admin"] = server_pg_url  # type: ignore[assignment]
    return _WORLD["world"]


def drop_world() -> None:
    world = _WORLD.pop("world", None)
    server = _WORLD.pop("admin", None)
    if world is None or server is None:
        return
    drop_database(str(server), sa.engine.make_url(world.url).database)


@pytest.fixture(scope="session")
def world(server_pg_url: str, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> World:
    w = build_world(server_pg_url, tmp_path_factory.mktemp("score_world"))
    request.addfinalizer(drop_world)
    return w


@pytest.fixture
def wengine(world: World):
    eng = make_engine(world.url)
    yield eng
    eng.dispose()


def fetch(engine: sa.Engine, day: dt.date) -> list[tuple]:
    with engine.connect() as c:
        rows = c.execute(sa.text(
            f"select {', '.join(COLUMNS)}, run_id from scoring.scores where score_date = :d"
            " order by user_id, product_id"), {"d": day}).all()
    return [tuple(r) for r in rows]


def stage_tables(engine: sa.Engine) -> list[str]:
    with engine.connect() as c:
        return c.execute(sa.text("select tablename from pg_tables where schemaname = 'scoring'"
                                 " and tablename like 'scores\\_stage\\_%' order by 1")).scalars().all()


def partitions(engine: sa.Engine) -> list[str]:
    with engine.connect() as c:
        return c.execute(sa.text("select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid"
                                 " where i.inhparent = 'scoring.scores'::regclass order by 1")).scalars().all()


def logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


# --- the reason-code dimension ---------------------------------------------------------------------------------------
def test_reason_code_table_equals_the_module_list(engine: sa.Engine) -> None:
    from ml.insights import reason_code_rows

    with engine.connect() as c:
        rows = [dict(r._mapping) for r in c.execute(sa.text(
            "select code, reason_group, description, template, feature, drivers, sort_order"
            " from scoring.reason_codes order by sort_order"))]
    assert rows == reason_code_rows()


# --- end to end ------------------------------------------------------------------------------------------------------
def test_end_to_end_scores_explains_and_swaps_a_date(world: World, wengine: sa.Engine) -> None:
    from ml import features as F
    from ml.drift import record_drift
    from ml.insights import CODES
    from ml.score import load_model, run_scoring

    s = world.settings()
    d1, d2 = dt.date(2019, 11, 8), dt.date(2019, 11, 9)
    summary = run_scoring(wengine, s, d1, n_buckets=3)
    planned = F.count_active_pairs(wengine, dt.datetime(2019, 11, 8, tzinfo=dt.UTC), s)
    assert planned > 500
    assert (summary.status, summary.planned_pairs, summary.scored_pairs) == ("succeeded", planned, planned)
    assert all(c.success for c in summary.checks) and len(summary.checks) == 10
    rows = fetch(wengine, d1)
    assert len(rows) == planned == len({(r[0], r[1]) for r in rows})
    assert "scores_p20191108" in partitions(wengine) and stage_tables(wengine) == []
    tiers = {"cold", "cool", "warm", "hot"}
    for uid, pid, p, mv, tier, codes, texts, top, base, contrib, run_id in rows:
        assert 0.0 < p < 1.0 and mv == world.version and run_id == summary.run_id and tier in tiers
        # additive for every row, as stored: sum(contributions) + base == logit(p)
        assert abs(math.fsum(contrib) + base - logit(p)) <= 1e-4
        assert len(contrib) == len(world.features)
        assert set(codes) <= set(CODES) and len(codes) == len(texts) <= s.max_reasons
        assert 1 <= len(top) <= s.top_k_contributions
        mags = [abs(t["shap"]) for t in top]
        assert mags == sorted(mags, reverse=True) and all(t["feature"] in world.features for t in top)
        for t in top:  # top contributions are entries of the full vector
            assert t["shap"] == pytest.approx(contrib[world.features.index(t["feature"])], abs=1e-6)
    # the stored numbers are the model's: recompute one bucket from fresh features
    ens = load_model(wengine, s, world.version)
    frame = F.build_pair_features(wengine, dt.datetime(2019, 11, 8, tzinfo=dt.UTC), s, 1, 3)
    frame = frame.sort_values(["user_id", "product_id"]).reset_index(drop=True)
    by_key = {(r[0], r[1]): r for r in rows}
    stored = [by_key[(u, p)] for u, p in zip(frame.user_id, frame.product_id)]
    phi, base = ens.explain(frame)
    # the default path (score_verify_fraction < 1): probability = sigmoid(base + the exact float64 sum of the
    # contributions), which the libraries' own predict matches up to XGBoost's float32 rounding
    z = np.asarray(base, dtype=np.float64) + phi.sum(axis=1)
    np.testing.assert_allclose([r[2] for r in stored], 1 / (1 + np.exp(-z)), rtol=0, atol=1e-12)
    np.testing.assert_allclose([r[2] for r in stored], ens.predict_proba(frame), rtol=0, atol=1e-6)
    # real[] comes back as text: the shortest decimal of each float32, which converts back to it exactly
    np.testing.assert_array_equal(np.array([r[9] for r in stored], dtype=np.float32), phi.astype(np.float32))
    with wengine.connect() as c:
        run = c.execute(sa.text("select * from scoring.runs where run_id = :r"), {"r": summary.run_id}).one()
        batches = c.execute(sa.text("select status, scored_pairs from scoring.run_batches where run_id = :r"),
                            {"r": summary.run_id}).all()
        check = c.execute(sa.text("select success, failed_rules from quality.validation_runs"
                                  " where suite_name = 'score_output' and file_name = :f"),
                          {"f": run.stage_table}).one()
        samples = c.execute(sa.text("select count(*) from scoring.feature_samples where run_id = :r"),
                            {"r": summary.run_id}).scalar_one()
    assert run.status == "succeeded" and run.scored_pairs == planned and run.feature_names == world.features
    assert {"plan", "features", "predict", "explain", "insights", "encode", "copy", "check", "swap"} <= set(run.timings)
    assert run.summary["scored_pairs"] == planned
    assert [b.status for b in batches] == ["succeeded"] * 3 and sum(b.scored_pairs for b in batches) == planned
    assert check.success and check.failed_rules == []
    assert 0 < samples < planned * 0.2
    # a second date, then drift against the first
    run_scoring(wengine, s, d2, n_buckets=2)
    metrics = {(m.kind, m.name): m for m in record_drift(wengine, s, d2)}
    assert metrics[("row_count", "scored_pairs")].value == len(fetch(wengine, d2))
    assert 0.0 <= metrics[("score_psi", "probability")].value < 1.0
    assert metrics[("score_psi", "probability")].details["reference_date"] == "2019-11-08"
    assert {n for k, n in metrics if k == "feature_psi"} == set(world.features)
    with wengine.connect() as c:
        kinds = dict(c.execute(sa.text("select kind, count(*) from monitoring.metrics where metric_date = :d"
                                       " group by kind"), {"d": d2}).all())
    assert kinds == {"row_count": 1, "score_psi": 1, "feature_psi": len(world.features)}


def test_rerun_replaces_the_date_with_identical_rows(world: World, wengine: sa.Engine) -> None:
    """Idempotent and deterministic: the same date twice gives the same rows, replacing the first run's."""
    from ml.score import run_scoring

    s = world.settings()
    day = dt.date(2019, 11, 10)
    first = run_scoring(wengine, s, day, n_buckets=2)
    rows1 = fetch(wengine, day)
    second = run_scoring(wengine, s, day, n_buckets=2)
    rows2 = fetch(wengine, day)
    assert second.replaced_previous and not first.replaced_previous
    assert len(rows2) == len(rows1) == first.planned_pairs
    assert [r[:-1] for r in rows1] == [r[:-1] for r in rows2]  # everything but run_id, bit for bit
    assert {r[-1] for r in rows2} == {second.run_id}
    assert partitions(wengine).count("scores_p20191110") == 1 and stage_tables(wengine) == []
    # another bucketing of the same users: the same pairs, probabilities and tiers, and still additive
    third = run_scoring(wengine, s, day, n_buckets=5)
    rows3 = fetch(wengine, day)
    assert third.scored_pairs == first.scored_pairs
    assert [(r[0], r[1], r[2], r[4]) for r in rows3] == [(r[0], r[1], r[2], r[4]) for r in rows1]
    assert max(abs(math.fsum(r[9]) + r[8] - logit(r[2])) for r in rows3) <= 1e-4
    # every row predicted by the libraries (score_verify_fraction=1): the same pairs, probabilities equal to the
    # sampled default's (exact sums) up to float32 rounding, still additive
    run_scoring(wengine, world.settings(score_verify_fraction=1.0), day, n_buckets=2)
    rows4 = fetch(wengine, day)
    assert [r[:2] for r in rows4] == [r[:2] for r in rows1]
    np.testing.assert_allclose([r[2] for r in rows4], [r[2] for r in rows1], rtol=1e-5, atol=0)
    assert max(abs(math.fsum(r[9]) + r[8] - logit(r[2])) for r in rows4) <= 1e-5


def test_crash_mid_run_leaves_the_previous_partition_intact(
    world: World, wengine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ml.score as S
    import ml.score.batch as B
    import ml.score.finalize as F

    s = world.settings(score_block_rows=100)  # several COPY blocks per bucket
    day = dt.date(2019, 11, 7)
    good = S.run_scoring(wengine, s, day, n_buckets=2)
    before = fetch(wengine, day)

    # 1) a batch dies in the middle of its COPY (third block of the second bucket)
    real_encode = B.encode_score_rows
    calls = {"n": 0}

    def flaky_encode(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls["n"] += 1
        if calls["n"] == 3 and calls.get("bucket1"):
            raise RuntimeError("worker lost mid-COPY")
        return real_encode(*args, **kwargs)

    plan = S.plan_run(wengine, s, day, n_buckets=2)
    S.score_batch(wengine, s, plan.batches[0])
    calls["n"], calls["bucket1"] = 0, True
    monkeypatch.setattr(B, "encode_score_rows", flaky_encode)
    with pytest.raises(ScoringError, match="bucket 1/2 failed: RuntimeError: worker lost mid-COPY"):
        S.score_batch(wengine, s, plan.batches[1])
    monkeypatch.setattr(B, "encode_score_rows", real_encode)
    with wengine.connect() as c:  # nothing of the failed attempt is in the stage; readers still see the old day
        in_stage = c.execute(sa.text(f'select count(*) from scoring."{plan.stage_table}"')).scalar_one()
    assert in_stage == plan.bucket_pairs[0]
    assert fetch(wengine, day) == before
    with pytest.raises(ScoringError, match=r"bucket\(s\) \[1\] did not succeed"):
        S.finalize_run(wengine, s, plan.run_id)
    assert fetch(wengine, day) == before

    # 2) the swap itself fails after detaching and renaming: the transaction rolls back as a whole
    plan2 = S.plan_run(wengine, s, day, n_buckets=2)
    assert plan.stage_table not in stage_tables(wengine)  # the failed run's stage was dropped by the new plan
    for batch in plan2.batches:
        S.score_batch(wengine, s, batch)
    assert fetch(wengine, day) == before  # batches done, not swapped: still the old day
    real_swap = F._swap_partition

    def swap_then_die(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        real_swap(*args, **kwargs)
        raise sa.exc.OperationalError("attach", {}, Exception("server closed the connection unexpectedly"))

    monkeypatch.setattr(F, "_swap_partition", swap_then_die)
    with pytest.raises(ScoringError, match="partition swap failed"):
        S.finalize_run(wengine, s, plan2.run_id)
    assert fetch(wengine, day) == before
    assert plan2.stage_table in stage_tables(wengine) and "scores_p20191107" in partitions(wengine)

    # 3) the next run replaces the day and cleans up
    monkeypatch.setattr(F, "_swap_partition", real_swap)
    S.fail_run(wengine, plan2.run_id, "swap failed")
    after = S.run_scoring(wengine, s, day, n_buckets=2)
    assert [r[:-1] for r in fetch(wengine, day)] == [r[:-1] for r in before]
    assert {r[-1] for r in fetch(wengine, day)} == {after.run_id}
    assert stage_tables(wengine) == []
    with wengine.connect() as c:
        statuses = dict(c.execute(sa.text("select run_id, status from scoring.runs where score_date = :d"),
                                  {"d": day}).all())
    assert statuses == {good.run_id: "succeeded", plan.run_id: "failed", plan2.run_id: "failed",
                        after.run_id: "succeeded"}


def test_retried_batch_does_not_duplicate_and_failed_checks_refuse_the_swap(
    world: World, wengine: sa.Engine
) -> None:
    import ml.score as S

    s = world.settings()
    day = dt.date(2019, 11, 6)
    plan = S.plan_run(wengine, s, day, n_buckets=2)
    S.score_batch(wengine, s, plan.batches[0])
    S.score_batch(wengine, s, plan.batches[0])  # a retry after a committed attempt (e.g. a lost heartbeat)
    S.score_batch(wengine, s, plan.batches[1])
    summary = S.finalize_run(wengine, s, plan.run_id)
    assert summary.scored_pairs == plan.planned_pairs == len(fetch(wengine, day))
    # passing checks (validated BOOLEAN_ONLY) still report what they observed
    observed = {c.rule: c.observed for c in summary.checks}
    assert observed["row_count_equals_planned"] == plan.planned_pairs and observed["probability_not_null"] == 0
    assert S.finalize_run(wengine, s, plan.run_id).run_id == plan.run_id  # finalize is idempotent too
    before = fetch(wengine, day)

    plan2 = S.plan_run(wengine, s, day, n_buckets=2)
    for batch in plan2.batches:
        S.score_batch(wengine, s, batch)
    with wengine.begin() as c:  # tamper with the output: one pair goes missing
        c.execute(sa.text(f'delete from scoring."{plan2.stage_table}" where (user_id, product_id) in'
                          f' (select user_id, product_id from scoring."{plan2.stage_table}" limit 1)'))
    # the failing suite is validated again in full: the error says what GX observed
    with pytest.raises(ScoringError, match=rf"row_count_equals_planned \(observed {plan2.planned_pairs - 1}, "):
        S.finalize_run(wengine, s, plan2.run_id)
    assert fetch(wengine, day) == before
    with wengine.connect() as c:
        status = c.execute(sa.text("select status from scoring.runs where run_id = :r"),
                           {"r": plan2.run_id}).scalar_one()
        failed = c.execute(sa.text("select failed_rules from quality.validation_runs where file_name = :f"),
                           {"f": plan2.stage_table}).scalar_one()
    assert status == "failed" and failed == ["row_count_equals_planned"]


def test_a_date_without_active_pairs_fails_unless_allowed(world: World, wengine: sa.Engine) -> None:
    from ml.score import run_scoring

    with pytest.raises(ScoringError, match=r"score_date 2019-08-01: no active pairs.*--allow-empty"):
        run_scoring(wengine, world.settings(), dt.date(2019, 8, 1), n_buckets=2)
    assert "scores_p20190801" not in partitions(wengine)
    summary = run_scoring(wengine, world.settings(), dt.date(2019, 8, 1), n_buckets=2, allow_empty=True)
    assert (summary.status, summary.planned_pairs, summary.scored_pairs) == ("succeeded", 0, 0)
    assert "scores_p20190801" in partitions(wengine) and fetch(wengine, dt.date(2019, 8, 1)) == []


def test_a_small_night_is_planned_in_fewer_buckets_unless_a_count_is_given(world: World, wengine: sa.Engine) -> None:
    from ml.score import plan_run
    from ml.score.plan import count_pairs_by_bucket

    day = dt.date(2019, 11, 8)
    s = world.settings(score_buckets=8)
    fine = count_pairs_by_bucket(wengine, s, day, 8)
    assert sum(fine) > 500 and all(fine)
    small = plan_run(wengine, s.model_copy(update={"score_bucket_min_pairs": sum(fine) // 2}), day)
    assert (small.n_buckets, small.bucket_pairs) == (2, [sum(fine[:4]), sum(fine[4:])])
    assert [b.n_buckets for b in small.batches] == [2, 2]
    one = plan_run(wengine, s, day)  # the default 150k pairs per bucket: a test night is one task
    assert (one.n_buckets, one.planned_pairs) == (1, sum(fine))
    every = plan_run(wengine, s.model_copy(update={"score_bucket_min_pairs": 0}), day)
    assert (every.n_buckets, every.bucket_pairs) == (8, fine)
    assert plan_run(wengine, s, day, n_buckets=4).n_buckets == 4  # an explicit count is kept


def test_unknown_model_or_bad_bucket_count_is_refused(world: World, wengine: sa.Engine) -> None:
    from ml.score import plan_run

    with pytest.raises(ScoringError, match="not in the registry"):
        plan_run(wengine, world.settings(), dt.date(2019, 11, 8), model_version="nope")
    with pytest.raises(ScoringError, match="bucket count"):
        plan_run(wengine, world.settings(), dt.date(2019, 11, 8), n_buckets=1000)
    with pytest.raises(ScoringError, match="bucket count must be in 1..512.*not 0"):  # 0 is not "the default"
        plan_run(wengine, world.settings(), dt.date(2019, 11, 8), n_buckets=0)


def test_a_partition_that_would_shrink_too_much_fails_unless_allowed(world: World, wengine: sa.Engine) -> None:
    """Issue 15: missing upstream data (here: a 1-day active window) must not atomically replace a full partition."""
    from ml.score import run_scoring

    day = dt.date(2019, 11, 12)
    full = run_scoring(wengine, world.settings(), day, n_buckets=2)
    before = fetch(wengine, day)
    thin = world.settings(active_window_days=1)
    with pytest.raises(ScoringError, match=r"shrinking more than 50% against score_date 2019-11-12.*--allow-shrink"):
        run_scoring(wengine, thin, day, n_buckets=2)
    assert fetch(wengine, day) == before  # the failed run's stage stays for inspection until the next plan
    allowed = run_scoring(wengine, thin, day, n_buckets=2, allow_shrink=True)
    assert 0 < allowed.scored_pairs < full.scored_pairs / 2


def test_the_losing_side_of_two_runs_of_one_date_says_another_run_won(world: World, wengine: sa.Engine,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import ml.score.finalize as fin

    day = dt.date(2019, 11, 13)
    real = fin.score_batch
    newer: list = []

    def race(engine, settings, batch, **kw):  # noqa: ANN001, ANN202 - the first batch of run A
        if not newer:  # ... while run B of the same date starts later and completes
            monkeypatch.setattr(fin, "score_batch", real)
            newer.append(fin.run_scoring(wengine, world.settings(), day, n_buckets=2))
        return real(engine, settings, batch, **kw)

    monkeypatch.setattr(fin, "score_batch", race)
    with pytest.raises(ScoringError) as info:
        fin.run_scoring(wengine, world.settings(), day, n_buckets=2)
    assert re.search(rf"of score_date {day} lost to run {newer[0].run_id} \(started .*\): another run of this date "
                     "won; nothing of this run was kept", str(info.value)), info.value
    assert {r[-1] for r in fetch(wengine, day)} == {newer[0].run_id}


def test_two_plans_that_did_not_see_each_other_the_newer_swap_wins(world: World, wengine: sa.Engine,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Two runs of one date planned at once (neither plan's cleanup saw the other's stage): B, planned later,
    swaps first; A's swap then refuses to replace B's partition (RunSuperseded), and A's swap is rolled back."""
    import ml.score.plan as plan_mod
    from ml.errors import RunSuperseded
    from ml.score import finalize_run, plan_run, score_batch

    day = dt.date(2019, 10, 24)
    s = world.settings()
    a = plan_run(wengine, s, day, n_buckets=2)
    monkeypatch.setattr(plan_mod, "cleanup_stages", lambda *args, **kw: [])  # B's cleanup ran before A's plan committed
    b = plan_run(wengine, s, day, n_buckets=2)
    monkeypatch.undo()
    for batch in (*a.batches, *b.batches):
        score_batch(wengine, s, batch)
    finalize_run(wengine, s, b.run_id)
    served = fetch(wengine, day)
    with pytest.raises(RunSuperseded, match=rf"scoring run {a.run_id} of score_date {day} lost to run {b.run_id} "
                                            r"\(started .*, succeeded\): another run of this date won"):
        finalize_run(wengine, s, a.run_id)
    assert fetch(wengine, day) == served and {r[-1] for r in served} == {b.run_id}
    with wengine.connect() as c:
        status = c.execute(sa.text("select status from scoring.runs where run_id = :r"), {"r": a.run_id}).scalar()
    assert status == "failed" and f"scores_stage_{a.run_id}" in stage_tables(wengine)  # kept for inspection


def test_the_dag_steps_of_a_superseded_run_each_say_which_run_won(world: World, wengine: sa.Engine) -> None:
    """The DAG runs plan, each bucket and finalize as separate tasks: after a newer run of the date has planned (and
    here succeeded), the older run's next bucket and its finalize each raise RunSuperseded naming the winner."""
    from ml.errors import RunSuperseded
    from ml.score import finalize_run, plan_run, run_scoring, score_batch

    day = dt.date(2019, 10, 25)
    s = world.settings()
    a = plan_run(wengine, s, day, n_buckets=2)
    score_batch(wengine, s, a.batches[0].as_dict())  # the DAG passes the spec as a dict (XCom)
    b = run_scoring(wengine, s, day, n_buckets=2)  # its plan drops A's stage and marks A failed
    lost = rf"scoring run {a.run_id} of score_date {day} lost to run {b.run_id} \(started .*, succeeded\)"
    with pytest.raises(RunSuperseded, match=lost):
        score_batch(wengine, s, a.batches[1].as_dict())
    with pytest.raises(RunSuperseded, match=lost):
        finalize_run(wengine, s, a.run_id)
    assert {r[-1] for r in fetch(wengine, day)} == {b.run_id}
