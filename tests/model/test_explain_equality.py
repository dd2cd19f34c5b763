"""ml.explain against the libraries' own routing and TreeSHAP, member by member, on rows with missing values.

Tolerances (see docs/explain.md): LightGBM and CatBoost compute contributions in float64 -> 1e-6; XGBoost computes
in float32 -> 1e-5 against its own values and 1e-6 against shap's float64 implementation of the same algorithm.
Every test also checks the parse: the reached leaves equal the library's and the margin equals its raw prediction.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from ml.explain import TreeExplainer

pytestmark = pytest.mark.model

F64_TOL = 1e-6
F32_TOL = 1e-5


def _data(n: int = 2500, f: int = 8, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Numeric features with NaN (missing) and exact zeros (LightGBM's zero-as-missing), a nonlinear label."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, f))
    X[rng.random(X.shape) < 0.12] = np.nan
    X[rng.random(X.shape) < 0.08] = 0.0
    X[:, 3] = np.round(X[:, 3] * 2) / 2  # a coarse feature: ties at thresholds
    z = np.nan_to_num(X, nan=-0.5)
    logit = z[:, 0] + 0.8 * z[:, 1] * (z[:, 2] > 0) - 0.6 * np.isnan(X[:, 4]) + 0.5 * z[:, 3] + 0.3 * z[:, 5] ** 2
    y = (logit + rng.logistic(size=n) * 0.7 > 0).astype(int)
    return X, y


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    X, y = _data()
    rows = np.concatenate([X[:300], X[np.isnan(X).any(axis=1)][:200], np.full((1, X.shape[1]), np.nan)])
    assert np.isnan(rows).any(axis=1).sum() > 200
    return X, y, rows


def _assert_additive(ex: TreeExplainer, phi: np.ndarray, rows: np.ndarray) -> None:
    np.testing.assert_allclose(phi.sum(1) + ex.expected_value, ex.predict_margin(rows), rtol=0, atol=1e-9)


# --- LightGBM (gbdt and the random-forest member) -------------------------------------------------------------------
def _lgb_missing_types(model) -> set[str]:  # noqa: ANN001
    seen: set[str] = set()
    for info in model.booster_.dump_model()["tree_info"]:
        stack = [info["tree_structure"]]
        while stack:
            d = stack.pop()
            if "split_index" in d:
                seen.add(d["missing_type"])
                stack += [d["left_child"], d["right_child"]]
    return seen


@pytest.mark.parametrize("boosting", ["gbdt", "rf"])
@pytest.mark.parametrize(
    "missing, params",
    [("NaN", {}), ("Zero", {"zero_as_missing": True}), ("None", {"use_missing": False})],
)
def test_lightgbm_equals_native(data, boosting: str, missing: str, params: dict) -> None:
    import lightgbm as lgb

    X, y, rows = data
    extra = {"bagging_freq": 1, "bagging_fraction": 0.7, "feature_fraction": 0.8} if boosting == "rf" else {}
    model = lgb.LGBMClassifier(
        boosting_type=boosting, n_estimators=25, num_leaves=15, min_child_samples=10, verbose=-1, n_jobs=1,
        **params, **extra,
    ).fit(X, y)  # fmt: skip
    assert _lgb_missing_types(model) == {missing}
    ex = TreeExplainer.from_model(model)
    np.testing.assert_array_equal(ex.predict_leaf(rows), model.predict(rows, pred_leaf=True))
    np.testing.assert_allclose(ex.predict_margin(rows), model.predict(rows, raw_score=True), rtol=0, atol=F64_TOL)
    native = model.predict(rows, pred_contrib=True)
    phi = ex.shap_values(rows)
    np.testing.assert_allclose(phi, native[:, :-1], rtol=0, atol=F64_TOL)
    assert ex.expected_value == pytest.approx(native[0, -1], abs=F64_TOL)
    _assert_additive(ex, phi, rows)
    # the raw booster explains the same way as the sklearn wrapper
    np.testing.assert_array_equal(TreeExplainer.from_model(model.booster_).shap_values(rows), phi)


# --- XGBoost --------------------------------------------------------------------------------------------------------
def test_xgboost_equals_native_and_shap_float64(data) -> None:
    import shap
    import xgboost as xgb

    X, y, rows = data
    model = xgb.XGBClassifier(n_estimators=25, max_depth=5, learning_rate=0.3, n_jobs=1).fit(X, y)
    booster = model.get_booster()
    trees = json.loads(bytes(booster.save_raw(raw_format="json")))["learner"]["gradient_booster"]["model"]["trees"]
    default_left = {int(d) for t in trees for d, c in zip(t["default_left"], t["left_children"]) if c != -1}
    assert default_left == {0, 1}, "the model must send missing values both ways"
    ex = TreeExplainer.from_model(model)
    dm = xgb.DMatrix(rows)
    np.testing.assert_array_equal(ex.predict_leaf(rows), booster.predict(dm, pred_leaf=True).astype(np.int32))
    np.testing.assert_allclose(ex.predict_margin(rows), booster.predict(dm, output_margin=True), rtol=0, atol=F32_TOL)
    phi = ex.shap_values(rows)
    native = booster.predict(dm, pred_contribs=True)
    np.testing.assert_allclose(phi, native[:, :-1], rtol=0, atol=F32_TOL)
    assert ex.expected_value == pytest.approx(float(native[0, -1]), abs=F32_TOL)
    # shap's own (float64) TreeSHAP: force its internal algorithm instead of delegating to XGBoost. On this forced
    # path shap's base value is only logit(base_score) (the trees' mean is missing), so its own additivity check
    # fails; the per-feature values are the reference.
    reference = shap.TreeExplainer(model)
    reference.model.model_type = "internal"
    np.testing.assert_allclose(phi, reference.shap_values(rows, check_additivity=False), rtol=0, atol=F64_TOL)
    _assert_additive(ex, phi, rows)


def test_xgboost_uses_the_sklearn_best_iteration(data) -> None:
    import xgboost as xgb

    X, y, rows = data
    model = xgb.XGBClassifier(n_estimators=60, max_depth=3, learning_rate=0.5, early_stopping_rounds=3, n_jobs=1)
    model.fit(X[:1500], y[:1500], eval_set=[(X[1500:], y[1500:])], verbose=False)
    assert model.best_iteration + 1 < model.get_booster().num_boosted_rounds()
    ex = TreeExplainer.from_model(model)
    assert ex.n_trees == model.best_iteration + 1
    np.testing.assert_allclose(ex.predict_margin(rows), model.predict(rows, output_margin=True), rtol=0, atol=F32_TOL)
    ex_all = TreeExplainer.from_model(model.get_booster())  # a raw booster predicts with all its trees
    dm = xgb.DMatrix(rows)
    np.testing.assert_allclose(
        ex_all.predict_margin(rows), model.get_booster().predict(dm, output_margin=True), rtol=0, atol=F32_TOL
    )


# --- CatBoost -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("nan_mode", ["Min", "Max"])
def test_catboost_equals_native(data, nan_mode: str) -> None:
    from catboost import CatBoostClassifier, Pool

    X, y, rows = data
    model = CatBoostClassifier(iterations=30, depth=6, nan_mode=nan_mode, verbose=0, thread_count=1, random_seed=1)
    model.fit(X, y)
    ex = TreeExplainer.from_model(model)
    assert ex.stats()["group_bits"] == {6: 30}  # one table lookup per tree
    assert ex.stats()["zero_cover_leaves"] > 0  # empty leaves (value 0 here) carry nothing, as in CatBoost
    assert ex.details["filled_zero_weight_leaves"] == 0
    pool = Pool(rows)
    np.testing.assert_array_equal(ex.predict_leaf(rows), model.calc_leaf_indexes(pool))
    np.testing.assert_allclose(
        ex.predict_margin(rows), model.predict(rows, prediction_type="RawFormulaVal"), rtol=0, atol=F64_TOL
    )
    native = model.get_feature_importance(pool, type="ShapValues")  # default shap_calc_type "Regular"
    phi = ex.shap_values(rows)
    np.testing.assert_allclose(phi, native[:, :-1], rtol=0, atol=F64_TOL)
    assert ex.expected_value == pytest.approx(native[0, -1], abs=F64_TOL)
    _assert_additive(ex, phi, rows)


def test_catboost_with_monotone_constraints_is_additive_and_equals_native(data) -> None:
    """Monotone constraints make CatBoost fill empty (zero-weight) leaves with non-zero values; its ShapValues then
    add the explained pool's per-leaf row counts to the leaf weights. Model-only values stay additive; with
    ``data=rows`` they equal CatBoost's to float64 rounding, NaN rows included."""
    from catboost import CatBoostClassifier, Pool

    X, y, rows = data
    model = CatBoostClassifier(
        iterations=30, depth=6, border_count=128, monotone_constraints=[1, -1, 0, 0, 0, 0, 0, 0], verbose=0,
        thread_count=1, random_seed=0,
    ).fit(X, y)  # fmt: skip
    margin = model.predict(rows, prediction_type="RawFormulaVal")
    ex = TreeExplainer.from_model(model)
    assert ex.details["filled_zero_weight_leaves"] > 0 and ex.details["leaf_weights"] == "model"
    phi = ex.shap_values(rows)
    np.testing.assert_allclose(ex.predict_margin(rows), margin, rtol=0, atol=F64_TOL)
    _assert_additive(ex, phi, rows)
    ex_data = TreeExplainer.from_model(model, data=rows)
    assert ex_data.details["leaf_weights"] == f"model + {len(rows)} data rows"
    native = model.get_feature_importance(Pool(rows), type="ShapValues")  # default shap_calc_type "Regular"
    phi_data = ex_data.shap_values(rows)
    np.testing.assert_allclose(phi_data, native[:, :-1], rtol=0, atol=F64_TOL)
    assert ex_data.expected_value == pytest.approx(native[0, -1], abs=F64_TOL)
    np.testing.assert_allclose(phi_data.sum(1) + ex_data.expected_value, margin, rtol=0, atol=F64_TOL)
    # the model-only values differ from CatBoost's pool-dependent ones for this model (that is the point of data=)
    assert np.abs(phi - native[:, :-1]).max() > 1e-3


def test_catboost_scale_and_bias_enter_the_margin(data) -> None:
    from catboost import CatBoostClassifier

    X, y, rows = data
    model = CatBoostClassifier(iterations=10, depth=4, verbose=0, thread_count=1).fit(X, y)
    model.set_scale_and_bias(1.7, -0.4)
    ex = TreeExplainer.from_model(model)
    np.testing.assert_allclose(
        ex.predict_margin(rows), model.predict(rows, prediction_type="RawFormulaVal"), rtol=0, atol=F64_TOL
    )
    _assert_additive(ex, ex.shap_values(rows), rows)


# --- deep paths: the per-row fallback -------------------------------------------------------------------------------
def test_deep_leaf_wise_trees_take_the_fallback_and_stay_exact() -> None:
    import lightgbm as lgb

    X, y = _data(n=5000, f=40, seed=3)
    y = (np.nansum(np.sin(3 * X), axis=1) + np.random.default_rng(0).normal(size=len(y)) > 0).astype(int)
    model = lgb.LGBMClassifier(
        n_estimators=4, num_leaves=400, max_depth=-1, min_child_samples=2, min_split_gain=0.0, reg_lambda=0.0,
        verbose=-1, n_jobs=1,
    ).fit(X, y)  # fmt: skip
    ex = TreeExplainer.from_model(model)  # default limits: max_bits=8, max_unique=10
    stats = ex.stats()
    assert stats["fallback_leaves"] > 0 and ex.compiled.max_fb_u > 10
    rows = X[:300]
    native = model.predict(rows, pred_contrib=True)
    phi = ex.shap_values(rows)
    np.testing.assert_allclose(phi, native[:, :-1], rtol=0, atol=F64_TOL)
    _assert_additive(ex, phi, rows)
