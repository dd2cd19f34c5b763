"""Model behaviour on a fitted ensemble: one more, more recent cart event for a pair must not lower its score, all
else equal.

Why it holds: every member is trained with monotone constraints on the pair's cart features (+1 on cart counts,
-1 on hours since the last cart, whose NaN "never carted" is filled with a value later than any real one), the blend
weights are non-negative and the Platt slope is positive, so the calibrated probability is monotone in them by
construction. The data below is built so that an *unconstrained* model learns the opposite for heavy carters (more
carts -> lower purchase odds); the last test shows the check has the power to fail.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ml.features import FEATURE_COLUMNS
from ml.settings import Settings

pytestmark = pytest.mark.model


def with_one_more_recent_cart(frame: pd.DataFrame, hours_ago: float = 0.5) -> pd.DataFrame:
    """The counterfactual: each pair got one more cart event ``hours_ago`` hours before as_of; nothing else changes
    (user, product and view features are held equal)."""
    out = frame.copy()
    out["pair_carts"] = out["pair_carts"] + 1
    out["pair_hours_since_last_cart"] = np.fmin(out["pair_hours_since_last_cart"].to_numpy(), hours_ago)
    if "pair_cart_without_purchase" in out:
        out["pair_cart_without_purchase"] = np.where(out["pair_purchases"] > 0, out["pair_cart_without_purchase"], 1.0)
    return out


def _snapshots(n_per_week: int = 1200, weeks: int = 4, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for w in range(weeks):
        n = n_per_week
        f = pd.DataFrame({c: rng.gamma(2.0, 2.0, n) for c in FEATURE_COLUMNS})
        carts = rng.poisson(1.2, n).astype(float)
        f["pair_carts"] = carts
        f["pair_hours_since_last_cart"] = np.where(carts > 0, rng.exponential(60, n), np.nan)
        f["pair_purchases"] = rng.binomial(1, 0.05, n).astype(float)
        f["pair_cart_without_purchase"] = ((carts > 0) & (f["pair_purchases"] == 0)).astype(float)
        f["pair_views"] = rng.poisson(4, n).astype(float)
        # purchase odds rise with the first carts, then FALL for heavy carters (a pattern an unconstrained model learns)
        z = (-3.2 + 1.1 * np.minimum(carts, 2) - 1.2 * np.maximum(carts - 2, 0) + 0.12 * f["pair_views"]
             - 0.01 * np.nan_to_num(f["pair_hours_since_last_cart"], nan=300.0))
        f["label"] = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(float)
        f["weight"] = 1.0
        f["user_id"] = rng.integers(1, 400, n)
        f["product_id"] = rng.integers(1, 1000, n)
        f["as_of"] = pd.Timestamp("2019-10-07", tz="UTC") + pd.Timedelta(weeks=w)
        rows.append(f)
    return pd.concat(rows, ignore_index=True)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory):
    from ml.train import TrainingData, train_ensemble

    frame = _snapshots()
    data = TrainingData(frame, list(FEATURE_COLUMNS))
    settings = Settings(state_dir=tmp_path_factory.mktemp("behaviour"), train_threads=1)
    res = train_ensemble(data, settings, n_trials=0)
    holdout = frame[frame["as_of"] == frame["as_of"].max()].reset_index(drop=True)
    return res.ensemble, holdout


def test_the_fitted_model_uses_cart_features(fitted) -> None:
    ens, holdout = fitted
    contrib, _ = ens.explain(holdout.iloc[:500], method="native")
    share = np.abs(contrib).mean(0) / np.abs(contrib).mean(0).sum()
    assert share[FEATURE_COLUMNS.index("pair_carts")] > 0.05  # the property below is not vacuous
    assert ens.calibration[0] > 0 and min(ens.weights.values()) >= 0


def test_one_more_recent_cart_never_lowers_the_score(fitted) -> None:
    ens, holdout = fitted
    before = ens.predict_proba(holdout)
    after = ens.predict_proba(with_one_more_recent_cart(holdout))
    worst = np.min(after - before)
    assert worst >= 0.0, f"{int((after < before).sum())} pairs lost score (worst {worst:.3g})"
    assert (after > before).mean() > 0.5  # and it usually raises it


@pytest.mark.parametrize("member", ["catboost", "xgboost", "lightgbm", "random_forest"])
def test_each_member_is_monotone_in_cart_features(fitted, member: str) -> None:
    ens, holdout = fitted
    X0, X1 = ens.matrix(holdout), ens.matrix(with_one_more_recent_cart(holdout))
    m0 = ens.member_margins(X0, [member])[member]
    m1 = ens.member_margins(X1, [member])[member]
    assert np.min(m1 - m0) >= 0.0


def test_the_check_can_fail_on_an_unconstrained_model(fitted) -> None:
    """Without monotone constraints, a LightGBM on the same data lowers some pairs' scores: the check has power."""
    import lightgbm as lgb

    _, holdout = fitted
    frame = _snapshots()
    train = frame[frame["as_of"] < frame["as_of"].max()]
    model = lgb.train({"objective": "binary", "verbosity": -1, "num_threads": 1, "seed": 0, "num_leaves": 31},
                      lgb.Dataset(train[FEATURE_COLUMNS], train["label"]), num_boost_round=60)
    before = model.predict(holdout[FEATURE_COLUMNS])
    after = model.predict(with_one_more_recent_cart(holdout)[FEATURE_COLUMNS])
    assert (after < before).any()
