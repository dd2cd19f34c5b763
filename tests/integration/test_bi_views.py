"""bi.* views on real Postgres: the numbers analysts see match the rows underneath."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

pytestmark = pytest.mark.integration


def test_bi_views_summarise_scores(engine: sa.Engine) -> None:
    day = "2040-02-29"
    rows = [
        (1, 10, 0.9, "hot", ["CART_RECENT"]),
        (1, 11, 0.3, "warm", ["CART_RECENT", "REPEAT_VIEWS"]),
        (2, 10, 0.01, "cold", []),
    ]
    with engine.begin() as c:
        c.execute(sa.text(
            "create table scoring.scores_p20400229 partition of scoring.scores "
            "for values from ('2040-02-29') to ('2040-03-01')"
        ))
        for u, p, prob, tier, codes in rows:
            c.execute(
                sa.text(
                    "insert into scoring.scores (score_date, user_id, product_id, probability, model_version, run_id,"
                    " tier, reason_codes, reason_texts, top_contributions, base_value, contributions)"
                    " values (:d, :u, :p, :prob, 'v1', 'r1', :tier, :codes, :codes, '[]', -2.0, '{0.1}')"
                ),
                {"d": day, "u": u, "p": p, "prob": prob, "tier": tier, "codes": codes},
            )
    try:
        with engine.connect() as c:
            summary = c.execute(sa.text("select * from bi.daily_score_summary where score_date = :d"), {"d": day}).one()
            assert (summary.pairs, summary.users, summary.hot_pairs, summary.warm_pairs) == (3, 2, 1, 1)
            assert summary.mean_probability == pytest.approx((0.9 + 0.3 + 0.01) / 3)
            tiers = dict(c.execute(sa.text(
                "select tier, share from bi.tier_distribution where score_date = :d"), {"d": day}).all())
            assert tiers == pytest.approx({"hot": 1 / 3, "warm": 1 / 3, "cold": 1 / 3})
            reasons = dict(c.execute(sa.text(
                "select code, pairs from bi.reason_code_frequency where score_date = :d"), {"d": day}).all())
            assert reasons == {"CART_RECENT": 2, "REPEAT_VIEWS": 1}
            latest = c.execute(sa.text("select count(*), min(score_date) from bi.latest_scores")).one()
            assert latest[0] >= 3 and str(latest[1]) >= day
    finally:
        with engine.begin() as c:
            c.execute(sa.text("drop table scoring.scores_p20400229"))
