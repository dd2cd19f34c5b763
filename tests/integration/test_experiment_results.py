"""Experiment results on hand-made fixtures equal a hand computation (conversion, lift, CIs, p-value, purchases per
exposed user, sample size); an injected 60/40 split on a 50/50 experiment is flagged as SRM; the bi view and the
daily exposure move (real Redis HyperLogLog) agree."""

from __future__ import annotations

import datetime as dt
import math
import uuid

import pytest
import sqlalchemy as sa

from ml import experiments as X
from tests.integration.test_experiments import register_fake

pytestmark = pytest.mark.integration

Z975 = 1.959963984540054


def _scores(engine, day: dt.date, rows: list[tuple[int, int, float, str, str, str]]) -> None:
    """rows: (user, product, probability, model_version, experiment_id, arm) into the day's partition."""
    with engine.begin() as conn:
        conn.execute(sa.text(f"create table if not exists scoring.scores_p{day:%Y%m%d} partition of scoring.scores"
                             " for values from (:a) to (:b)"), {"a": day, "b": day + dt.timedelta(days=1)})
        conn.execute(sa.text(
            "insert into scoring.scores (score_date, user_id, product_id, probability, model_version, run_id, tier,"
            " top_contributions, base_value, contributions, experiment_id, arm) values (:d, :u, :p, :prob, :mv, 'r',"
            " 'hot', '[]', 0, '{0}', :e, :arm)"),
            [{"d": day, "u": u, "p": p, "prob": q, "mv": mv, "e": e, "arm": a} for u, p, q, mv, e, a in rows])


def _publication(engine, day: dt.date, top_n: int, floor: float) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text(
            "insert into scoring.publications (redis_prefix, version, score_date, status, top_n, min_probability,"
            " published_at) values (:prefix, 1, :d, 'published', :n, :f, now())"),
            {"prefix": f"res{uuid.uuid4().hex[:6]}", "d": day, "n": top_n, "f": floor})


def _purchases(engine, events: list[tuple[int, int, dt.datetime]]) -> None:
    with engine.begin() as conn:
        for day in {t.date() for _, _, t in events}:
            conn.execute(sa.text("select raw.ensure_event_partition(:d)"), {"d": day})
        conn.execute(sa.text(
            "insert into raw.events (event_time, event_type, product_id, category_id, price, user_id, file_id,"
            " line_no) values (:t, 'purchase', :p, 1, 9.99, :u, 0, 0)"),
            [{"t": t, "p": p, "u": u} for u, p, t in events])


def _experiment(engine, day: dt.date, split: str = "50,50"):
    with engine.begin() as conn:  # the registry's champion must be the control; only one experiment runs
        conn.execute(sa.text("update experiments.experiments set status = 'stopped' where status = 'running'"))
    champ, chall = register_fake(engine, "champion"), register_fake(engine)
    return X.create_experiment(engine, f"res-{uuid.uuid4().hex[:8]}", f"control={champ},challenger={chall}",
                               split=split, start_date=day, end_date=day, horizon_days=7, mde=0.1,
                               allow_past=True)


def test_results_equal_a_hand_computation(engine) -> None:
    day = dt.date(2034, 5, 1)
    exp = _experiment(engine, day)
    mv = {a.name: a.model_version for a in exp.arms}
    rows = []
    for arm, users in (("control", range(1, 101)), ("challenger", range(101, 201))):
        for u in users:  # three products per user; the publication keeps the top 2 at or above 0.2
            rows += [(u, 1000, 0.9, mv[arm], exp.experiment_id, arm), (u, 1001, 0.5, mv[arm], exp.experiment_id, arm),
                     (u, 1002, 0.1, mv[arm], exp.experiment_id, arm)]
    _scores(engine, day, rows)
    _publication(engine, day, top_n=2, floor=0.2)
    t0 = dt.datetime.combine(day, dt.time(), dt.UTC)
    events = [(u, 1000, t0 + dt.timedelta(days=1)) for u in range(1, 11)]             # 10 control converters
    events += [(11, 1002, t0 + dt.timedelta(days=1)),                                # not published (rank 3)
               (12, 1000, t0 + dt.timedelta(days=7, seconds=1)),                     # after the 7-day horizon
               (13, 1001, t0 - dt.timedelta(seconds=1)),                             # before the score date
               (14, 4242, t0 + dt.timedelta(days=1))]                                # not a scored product
    events += [(u, 1001, t0 + dt.timedelta(days=2)) for u in range(101, 121)]        # 20 challenger converters
    events += [(101, 1000, t0 + dt.timedelta(days=6, hours=23))]                     # a second purchase, same user
    _purchases(engine, events)
    with engine.begin() as conn:
        conn.execute(sa.text("insert into experiments.exposures (experiment_id, arm, exposure_date, requests, users,"
                             " users_to_date) values (:e, 'control', :d, 300, 80, 80), (:e, 'challenger', :d, 310,"
                             " 90, 90)"), {"e": exp.experiment_id, "d": day})

    res = X.experiment_results(engine, exp.experiment_id, today=day + dt.timedelta(days=8))
    control, chall = res.arms
    assert (control.arm, control.assigned_users, control.converters, control.purchases) == ("control", 100, 10, 10)
    assert (chall.arm, chall.assigned_users, chall.converters, chall.purchases) == ("challenger", 100, 20, 21)
    assert control.conversion == 0.10 and chall.conversion == 0.20
    assert control.purchases_per_exposed == pytest.approx(10 / 80) and chall.purchases_per_exposed == pytest.approx(21 / 90)
    # by hand: se = sqrt(.2*.8/100 + .1*.9/100) = 0.05; pooled p = .15, se0 = sqrt(.15*.85*.02)
    assert chall.abs_lift == pytest.approx(0.1)
    assert chall.abs_lift_ci_low == pytest.approx(0.1 - Z975 * 0.05) and chall.abs_lift_ci_high == pytest.approx(0.1 + Z975 * 0.05)
    z = 0.1 / math.sqrt(0.15 * 0.85 * 0.02)
    assert chall.p_value == pytest.approx(math.erfc(z / math.sqrt(2)), rel=1e-9)
    assert chall.p_value == pytest.approx(0.0477, abs=1e-4) and chall.significant
    se_log = math.sqrt(0.8 / 20 + 0.9 / 10)
    assert chall.rel_lift == pytest.approx(1.0)
    assert chall.rel_lift_ci_low == pytest.approx(2 * math.exp(-Z975 * se_log) - 1)
    assert chall.rel_lift_ci_high == pytest.approx(2 * math.exp(Z975 * se_log) - 1)
    assert not chall.srm_flag and chall.srm_chi2 == 0.0
    pbar = 0.15  # (0.1 + 0.2) / 2 for mde 0.1 from a 10% baseline
    need = (Z975 * math.sqrt(2 * pbar * (1 - pbar)) + 0.8416212335729143 * math.sqrt(0.1 * 0.9 + 0.2 * 0.8)) ** 2 / 0.01
    assert chall.required_per_arm == math.ceil(need) == 199
    assert chall.decision == "inconclusive: underpowered (100 < 199 per arm)"
    with engine.connect() as conn:
        view = conn.execute(sa.text("select arm, assigned_users, converters, p_value, srm_flag from bi.experiment_results"
                                    " where experiment_id = :e order by arm"), {"e": exp.experiment_id}).all()
    assert [tuple(v) for v in view] == [("challenger", 100, 20, pytest.approx(chall.p_value), False),
                                       ("control", 100, 10, None, False)]
    assert any("decision for challenger" in line for line in res.lines())


def test_an_injected_60_40_split_is_flagged_as_srm(engine) -> None:
    day = dt.date(2034, 6, 1)
    exp = _experiment(engine, day)
    mv = {a.name: a.model_version for a in exp.arms}
    rows = [(u, 1, 0.5, mv["control"], exp.experiment_id, "control") for u in range(1, 601)]
    rows += [(u, 1, 0.5, mv["challenger"], exp.experiment_id, "challenger") for u in range(601, 1001)]
    _scores(engine, day, rows)
    res = X.experiment_results(engine, exp.experiment_id, today=day + dt.timedelta(days=30))
    assert res.srm_flag and all(a.srm_flag for a in res.arms)
    assert res.arms[0].srm_chi2 == pytest.approx(40.0) and res.arms[0].srm_p_value < 1e-9
    assert res.arms[1].decision.startswith("invalid: sample ratio mismatch")
    assert any("SAMPLE RATIO MISMATCH" in line for line in res.lines())
    from ml.dashboard import collect_dashboard, render_dashboard

    page = render_dashboard(collect_dashboard(engine))
    assert "<h2>A/B experiments</h2>" in page and f"<b>SAMPLE RATIO MISMATCH</b> in {exp.experiment_id}" in page
    # a 52/48 split of 1000 users is within chance: not flagged
    assert X.srm_check([520, 480], [0.5, 0.5])[1] > 0.001


def test_only_matured_dates_count_and_unpublished_dates_use_the_publisher_defaults(engine) -> None:
    day = dt.date(2034, 8, 1)
    exp = _experiment(engine, day)
    exp_end = day + dt.timedelta(days=7)
    with engine.begin() as conn:
        conn.execute(sa.text("update experiments.experiments set end_date = :d where experiment_id = :e"),
                     {"d": exp_end, "e": exp.experiment_id})
    mv = {a.name: a.model_version for a in exp.arms}
    for d in (day, exp_end):
        _scores(engine, d, [(u, p, q, mv["control"], exp.experiment_id, "control") for u in (1, 2)
                            for p, q in ((7, 0.9), (8, 0.8))])
    t0 = dt.datetime.combine(day, dt.time(), dt.UTC)
    _purchases(engine, [(1, 8, t0 + dt.timedelta(days=1)), (2, 8, t0 + dt.timedelta(days=8))])
    # no publication of either date: top_n=1 -> only product 7 counts as published; with top_n=2 product 8 too
    assert X.experiment_results(engine, exp.experiment_id, today=day + dt.timedelta(days=7), top_n=1,
                                record=False).arms[0].converters == 0
    res = X.experiment_results(engine, exp.experiment_id, today=day + dt.timedelta(days=7), top_n=2, record=False)
    assert (res.arms[0].assigned_users, res.arms[0].converters) == (2, 1)  # exp_end has not matured: not counted
    res = X.experiment_results(engine, exp.experiment_id, today=exp_end + dt.timedelta(days=7), top_n=2, record=False)
    assert (res.arms[0].assigned_users, res.arms[0].converters, res.arms[0].purchases) == (2, 2, 2)


def test_daily_move_copies_redis_exposure_counts(engine, settings, redis_client) -> None:
    from ml.keyspace import KeySpace

    day = dt.date(2034, 7, 1)
    exp = _experiment(engine, day)
    X.start_experiment(engine, exp.experiment_id)
    ks = KeySpace(settings.redis_prefix)
    stamp = day.strftime("%Y%m%d")
    before = (day - dt.timedelta(days=1)).strftime("%Y%m%d")
    redis_client.pfadd(ks.exposure_users(exp.experiment_id, "control", stamp), *range(1, 501))
    redis_client.pfadd(ks.exposure_users(exp.experiment_id, "control", before), *range(400, 701))
    redis_client.set(ks.exposure_requests(exp.experiment_id, "control", stamp), 1234)
    with engine.begin() as conn:
        conn.execute(sa.text("update experiments.experiments set created_at = :t where experiment_id = :e"),
                     {"t": dt.datetime(2034, 6, 25, tzinfo=dt.UTC), "e": exp.experiment_id})
    for _ in range(2):  # re-runnable: the day's rows are replaced
        rows = X.move_exposures(engine, redis_client, settings, day)
    got = {r["arm"]: r for r in rows if r["e"] == exp.experiment_id}
    assert got["control"]["req"] == 1234 and got["challenger"]["req"] == 0
    assert got["control"]["users"] == pytest.approx(500, rel=0.03)
    assert got["control"]["to_date"] == pytest.approx(700, rel=0.03)
    with engine.connect() as conn:
        n = conn.execute(sa.text("select count(*) from experiments.exposures where experiment_id = :e"),
                         {"e": exp.experiment_id}).scalar()
    assert n == 2
    X.stop_experiment(engine, exp.experiment_id)
