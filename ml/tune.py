"""Optuna tuning of one ensemble member: seeded TPE, pruning on intermediate validation loss, early stopping, and
an RDB study in PostgreSQL (schema ``experiments``) that can be resumed and browsed with optuna-dashboard.

Objective (minimised): the weighted validation log loss of the member's margin after Platt scaling on the same
validation rows. Platt first, because the ensemble recalibrates every member anyway, so a member is judged on what
it adds (its ranking and shape), not on the scale of its raw scores (the random forest's scale is loose by design).

Search spaces keep explanation cost in mind: TreeSHAP is O(trees x leaves x depth^2) per row, so depth and leaves
are capped (CatBoost depth 4..8, XGBoost max_depth 3..8, LightGBM num_leaves 15..127 with max_depth <= 8, forest
max_depth <= 10) and boosting stops early (at most ``MAX_ROUNDS`` rounds). Each trial records ``shap_cost`` =
trees x leaves x depth^2 as a user attribute, shown in the model report.

Studies are named ``member-<name>-<train start>_<holdout>-<fingerprint[:8]>``; re-running the same training window
on the same data resumes the study up to the trial budget (finished + pruned trials count towards it).
Browse them with::

    optuna-dashboard "postgresql+psycopg2://USER@HOST/DB?options=-csearch_path%3Dexperiments"
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ml.ensemble import (
    FitData,
    FittedMember,
    fit_platt,
    member_kind,
    weighted_log_loss_from_logit,
)

log = logging.getLogger(__name__)

MAX_ROUNDS = 400
EARLY_STOPPING_ROUNDS = 30
_STORAGE_LOCK_KEY = 7_262_030  # pg_advisory_lock key: Optuna's table creation, serialised across processes


# --- search spaces ------------------------------------------------------------------------------------------------
def suggest_params(name: str, trial: Any) -> dict[str, Any]:
    """Sample one member's parameters from ``trial`` (an ``optuna.Trial``). Returned dicts feed ``MemberKind.fit``."""
    if name == "catboost":
        return {
            "iterations": MAX_ROUNDS,
            "depth": trial.suggest_int("depth", 4, 8),
            "learning_rate": trial.suggest_float("learning_rate", 0.03, 0.3, log=True),
            "l2_leaf_reg": trial.suggest_float("l2_leaf_reg", 1.0, 30.0, log=True),
            "random_strength": trial.suggest_float("random_strength", 0.1, 5.0, log=True),
            "bagging_temperature": trial.suggest_float("bagging_temperature", 0.0, 1.0),
            "border_count": 128,
        }
    if name == "xgboost":
        return {
            "n_estimators": MAX_ROUNDS,
            "max_depth": trial.suggest_int("max_depth", 3, 8),
            "learning_rate": trial.suggest_float("learning_rate", 0.03, 0.3, log=True),
            "min_child_weight": trial.suggest_float("min_child_weight", 1.0, 50.0, log=True),
            "subsample": trial.suggest_float("subsample", 0.6, 1.0),
            "colsample_bytree": trial.suggest_float("colsample_bytree", 0.5, 1.0),
            "reg_lambda": trial.suggest_float("reg_lambda", 0.1, 30.0, log=True),
        }
    if name == "lightgbm":
        max_depth = trial.suggest_int("max_depth", 4, 8)
        return {
            "n_estimators": MAX_ROUNDS,
            "max_depth": max_depth,
            # leaves capped by depth: a depth-d tree has at most 2^d leaves
            "num_leaves": min(trial.suggest_int("num_leaves", 15, 127), 2**max_depth),
            "learning_rate": trial.suggest_float("learning_rate", 0.03, 0.3, log=True),
            "min_data_in_leaf": trial.suggest_int("min_data_in_leaf", 10, 400, log=True),
            "feature_fraction": trial.suggest_float("feature_fraction", 0.5, 1.0),
            "bagging_fraction": trial.suggest_float("bagging_fraction", 0.6, 1.0),
            "bagging_freq": 1,
            "lambda_l2": trial.suggest_float("lambda_l2", 0.01, 30.0, log=True),
        }
    if name == "random_forest":
        max_depth = trial.suggest_int("max_depth", 5, 10)
        return {
            "n_estimators": trial.suggest_int("n_estimators", 50, 250, step=50),
            "max_depth": max_depth,
            "num_leaves": min(trial.suggest_int("num_leaves", 15, 127), 2**max_depth),
            "min_data_in_leaf": trial.suggest_int("min_data_in_leaf", 10, 400, log=True),
            "bagging_fraction": trial.suggest_float("bagging_fraction", 0.4, 0.9),
            "bagging_freq": 1,
            "feature_fraction": trial.suggest_float("feature_fraction", 0.4, 0.9),
            # shrinks each leaf's Newton step -G/(H + lambda) on small, pure leaves
            "lambda_l2": trial.suggest_float("lambda_l2", 1.0, 100.0, log=True),
        }
    raise ValueError(f"no search space for member {name!r}")


def default_params(name: str) -> dict[str, Any]:
    """Reasonable untuned parameters (the search space's centre), used for a zero-trial budget."""
    import optuna

    fixed = {
        "catboost": {"depth": 6, "learning_rate": 0.1, "l2_leaf_reg": 3.0, "random_strength": 1.0,
                     "bagging_temperature": 0.5},
        "xgboost": {"max_depth": 6, "learning_rate": 0.1, "min_child_weight": 5.0, "subsample": 0.8,
                    "colsample_bytree": 0.8, "reg_lambda": 1.0},
        "lightgbm": {"max_depth": 6, "num_leaves": 31, "learning_rate": 0.1, "min_data_in_leaf": 40,
                     "feature_fraction": 0.8, "bagging_fraction": 0.8, "lambda_l2": 1.0},
        "random_forest": {"n_estimators": 150, "max_depth": 8, "num_leaves": 63, "min_data_in_leaf": 40,
                          "bagging_fraction": 0.7, "feature_fraction": 0.7, "lambda_l2": 10.0},
    }[name]
    return suggest_params(name, optuna.trial.FixedTrial(fixed))


def shap_cost(name: str, params: dict[str, Any], n_trees: int) -> float:
    """Relative TreeSHAP cost per row: trees x leaves x depth^2 (an upper bound from the parameters)."""
    depth = int(params.get("depth") or params.get("max_depth") or 6)
    leaves = 2**depth if name in ("catboost", "xgboost") else int(params.get("num_leaves", 2**depth))
    return float(n_trees * leaves * depth * depth)


# --- storage ------------------------------------------------------------------------------------------------------
def optuna_storage_url(postgres_url: str, schema: str = "experiments") -> str:
    """The SQLAlchemy URL Optuna (and optuna-dashboard) use: the pipeline database with ``search_path=<schema>``,
    so Optuna's tables live in that schema."""
    from sqlalchemy.engine import make_url

    from ml.db import sqlalchemy_url

    u = make_url(sqlalchemy_url(postgres_url))
    return u.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)


_STORAGES: dict[str, Any] = {}


def open_storage(postgres_url: str) -> Any:
    """An ``optuna.storages.RDBStorage`` on the ``experiments`` schema (tables created on first use, under an
    advisory lock so parallel member tasks do not race). Heartbeats mark trials of a crashed run as failed when a
    later run resumes the study. One storage per URL and process (opening one checks Optuna's schema version)."""
    if postgres_url in _STORAGES:
        return _STORAGES[postgres_url]
    import optuna
    import sqlalchemy as sa

    from ml.db import make_engine

    eng = make_engine(postgres_url)
    try:
        with eng.connect() as conn:
            conn.execute(sa.text("select pg_advisory_lock(:k)"), {"k": _STORAGE_LOCK_KEY})
            try:
                with warnings.catch_warnings():
                    # heartbeats are flagged "experimental" by Optuna
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    storage = optuna.storages.RDBStorage(
                        optuna_storage_url(postgres_url),
                        engine_kwargs={"pool_pre_ping": True},
                        heartbeat_interval=60,
                        grace_period=180,
                    )
            finally:
                conn.execute(sa.text("select pg_advisory_unlock(:k)"), {"k": _STORAGE_LOCK_KEY})
                conn.commit()
    finally:
        eng.dispose()
    _STORAGES[postgres_url] = storage
    return storage


def study_name(member: str, window: dict[str, Any], fingerprint: str) -> str:
    """``member-<name>-<train start>_<holdout>-<fingerprint[:8]>`` (dates as YYYYMMDD when they are dates)."""

    def short(v: str) -> str:
        return v[:10].replace("-", "") if len(v) >= 10 and v[4] == "-" else v

    return f"member-{member}-{short(str(window['train_start']))}_{short(str(window['holdout']))}-{fingerprint[:8]}"


# --- tuning -------------------------------------------------------------------------------------------------------
@dataclass
class TuneResult:
    """The outcome of tuning one member: best parameters and value, the study, the fitted best model, history."""

    member: str
    study_name: str | None
    best_params: dict[str, Any]
    best_value: float
    best_trial: int | None
    n_complete: int
    n_pruned: int
    n_new_trials: int
    seconds: float
    fitted: FittedMember
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def trials_per_minute(self) -> float:
        return 60.0 * self.n_new_trials / self.seconds if self.seconds > 0 else 0.0


def calibrated_val_loss(member: str, fitted: FittedMember, Xv: np.ndarray, yv: np.ndarray, wv: np.ndarray,
                        threads: int = 0) -> float:
    """Weighted validation log loss of the member's margin after Platt scaling on the same rows."""
    margin = member_kind(member).predict_margin(fitted.model, Xv, threads)
    a, b = fit_platt(margin, yv, wv)
    return weighted_log_loss_from_logit(a * margin + b, yv, wv)


def tune_member(
    member: str,
    data: FitData,
    Xv: np.ndarray,
    yv: np.ndarray,
    wv: np.ndarray,
    *,
    feature_names: Sequence[str],
    n_trials: int,
    timeout: float | None,
    seed: int = 42,
    threads: int = 0,
    storage: Any | None = None,
    name: str | None = None,
) -> TuneResult:
    """Tune ``member`` with Optuna and return its best fitted model.

    ``data``: library-native train/validation sets from ``member_kind(member).prepare(...)``; ``Xv/yv/wv``: the
    validation rows as arrays (for the calibrated objective). ``n_trials``: total budget of the study (trials already
    finished or pruned in a resumed study count); ``timeout``: seconds for this call (None: no limit). ``storage``:
    an Optuna storage (see :func:`open_storage`), None for in-memory. ``n_trials == 0``: no study; the member is fitted
    once with :func:`default_params`.

    The returned model is the best trial's: kept from memory when that trial ran in this call, otherwise (a resumed
    study whose best trial ran earlier) refitted from its parameters with the same seed.
    """
    import optuna

    kind = member_kind(member)
    started = time.perf_counter()
    if n_trials <= 0:
        params = default_params(member)
        fitted = kind.fit(params, data, feature_names=feature_names, seed=seed, threads=threads,
                          early_stopping_rounds=EARLY_STOPPING_ROUNDS)
        value = calibrated_val_loss(member, fitted, Xv, yv, wv, threads)
        return TuneResult(member, None, params, value, None, 0, 0, 0, time.perf_counter() - started, fitted)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(5, n_trials // 3)), multivariate=True)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2 * EARLY_STOPPING_ROUNDS)
    study = optuna.create_study(
        study_name=name, storage=storage, sampler=sampler, pruner=pruner, direction="minimize",
        load_if_exists=True,
    )
    study.set_user_attr("member", member)
    study.set_user_attr("features", list(feature_names))
    done_states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    already = len(study.get_trials(deepcopy=False, states=done_states))
    trials_before = len(study.get_trials(deepcopy=False))
    remaining = max(0, n_trials - already)
    kept: dict[str, Any] = {"value": math.inf, "number": None, "fitted": None}

    def objective(trial: optuna.Trial) -> float:
        params = suggest_params(member, trial)
        t0 = time.perf_counter()

        def on_iteration(step: int, value: float) -> None:
            trial.report(value, step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at iteration {step} (validation loss {value:.5f})")

        fitted = kind.fit(params, data, feature_names=feature_names, seed=seed, threads=threads,
                          early_stopping_rounds=EARLY_STOPPING_ROUNDS, on_iteration=on_iteration)
        value = calibrated_val_loss(member, fitted, Xv, yv, wv, threads)
        trial.set_user_attr("n_trees", fitted.n_trees)
        trial.set_user_attr("shap_cost", shap_cost(member, params, fitted.n_trees))
        trial.set_user_attr("fit_seconds", round(time.perf_counter() - t0, 3))
        if value < kept["value"]:
            kept.update(value=value, number=trial.number, fitted=fitted)
        log.info("%s trial %d: val loss %.5f, %d trees, %.1fs", member, trial.number, value, fitted.n_trees,
                 time.perf_counter() - t0)
        return value

    if remaining:
        log.info("tuning %s: %d new trial(s) (study %s has %d), timeout %ss", member, remaining, name, already,
                 timeout)
        study.optimize(objective, n_trials=remaining, timeout=timeout, gc_after_trial=False,
                       catch=(), show_progress_bar=False)
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    pruned = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.PRUNED,))
    if complete:
        best = study.best_trial
        best_params, best_value, best_number = suggest_params(member, optuna.trial.FixedTrial(best.params)), \
            float(best.value), best.number
    else:  # every trial pruned or failed: fall back to defaults rather than fail the weekly run
        log.warning("%s: no trial completed; fitting default parameters", member)
        best_params, best_value, best_number = default_params(member), math.inf, None
    if kept["fitted"] is not None and kept["number"] == best_number:
        fitted = kept["fitted"]
    else:
        fitted = kind.fit(best_params, data, feature_names=feature_names, seed=seed, threads=threads,
                          early_stopping_rounds=EARLY_STOPPING_ROUNDS)
        if best_number is None:
            best_value = calibrated_val_loss(member, fitted, Xv, yv, wv, threads)
    history = [
        {
            "number": t.number,
            "state": t.state.name,
            "value": t.value,
            "seconds": (t.datetime_complete - t.datetime_start).total_seconds()
            if t.datetime_complete and t.datetime_start else None,
            "params": t.params,
            "n_trees": t.user_attrs.get("n_trees"),
            "shap_cost": t.user_attrs.get("shap_cost"),
        }
        for t in study.get_trials(deepcopy=False)
    ]
    return TuneResult(
        member=member,
        study_name=name,
        best_params=best_params,
        best_value=best_value,
        best_trial=best_number,
        n_complete=len(complete),
        n_pruned=len(pruned),
        n_new_trials=len(study.get_trials(deepcopy=False)) - trials_before,
        seconds=time.perf_counter() - started,
        fitted=fitted,
        history=history,
    )
