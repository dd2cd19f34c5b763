"""The ensemble on small synthetic frames: blend, calibration, additivity, native artifacts, monotone constraints."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ml.ensemble import (
    MEMBER_NAMES,
    NAN_FILL_LARGE,
    Ensemble,
    as_matrix,
    fit_blend,
    fit_platt,
    member_kind,
    monotone_constraints,
    nan_fill_values,
    sigmoid,
)
from ml.errors import ModelError

FEATURES = ["pair_carts", "pair_hours_since_last_cart", "pair_views", "user_events", "product_price", "noise"]


def _frame(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    carts = rng.poisson(0.4, n).astype(float)
    since = np.where(carts > 0, rng.exponential(48, n), np.nan)
    views = rng.poisson(3, n).astype(float)
    X = pd.DataFrame({
        "pair_carts": carts, "pair_hours_since_last_cart": since, "pair_views": views,
        "user_events": rng.poisson(20, n).astype(float), "product_price": rng.lognormal(3, 1, n),
        "noise": rng.normal(size=n),
    })
    z = -3.0 + 1.2 * carts - 0.01 * np.nan_to_num(since, nan=200) + 0.15 * views
    y = (rng.random(n) < sigmoid(z)).astype(float)
    return X, y


@pytest.fixture(scope="module")
def fitted() -> dict:
    """One small ensemble with default parameters (no tuning): members, validation/holdout frames."""
    Xt, yt = _frame(3000, 1)
    Xv, yv = _frame(1500, 2)
    Xh, yh = _frame(800, 3)
    fill = nan_fill_values(FEATURES)
    at, av = as_matrix(Xt, FEATURES, fill), as_matrix(Xv, FEATURES, fill)
    from ml.tune import default_params

    models = {}
    for m in MEMBER_NAMES:
        kind = member_kind(m)
        data = kind.prepare(at, yt, np.ones(len(yt)), av, yv, np.ones(len(yv)), FEATURES)
        models[m] = kind.fit(default_params(m), data, feature_names=FEATURES, seed=0, threads=1).model
    margins = np.column_stack([member_kind(m).predict_margin(models[m], av, 1) for m in MEMBER_NAMES])
    blend = fit_blend(margins, yv)
    ens = Ensemble(models, dict(zip(MEMBER_NAMES, blend.weights)), (blend.a, blend.b), FEATURES, threshold=0.3,
                   nan_fill=fill, threads=1)
    return {"ensemble": ens, "Xh": Xh, "yh": yh, "Xv": Xv, "yv": yv}


def test_fit_platt_recovers_a_known_map() -> None:
    rng = np.random.default_rng(0)
    m = rng.normal(size=50_000)
    y = (rng.random(m.size) < sigmoid(2.0 * m - 1.0)).astype(float)
    a, b = fit_platt(m, y)
    assert a == pytest.approx(2.0, abs=0.06) and b == pytest.approx(-1.0, abs=0.05)


def test_fit_blend_weights_on_the_simplex_and_useless_member_ignored() -> None:
    rng = np.random.default_rng(1)
    n = 20_000
    signal = rng.normal(size=n)
    y = (rng.random(n) < sigmoid(1.5 * signal - 1.0)).astype(float)
    margins = np.column_stack([
        signal + rng.normal(scale=0.3, size=n),  # good
        signal + rng.normal(scale=1.0, size=n),  # weaker
        rng.normal(size=n) * 5,                   # pure noise on another scale
    ])
    blend = fit_blend(margins, y)
    assert blend.weights.min() >= 0.0 and blend.weights.sum() == pytest.approx(1.0, abs=1e-12)
    assert blend.weights[0] > blend.weights[1] > blend.weights[2]
    assert blend.weights[2] < 0.01
    z = blend.a * (margins @ blend.weights) + blend.b
    from ml.ensemble import weighted_log_loss_from_logit as ll

    # the fitted blend is at least as good as any member alone after its own Platt map
    for j in range(3):
        a, b = fit_platt(margins[:, j], y)
        assert ll(z, y) <= ll(a * margins[:, j] + b, y) + 1e-9


@pytest.mark.parametrize(
    ("name", "direction"),
    [
        ("pair_carts", 1), ("pair_cart_count_7d", 1), ("pair_carts_24h", 1), ("pair_cart_without_purchase", 1),
        ("pair_hours_since_last_cart", -1), ("pair_removes", 0), ("pair_remove_from_cart_count", 0),
        ("user_carts", 0), ("product_carts", 0), ("pair_cart_to_view_ratio", 0), ("pair_views", 0),
    ],
)
def test_monotone_constraints_by_feature_name(name: str, direction: int) -> None:
    assert monotone_constraints([name]) == [direction]


def test_monotone_rules_on_the_real_feature_list() -> None:
    from ml.features import FEATURE_COLUMNS

    cons = dict(zip(FEATURE_COLUMNS, monotone_constraints(FEATURE_COLUMNS)))
    assert cons["pair_carts"] == 1 and cons["pair_hours_since_last_cart"] == -1
    assert sum(1 for v in cons.values() if v) <= 4, "only pair cart features are constrained"


def test_as_matrix_selects_orders_and_fills_without_mutating() -> None:
    df = pd.DataFrame({"b": [1.0, np.nan], "a": [np.nan, 2.0], "extra": ["x", "y"]})
    arr = as_matrix(df, ["a", "b"], {"a": 9.0})
    assert arr[0].tolist() == [9.0, 1.0] and arr[1, 0] == 2.0 and np.isnan(arr[1, 1])
    assert np.isnan(df.loc[0, "a"])
    raw = np.array([[np.nan, 1.0]])
    as_matrix(raw, ["a", "b"], {"a": 9.0})
    assert np.isnan(raw[0, 0]), "input arrays are never modified"
    with pytest.raises(ModelError, match="lacks feature"):
        as_matrix(df, ["a", "zzz"])


def test_predictions_are_probabilities_and_consistent(fitted: dict) -> None:
    ens, Xh = fitted["ensemble"], fitted["Xh"]
    p = ens.predict_proba(Xh)
    assert p.shape == (len(Xh),) and p.dtype == np.float64 and ((p > 0) & (p < 1)).all()
    a, b = ens.calibration
    np.testing.assert_array_equal(ens.predict_logit(Xh), a * ens.predict_margin(Xh) + b)
    margins = ens.member_margins(Xh)
    blended = sum(ens.weights[m] * margins[m] for m in ens.active_members())
    np.testing.assert_allclose(ens.predict_margin(Xh), blended, rtol=0, atol=1e-12)
    # the same rows as a matrix in feature order give the same probabilities
    np.testing.assert_array_equal(ens.predict_proba(Xh[FEATURES].to_numpy()), p)


@pytest.mark.parametrize("method", ["native", "auto"])
def test_contributions_add_up_to_the_logit(fitted: dict, method: str) -> None:
    ens, Xh = fitted["ensemble"], fitted["Xh"]
    contrib, base = ens.explain(Xh, method=method)
    assert contrib.shape == (len(Xh), len(FEATURES)) and base.shape == (len(Xh),)
    np.testing.assert_allclose(contrib.sum(axis=1) + base, ens.predict_logit(Xh), rtol=0, atol=1e-4)
    # the noise feature matters least on average
    assert np.abs(contrib).mean(0)[FEATURES.index("noise")] < np.abs(contrib).mean(0)[FEATURES.index("pair_carts")]


def test_save_load_is_bit_identical_and_native(fitted: dict, tmp_path) -> None:
    ens, Xh = fitted["ensemble"], fitted["Xh"]
    manifest = ens.save(tmp_path / "v1")
    files = sorted(p.name for p in (tmp_path / "v1").iterdir())
    assert files == ["catboost.cbm", "lightgbm.txt", "manifest.json", "random_forest.txt", "xgboost.ubj"]
    assert not any(p.suffix in (".pkl", ".pickle", ".joblib") for p in (tmp_path / "v1").iterdir())
    on_disk = json.loads((tmp_path / "v1" / "manifest.json").read_text())
    assert on_disk["feature_names"] == FEATURES and on_disk["weights"] == manifest["weights"]
    assert set(on_disk["library_versions"]) >= {"catboost", "xgboost", "lightgbm"}
    loaded = Ensemble.load(tmp_path / "v1", threads=1)
    assert loaded.weights == ens.weights and loaded.calibration == ens.calibration
    assert loaded.nan_fill == ens.nan_fill and loaded.threshold == ens.threshold
    np.testing.assert_array_equal(loaded.predict_proba(Xh), ens.predict_proba(Xh))
    for m in MEMBER_NAMES:
        np.testing.assert_array_equal(loaded.member_margins(Xh)[m], ens.member_margins(Xh)[m])


def test_load_refuses_a_tampered_artifact(fitted: dict, tmp_path) -> None:
    fitted["ensemble"].save(tmp_path / "v")
    path = tmp_path / "v" / "lightgbm.txt"
    path.write_text(path.read_text().replace("learning_rate", "learning_rate ", 1))
    with pytest.raises(ModelError, match="sha256"):
        Ensemble.load(tmp_path / "v")


def test_weights_must_be_on_the_simplex(fitted: dict) -> None:
    ens = fitted["ensemble"]
    with pytest.raises(ModelError, match="sum to 1"):
        Ensemble(ens.members, {m: 0.5 for m in ens.members}, (1.0, 0.0), FEATURES)


def test_nan_fill_makes_never_carted_the_latest_possible_time() -> None:
    assert nan_fill_values(FEATURES) == {"pair_hours_since_last_cart": NAN_FILL_LARGE}


def test_random_forest_margin_is_the_log_odds_lightgbm_itself_predicts(fitted: dict) -> None:
    """LightGBM rf: predict() uses the average of the trees; our margin (raw sum / trees) must be its logit."""
    ens, Xh = fitted["ensemble"], fitted["Xh"]
    model = ens.members["random_forest"]
    margin = ens.member_margins(Xh, ["random_forest"])["random_forest"]
    np.testing.assert_allclose(sigmoid(margin), model.predict(ens.matrix(Xh)), rtol=0, atol=1e-12)
    phi, base = member_kind("random_forest").contributions(model, ens.matrix(Xh), 1)
    np.testing.assert_allclose(phi.sum(1) + base, margin, rtol=0, atol=1e-9)
