"""Fast, exact TreeSHAP for the ensemble's members (LightGBM incl. boosting_type="rf", XGBoost gbtree, CatBoost
oblivious trees), in margin (log-odds) space.

Public API::

    ex = TreeExplainer.from_model(model)        # sklearn wrapper or raw booster; builds tables once (~0.1-1 s)
    ex.expected_value                           # float, margin space
    ex.predict_margin(X)                        # float64[n]: equals the library's raw margin (proves the parse)
    ex.shap_values(X)                           # float64[n, f]: row sums + expected_value == margin
    combine_contributions([(w, phi, base), ...], a, b)   # Platt-calibrated blend in logit space
    contributions([(w, explainer), ...], X, a, b)         # the same, computing each member's phi

The values are the libraries' own path-dependent ("tree_path_dependent") TreeSHAP values, computed from per-subtree
precomputed tables instead of the recursive algorithm: see ``docs/explain.md`` for the algorithm, the split
semantics per library, the fallback for deep paths and the measured speed-ups.

``X`` is a 2-D array (or DataFrame, taken positionally) with the model's features in training order; NaN marks a
missing value. Values are rounded the way the library rounds them (float32 for XGBoost and CatBoost).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ml.explain._compile import CompiledForest, compile_forest
from ml.explain._forest import ParsedForest, parse_model

__all__ = ["Contributions", "TreeExplainer", "combine_contributions", "contributions"]

# Rows per block: the block's feature-major accumulator and inputs (2 x 8 B x features x rows) should stay within
# about 1 MiB of L2; 2,048 rows measured fastest for 36 features (docs/explain.md).
MAX_BLOCK_ROWS = 2048
MIN_BLOCK_ROWS = 256


def default_block_rows(n_features: int) -> int:
    """Largest power of two <= 98,304 / n_features, clamped to [256, 2048]."""
    rows = MAX_BLOCK_ROWS
    while rows > MIN_BLOCK_ROWS and rows * max(n_features, 1) > 98_304:
        rows //= 2
    return rows


class TreeExplainer:
    """Compiled contribution tables for one fitted tree model (one ensemble member).

    Build with :meth:`from_model`. Instances hold only numpy arrays, so they pickle and can be shipped to workers.
    Results are deterministic: a row's contributions do not depend on the batch, block size or thread count.
    """

    def __init__(self, forest: ParsedForest, compiled: CompiledForest, block_rows: int | None = None) -> None:
        self.library = forest.library
        self.n_features = forest.n_features
        self.feature_names = forest.feature_names
        self.input_dtype = forest.input_dtype
        self.details = forest.details
        self.compiled = compiled
        self.block_rows = int(block_rows) if block_rows else default_block_rows(forest.n_features)

    @classmethod
    def from_model(
        cls,
        model: Any,
        *,
        max_bits: int = 8,
        max_unique: int = 10,
        block_rows: int | None = None,
        data: Any = None,
    ) -> TreeExplainer:
        """Parse ``model`` and build its tables.

        ``model``: ``lightgbm.LGBMModel``/``Booster``, ``xgboost.XGBModel``/``Booster`` (gbtree) or a CatBoost model
        with symmetric trees; numeric splits only. ``max_bits``: largest number of condition bits indexing one
        table (tables have 2^max_bits rows per feature). ``max_unique``: paths with more unique features than this
        that fit no group use the per-row fallback. ``block_rows``: rows per parallel block (default: by feature
        count, see :func:`default_block_rows`). ``data``: CatBoost only - the rows CatBoost's own ShapValues would be
        given; it matters only for a model with non-zero values on zero-weight leaves (monotone constraints), where
        CatBoost adds those rows' per-leaf counts to the leaf weights, so its values depend on the pool. Pass the
        rows you explain to reproduce ``get_feature_importance(Pool(data), type="ShapValues")`` exactly; leave it
        None for values that depend on the model only (the default; always additive). Ignored for other libraries.
        Raises :class:`ml.errors.ModelError` for unsupported models.
        """
        forest = parse_model(model, data)
        return cls(forest, compile_forest(forest, max_bits, max_unique), block_rows)

    # -- properties ---------------------------------------------------------------------------------------------
    @property
    def expected_value(self) -> float:
        """Base value in margin space: the model's average output under TreeSHAP's cover weighting."""
        return self.compiled.expected_value

    @property
    def n_trees(self) -> int:
        return self.compiled.n_trees

    def stats(self) -> dict[str, Any]:
        """Build statistics: trees, groups (by bit count), tabled / fallback leaves, table bytes, build seconds."""
        c = self.compiled
        return {
            "library": self.library,
            "n_trees": c.n_trees,
            "n_groups": c.n_groups,
            "group_bits": c.group_bits_hist,
            "table_leaves": c.n_table_leaves,
            "fallback_leaves": c.n_fallback_leaves,
            "zero_cover_leaves": c.n_zero_cover_leaves,
            "table_bytes": c.table_bytes,
            "total_bytes": c.total_bytes,
            "build_seconds": round(c.build_seconds, 3),
            "max_bits": c.max_bits,
            "max_unique": c.max_unique,
        }

    # -- computation --------------------------------------------------------------------------------------------
    def prepare(self, X: Any) -> np.ndarray:
        """``X`` as a C-contiguous float64[n, n_features], rounded through the library's input dtype.

        Raises ValueError on a wrong shape.
        """
        if hasattr(X, "to_numpy"):  # pandas: nullable dtypes (pd.NA) become NaN
            arr = X.to_numpy(dtype=np.float64, na_value=np.nan)
        else:
            arr = np.asarray(X)
        if arr.ndim != 2 or arr.shape[1] != self.n_features:
            raise ValueError(f"X must have shape (n, {self.n_features}) for this {self.library} model, got {arr.shape}")
        if self.input_dtype is np.float32:
            arr = arr.astype(np.float32, copy=False)
        return np.ascontiguousarray(arr, dtype=np.float64)

    def predict_margin(self, X: Any, *, n_threads: int | None = None) -> np.ndarray:
        """Raw margin (log-odds for binary models) per row, float64[n], from the parsed trees."""
        margin, _ = self._predict(X, False, n_threads)
        return margin

    def predict_leaf(self, X: Any, *, n_threads: int | None = None) -> np.ndarray:
        """The library's id of the leaf each row reaches in each tree, int32[n, n_trees] (LightGBM leaf index,
        XGBoost node id, CatBoost leaf index) - comparable to ``pred_leaf`` / ``calc_leaf_indexes``."""
        _, leaves = self._predict(X, True, n_threads)
        return leaves

    def shap_values(self, X: Any, *, n_threads: int | None = None) -> np.ndarray:
        """Exact path-dependent TreeSHAP values in margin space, float64[n, n_features].

        ``shap_values(X).sum(1) + expected_value == predict_margin(X)`` up to float64 rounding. ``n_threads``:
        numba threads to use (default: numba's setting, i.e. all cores). Rows are processed in blocks of
        ``block_rows``; a batch smaller than two blocks runs on one thread.
        """
        from ml.explain import _kernels as K

        x = self.prepare(X)
        out = np.zeros((x.shape[0], self.n_features), dtype=np.float64)
        if x.shape[0] == 0:
            return out
        a = self.compiled.arrays
        with _threads(n_threads):
            K.shap_blocks(
                x, out, self.block_rows, self.compiled.max_conds, self.compiled.max_group_bits, self.compiled.max_fb_u,
                a["tree_cond_start"], a["cond_feat"], a["cond_thr"], a["cond_nan_left"], a["cond_zero_dir"],
                a["tree_group_start"], a["group_nbits"], a["group_bit_start"], a["bit_term_start"], a["term_cond"],
                a["term_flip"], a["group_table_start"], a["group_slot_start"], a["slot_feat"], a["tables"],
                a["tree_fb_start"], a["fb_value"], a["fb_reach_only"], a["fb_feat_start"], a["fbf_feat"], a["fbf_z"], a["fbf_term_start"],
                a["fbt_cond"], a["fbt_flip"],
            )  # fmt: skip
        return out

    def _predict(self, X: Any, want_leaves: bool, n_threads: int | None) -> tuple[np.ndarray, np.ndarray]:
        from ml.explain import _kernels as K

        x = self.prepare(X)
        n = x.shape[0]
        margin = np.empty(n, dtype=np.float64)
        leaves = np.zeros((n, self.n_trees) if want_leaves else (1, 1), dtype=np.int32)
        a = self.compiled.arrays
        with _threads(n_threads):
            K.predict_blocks(
                x, margin, leaves, want_leaves, float(self.compiled.base_margin),
                a["tree_cond_start"], a["cond_feat"], a["cond_thr"], a["cond_nan_left"], a["cond_zero_dir"],
                a["tree_node_start"], a["node_cond"], a["node_left"], a["node_right"], a["tree_leaf_start"],
                a["leaf_value"], a["leaf_id"],
            )  # fmt: skip
        return margin, leaves


class _threads:
    """Context manager: run numba kernels on ``n`` threads (capped at NUMBA_NUM_THREADS), then restore the previous
    setting. numba's setting is local to the calling thread, so concurrent callers do not interfere."""

    def __init__(self, n: int | None) -> None:
        self.n = n
        self.prev: int | None = None

    def __enter__(self) -> None:
        if self.n is not None:
            import numba

            self.prev = numba.get_num_threads()
            numba.set_num_threads(max(1, min(int(self.n), numba.config.NUMBA_NUM_THREADS)))

    def __exit__(self, *exc: object) -> None:
        if self.prev is not None:
            import numba

            numba.set_num_threads(self.prev)


@dataclass(frozen=True)
class Contributions:
    """Per-row contributions in calibrated-logit space: ``values.sum(1) + base == logit(p)`` for every row.

    ``values``: float64[n, f] (one column per feature, training order); ``base``: float (same for all rows).
    """

    values: np.ndarray
    base: float

    @property
    def logit(self) -> np.ndarray:
        """float64[n]: the calibrated logit the contributions add up to."""
        return self.values.sum(axis=1) + self.base


def combine_contributions(members: Sequence[tuple[float, np.ndarray, float]], a: float, b: float) -> Contributions:
    """Blend members' margin-space contributions the way the ensemble blends margins, then apply Platt.

    ``members``: ``(weight w_m, phi_m float64[n, f], base_m float)`` per member, weights non-negative.
    With ``logit(p) = a * sum_m w_m * margin_m(x) + b`` and ``margin_m = phi_m.sum(1) + base_m``:
    ``values = a * sum_m w_m * phi_m`` and ``base = a * sum_m w_m * base_m + b``.
    Raises ValueError on an empty list, a negative weight or mismatched shapes.
    """
    if not members:
        raise ValueError("combine_contributions needs at least one member")
    shape = np.shape(members[0][1])
    values = np.zeros(shape, dtype=np.float64)
    base = 0.0
    for w, phi, base_m in members:
        if w < 0:
            raise ValueError(f"member weight {w} is negative; the blend needs non-negative weights")
        if np.shape(phi) != shape:
            raise ValueError(f"member contributions have shape {np.shape(phi)}, expected {shape}")
        values += w * np.asarray(phi, dtype=np.float64)
        base += w * float(base_m)
    return Contributions(values=a * values, base=a * base + b)


def contributions(
    members: Sequence[tuple[float, TreeExplainer]],
    X: Any,
    a: float = 1.0,
    b: float = 0.0,
    *,
    n_threads: int | None = None,
) -> Contributions:
    """Contributions of a margin-blended, Platt-calibrated ensemble for the rows of ``X``.

    ``members``: ``(weight, TreeExplainer)`` per member; every explainer sees the same ``X``.
    """
    return combine_contributions(
        [(w, ex.shap_values(X, n_threads=n_threads), ex.expected_value) for w, ex in members], a, b
    )
