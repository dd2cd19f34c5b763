"""Unit tests of ml.explain: the per-leaf tables against the Shapley formula, whole models against brute-force
Shapley values of the path-dependent value function, determinism, input checks and the logit-space blend."""

from __future__ import annotations

import itertools
import math
import pickle

import numpy as np
import pytest

from ml.errors import ModelError
from ml.explain import Contributions, TreeExplainer, combine_contributions, contributions
from ml.explain import _kernels as K
from ml.explain._forest import ParsedForest, ParsedTree


def _data(n: int = 600, f: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, f))
    X[rng.random(X.shape) < 0.1] = np.nan
    X[rng.random(X.shape) < 0.05] = 0.0
    z = np.nan_to_num(X)
    y = (z[:, 0] + 0.7 * z[:, 1] * (z[:, 2] > 0) + rng.normal(scale=0.7, size=n) > 0).astype(int)
    return X, y


@pytest.fixture(scope="module")
def small_models():
    import lightgbm as lgb
    import xgboost as xgb

    X, y = _data()
    lg = lgb.LGBMClassifier(n_estimators=6, num_leaves=8, min_child_samples=5, verbose=-1).fit(X, y)
    xg = xgb.XGBClassifier(n_estimators=6, max_depth=3, n_jobs=1).fit(X, y)
    return X, lg, xg


# --- the per-leaf formula -------------------------------------------------------------------------------------------
def _shapley_path(z: np.ndarray, o: np.ndarray, v: float) -> np.ndarray:
    """The path-dependent TreeSHAP contribution of one leaf, straight from its subset sum."""
    u = len(z)
    out = np.zeros(u)
    for i in range(u):
        others = [j for j in range(u) if j != i]
        for size in range(u):
            for S in itertools.combinations(others, size):
                w = math.factorial(size) * math.factorial(u - size - 1) / math.factorial(u)
                term = w * (o[i] - z[i])
                for j in others:
                    term *= o[j] if j in S else z[j]
                out[i] += term * v
    return out


@pytest.mark.parametrize("u", [1, 2, 3, 5])
def test_leaf_table_equals_the_shapley_subset_sum(u: int) -> None:
    rng = np.random.default_rng(u)
    z = rng.uniform(0.01, 1.0, size=u)
    v = float(rng.normal())
    table = K.leaf_table(z, v)
    assert table.shape == (1 << u, u)
    for o in range(1 << u):
        bits = np.array([(o >> j) & 1 for j in range(u)], dtype=float)
        np.testing.assert_allclose(table[o], _shapley_path(z, bits, v), rtol=0, atol=1e-13)


@pytest.mark.parametrize("u", [1, 4, 7])
def test_fallback_path_contrib_equals_the_table(u: int) -> None:
    rng = np.random.default_rng(10 + u)
    z = rng.uniform(0.001, 1.0, size=u)
    v = float(rng.normal())
    table = K.leaf_table(z, v)
    w = K.shapley_weights(u)
    q = np.empty(u + 1)
    out = np.empty(u)
    for o in range(1 << u):
        bits = np.array([(o >> j) & 1 for j in range(u)], dtype=np.uint8)
        K._path_contrib(z, bits, v, w, q, out)
        np.testing.assert_allclose(out, table[o], rtol=0, atol=1e-13)
        # efficiency of one leaf: contributions add up to v * (one-path weight - zero-path weight)
        assert out.sum() == pytest.approx(v * (float(bits.all()) - float(np.prod(z))), abs=1e-13)


# --- whole models against brute force ------------------------------------------------------------------------------
def _go_left(tree: ParsedTree, node: int, x: np.ndarray) -> bool:
    c = tree.node_cond[node]
    v = x[tree.cond_feat[c]]
    if np.isnan(v):
        return bool(tree.cond_nan_left[c])
    if tree.cond_zero_dir[c] >= 0 and abs(v) <= 1e-35:
        return bool(tree.cond_zero_dir[c])
    return bool(v <= tree.cond_thr[c])


def _value(tree: ParsedTree, ref: int, x: np.ndarray, S: frozenset[int]) -> float:
    """E[f(x) | x_S] the path-dependent way: follow x on features in S, average the children by cover elsewhere."""
    if ref < 0:
        return float(tree.leaf_value[~ref])
    left, right = int(tree.node_left[ref]), int(tree.node_right[ref])
    if tree.cond_feat[tree.node_cond[ref]] in S:
        return _value(tree, left if _go_left(tree, ref, x) else right, x, S)
    cover = lambda r: tree.leaf_cover[~r] if r < 0 else tree.node_cover[r]  # noqa: E731
    c = tree.node_cover[ref]
    return (cover(left) * _value(tree, left, x, S) + cover(right) * _value(tree, right, x, S)) / c


def _brute_force_shap(forest: ParsedForest, x: np.ndarray) -> np.ndarray:
    F = forest.n_features
    phi = np.zeros(F)
    for i in range(F):
        others = [j for j in range(F) if j != i]
        for size in range(F):
            w = math.factorial(size) * math.factorial(F - size - 1) / math.factorial(F)
            for S in itertools.combinations(others, size):
                s = frozenset(S)
                phi[i] += w * sum(
                    _value(t, t.root, x, s | {i}) - _value(t, t.root, x, s) for t in forest.trees
                )
    return phi


@pytest.mark.parametrize("which", ["lightgbm", "xgboost"])
def test_values_equal_brute_force_shapley_values(small_models, which: str) -> None:
    from ml.explain._forest import parse_model

    X, lg, xg = small_models
    model = lg if which == "lightgbm" else xg
    ex = TreeExplainer.from_model(model)
    forest = parse_model(model)
    rows = np.concatenate([X[:6], X[np.isnan(X).any(axis=1)][:6]])
    phi = ex.shap_values(rows)
    x = ex.prepare(rows)
    for r in range(len(rows)):
        np.testing.assert_allclose(phi[r], _brute_force_shap(forest, x[r]), rtol=0, atol=1e-9)
    # efficiency: contributions + base value add up to the margin
    np.testing.assert_allclose(phi.sum(1) + ex.expected_value, ex.predict_margin(rows), rtol=0, atol=1e-12)


# --- behaviour of the explainer ------------------------------------------------------------------------------------
def test_results_do_not_depend_on_blocks_or_threads(small_models) -> None:
    X, lg, _ = small_models
    ex = TreeExplainer.from_model(lg)
    ref = ex.shap_values(X, n_threads=1)
    for block in (1, 7, 64, 4096):
        ex.block_rows = block
        for threads in (1, 2):
            np.testing.assert_array_equal(ex.shap_values(X, n_threads=threads), ref)
    # a row's values do not depend on the rows it is batched with
    np.testing.assert_array_equal(ex.shap_values(X[5:6]), ref[5:6])


def test_group_sizes_do_not_change_the_values(small_models) -> None:
    from ml.explain._compile import compile_forest
    from ml.explain._forest import parse_model

    X, _, xg = small_models
    forest = parse_model(xg)
    ref = TreeExplainer(forest, compile_forest(forest)).shap_values(X)
    for max_bits, max_unique in [(1, 1), (2, 2), (3, 16), (16, 16)]:
        ex = TreeExplainer(forest, compile_forest(forest, max_bits, max_unique))
        np.testing.assert_allclose(ex.shap_values(X), ref, rtol=0, atol=1e-12)
    assert TreeExplainer(forest, compile_forest(forest, 1, 1)).stats()["fallback_leaves"] > 0


def test_inputs_are_checked_and_empty_batches_work(small_models) -> None:
    X, lg, _ = small_models
    ex = TreeExplainer.from_model(lg)
    with pytest.raises(ValueError, match="shape"):
        ex.shap_values(X[:, :3])
    with pytest.raises(ValueError, match="shape"):
        ex.predict_margin(X[0])
    assert ex.shap_values(X[:0]).shape == (0, X.shape[1])
    import pandas as pd

    np.testing.assert_array_equal(ex.shap_values(pd.DataFrame(X[:20])), ex.shap_values(X[:20]))
    nullable = pd.DataFrame(np.nan_to_num(X[:20], nan=1.5)).astype("Float64")
    nullable.iloc[0, 0] = pd.NA  # pandas' missing marker means missing, like NaN
    expected = np.nan_to_num(X[:20], nan=1.5)
    expected[0, 0] = np.nan
    np.testing.assert_array_equal(ex.shap_values(nullable), ex.shap_values(expected))
    with pytest.raises(ValueError):
        from ml.explain._compile import compile_forest
        from ml.explain._forest import parse_model

        compile_forest(parse_model(lg), max_bits=0)


def test_explainer_pickles(small_models) -> None:
    X, _, xg = small_models
    ex = TreeExplainer.from_model(xg)
    ex2 = pickle.loads(pickle.dumps(ex))
    np.testing.assert_array_equal(ex2.shap_values(X[:50]), ex.shap_values(X[:50]))
    assert ex2.expected_value == ex.expected_value


def test_unsupported_models_raise_model_error() -> None:
    import lightgbm as lgb
    from sklearn.ensemble import RandomForestClassifier

    X, y = _data(300)
    with pytest.raises(ModelError, match="not a LightGBM"):
        TreeExplainer.from_model(RandomForestClassifier(n_estimators=2).fit(np.nan_to_num(X), y))
    multi = lgb.LGBMClassifier(n_estimators=2, num_leaves=4, verbose=-1).fit(X, np.arange(len(y)) % 3)
    with pytest.raises(ModelError, match="multiclass"):
        TreeExplainer.from_model(multi)


# --- blending ------------------------------------------------------------------------------------------------------
def test_combine_contributions_is_the_calibrated_blend() -> None:
    rng = np.random.default_rng(3)
    n, f = 50, 5
    members = [(w, rng.normal(size=(n, f)), float(rng.normal())) for w in (0.5, 1.5, 0.0)]
    a, b = 0.8, -0.3
    out = combine_contributions(members, a, b)
    assert isinstance(out, Contributions)
    logit = a * sum(w * (phi.sum(1) + base) for w, phi, base in members) + b
    np.testing.assert_allclose(out.logit, logit, rtol=0, atol=1e-12)
    np.testing.assert_allclose(out.values, a * sum(w * phi for w, phi, _ in members), rtol=0, atol=1e-12)
    assert out.base == pytest.approx(a * sum(w * base for w, _, base in members) + b, abs=1e-12)


@pytest.mark.parametrize(
    "members, match",
    [
        ([], "at least one"),
        ([(-0.1, np.zeros((2, 3)), 0.0)], "negative"),
        ([(1.0, np.zeros((2, 3)), 0.0), (1.0, np.zeros((2, 4)), 0.0)], "shape"),
    ],
)
def test_combine_contributions_rejects_bad_members(members, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        combine_contributions(members, 1.0, 0.0)


def test_ensemble_contributions_add_up_to_the_calibrated_logit(small_models) -> None:
    X, lg, xg = small_models
    members = [(0.7, TreeExplainer.from_model(lg)), (0.4, TreeExplainer.from_model(xg))]
    a, b = 1.3, 0.2
    out = contributions(members, X, a, b)
    logit = a * sum(w * ex.predict_margin(X) for w, ex in members) + b
    np.testing.assert_allclose(out.logit, logit, rtol=0, atol=1e-12)
    assert out.values.shape == X.shape


# --- zero-cover leaves with a value (CatBoost with monotone constraints fills empty leaves) -------------------------
def _tree_with_filled_empty_leaves() -> ParsedForest:
    """x0 <= 0 ? (x1 <= 0 ? A : B) : (x0 <= 1 ? C : D); B and D have cover 0 but a non-zero value."""
    tree = ParsedTree(
        cond_feat=np.array([0, 1, 0], np.int32), cond_thr=np.array([0.0, 0.0, 1.0]),
        cond_nan_left=np.array([1, 1, 1], np.uint8), cond_zero_dir=np.array([-1, -1, -1], np.int8),
        node_cond=np.array([0, 1, 2], np.int32), node_left=np.array([1, ~0, ~2], np.int32),
        node_right=np.array([2, ~1, ~3], np.int32), node_cover=np.array([8.0, 5.0, 3.0]),
        leaf_value=np.array([1.0, 2.0, -1.0, 4.0]), leaf_cover=np.array([5.0, 0.0, 3.0, 0.0]),
        leaf_id=np.arange(4, dtype=np.int32),
    )  # fmt: skip
    return ParsedForest("catboost", [tree], base_margin=0.5, n_features=3, input_dtype=np.float64)


def _reach_only_shap(tree: ParsedTree, x: np.ndarray, F: int) -> np.ndarray:
    """Shapley values of v(S) = sum over leaves of value * prod_{j in S} o_j * prod_{j not in S} z_j, where a
    zero-cover leaf counts only if x reaches it (CatBoost's game, made additive for rows in empty leaves)."""
    leaves = []
    stack = [(tree.root, [])]
    while stack:
        ref, path = stack.pop()
        if ref < 0:
            leaves.append((~ref, path))
            continue
        stack += [(int(tree.node_left[ref]), path + [(ref, True)]), (int(tree.node_right[ref]), path + [(ref, False)])]
    cover = lambda r: tree.leaf_cover[~r] if r < 0 else tree.node_cover[r]  # noqa: E731
    games = []
    for leaf, path in leaves:
        z, o, empty = np.ones(F), np.ones(F), False
        for i, (node, left) in enumerate(path):
            child = path[i + 1][0] if i + 1 < len(path) else ~leaf
            f = tree.cond_feat[tree.node_cond[node]]
            z[f] *= cover(child) / tree.node_cover[node]
            o[f] *= float(_go_left(tree, node, x) == left)
            empty |= cover(child) == 0
        if not empty or o.all():
            games.append((tree.leaf_value[leaf], z, o))
    phi = np.zeros(F)
    for i in range(F):
        others = [j for j in range(F) if j != i]
        for size in range(F):
            w = math.factorial(size) * math.factorial(F - size - 1) / math.factorial(F)
            for S in itertools.combinations(others, size):
                for v, z, o in games:
                    g = lambda T: np.prod([o[j] if j in T else z[j] for j in range(F)])  # noqa: E731
                    phi[i] += w * v * (g(set(S) | {i}) - g(set(S)))
    return phi


def test_filled_empty_leaves_stay_additive_and_equal_the_reach_only_game() -> None:
    from ml.explain._compile import compile_forest

    forest = _tree_with_filled_empty_leaves()
    rows = np.array([[-1, -1, 0], [-1, 1, 0], [0.5, 3, 0], [2, -1, 0], [2, 1, 9], [np.nan, 1, 0], [np.nan] * 3])
    for max_bits, max_unique in ((8, 10), (1, 1)):  # one table per tree / every leaf in the per-row fallback
        ex = TreeExplainer(forest, compile_forest(forest, max_bits=max_bits, max_unique=max_unique))
        assert ex.expected_value == pytest.approx(0.5 + (5 * 1.0 + 3 * -1.0) / 8, abs=1e-15)
        assert ex.stats()["zero_cover_leaves"] == 2
        phi = ex.shap_values(rows)
        margin = ex.predict_margin(rows)
        np.testing.assert_allclose(margin, 0.5 + np.array([1.0, 2.0, -1.0, 4.0, 4.0, 2.0, 1.0]), rtol=0, atol=0)
        np.testing.assert_allclose(phi.sum(1) + ex.expected_value, margin, rtol=0, atol=1e-12)
        for x, p in zip(rows, phi):
            np.testing.assert_allclose(p, _reach_only_shap(forest.trees[0], x, 3), rtol=0, atol=1e-12)
