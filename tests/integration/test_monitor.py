"""Realized performance on real Postgres: the SQL metrics equal scikit-learn's on the same joined rows; a date is
evaluated only once its horizon matured; late events re-evaluate it without duplicating rows."""

from __future__ import annotations

import datetime as dt
import itertools

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

pytestmark = pytest.mark.integration

DAY = dt.date(2041, 3, 10)
_file_ids = itertools.count(1)


def _ensure_scores_partition(conn: sa.Connection, day: dt.date) -> None:
    part = f"scores_p{day:%Y%m%d}"
    conn.execute(sa.text(
        f"create table if not exists scoring.{part} partition of scoring.scores "
        f"for values from ('{day}') to ('{day + dt.timedelta(days=1)}')"))


def add_file(conn: sa.Connection, events: list[tuple[dt.datetime, str, int, int]]) -> int:
    """Insert events (time, type, user, product) as one ingested file; returns its file_id."""
    times = [e[0] for e in events]
    fid = conn.execute(sa.text(
        "insert into raw.ingested_files (file_name, file_uri, checksum_sha256, file_format, row_count,"
        " min_event_time, max_event_time) values (:n, :n, :c, 'csv', :r, :lo, :hi) returning file_id"),
        {"n": f"mon-{next(_file_ids)}.csv", "c": f"{np.random.default_rng().integers(1 << 62):x}",
         "r": len(events), "lo": min(times), "hi": max(times)}).scalar_one()
    for day in sorted({t.date() for t in times}):
        conn.execute(sa.text("select raw.ensure_event_partition(:d)"), {"d": day})
    for i, (t, kind, u, p) in enumerate(events):
        conn.execute(sa.text(
            "insert into raw.events (event_time, event_type, product_id, category_id, price, user_id, file_id,"
            " line_no) values (:t, :k, :p, 1, 1.0, :u, :f, :i)"), {"t": t, "k": kind, "p": p, "u": u, "f": fid, "i": i})
    return fid


def build_fixture(engine: sa.Engine, settings, day: dt.date, seed: int = 7, *, edges: bool = True) -> pd.DataFrame:
    """Scores of ``day`` (model vA), a publication (top 3, floor 0.1) and purchase events; returns the expected
    joined rows (label per the trainer's definition)."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(1, 41):
        products = rng.choice(np.arange(100, 160), size=int(rng.integers(1, 9)), replace=False)
        probs = np.round(rng.uniform(0.01, 0.99, size=len(products)), 2)  # ties across users, never within one
        _, first = np.unique(probs, return_index=True)
        for j in sorted(first):
            rows.append((u, int(products[j]), float(probs[j])))
    df = pd.DataFrame(rows, columns=["user_id", "product_id", "probability"])
    df["label"] = (rng.uniform(size=len(df)) < df["probability"] * 0.6).astype(int)
    df["tier"] = np.select([df.probability >= 0.5, df.probability >= 0.2, df.probability >= 0.05],
                           ["hot", "warm", "cool"], "cold")
    as_of = dt.datetime.combine(day, dt.time(), dt.timezone.utc)
    horizon = dt.timedelta(days=settings.label_horizon_days)
    events = [(as_of + dt.timedelta(hours=3 + i % 100), "purchase", r.user_id, r.product_id)
              for i, r in enumerate(df[df.label == 1].itertuples())]
    neg = df[df.label == 0].head(3)
    if not edges:
        neg = neg.head(0)
    # outside the label window: never a positive (before as_of, at label_until), and a view is no purchase
    events += [] if neg.empty else [(as_of - dt.timedelta(seconds=1), "purchase", int(neg.user_id.iloc[0]), int(neg.product_id.iloc[0])),
               (as_of + horizon, "purchase", int(neg.user_id.iloc[1]), int(neg.product_id.iloc[1])),
               (as_of + dt.timedelta(days=1), "view", int(neg.user_id.iloc[2]), int(neg.product_id.iloc[2]))]
    with engine.begin() as c:
        _ensure_scores_partition(c, day)
        c.execute(sa.text(
            "insert into scoring.runs (run_id, score_date, model_version, status, finished_at)"
            " values (:r, :d, 'vA', 'succeeded', now())"), {"r": f"run-{day}", "d": day})
        for r in df.itertuples():
            c.execute(sa.text(
                "insert into scoring.scores (score_date, user_id, product_id, probability, model_version, run_id,"
                " tier, top_contributions, base_value, contributions)"
                " values (:d, :u, :p, :prob, 'vA', :run, :tier, '[]', -2.0, '{0.1}')"),
                {"d": day, "u": r.user_id, "p": r.product_id, "prob": r.probability, "run": f"run-{day}",
                 "tier": r.tier})
        c.execute(sa.text(
            "insert into scoring.publications (redis_prefix, version, score_date, model_version, status, top_n,"
            " min_probability, published_at) values (:p, 1, :d, 'vA', 'published', 3, 0.1, now())"),
            {"p": settings.redis_prefix, "d": day})
        add_file(c, events)
    return df


def cleanup(engine: sa.Engine, day: dt.date) -> None:
    with engine.begin() as c:
        c.execute(sa.text(f"drop table if exists scoring.scores_p{day:%Y%m%d}"))
        c.execute(sa.text("delete from scoring.runs where score_date = :d"), {"d": day})
        c.execute(sa.text("delete from scoring.publications where score_date = :d"), {"d": day})
        files = "select file_id from raw.ingested_files where file_name like 'mon-%'"
        c.execute(sa.text(f"delete from raw.events where file_id in ({files})"))
        c.execute(sa.text(f"delete from raw.ingested_files where file_id in ({files})"))
        for t in ("realized_metrics", "calibration_bins", "tier_outcomes"):
            c.execute(sa.text(f"delete from monitoring.{t} where score_date = :d"), {"d": day})


def expected(df: pd.DataFrame, k: int) -> dict[str, float]:
    from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

    from ml.evaluate import expected_calibration_error, hit_rate_at_k

    y, p = df.label.to_numpy(), df.probability.to_numpy()
    ranked = df.sort_values(["user_id", "probability"], ascending=[True, False])
    top = ranked.groupby("user_id").head(k)
    return {
        "roc_auc": roc_auc_score(y, p), "pr_auc": average_precision_score(y, p), "log_loss": log_loss(y, p),
        "brier": brier_score_loss(y, p), "ece": expected_calibration_error(y, p), "base_rate": y.mean(),
        "precision_at_k": top.label.sum() / len(top), "hit_rate_at_k": hit_rate_at_k(ranked.user_id.to_numpy(),
                                                                                     ranked.label.to_numpy(),
                                                                                     ranked.probability.to_numpy(), k),
        "pairs": len(df), "positives": int(y.sum()), "users": df.user_id.nunique(),
    }


def test_realized_metrics_equal_sklearn_and_reevaluate_without_duplicates(engine: sa.Engine, settings) -> None:
    from ml import monitor

    settings = settings.model_copy(update={"monitor_top_k": 3})
    df = build_fixture(engine, settings, DAY)
    try:
        ev = monitor.evaluate_date(engine, settings, DAY)
        assert ev is not None
        got = {m["segment"]: m for m in ev.metrics}
        assert set(got) == {"all", "published"}
        ranked = df.sort_values(["user_id", "probability", "product_id"], ascending=[True, False, True])
        published = ranked[(ranked.groupby("user_id").cumcount() < 3) & (ranked.probability >= 0.1)]
        for seg, rows in (("all", df), ("published", published)):
            exp = expected(rows, 3)
            for name, value in exp.items():
                assert got[seg][name] == pytest.approx(value, rel=1e-9, abs=1e-12), (seg, name)

        with engine.connect() as c:
            tiers = pd.read_sql_query(sa.text(
                "select * from bi.tier_conversion where score_date = :d and segment = 'all'"), c, params={"d": DAY})
            calib = pd.read_sql_query(sa.text(
                "select * from bi.calibration where score_date = :d and segment = 'all'"), c, params={"d": DAY})
        by_tier = df.groupby("tier").agg(pairs=("label", "size"), conv=("label", "mean"))
        for t in tiers.itertuples():
            assert t.pairs == by_tier.loc[t.tier, "pairs"]
            assert t.realized_conversion == pytest.approx(by_tier.loc[t.tier, "conv"])
            assert t.lift == pytest.approx(by_tier.loc[t.tier, "conv"] / df.label.mean())
        assert calib.pairs.sum() == len(df)

        # same labels: nothing to do; not matured: nothing written
        assert monitor.evaluate_date(engine, settings, DAY) is None
        assert DAY in monitor.matured_dates(engine, settings)

        # a late file turns one negative into a positive: the date is re-evaluated, never duplicated
        late = df[df.label == 0].iloc[5]
        with engine.begin() as c:
            add_file(c, [(dt.datetime.combine(DAY, dt.time(12), dt.timezone.utc), "purchase", int(late.user_id),
                          int(late.product_id))])
        done = monitor.run_monitor(engine, settings, score_dates=[DAY])
        assert [e.score_date for e in done] == [DAY]
        with engine.connect() as c:
            rows = c.execute(sa.text(
                "select segment, positives from monitoring.realized_metrics where score_date = :d order by 1"),
                {"d": DAY}).all()
        assert [r.segment for r in rows] == ["all", "published"]
        assert dict(rows)["all"] == int(df.label.sum()) + 1
    finally:
        cleanup(engine, DAY)


def test_unmatured_date_is_not_evaluated(engine: sa.Engine, settings) -> None:
    from ml import monitor

    day = dt.date(2042, 6, 1)
    build_fixture(engine, settings, day, edges=False)  # the newest event lies inside the horizon
    try:
        assert day not in monitor.matured_dates(engine, settings)
        assert monitor.evaluate_date(engine, settings, day) is None
        with engine.connect() as c:
            assert c.execute(sa.text("select count(*) from monitoring.realized_metrics where score_date = :d"),
                             {"d": day}).scalar_one() == 0
    finally:
        cleanup(engine, day)


def test_experiment_date_gives_metrics_per_arm_equal_to_sklearn(engine: sa.Engine, settings) -> None:
    """A date scored by an A/B experiment: one row set per (model version, arm), plus the overall '(all)' rows per
    model version, each equal to scikit-learn on exactly its joined rows; re-evaluating never duplicates."""
    from ml import monitor

    settings = settings.model_copy(update={"monitor_top_k": 3})
    day = dt.date(2041, 5, 20)
    df = build_fixture(engine, settings, day, seed=11)
    # users 1-15: arm control (vA), 16-30: arm treatment (vB, other probabilities), 31-40: not enrolled (vA)
    df["arm"] = np.select([df.user_id <= 15, df.user_id <= 30], ["control", "treatment"], monitor.UNENROLLED)
    df["model_version"] = np.where(df.arm == "treatment", "vB", "vA")
    rng = np.random.default_rng(3)
    treated = df.arm == "treatment"
    df.loc[treated, "probability"] = np.round(rng.uniform(0.01, 0.99, int(treated.sum())), 2)
    with engine.begin() as c:
        c.execute(sa.text("update scoring.runs set params = cast(:p as jsonb) where score_date = :d"), {
            "d": day, "p": '{"experiment": {"experiment_id": "mon-exp", "arms": []}}'})
        for r in df.itertuples():
            c.execute(sa.text(
                "update scoring.scores set model_version = :m, probability = :p, experiment_id = :e, arm = :a"
                " where score_date = :d and user_id = :u and product_id = :pr"),
                {"m": r.model_version, "p": r.probability, "e": None if r.arm == monitor.UNENROLLED else "mon-exp",
                 "a": None if r.arm == monitor.UNENROLLED else r.arm, "d": day, "u": r.user_id,
                 "pr": r.product_id})
    try:
        ev = monitor.evaluate_date(engine, settings, day)
        assert ev is not None
        got = {(m["model_version"], m["arm"], m["segment"]): m for m in ev.metrics}
        groups = {("vA", "(all)"): df[df.model_version == "vA"], ("vB", "(all)"): df[df.model_version == "vB"],
                  ("vA", "control"): df[df.arm == "control"], ("vB", "treatment"): df[df.arm == "treatment"],
                  ("vA", monitor.UNENROLLED): df[df.arm == monitor.UNENROLLED]}
        assert {k[:2] for k in got} == set(groups)
        for (model, arm), rows in groups.items():
            ranked = rows.sort_values(["user_id", "probability", "product_id"], ascending=[True, False, True])
            published = ranked[(ranked.groupby("user_id").cumcount() < 3) & (ranked.probability >= 0.1)]
            for seg, seg_rows in (("all", rows), ("published", published)):
                row = got[(model, arm, seg)]
                assert row["experiment_id"] == "mon-exp"
                for name, value in expected(seg_rows, 3).items():
                    assert row[name] == pytest.approx(value, rel=1e-9, abs=1e-12), (model, arm, seg, name)

        with engine.connect() as c:
            perf = pd.read_sql_query(sa.text(
                "select model_version, arm, segment, realized_pr_auc from bi.model_performance where score_date = :d"),
                c, params={"d": day})
            tiers = pd.read_sql_query(sa.text(
                "select arm, tier, pairs from bi.tier_conversion where score_date = :d and model_version = 'vA'"
                " and segment = 'all'"), c, params={"d": day})
            bins = c.execute(sa.text(
                "select arm, sum(pairs) from bi.calibration where score_date = :d and segment = 'all'"
                " and model_version = 'vA' group by 1"), {"d": day}).all()
        assert len(perf) == 10 and not perf.duplicated(["model_version", "arm", "segment"]).any()
        control = df[df.arm == "control"].groupby("tier").size()
        assert tiers[tiers.arm == "control"].set_index("tier").pairs.to_dict() == control.to_dict()
        assert {arm: int(n) for arm, n in bins} == {
            "(all)": int((df.model_version == "vA").sum()), "control": int((df.arm == "control").sum()),
            monitor.UNENROLLED: int((df.arm == monitor.UNENROLLED).sum())}

        # re-evaluation replaces the date's rows: same keys, no duplicate
        assert monitor.evaluate_date(engine, settings, day, force=True) is not None
        with engine.connect() as c:
            n = c.execute(sa.text("select count(*), count(distinct (model_version, arm, segment))"
                                  " from monitoring.realized_metrics where score_date = :d"), {"d": day}).one()
        assert tuple(n) == (10, 10)
    finally:
        cleanup(engine, day)
