"""The four-member tree ensemble: native fits, a log-odds blend, Platt calibration, exact additive explanations,
and native-format artifacts.

Members (names are contracts shared with scoring and the registry):

``catboost``       CatBoost oblivious trees (``.cbm``)
``xgboost``        XGBoost ``hist`` trees (``.ubj``)
``lightgbm``       LightGBM gradient boosting (``.txt``)
``random_forest``  LightGBM ``boosting_type="rf"`` (``.txt``): bagged trees (``bagging_freq=1``, ``bagging_fraction<1``,
                   ``feature_fraction<1``), each a Newton step from the prior log-odds; the forest's score is the
                   *average* of the trees' outputs, so it lives in margin (log-odds) space like the boosted members and
                   TreeSHAP on it is additive. (LightGBM's ``raw_score``/``pred_contrib`` return the *sum* over trees
                   in rf mode; this module divides by the number of trees, matching LightGBM's own probabilities.)

Blend (all in log-odds)::

    margin(x) = sum_m w_m * margin_m(x)          w_m >= 0, sum_m w_m = 1     (fitted on validation)
    logit(p)  = a * margin(x) + b                                           (Platt, fitted on validation)

Because every step is affine in the member margins, per-member TreeSHAP contributions combine exactly::

    phi(x)    = a * sum_m w_m * phi_m(x)
    base      = a * sum_m w_m * base_m + b       and   sum_j phi_j(x) + base == logit(p(x))

Nothing here imports Optuna or a database: :mod:`ml.tune` searches parameters, :mod:`ml.train` orchestrates.

Why one file of ~900 lines: it is one thing, the ensemble model. The four member adapters (fit, margin,
contributions, native save/load), the blend and Platt fits and :class:`Ensemble` (predict, explain, save/load) share
one contract, the margin (log-odds) space in which the additivity above holds; splitting the members from the blend
would spread that invariant over modules that only make sense together.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ml.errors import ModelError
from ml.jsonutil import to_jsonable

log = logging.getLogger(__name__)

MEMBER_NAMES: tuple[str, ...] = ("catboost", "xgboost", "lightgbm", "random_forest")
MANIFEST = "manifest.json"
FORMAT_VERSION = 1

# Monotone constraints by feature name: (regex, direction). +1: the score may not fall when the feature rises;
# -1: may not rise. Matched with re.search on each feature name; names matching no rule are unconstrained, and rules
# matching no name are ignored, so the same table works on any feature list. Why: "more recent cart events for a pair
# must not lower its score, all else equal" then holds by construction in all four libraries.
MONOTONE_RULES: tuple[tuple[str, int], ...] = (
    # time since the pair's last cart: a more recent cart (smaller value) must not lower the score
    (r"^pair_.*(seconds|minutes|hours|days)_since_(last_)?cart", -1),
    # pair cart counts (any window): more carts must not lower the score; ratios/shares/removals stay free
    (r"^pair_(?!.*(remove|ratio|share|rate|frac|per_|since))(.*_)?carts?(_|$)", +1),
)

NAN_FILL_LARGE = 1e9
"""NaN in a monotone-decreasing "time since ..." feature means "never (in the lookback)": later than any real time.
Filling it with a value above every real one before the models see it makes the monotone constraint cover the
NaN -> value step too (a first cart ever must not lower the score)."""

FAST_CHECK_ROWS = 256
FAST_CHECK_TOLERANCE = 1e-4
"""Before fast (ml.explain) contributions of a member are used, they must add up to the library's own margin within
this tolerance on the first rows explained; otherwise "auto" falls back to native contributions and "fast" raises."""

OnIteration = Callable[[int, float], None]
"""Called as ``on_iteration(iteration, validation_loss)`` every few iterations while a member fits (lower loss is
better); may raise (e.g. ``optuna.TrialPruned``) to stop the fit, and the exception propagates out of ``fit``."""


# --- small numeric helpers ----------------------------------------------------------------------------------------
def sigmoid(z: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function (float64)."""
    z = np.asarray(z, dtype=np.float64)
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    ez = np.exp(z[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out


def logit(p: np.ndarray, eps: float = 1e-15) -> np.ndarray:
    """log(p / (1 - p)) with p clipped to [eps, 1 - eps]."""
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1 - eps)
    return np.log(p) - np.log1p(-p)


def weighted_log_loss_from_logit(z: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> float:
    """Mean (weighted) binary log loss of logits ``z`` against labels ``y`` in {0, 1}; stable for large |z|."""
    z = np.asarray(z, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    losses = np.logaddexp(0.0, z) - y * z
    if w is None:
        return float(losses.mean())
    w = np.asarray(w, dtype=np.float64)
    return float(np.dot(losses, w) / w.sum())


def monotone_constraints(feature_names: Sequence[str], rules: Sequence[tuple[str, int]] = MONOTONE_RULES) -> list[int]:
    """One of -1/0/+1 per feature (in order), from the first rule whose regex matches the feature name."""
    out = []
    for name in feature_names:
        direction = 0
        for pattern, d in rules:
            if re.search(pattern, name):
                direction = d
                break
        out.append(direction)
    return out


def nan_fill_values(
    feature_names: Sequence[str], rules: Sequence[tuple[str, int]] = MONOTONE_RULES
) -> dict[str, float]:
    """Feature -> value that replaces NaN: :data:`NAN_FILL_LARGE` for every monotone-decreasing feature."""
    return {n: NAN_FILL_LARGE for n, d in zip(feature_names, monotone_constraints(feature_names, rules)) if d < 0}


def resolve_threads(threads: int) -> int:
    """``threads`` if positive, else the number of CPUs available to this process."""
    if threads > 0:
        return threads
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def as_matrix(
    X: pd.DataFrame | np.ndarray, feature_names: Sequence[str], nan_fill: Mapping[str, float] | None = None
) -> np.ndarray:
    """The features as a C-contiguous float64 matrix in ``feature_names`` order, NaN replaced per ``nan_fill``.

    A DataFrame is selected by name (extra columns ignored; a missing one raises :class:`ModelError`); an array must
    already have ``len(feature_names)`` columns in that order. The input is never modified.
    """
    if isinstance(X, pd.DataFrame):
        missing = [c for c in feature_names if c not in X.columns]
        if missing:
            raise ModelError(f"input lacks feature column(s) {missing[:5]}{'...' if len(missing) > 5 else ''}")
        arr = np.ascontiguousarray(X.loc[:, list(feature_names)].to_numpy(dtype=np.float64, na_value=np.nan))
        copied = True
    else:
        arr = np.ascontiguousarray(np.asarray(X, dtype=np.float64))
        copied = arr is not X
        if arr.ndim != 2 or arr.shape[1] != len(feature_names):
            raise ModelError(f"expected a (n, {len(feature_names)}) matrix, got shape {arr.shape}")
    if nan_fill:
        for j, name in enumerate(feature_names):
            if name in nan_fill:
                col = arr[:, j]
                nan = np.isnan(col)
                if nan.any():
                    if not copied:
                        arr, copied = arr.copy(), True
                        col = arr[:, j]
                    col[nan] = nan_fill[name]
    return arr


# --- members ------------------------------------------------------------------------------------------------------
@dataclass
class FitData:
    """Library-native train/validation data for one member kind, built once and reused by every trial."""

    train: Any
    valid: Any
    n_train: int
    n_valid: int


@dataclass
class FittedMember:
    """A fitted member: the native model, the number of trees kept (best iteration + 1) and its params."""

    name: str
    model: Any
    n_trees: int
    params: dict[str, Any]


class MemberKind:
    """How to fit, predict, explain, save and load one member with its own library. Subclasses per library."""

    name: str = ""
    library: str = ""
    file_name: str = ""
    report_every: int = 10  # iterations between on_iteration calls (each may write to the Optuna storage)

    def prepare(
        self,
        X: np.ndarray,
        y: np.ndarray,
        w: np.ndarray,
        Xv: np.ndarray,
        yv: np.ndarray,
        wv: np.ndarray,
        feature_names: Sequence[str],
    ) -> FitData:
        raise NotImplementedError

    def fit(
        self,
        params: Mapping[str, Any],
        data: FitData,
        *,
        feature_names: Sequence[str],
        seed: int,
        threads: int,
        early_stopping_rounds: int | None = 30,
        on_iteration: OnIteration | None = None,
    ) -> FittedMember:
        raise NotImplementedError

    def predict_margin(self, model: Any, X: np.ndarray, threads: int = 0) -> np.ndarray:
        """Raw (log-odds) scores, float64, shape (n,)."""
        raise NotImplementedError

    def contributions(self, model: Any, X: np.ndarray, threads: int = 0) -> tuple[np.ndarray, float]:
        """Exact TreeSHAP contributions in margin space (n, f) float64 and the base value, from the library."""
        raise NotImplementedError

    def save(self, model: Any, path: Path) -> None:
        raise NotImplementedError

    def load(self, path: Path) -> Any:
        raise NotImplementedError

    def version(self) -> str:
        import importlib.metadata

        return importlib.metadata.version(self.library)

    def n_trees(self, model: Any) -> int:
        raise NotImplementedError

    def margin_scale(self, model: Any) -> float:
        """Factor from the library's raw score (and raw contributions) to this member's margin: 1, except for the
        random forest (see :class:`RandomForestMember`)."""
        return 1.0


class CatBoostMember(MemberKind):
    name, library, file_name = "catboost", "catboost", "catboost.cbm"

    def prepare(self, X, y, w, Xv, yv, wv, feature_names):  # noqa: ANN001, ANN201 - see MemberKind
        from catboost import Pool

        names = list(feature_names)
        return FitData(Pool(X, y, weight=w, feature_names=names), Pool(Xv, yv, weight=wv, feature_names=names),
                       len(y), len(yv))

    def fit(  # noqa: ANN201 - see MemberKind.fit
        self, params, data, *, feature_names, seed, threads, early_stopping_rounds=30, on_iteration=None  # noqa: ANN001
    ):
        from catboost import CatBoostClassifier

        p = dict(params)
        mono = monotone_constraints(feature_names)
        model = CatBoostClassifier(
            loss_function="Logloss",
            eval_metric="Logloss",
            random_seed=seed,
            thread_count=resolve_threads(threads),
            allow_writing_files=False,
            verbose=False,
            monotone_constraints=mono if any(mono) else None,
            **p,
        )
        callback = _CatBoostIterationCallback(on_iteration, self.report_every) if on_iteration else None
        model.fit(
            data.train,
            eval_set=data.valid,
            use_best_model=True,
            early_stopping_rounds=early_stopping_rounds,
            callbacks=[callback] if callback else None,
        )
        if callback is not None and callback.error is not None:
            raise callback.error
        return FittedMember(self.name, model, int(model.tree_count_), p)

    def predict_margin(self, model, X, threads=0):  # noqa: ANN001, ANN201
        return np.asarray(
            model.predict(X, prediction_type="RawFormulaVal", thread_count=resolve_threads(threads)), dtype=np.float64
        )

    def contributions(self, model, X, threads=0):  # noqa: ANN001, ANN201
        from catboost import Pool

        sv = model.get_feature_importance(Pool(X), type="ShapValues", thread_count=resolve_threads(threads))
        sv = np.asarray(sv, dtype=np.float64)
        return np.ascontiguousarray(sv[:, :-1]), float(sv[0, -1]) if len(sv) else 0.0

    def save(self, model, path):  # noqa: ANN001, ANN201
        model.save_model(str(path), format="cbm")

    def load(self, path):  # noqa: ANN001, ANN201
        from catboost import CatBoost

        model = CatBoost()
        model.load_model(str(path), format="cbm")
        return model

    def n_trees(self, model):  # noqa: ANN001, ANN201
        return int(model.tree_count_)


class _CatBoostIterationCallback:
    """CatBoost calls ``after_iteration(info)`` from native code; an exception raised there would not propagate
    cleanly, so the callback stores it, stops training (returns False) and ``fit`` re-raises it."""

    def __init__(self, on_iteration: OnIteration, every: int) -> None:
        self.on_iteration, self.every, self.error = on_iteration, every, None

    def after_iteration(self, info: Any) -> bool:
        if (info.iteration + 1) % self.every:
            return True
        try:
            self.on_iteration(info.iteration + 1, float(info.metrics["validation"]["Logloss"][-1]))
        except BaseException as e:  # noqa: BLE001 - re-raised after fit returns
            self.error = e
            return False
        return True


class XGBoostMember(MemberKind):
    name, library, file_name = "xgboost", "xgboost", "xgboost.ubj"

    def prepare(self, X, y, w, Xv, yv, wv, feature_names):  # noqa: ANN001, ANN201
        import xgboost as xgb

        names = list(feature_names)
        train = xgb.QuantileDMatrix(X, y, weight=w, feature_names=names, max_bin=256)
        valid = xgb.QuantileDMatrix(Xv, yv, weight=wv, feature_names=names, ref=train)
        return FitData(train, valid, len(y), len(yv))

    def fit(  # noqa: ANN201 - see MemberKind.fit
        self, params, data, *, feature_names, seed, threads, early_stopping_rounds=30, on_iteration=None  # noqa: ANN001
    ):
        import xgboost as xgb

        p = dict(params)
        rounds = int(p.pop("n_estimators", 300))
        mono = monotone_constraints(feature_names)
        booster_params = {
            "objective": "binary:logistic",
            "eval_metric": "logloss",
            "tree_method": "hist",
            "max_bin": 256,
            "seed": seed,
            "nthread": resolve_threads(threads),
            "verbosity": 0,
            **p,
        }
        if any(mono):
            booster_params["monotone_constraints"] = "(" + ",".join(map(str, mono)) + ")"
        callbacks = [_XGBoostIterationCallback(on_iteration, self.report_every)] if on_iteration else []
        booster = xgb.train(
            booster_params,
            data.train,
            num_boost_round=rounds,
            evals=[(data.valid, "valid")],
            early_stopping_rounds=early_stopping_rounds,
            callbacks=callbacks,
            verbose_eval=False,
        )
        if early_stopping_rounds:
            booster = booster[: booster.best_iteration + 1]  # keep only the trees up to the best iteration
        return FittedMember(self.name, booster, booster.num_boosted_rounds(), {**p, "n_estimators": rounds})

    def predict_margin(self, model, X, threads=0):  # noqa: ANN001, ANN201
        model.set_param({"nthread": resolve_threads(threads)})
        return np.asarray(model.inplace_predict(X, predict_type="margin"), dtype=np.float64)

    def contributions(self, model, X, threads=0):  # noqa: ANN001, ANN201
        import xgboost as xgb

        model.set_param({"nthread": resolve_threads(threads)})
        sv = model.predict(xgb.DMatrix(X, feature_names=model.feature_names), pred_contribs=True)
        sv = np.asarray(sv, dtype=np.float64)  # XGBoost computes SHAP in float32
        return np.ascontiguousarray(sv[:, :-1]), float(sv[0, -1]) if len(sv) else 0.0

    def save(self, model, path):  # noqa: ANN001, ANN201
        model.save_model(str(path))

    def load(self, path):  # noqa: ANN001, ANN201
        import xgboost as xgb

        booster = xgb.Booster()
        booster.load_model(str(path))
        return booster

    def n_trees(self, model):  # noqa: ANN001, ANN201
        return int(model.num_boosted_rounds())


class _XGBoostIterationCallback:
    def __new__(cls, on_iteration: OnIteration, every: int):  # noqa: ANN204 - returns an xgboost TrainingCallback
        import xgboost as xgb

        class _Callback(xgb.callback.TrainingCallback):
            def after_iteration(self, model: Any, epoch: int, evals_log: dict) -> bool:
                if (epoch + 1) % every == 0:
                    on_iteration(epoch + 1, float(evals_log["valid"]["logloss"][-1]))
                return False

        return _Callback()


class LightGBMMember(MemberKind):
    name, library, file_name = "lightgbm", "lightgbm", "lightgbm.txt"
    boosting = "gbdt"
    metric = "binary_logloss"

    def prepare(self, X, y, w, Xv, yv, wv, feature_names):  # noqa: ANN001, ANN201
        import lightgbm as lgb

        names = list(feature_names)
        # feature_pre_filter=False lets every trial change min_data_in_leaf on the same constructed Dataset
        ds_params = {"max_bin": 255, "feature_pre_filter": False, "verbosity": -1}
        train = lgb.Dataset(X, y, weight=w, feature_name=names, params=ds_params, free_raw_data=False)
        valid = lgb.Dataset(Xv, yv, weight=wv, feature_name=names, reference=train, params=ds_params,
                            free_raw_data=False)
        train.construct()
        valid.construct()
        return FitData(train, valid, len(y), len(yv))

    def booster_params(self, params: Mapping[str, Any], feature_names: Sequence[str], seed: int,
                       threads: int) -> dict[str, Any]:
        mono = monotone_constraints(feature_names)
        p = {
            "objective": "binary",
            "boosting": self.boosting,
            "metric": self.metric,
            "seed": seed,
            "num_threads": resolve_threads(threads),
            "deterministic": True,
            "force_col_wise": True,
            "verbosity": -1,
            "feature_pre_filter": False,
            **params,
        }
        if any(mono):
            p["monotone_constraints"] = mono
        return p

    def fit(  # noqa: ANN201 - see MemberKind.fit
        self, params, data, *, feature_names, seed, threads, early_stopping_rounds=30, on_iteration=None  # noqa: ANN001
    ):
        import lightgbm as lgb

        p = dict(params)
        rounds = int(p.pop("n_estimators", 300))
        callbacks: list[Any] = []
        if early_stopping_rounds:
            callbacks.append(lgb.early_stopping(early_stopping_rounds, first_metric_only=True, verbose=False))
        if on_iteration is not None:
            callbacks.append(_lightgbm_iteration_callback(on_iteration, self.report_every, self.metric))
        booster = lgb.train(
            self.booster_params(p, feature_names, seed, threads),
            data.train,
            num_boost_round=rounds,
            valid_sets=[data.valid],
            valid_names=["valid"],
            callbacks=callbacks,
        )
        best = booster.best_iteration if early_stopping_rounds and booster.best_iteration > 0 else booster.num_trees()
        # Round-trip through the native text format so the in-memory model is exactly what save/load gives back,
        # truncated at the best iteration.
        booster = lgb.Booster(model_str=booster.model_to_string(num_iteration=best))
        return FittedMember(self.name, booster, booster.num_trees(), {**p, "n_estimators": rounds})

    def predict_margin(self, model, X, threads=0):  # noqa: ANN001, ANN201
        return np.asarray(model.predict(X, raw_score=True, num_threads=resolve_threads(threads)), dtype=np.float64)

    def contributions(self, model, X, threads=0):  # noqa: ANN001, ANN201
        sv = np.asarray(model.predict(X, pred_contrib=True, num_threads=resolve_threads(threads)), dtype=np.float64)
        return np.ascontiguousarray(sv[:, :-1]), float(sv[0, -1]) if len(sv) else 0.0

    def save(self, model, path):  # noqa: ANN001, ANN201
        model.save_model(str(path))

    def load(self, path):  # noqa: ANN001, ANN201
        import lightgbm as lgb

        return lgb.Booster(model_file=str(path))

    def n_trees(self, model):  # noqa: ANN001, ANN201
        return int(model.num_trees())


class RandomForestMember(LightGBMMember):
    """LightGBM in random-forest mode: see the module docstring for why its scores are in margin space.

    Early stopping and pruning watch validation AUC (a forest does not overfit with more trees, and its raw log loss
    reflects scale, which the blend recalibrates, more than ranking)."""

    name, file_name = "random_forest", "random_forest.txt"
    boosting = "rf"
    metric = "auc"

    # LightGBM's rf mode averages tree outputs for its probabilities, but predict(raw_score=True) and pred_contrib
    # return the *sum* over trees. Dividing by the number of trees gives the log-odds LightGBM's own probability uses
    # (sigmoid(raw / T) == predict(X), checked in tests), so the member's margin lives on the boosted members' scale.
    def margin_scale(self, model: Any) -> float:
        return 1.0 / max(model.num_trees(), 1)

    def predict_margin(self, model, X, threads=0):  # noqa: ANN001, ANN201
        return super().predict_margin(model, X, threads) * self.margin_scale(model)

    def contributions(self, model, X, threads=0):  # noqa: ANN001, ANN201
        phi, base = super().contributions(model, X, threads)
        scale = self.margin_scale(model)
        return phi * scale, base * scale


def _lightgbm_iteration_callback(on_iteration: OnIteration, every: int, metric: str) -> Callable[[Any], None]:
    def _callback(env: Any) -> None:
        if (env.iteration + 1) % every:
            return
        for _data, name, value, higher_better in env.evaluation_result_list:
            if name == metric:
                on_iteration(env.iteration + 1, 1.0 - float(value) if higher_better else float(value))
                return

    _callback.order = 30  # type: ignore[attr-defined] - after early stopping's bookkeeping
    return _callback


MEMBER_KINDS: dict[str, MemberKind] = {
    k.name: k for k in (CatBoostMember(), XGBoostMember(), LightGBMMember(), RandomForestMember())
}


def configure_openmp() -> None:
    """Default ``OMP_WAIT_POLICY=PASSIVE`` (unless set) before LightGBM/XGBoost load their OpenMP runtime.

    Why: OpenMP's default spin-waiting makes multi-threaded fits 5-20x *slower* when the cores are shared (parallel
    Airflow tasks, tests, other jobs on a 2-core machine); measured on this machine: LightGBM 100 trees on 20k rows,
    2 threads under load 5.7 s spinning vs 0.7 s passive; XGBoost 100k rows 17 s vs 4 s. Passive waiting costs little
    on an idle machine. Has no effect once a library's OpenMP runtime is initialised, so it is called before the
    first import of a member library (every path goes through :func:`member_kind`)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def member_kind(name: str) -> MemberKind:
    """The :class:`MemberKind` called ``name``; raises :class:`ModelError` for an unknown member."""
    configure_openmp()
    try:
        return MEMBER_KINDS[name]
    except KeyError:
        raise ModelError(f"unknown ensemble member {name!r}; known: {', '.join(MEMBER_KINDS)}") from None


def library_versions() -> dict[str, str]:
    """Versions of every library whose behaviour a saved model depends on."""
    import importlib.metadata

    names = ["catboost", "xgboost", "lightgbm", "numpy", "scipy", "scikit-learn", "optuna", "pandas", "shap"]
    out = {}
    for n in names:
        try:
            out[n] = importlib.metadata.version(n)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


# --- blending and calibration -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Blend:
    """Fitted blend: non-negative weights summing to 1 (member order) and the Platt map (a, b) on the blended margin."""

    weights: np.ndarray
    a: float
    b: float
    log_loss: float


def fit_platt(margin: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> tuple[float, float]:
    """Platt scaling: (a, b) minimising the (weighted) log loss of ``a * margin + b``. Unregularised, float64.

    Damped Newton steps on the 2x2 problem (a few iterations; why not scipy: its L-BFGS-B costs ~0.1 s of fixed
    overhead per call, and this runs once per member, variant and trial). A constant margin gives a = 0 and b = the
    prior log-odds."""
    m = np.asarray(margin, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    w = np.ones_like(m) if w is None else np.asarray(w, dtype=np.float64)
    sw = w.sum()
    prior = float(np.clip(np.dot(w, y) / sw, 1e-12, 1 - 1e-12))
    if m.size == 0 or np.ptp(m) == 0:
        return 0.0, math.log(prior / (1 - prior))
    X = np.column_stack([m, np.ones_like(m)])

    def loss(t: np.ndarray) -> float:
        return weighted_log_loss_from_logit(X @ t, y, w)

    theta = np.array([1.0, 0.0])
    current = loss(theta)
    if not np.isfinite(current) or current > loss(np.array([0.0, math.log(prior / (1 - prior))])):
        theta = np.array([0.0, math.log(prior / (1 - prior))])
        current = loss(theta)
    for _ in range(100):
        p = sigmoid(X @ theta)
        grad = X.T @ (w * (p - y)) / sw
        hess = (X * (w * p * (1 - p))[:, None]).T @ X / sw + 1e-12 * np.eye(2)
        if np.max(np.abs(grad)) < 1e-12:
            break
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while t > 1e-8:  # backtracking: never increase the loss
            cand = theta - t * step
            new = loss(cand)
            if new <= current:
                break
            t *= 0.5
        else:
            break
        done = current - new < 1e-15
        theta, current = cand, new
        if done:
            break
    return float(theta[0]), float(theta[1])


def fit_blend(margins: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> Blend:
    """Fit blend weights and Platt calibration on validation margins.

    ``margins``: (n, M) member margins. Minimises the weighted log loss of ``a * margins @ w + b`` over w on the
    simplex (SLSQP, analytic gradients), jointly with (a, b); then refits (a, b) for the chosen w (same optimum, to
    full precision). Weights below 1e-6 are set to 0 and the rest renormalised.
    """
    from scipy.optimize import minimize

    M = np.asarray(margins, dtype=np.float64)
    n, k = M.shape
    y = np.asarray(y, dtype=np.float64)
    w = np.ones(n) if w is None else np.asarray(w, dtype=np.float64)
    sw = w.sum()
    if k == 1:
        a, b = fit_platt(M[:, 0], y, w)
        return Blend(np.ones(1), a, b, weighted_log_loss_from_logit(a * M[:, 0] + b, y, w))
    # standardise so that a ~ 1 is a sensible start whatever the member scales
    scale = M.std(axis=0)
    scale[scale == 0] = 1.0

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        beta, b = theta[:k], theta[k]  # beta = a * w / scale (a >= 0 folded in)
        z = (M / scale) @ beta + b
        r = w * (sigmoid(z) - y) / sw
        grad = np.concatenate([(M / scale).T @ r, [r.sum()]])
        return float(np.dot(w, np.logaddexp(0.0, z) - y * z) / sw), grad

    # beta >= 0 is the cone {a * w, a >= 0, w on the simplex}: optimise there (no equality constraint needed)
    x0 = np.concatenate([np.full(k, 1.0 / k), [0.0]])
    res = minimize(loss, x0, jac=True, method="L-BFGS-B", bounds=[(0.0, None)] * k + [(None, None)])
    coef = res.x[:k] / scale
    if coef.sum() <= 0:  # all members useless: fall back to equal weights
        weights = np.full(k, 1.0 / k)
    else:
        weights = coef / coef.sum()
        weights[weights < 1e-6] = 0.0
        weights = weights / weights.sum()
    blended = M @ weights
    a, b = fit_platt(blended, y, w)
    return Blend(weights, a, b, weighted_log_loss_from_logit(a * blended + b, y, w))


# --- the ensemble -------------------------------------------------------------------------------------------------
@dataclass
class Ensemble:
    """A fitted ensemble. ``members``: name -> native model; ``weights``: name -> float (>= 0, sum 1);
    ``calibration``: (a, b) with ``logit(p) = a * blended_margin + b``; ``feature_names``: input column order.

    Inputs ``X`` are DataFrames holding (at least) ``feature_names`` or float matrices in that column order; NaN is
    allowed (each library's native missing-value handling, after ``nan_fill``: feature -> value replacing NaN, see
    :data:`NAN_FILL_LARGE`). Outputs are float64 numpy arrays of shape (n,). ``threshold``: the decision threshold
    chosen on validation (max F1); ``threads``: threads per library call (0 = every CPU).
    """

    members: dict[str, Any]
    weights: dict[str, float]
    calibration: tuple[float, float]
    feature_names: list[str]
    threshold: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    nan_fill: dict[str, float] = field(default_factory=dict)
    threads: int = 0
    _explainers: dict[str, Any] = field(default_factory=dict, repr=False)
    _native_only: set[str] = field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        if set(self.weights) != set(self.members):
            raise ModelError(f"weights {sorted(self.weights)} do not match members {sorted(self.members)}")
        total = sum(self.weights.values())
        if any(v < 0 for v in self.weights.values()) or not math.isclose(total, 1.0, abs_tol=1e-9):
            raise ModelError(f"weights must be non-negative and sum to 1, got {self.weights}")
        self.calibration = (float(self.calibration[0]), float(self.calibration[1]))

    # prediction
    def matrix(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        """The model input: ``X`` as float64 in feature order with :attr:`nan_fill` applied (see :func:`as_matrix`)."""
        return as_matrix(X, self.feature_names, self.nan_fill)

    def active_members(self) -> list[str]:
        """Members with a positive weight, in canonical order."""
        return [m for m in _ordered(self.members) if self.weights[m] > 0]

    def member_margins(
        self, X: pd.DataFrame | np.ndarray, members: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Raw margin of each member (default: every member), name -> (n,) float64."""
        arr = self.matrix(X)
        return {m: member_kind(m).predict_margin(self.members[m], arr, self.threads)
                for m in (members or _ordered(self.members))}

    def predict_margin(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        """Blended margin ``sum_m w_m * margin_m(x)`` before calibration, (n,) float64."""
        arr = self.matrix(X)
        out = np.zeros(len(arr), dtype=np.float64)
        for m in self.active_members():
            out += self.weights[m] * member_kind(m).predict_margin(self.members[m], arr, self.threads)
        return out

    def predict_logit(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        """Calibrated log-odds ``a * blended_margin + b``, (n,) float64."""
        a, b = self.calibration
        return a * self.predict_margin(X) + b

    def predict_proba(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        """Calibrated probability of the positive class, (n,) float64."""
        return sigmoid(self.predict_logit(X))

    # explanation
    def explain(self, X: pd.DataFrame | np.ndarray, method: str = "auto") -> tuple[np.ndarray, np.ndarray]:
        """Exact SHAP contributions in calibrated log-odds space.

        Returns ``(contributions (n, f) float64 in feature_names order, base_values (n,) float64)`` with
        ``contributions.sum(1) + base_values == predict_logit(X)`` (to float rounding; XGBoost computes in float32).
        ``method``: ``"fast"`` uses :mod:`ml.explain` (engineer E's TreeSHAP), ``"native"`` the libraries' own
        ``pred_contrib``/``ShapValues``, ``"auto"`` fast when ml.explain is importable, else native.
        """
        arr = self.matrix(X)
        if method not in ("fast", "native", "auto"):
            raise ModelError(f"unknown explain method {method!r}; use 'fast', 'native' or 'auto'")
        if method == "auto" and not _fast_explain_available():
            method = "native"
        a, b = self.calibration
        contrib = np.zeros(arr.shape, dtype=np.float64)
        base = b
        for m in self.active_members():
            if method == "native" or (method == "auto" and m in self._native_only):
                phi, base_m = member_kind(m).contributions(self.members[m], arr, self.threads)
            elif method == "fast":
                phi, base_m = self._fast_contributions(m, arr)
            else:
                try:
                    phi, base_m = self._fast_contributions(m, arr)
                except Exception as e:  # noqa: BLE001 - auto: an unsupported model falls back to exact native SHAP
                    log.warning("fast SHAP unavailable for %s (%s); using the library's own contributions", m, e)
                    self._native_only.add(m)
                    phi, base_m = member_kind(m).contributions(self.members[m], arr, self.threads)
            coef = a * self.weights[m]
            contrib += coef * phi
            base += coef * base_m
        return contrib, np.full(len(arr), base, dtype=np.float64)

    def _fast_contributions(self, member: str, arr: np.ndarray) -> tuple[np.ndarray, float]:
        from ml import explain as fast  # engineer E's module

        threads = resolve_threads(self.threads) if self.threads > 0 else None
        kind = member_kind(member)
        scale = kind.margin_scale(self.members[member])  # ml.explain works on the library's raw score
        explainer = self._explainers.get(member)
        if explainer is None:
            explainer = fast.TreeExplainer.from_model(self.members[member])
            # Guard: on a few rows the fast values must add up to the library's own margin before they are trusted
            probe = arr[:FAST_CHECK_ROWS]
            native = kind.predict_margin(self.members[member], probe, self.threads)
            phi = np.asarray(explainer.shap_values(probe, n_threads=threads), dtype=np.float64) * scale
            base = float(explainer.expected_value) * scale
            err = float(np.max(np.abs(phi.sum(axis=1) + base - native), initial=0.0))
            if not err <= FAST_CHECK_TOLERANCE:
                raise ModelError(f"fast SHAP for {member} does not add up to the model's margin (max error {err:.3g})")
            self._explainers[member] = explainer
        phi = np.asarray(explainer.shap_values(arr, n_threads=threads), dtype=np.float64)
        if scale != 1.0:
            phi *= scale
        return phi, float(explainer.expected_value) * scale

    # artifacts
    def save(self, directory: str | Path) -> dict[str, Any]:
        """Write every member in its library's native format plus ``manifest.json`` (file sha256s, library
        versions, feature names, weights, calibration, threshold, metadata) into ``directory``; return the manifest.

        No pickle anywhere. :meth:`load` of the folder reproduces :meth:`predict_proba` bit for bit.
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        files = {}
        for m in _ordered(self.members):
            kind = member_kind(m)
            path = d / kind.file_name
            kind.save(self.members[m], path)
            files[m] = {
                "file": kind.file_name,
                "sha256": _sha256(path),
                "bytes": path.stat().st_size,
                "library": kind.library,
                "library_version": kind.version(),
                "n_trees": kind.n_trees(self.members[m]),
            }
        manifest = {
            "format_version": FORMAT_VERSION,
            "feature_names": list(self.feature_names),
            "members": files,
            "weights": {m: float(self.weights[m]) for m in _ordered(self.members)},
            "calibration": {"a": self.calibration[0], "b": self.calibration[1]},
            "threshold": self.threshold,
            "nan_fill": dict(self.nan_fill),
            "library_versions": library_versions(),
            "metadata": to_jsonable(self.metadata),
        }
        (d / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        return manifest

    @classmethod
    def load(cls, directory: str | Path, *, verify: bool = True, threads: int = 0) -> Ensemble:
        """Load a folder written by :meth:`save`. Raises :class:`ModelError` if the manifest or a file is missing,
        or (``verify``) a file's sha256 differs from the manifest. A different library version only logs a warning."""
        d = Path(directory)
        try:
            manifest = json.loads((d / MANIFEST).read_text())
        except (OSError, ValueError) as e:
            raise ModelError(f"cannot read {d / MANIFEST}: {e}") from e
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ModelError(f"{d / MANIFEST}: unsupported format_version {manifest.get('format_version')}")
        members = {}
        for m, info in manifest["members"].items():
            kind = member_kind(m)
            path = d / info["file"]
            if not path.exists():
                raise ModelError(f"artifact {path} listed in the manifest is missing")
            if verify and _sha256(path) != info["sha256"]:
                raise ModelError(f"artifact {path} does not match its manifest sha256 (corrupted or replaced)")
            if info.get("library_version") != kind.version():
                log.warning("%s was saved with %s %s, loading with %s", path, kind.library,
                            info.get("library_version"), kind.version())
            members[m] = kind.load(path)
        cal = manifest["calibration"]
        return cls(
            members=members,
            weights={m: float(v) for m, v in manifest["weights"].items()},
            calibration=(float(cal["a"]), float(cal["b"])),
            feature_names=list(manifest["feature_names"]),
            threshold=manifest.get("threshold"),
            metadata=manifest.get("metadata", {}),
            nan_fill={k: float(v) for k, v in manifest.get("nan_fill", {}).items()},
            threads=threads,
        )


def _ordered(names: Mapping[str, Any] | Sequence[str]) -> list[str]:
    known = [m for m in MEMBER_NAMES if m in names]
    return known + sorted(m for m in names if m not in MEMBER_NAMES)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fast_explain_available() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("ml.explain") is not None
    except (ImportError, ValueError):
        return False
