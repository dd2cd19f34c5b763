"""Parse fitted LightGBM, XGBoost and CatBoost models into one neutral tree form.

Every split becomes a *condition* ``go_left(x) = x[feat] <= thr`` evaluated in float64, with the library's own
missing-value rule folded into two per-condition fields, so that one kernel reproduces each library's routing exactly:

============  ==================================  =====================================================================
library       library rule                        neutral form
============  ==================================  =====================================================================
LightGBM      ``x <= threshold`` (double)         ``thr = threshold``; input used as float64 unchanged.
              missing_type None: NaN -> 0.0       ``nan_left = (0.0 <= thr)``.
              missing_type Zero: NaN and          ``nan_left = zero_dir = default_left`` (|x| <= 1e-35 is "zero").
              |x| <= 1e-35 -> default_left
              missing_type NaN: NaN -> default    ``nan_left = default_left``.
XGBoost       ``x < split`` on float32,           input rounded to float32; ``thr = nextafter32(split, -inf)``, so
              NaN -> default direction            ``x32 < split  <=>  x32 <= thr`` exactly; ``nan_left = default_left``.
CatBoost      bit = ``x > border`` on float32     input rounded to float32; ``thr = border``; go_left == (bit == 0);
              nan_value_treatment AsFalse/AsIs    ``nan_left = True`` (NaN counts as below every border, nan_mode Min);
              / AsTrue (nan_mode Max)             ``nan_left = False`` for AsTrue.
============  ==================================  =====================================================================

A tree is stored with nodes ``0..N-1`` (internal) and leaves ``0..L-1``; a child reference ``c >= 0`` is a node and
``c < 0`` is the leaf ``~c``. Leaf values are in margin (raw score) space with any library-level averaging or scaling
already applied, so ``margin(x) = base_margin + sum over trees of leaf_value[leaf reached]``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ml.errors import ModelError

# LightGBM's kZeroThreshold: |x| <= 1e-35 counts as zero for missing_type Zero.
ZERO_THRESHOLD = 1e-35


@dataclass
class ParsedTree:
    """One tree in neutral form (see the module docstring). All arrays are numpy; covers are the libraries' own."""

    cond_feat: np.ndarray  # int32[C]  feature index of each distinct condition
    cond_thr: np.ndarray  # float64[C] go left iff x <= thr
    cond_nan_left: np.ndarray  # uint8[C] direction of NaN (1 = left)
    cond_zero_dir: np.ndarray  # int8[C]  -1: zeros compare normally; 0/1: |x| <= 1e-35 goes right/left
    node_cond: np.ndarray  # int32[N] condition of each internal node
    node_left: np.ndarray  # int32[N] child reference (>= 0 node, < 0 leaf ~c)
    node_right: np.ndarray  # int32[N]
    node_cover: np.ndarray  # float64[N] data count / hessian sum / leaf-weight sum reaching the node
    leaf_value: np.ndarray  # float64[L] margin-space value (scaled)
    leaf_cover: np.ndarray  # float64[L]
    leaf_id: np.ndarray  # int32[L] the library's own leaf id (pred_leaf / calc_leaf_indexes)

    @property
    def root(self) -> int:
        """Child reference of the root: node 0, or leaf 0 for a single-leaf tree."""
        return 0 if len(self.node_cond) else ~0


@dataclass
class ParsedForest:
    """A whole model: ``margin(x) = base_margin + sum(tree leaf values)``; inputs are rounded to ``input_dtype``."""

    library: str  # "lightgbm" | "xgboost" | "catboost"
    trees: list[ParsedTree]
    base_margin: float
    n_features: int
    input_dtype: type  # np.float32 or np.float64: how the library sees the input values
    feature_names: list[str] | None = None
    details: dict[str, Any] = field(default_factory=dict)


class _TreeBuilder:
    """Accumulates nodes, leaves and de-duplicated conditions of one tree."""

    def __init__(self) -> None:
        self.conds: dict[tuple[int, float, int, int], int] = {}
        self.node_cond: list[int] = []
        self.node_left: list[int] = []
        self.node_right: list[int] = []
        self.node_cover: list[float] = []
        self.leaf_value: list[float] = []
        self.leaf_cover: list[float] = []
        self.leaf_id: list[int] = []

    def cond(self, feat: int, thr: float, nan_left: bool, zero_dir: int) -> int:
        key = (int(feat), float(thr), int(bool(nan_left)), int(zero_dir))
        return self.conds.setdefault(key, len(self.conds))

    def add_node(self, cond: int, cover: float) -> int:
        self.node_cond.append(cond)
        self.node_left.append(0)
        self.node_right.append(0)
        self.node_cover.append(float(cover))
        return len(self.node_cond) - 1

    def add_leaf(self, value: float, cover: float, native_id: int) -> int:
        self.leaf_value.append(float(value))
        self.leaf_cover.append(float(cover))
        self.leaf_id.append(int(native_id))
        return ~(len(self.leaf_value) - 1)

    def build(self, scale: float = 1.0) -> ParsedTree:
        keys = sorted(self.conds, key=self.conds.__getitem__)
        return ParsedTree(
            cond_feat=np.array([k[0] for k in keys], dtype=np.int32),
            cond_thr=np.array([k[1] for k in keys], dtype=np.float64),
            cond_nan_left=np.array([k[2] for k in keys], dtype=np.uint8),
            cond_zero_dir=np.array([k[3] for k in keys], dtype=np.int8),
            node_cond=np.array(self.node_cond, dtype=np.int32),
            node_left=np.array(self.node_left, dtype=np.int32),
            node_right=np.array(self.node_right, dtype=np.int32),
            node_cover=np.array(self.node_cover, dtype=np.float64),
            leaf_value=np.array(self.leaf_value, dtype=np.float64) * scale,
            leaf_cover=np.array(self.leaf_cover, dtype=np.float64),
            leaf_id=np.array(self.leaf_id, dtype=np.int32),
        )


# --- LightGBM ------------------------------------------------------------------------------------------------------
def parse_lightgbm(booster: Any) -> ParsedForest:
    """Parse a ``lightgbm.Booster`` (binary or regression, numeric splits) from ``dump_model()``.

    Uses the iterations LightGBM's own ``predict`` uses by default (the best iteration if one was recorded).
    For boosting_type="rf" the dumped leaf values are already averaged (raw score = their sum).
    Raises :class:`ModelError` for multiclass models, categorical splits or linear trees.
    """
    dump = booster.dump_model()
    if dump.get("num_tree_per_iteration", 1) != 1 or dump.get("num_class", 1) != 1:
        raise ModelError(
            "LightGBM model has more than one tree per iteration (multiclass); only one output is supported"
        )
    infos = dump["tree_info"]
    # boosting_type="rf" (average_output): the dumped leaf values already carry the 1/n_trees factor
    # (checked: raw_score == sum of dumped leaf values), so no scaling here.
    trees = []
    for info in infos:
        if info.get("num_cat", 0):
            raise ModelError(
                f"LightGBM tree {info.get('tree_index')} has categorical splits; encode categoricals numerically"
            )
        b = _TreeBuilder()
        root = info["tree_structure"]
        # Iterative walk: (dump node, parent node id, is_left) - LightGBM leaf-wise trees can be deep.
        stack: list[tuple[dict, int, bool]] = [(root, -1, True)]
        while stack:
            d, parent, is_left = stack.pop()
            if "split_index" in d:
                if d.get("decision_type", "<=") != "<=":
                    raise ModelError(f"LightGBM split with decision_type {d.get('decision_type')!r} is not supported")
                if "leaf_coeff" in d or "leaf_features" in d:
                    raise ModelError("LightGBM linear trees are not supported")
                thr = float(d["threshold"])
                mt = d.get("missing_type", "None")
                dl = bool(d.get("default_left", True))
                if mt == "None":
                    nan_left, zero_dir = 0.0 <= thr, -1
                elif mt == "Zero":
                    nan_left, zero_dir = dl, int(dl)
                elif mt == "NaN":
                    nan_left, zero_dir = dl, -1
                else:
                    raise ModelError(f"LightGBM missing_type {mt!r} is not supported")
                ref = b.add_node(b.cond(int(d["split_feature"]), thr, nan_left, zero_dir), d["internal_count"])
                stack.append((d["right_child"], ref, False))
                stack.append((d["left_child"], ref, True))
            else:
                ref = b.add_leaf(d["leaf_value"], d.get("leaf_count", 1), d.get("leaf_index", 0))
            if parent >= 0:
                (b.node_left if is_left else b.node_right)[parent] = ref
        trees.append(b.build())
    return ParsedForest(
        library="lightgbm",
        trees=trees,
        base_margin=0.0,
        n_features=int(dump["max_feature_idx"]) + 1,
        input_dtype=np.float64,
        feature_names=list(dump.get("feature_names") or []) or None,
        details={"objective": dump.get("objective"), "average_output": bool(dump.get("average_output"))},
    )


# --- XGBoost -------------------------------------------------------------------------------------------------------
def _xgb_float(v: Any) -> float:
    """XGBoost stores scalars as strings, sometimes as a one-element list ``"[5E-1]"``."""
    if isinstance(v, str):
        v = json.loads(v) if v.strip().startswith("[") else float(v)
    if isinstance(v, list):
        if len(v) != 1:
            raise ModelError(f"XGBoost base_score {v!r}: only one output is supported")
        v = v[0]
    return float(v)


def parse_xgboost(booster: Any, n_iterations: int | None = None) -> ParsedForest:
    """Parse an ``xgboost.Booster`` (gbtree, one output, numeric splits) from ``save_raw("json")``.

    ``n_iterations``: use only the first n boosting rounds (e.g. ``best_iteration + 1``); None = all, like
    ``Booster.predict``. The base margin is ``logit(base_score)`` for logistic objectives (XGBoost >= 2 stores
    ``base_score`` in probability space) and ``base_score`` for identity-link objectives.
    Raises :class:`ModelError` for dart, gblinear, multi-output or categorical splits.
    """
    raw = json.loads(bytes(booster.save_raw(raw_format="json")))
    learner = raw["learner"]
    gb = learner["gradient_booster"]
    if gb.get("name") != "gbtree":
        raise ModelError(f"XGBoost booster {gb.get('name')!r} is not supported (gbtree only)")
    param = learner["learner_model_param"]
    if int(param.get("num_class", "0")) > 1 or int(param.get("num_target", "1")) != 1:
        raise ModelError("XGBoost model has more than one output; only binary/regression models are supported")
    objective = learner["objective"]["name"]
    base_score = _xgb_float(param["base_score"])
    if objective in ("binary:logistic", "reg:logistic"):
        base_margin = math.log(base_score / (1.0 - base_score))
    elif objective in ("binary:logitraw", "reg:squarederror", "reg:pseudohubererror", "reg:absoluteerror"):
        base_margin = base_score
    else:
        raise ModelError(f"XGBoost objective {objective!r} is not supported")
    model = gb["model"]
    indptr = [int(i) for i in model.get("iteration_indptr", [])] or None
    raw_trees = model["trees"]
    if n_iterations is not None and indptr is not None:
        raw_trees = raw_trees[: indptr[min(n_iterations, len(indptr) - 1)]]
    trees = []
    neg_inf = np.float32(-np.inf)
    for t in raw_trees:
        if any(int(s) != 0 for s in t.get("split_type", [])):
            raise ModelError(f"XGBoost tree {t.get('id')} has categorical splits; encode categoricals numerically")
        left = t["left_children"]
        right = t["right_children"]
        feat = t["split_indices"]
        cond = np.asarray(t["split_conditions"], dtype=np.float32)
        dleft = t["default_left"]
        hess = t["sum_hessian"]
        n_nodes = len(left)
        if len(t.get("base_weights", [])) not in (0, n_nodes):
            raise ModelError("XGBoost vector-leaf trees are not supported")
        b = _TreeBuilder()
        ref_of: dict[int, int] = {}
        # Children have larger ids than parents in XGBoost's layout; walk from the root to be safe.
        order: list[int] = []
        stack = [0]
        while stack:
            nid = stack.pop()
            order.append(nid)
            if left[nid] != -1:
                stack += [right[nid], left[nid]]
        for nid in order:
            if left[nid] == -1:
                ref_of[nid] = b.add_leaf(float(cond[nid]), float(hess[nid]), nid)
            else:
                thr = float(np.nextafter(cond[nid], neg_inf))
                ref_of[nid] = b.add_node(b.cond(int(feat[nid]), thr, bool(int(dleft[nid])), -1), float(hess[nid]))
        for nid in order:
            if left[nid] != -1:
                b.node_left[ref_of[nid]] = ref_of[left[nid]]
                b.node_right[ref_of[nid]] = ref_of[right[nid]]
        trees.append(b.build())
    names = raw["learner"].get("feature_names") or None
    return ParsedForest(
        library="xgboost",
        trees=trees,
        base_margin=base_margin,
        n_features=int(param["num_feature"]),
        input_dtype=np.float32,
        feature_names=list(names) if names else None,
        details={"objective": objective, "base_score": base_score},
    )


# --- CatBoost ------------------------------------------------------------------------------------------------------
def catboost_json(model: Any) -> dict:
    """The model's JSON export (``save_model(format="json")`` through a temporary file)."""
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        model.save_model(path, format="json")
        with open(path) as fh:
            return json.load(fh)
    finally:
        os.unlink(path)


def parse_catboost(model: Any, data: Any = None) -> ParsedForest:
    """Parse a CatBoost model with oblivious (symmetric) trees over numeric features.

    Each oblivious tree of depth d is expanded into a complete binary tree (CatBoost's leaf index has bit k =
    ``x > border_k``); the root tests the last split, as CatBoost's own TreeSHAP does. Node covers are the sums of
    the leaf weights below. Leaf values are multiplied by the model scale; the bias is the base margin.

    Zero-weight leaves with a non-zero value (monotone constraints fill empty leaves): CatBoost's ShapValues then
    add the per-leaf row counts of the pool being explained to the model's leaf weights (``CollectLeavesStatistics``
    in catboost/libs/fstr), so its covers - and its values - depend on that pool. Pass the same rows as ``data``
    (float[n, n_features], NaN = missing, no sample weights) to reproduce it exactly; without ``data`` the model's
    own leaf weights are used (additive and independent of the batch, but not CatBoost's numbers for such models).
    ``data`` changes nothing for a model without such leaves, where CatBoost uses the model's weights alone.
    Raises :class:`ModelError` for categorical/text features, CTRs, non-symmetric trees or multi-output models and
    ValueError for ``data`` of the wrong shape.
    """
    cj = catboost_json(model)
    if "oblivious_trees" not in cj:
        raise ModelError("CatBoost model has non-symmetric trees; only grow_policy='SymmetricTree' is supported")
    info = cj.get("features_info", {})
    for key in ("categorical_features", "text_features", "embedding_features", "ctrs"):
        if info.get(key):
            raise ModelError(f"CatBoost model uses {key}; encode features numerically")
    floats = info.get("float_features", [])
    flat_of = {int(f["feature_index"]): int(f["flat_feature_index"]) for f in floats}
    nan_left_of = {int(f["feature_index"]): f.get("nan_value_treatment", "AsIs") != "AsTrue" for f in floats}
    n_features = max(flat_of.values(), default=-1) + 1
    scale, bias = cj.get("scale_and_bias", [1.0, [0.0]])
    bias_list = bias if isinstance(bias, list) else [bias]
    if len(bias_list) > 1:
        raise ModelError("CatBoost multi-output models are not supported")
    raw_trees = cj["oblivious_trees"]
    n_filled = sum(
        int(np.count_nonzero((np.asarray(t["leaf_weights"]) == 0) & (np.abs(np.asarray(t["leaf_values"])) >= 1e-9)))
        for t in raw_trees
    )  # CatBoost's HasNonZeroApproxForZeroWeightLeaf (per leaf, single output)
    x_data = None
    if data is not None and n_filled:
        x_data = _as_float32_rows(data, n_features)
    trees = []
    for t in raw_trees:
        splits = t["splits"]
        d = len(splits)
        values = np.asarray(t["leaf_values"], dtype=np.float64)
        weights = np.asarray(t["leaf_weights"], dtype=np.float64)
        if len(values) != (1 << d):
            raise ModelError("CatBoost multi-output models are not supported")
        if x_data is not None:
            weights = weights + _catboost_leaf_counts(splits, flat_of, nan_left_of, x_data)
        b = _TreeBuilder()
        conds = []
        for s in splits:
            if s.get("split_type", "FloatFeature") != "FloatFeature":
                raise ModelError(f"CatBoost split type {s.get('split_type')!r} is not supported")
            fi = int(s["float_feature_index"])
            border = float(np.float32(s["border"]))
            conds.append(b.cond(flat_of[fi], border, nan_left_of[fi], -1))
        # CatBoost's TreeSHAP walks the levels from the last split (root) to the first (checked against its
        # ShapValues: with path-dependent weights the order matters). Root level tests split d-1 (leaf-index bit
        # d-1); a node's cover is the sum of the leaf weights below it.

        def grow(k: int, prefix: int) -> tuple[int, float]:
            if k < 0:
                return b.add_leaf(values[prefix], weights[prefix], prefix), float(weights[prefix])
            ref = b.add_node(conds[k], 0.0)
            lref, lw = grow(k - 1, prefix)  # bit k = 0: x <= border
            rref, rw = grow(k - 1, prefix | (1 << k))
            b.node_left[ref], b.node_right[ref] = lref, rref
            b.node_cover[ref] = lw + rw
            return ref, lw + rw

        grow(d - 1, 0)
        trees.append(b.build(float(scale)))
    ordered = sorted(floats, key=lambda f: f["flat_feature_index"])
    names = [f.get("feature_id") or f"f{f['flat_feature_index']}" for f in ordered]
    return ParsedForest(
        library="catboost",
        trees=trees,
        base_margin=float(bias_list[0]) if bias_list else 0.0,
        n_features=n_features,
        input_dtype=np.float32,
        feature_names=names or None,
        details={
            "scale": float(scale),
            "filled_zero_weight_leaves": n_filled,
            "leaf_weights": "model" if x_data is None else f"model + {len(x_data)} data rows",
        },
    )


def _as_float32_rows(data: Any, n_features: int) -> np.ndarray:
    """``data`` (array or DataFrame, positional columns) as float32[n, n_features], the way CatBoost sees it."""
    arr = data.to_numpy(dtype=np.float64, na_value=np.nan) if hasattr(data, "to_numpy") else np.asarray(data)
    if arr.ndim != 2 or arr.shape[1] != n_features:
        raise ValueError(f"data must have shape (n, {n_features}) for this catboost model, got {arr.shape}")
    return arr.astype(np.float32)


def _catboost_leaf_counts(
    splits: list[dict], flat_of: dict[int, int], nan_left_of: dict[int, bool], x: np.ndarray
) -> np.ndarray:
    """Rows of ``x`` (float32) per leaf of one oblivious tree: float64[2^depth], leaf bit k = ``x > border_k``."""
    idx = np.zeros(len(x), dtype=np.int64)
    for k, sp in enumerate(splits):
        fi = int(sp["float_feature_index"])
        col = x[:, flat_of[fi]]
        bit = col > np.float32(sp["border"])
        if not nan_left_of[fi]:
            bit |= np.isnan(col)
        idx |= bit.astype(np.int64) << k
    return np.bincount(idx, minlength=1 << len(splits)).astype(np.float64)


def parse_model(model: Any, data: Any = None) -> ParsedForest:
    """Dispatch on the library type: sklearn-style classifiers/regressors and raw boosters of the three libraries.

    ``data``: CatBoost only, see :func:`parse_catboost`; ignored for LightGBM and XGBoost, whose TreeSHAP covers
    never depend on the explained rows.
    Raises :class:`ModelError` for anything else (e.g. a sklearn RandomForest: use LightGBM boosting_type="rf").
    """
    mod = type(model).__module__.split(".")[0]
    if mod == "lightgbm":
        booster = getattr(model, "booster_", model)
        return parse_lightgbm(booster)
    if mod == "xgboost":
        if hasattr(model, "get_booster"):
            booster = model.get_booster()
            best = getattr(model, "best_iteration", None) if _xgb_has_best(model) else None
            return parse_xgboost(booster, n_iterations=None if best is None else int(best) + 1)
        return parse_xgboost(model)
    if mod == "catboost":
        return parse_catboost(model, data)
    raise ModelError(
        f"cannot explain a {type(model).__module__}.{type(model).__name__}: not a LightGBM, XGBoost or CatBoost model"
    )


def _xgb_has_best(model: Any) -> bool:
    """The sklearn wrapper predicts with ``best_iteration`` only when early stopping recorded one."""
    try:
        return model.get_booster().attr("best_iteration") is not None
    except Exception:  # noqa: BLE001 - an unfitted or odd wrapper: use all trees
        return False
