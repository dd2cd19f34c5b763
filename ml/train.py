"""Training: time-based splits, per-member Optuna tuning, the log-odds blend, Platt calibration, holdout
evaluation, registration and the champion/challenger gate.

Two entry points:

* :func:`train_ensemble` works on any labelled table (a :class:`TrainingData`, or the features' ``TrainingSet``)
  and returns a :class:`TrainResult` in memory: no database needed (pass ``postgres_url`` to keep Optuna studies).
* :func:`run_training` is the weekly job: snapshots from :mod:`ml.features`, :func:`train_ensemble`, artifacts,
  ``ml.model_versions``, the gate and the HTML report. The CLI ``propensity train`` calls it.

The DAG runs the same steps as separate tasks, passing file paths (never data) between them:
:func:`prepare_training_data` + :func:`save_training_data` -> :func:`fit_member` + :func:`stage_member` (one task per
member) -> :func:`assemble_ensemble` + :func:`register_result` -> :func:`ml.report.write_version_report`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy.engine import Engine

from ml.ensemble import (
    MEMBER_NAMES,
    Blend,
    Ensemble,
    FittedMember,
    as_matrix,
    fit_blend,
    fit_platt,
    library_versions,
    member_kind,
    nan_fill_values,
    sigmoid,
)
from ml.errors import ModelError
from ml.evaluate import GateDecision, Split, best_f1_threshold, decide_gate, holdout_metrics, split_by_time
from ml.observe import Progress
from ml.settings import Settings
from ml.tune import TuneResult, open_storage, study_name, tune_member

log = logging.getLogger(__name__)


# --- the data -----------------------------------------------------------------------------------------------------
@dataclass
class TrainingData:
    """A labelled table for training. One row = one example (for us: a (user, product) pair at a snapshot time).

    ``frame`` holds ``feature_names`` (numeric), ``label`` (0/1), ``time`` (snapshot time, UTC timestamps or any
    sortable value) and optionally ``weight`` (row weight, e.g. 1/negative-sampling rate) and ``group`` (user id for
    hit-rate@10). ``label_horizon``: how far past ``time`` a label looks (purges overlapping rows in the split).
    """

    frame: pd.DataFrame
    feature_names: list[str]
    fingerprint: str = ""
    label: str = "label"
    time: str = "as_of"
    weight: str | None = "weight"
    group: str | None = "user_id"
    label_horizon: dt.timedelta | None = None

    def __post_init__(self) -> None:
        cols = set(self.frame.columns)
        missing = [c for c in [*self.feature_names, self.label, self.time] if c not in cols]
        if missing:
            raise ModelError(f"training data lacks column(s) {missing}")
        if self.weight and self.weight not in cols:
            self.weight = None
        if self.group and self.group not in cols:
            self.group = None
        if not self.fingerprint:
            self.fingerprint = fingerprint_frame(self.frame)


def fingerprint_frame(frame: pd.DataFrame) -> str:
    """sha256 over column names and pandas' row hashes: the same table gives the same fingerprint."""
    h = hashlib.sha256(json.dumps([str(c) for c in frame.columns]).encode())
    h.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return h.hexdigest()


def as_training_data(
    obj: Any, feature_names: Sequence[str] | None = None, settings: Settings | None = None
) -> TrainingData:
    """Accept a :class:`TrainingData`, the features' ``TrainingSet`` (``.frame``, ``.fingerprint``; feature list from
    ``ml.features.FEATURE_COLUMNS`` unless given) or a DataFrame with ``as_of``/``label`` columns."""
    if isinstance(obj, TrainingData):
        return obj
    horizon = dt.timedelta(days=settings.label_horizon_days) if settings is not None else None
    if hasattr(obj, "frame"):
        if feature_names is None:
            from ml.features import FEATURE_COLUMNS

            feature_names = FEATURE_COLUMNS
        return TrainingData(obj.frame, list(feature_names), getattr(obj, "fingerprint", "") or "",
                            label_horizon=horizon)
    if isinstance(obj, pd.DataFrame):
        if feature_names is None:
            skip = {"as_of", "label", "weight", "user_id", "product_id"}
            feature_names = [c for c in obj.columns if c not in skip]
        return TrainingData(obj, list(feature_names), label_horizon=horizon)
    raise ModelError(f"cannot train on a {type(obj).__name__}; pass TrainingData, a TrainingSet or a DataFrame")


def frame_from_table(
    df: pd.DataFrame,
    *,
    label: str,
    time: str,
    group: str | None = None,
    weight: str | None = None,
    drop: Sequence[str] = (),
) -> TrainingData:
    """Turn a generic labelled table into :class:`TrainingData`: every column other than label/time/group/weight/
    ``drop`` becomes a feature; booleans -> 0/1, text/categorical -> ordinal codes of the sorted categories (NaN stays
    NaN; trees split on codes, which is what the members need); the label becomes 0/1 (booleans, "TRUE"/"FALSE",
    numbers)."""
    out = pd.DataFrame(index=df.index)
    feats: list[str] = []
    special = {label, time, *(c for c in (group, weight) if c), *drop}
    for c in df.columns:
        if c in special:
            continue
        col = df[c]
        if pd.api.types.is_bool_dtype(col):
            out[c] = col.astype("float64")
        elif pd.api.types.is_numeric_dtype(col):
            out[c] = col.astype("float64")
        else:
            cats = sorted(col.dropna().astype(str).unique())
            out[c] = col.astype(str).map({v: float(i) for i, v in enumerate(cats)}).where(col.notna())
        feats.append(str(c))
    y = df[label]
    if not pd.api.types.is_numeric_dtype(y) or pd.api.types.is_bool_dtype(y):
        y = y.astype(str).str.strip().str.lower().map({"true": 1, "false": 0, "1": 1, "0": 0, "yes": 1, "no": 0})
        if y.isna().any():
            raise ModelError(f"label column {label!r} has values other than true/false/1/0/yes/no")
    out["label"] = y.astype("float64")
    out["as_of"] = df[time]
    if group:
        out[group] = df[group]
    if weight:
        out["weight"] = df[weight].astype("float64")
    return TrainingData(out, feats, label="label", time="as_of", weight="weight" if weight else None, group=group)


def prepare_training_data(
    engine: Engine, settings: Settings, as_of: dt.datetime | dt.date | str | None = None
) -> TrainingData:
    """Build the weekly training snapshots with :mod:`ml.features` (snapshots whose label horizon is covered by
    data up to ``as_of``, default: all data) and wrap them as :class:`TrainingData`."""
    from ml import features

    dates = features.snapshot_dates(engine, settings, end=features.to_utc(as_of) if as_of is not None else None)
    if not dates:
        raise ModelError(f"no labelled training snapshot before {as_of or 'the end of the data'}: load more events")
    ts = features.build_training_snapshots(engine, settings, as_of_dates=dates)
    return as_training_data(ts, features.FEATURE_COLUMNS, settings)


def save_training_data(data: TrainingData, directory: str | Path) -> str:
    """Write ``data`` as ``<directory>/<fingerprint[:16]>.parquet`` plus a JSON sidecar; return the parquet path.
    Re-saving the same data is a no-op."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{data.fingerprint[:16]}.parquet"
    meta = {
        "feature_names": data.feature_names, "fingerprint": data.fingerprint, "label": data.label,
        "time": data.time, "weight": data.weight, "group": data.group,
        "label_horizon_s": data.label_horizon.total_seconds() if data.label_horizon else None,
    }
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        data.frame.to_parquet(tmp, index=False)
        tmp.replace(path)
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2))
    return str(path)


def load_training_data(path: str | Path) -> TrainingData:
    """Read what :func:`save_training_data` wrote."""
    p = Path(path)
    meta = json.loads(p.with_suffix(".json").read_text())
    horizon = dt.timedelta(seconds=meta["label_horizon_s"]) if meta.get("label_horizon_s") else None
    return TrainingData(pd.read_parquet(p), meta["feature_names"], meta["fingerprint"], meta["label"], meta["time"],
                        meta["weight"], meta["group"], horizon)


# --- splitting ----------------------------------------------------------------------------------------------------
@dataclass
class PreparedData:
    """The split, as float64 matrices (NaN fill applied) plus labels, weights and groups per part."""

    data: TrainingData
    split: Split
    X: dict[str, np.ndarray]
    y: dict[str, np.ndarray]
    w: dict[str, np.ndarray]
    groups: dict[str, np.ndarray | None]
    nan_fill: dict[str, float]

    @property
    def feature_names(self) -> list[str]:
        return self.data.feature_names

    @property
    def window(self) -> dict[str, Any]:
        return self.split.window()


def split_training_data(data: TrainingData, settings: Settings) -> PreparedData:
    """Time-based train/validation/holdout split (see :func:`ml.evaluate.split_by_time`) and checks that make
    training meaningful: labels in {0, 1}, positives and negatives in train and validation, finite weights > 0.
    Raises :class:`ModelError` naming what is wrong."""
    f = data.frame
    y_all = pd.to_numeric(f[data.label], errors="coerce").to_numpy(dtype=np.float64)
    if np.isnan(y_all).any() or not np.isin(y_all, (0.0, 1.0)).all():
        raise ModelError(f"label column {data.label!r} must hold only 0 and 1")
    split = split_by_time(f[data.time], validation_snapshots=settings.validation_snapshots,
                          label_horizon=data.label_horizon)
    nan_fill = nan_fill_values(data.feature_names)
    X_all = as_matrix(f, data.feature_names, nan_fill)
    if np.isinf(X_all).any():
        bad = [n for j, n in enumerate(data.feature_names) if np.isinf(X_all[:, j]).any()]
        raise ModelError(f"features hold +/-inf: {bad[:5]}")
    w_all = f[data.weight].to_numpy(dtype=np.float64) if data.weight else np.ones(len(f))
    if not np.isfinite(w_all).all() or (w_all <= 0).any():
        raise ModelError(f"weight column {data.weight!r} must be finite and > 0")
    g_all = f[data.group].to_numpy() if data.group else None
    parts = {"train": split.train, "validation": split.validation, "holdout": split.holdout}
    X = {k: np.ascontiguousarray(X_all[idx]) for k, idx in parts.items()}
    y = {k: y_all[idx] for k, idx in parts.items()}
    for k in ("train", "validation"):
        if y[k].min() == y[k].max():
            raise ModelError(f"the {k} part has a single class ({int(y[k][0])}); more snapshots or data are needed")
    return PreparedData(
        data=data, split=split, X=X, y=y, w={k: w_all[idx] for k, idx in parts.items()},
        groups={k: (g_all[idx] if g_all is not None else None) for k, idx in parts.items()}, nan_fill=nan_fill,
    )


# --- members ------------------------------------------------------------------------------------------------------
def fit_member(
    prepared: PreparedData,
    member: str,
    settings: Settings,
    *,
    n_trials: int | None = None,
    timeout: float | None = None,
    postgres_url: str | None = None,
) -> TuneResult:
    """Tune and fit one member on ``prepared`` (train, with validation for early stopping/pruning/objective).
    ``postgres_url``: keep the Optuna study in that database (schema ``experiments``); None keeps it in memory."""
    kind = member_kind(member)
    n_trials = settings.n_trials if n_trials is None else n_trials
    timeout = settings.tune_timeout_s if timeout is None else timeout
    fit_data = kind.prepare(prepared.X["train"], prepared.y["train"], prepared.w["train"],
                            prepared.X["validation"], prepared.y["validation"], prepared.w["validation"],
                            prepared.feature_names)
    storage = open_storage(postgres_url) if postgres_url and n_trials > 0 else None
    name = study_name(member, prepared.window, prepared.data.fingerprint) if storage is not None else None
    return tune_member(
        member, fit_data, prepared.X["validation"], prepared.y["validation"], prepared.w["validation"],
        feature_names=prepared.feature_names, n_trials=n_trials, timeout=timeout or None, seed=settings.seed,
        threads=settings.train_threads, storage=storage, name=name,
    )


def tuning_summary(result: TuneResult) -> dict[str, Any]:
    """JSON-able summary of one member's tuning (for the registry's ``tuning`` column and the report)."""
    return {
        "study_name": result.study_name,
        "best_params": result.best_params,
        "best_value": result.best_value,
        "best_trial": result.best_trial,
        "n_complete": result.n_complete,
        "n_pruned": result.n_pruned,
        "n_new_trials": result.n_new_trials,
        "seconds": round(result.seconds, 3),
        "trials_per_minute": round(result.trials_per_minute, 3),
        "n_trees": result.fitted.n_trees,
        "history": result.history,
    }


def stage_member(result: TuneResult, directory: str | Path) -> dict[str, Any]:
    """Save a tuned member (native format) and its tuning summary under ``directory``; return the summary with
    ``file``: what a separate task passes on (a path, not data)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    kind = member_kind(result.member)
    path = d / kind.file_name
    kind.save(result.fitted.model, path)
    summary = {"member": result.member, "file": str(path), **tuning_summary(result)}
    (d / f"{result.member}.tuning.json").write_text(json.dumps(summary, default=_json_default, indent=2))
    return summary


def load_staged_member(summary: Mapping[str, Any]) -> tuple[FittedMember, dict[str, Any]]:
    """The fitted member and tuning summary saved by :func:`stage_member`."""
    kind = member_kind(summary["member"])
    model = kind.load(Path(summary["file"]))
    return FittedMember(summary["member"], model, kind.n_trees(model), dict(summary["best_params"])), dict(summary)


# --- assembling and evaluating ------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    """A trained, evaluated ensemble (not yet registered).

    ``metrics``: holdout metrics ``{"ensemble": {...}, "equal_weights": {...}, "members": {name: {...}}}``;
    ``validation_metrics``: the same for the ensemble on validation; ``tuning``: member -> tuning summary.
    """

    ensemble: Ensemble
    window: dict[str, Any]
    fingerprint: str
    feature_names: list[str]
    metrics: dict[str, Any]
    validation_metrics: dict[str, Any]
    tuning: dict[str, dict[str, Any]]
    blend: Blend
    equal_blend: Blend
    timings: dict[str, float] = field(default_factory=dict)


def _variant_metrics(margin_val: np.ndarray, margin_hold: np.ndarray, a: float, b: float,
                     prepared: PreparedData) -> dict[str, Any]:
    p_val = sigmoid(a * margin_val + b)
    thr = best_f1_threshold(prepared.y["validation"], p_val, prepared.w["validation"])
    return holdout_metrics(prepared.y["holdout"], sigmoid(a * margin_hold + b), weight=prepared.w["holdout"],
                           threshold=thr, groups=prepared.groups["holdout"])


def assemble_ensemble(
    prepared: PreparedData,
    fitted: Mapping[str, FittedMember],
    tuning: Mapping[str, Mapping[str, Any]],
    settings: Settings,
) -> TrainResult:
    """Blend the fitted members: weights + Platt on validation, threshold (max F1) on validation, then every holdout
    metric for the ensemble, each member alone (Platt-calibrated on validation) and equal weights."""
    t0 = time.perf_counter()
    names = [m for m in MEMBER_NAMES if m in fitted] + sorted(m for m in fitted if m not in MEMBER_NAMES)
    threads = settings.train_threads
    mv = np.column_stack([member_kind(m).predict_margin(fitted[m].model, prepared.X["validation"], threads)
                          for m in names])
    mh = np.column_stack([member_kind(m).predict_margin(fitted[m].model, prepared.X["holdout"], threads)
                          for m in names])
    yv, wv = prepared.y["validation"], prepared.w["validation"]
    blend = fit_blend(mv, yv, wv)
    equal = np.full(len(names), 1.0 / len(names))
    ea, eb = fit_platt(mv @ equal, yv, wv)
    equal_blend = Blend(equal, ea, eb, float("nan"))
    p_val = sigmoid(blend.a * (mv @ blend.weights) + blend.b)
    threshold = best_f1_threshold(yv, p_val, wv)
    ensemble = Ensemble(
        members={m: fitted[m].model for m in names},
        weights={m: float(w) for m, w in zip(names, blend.weights)},
        calibration=(blend.a, blend.b),
        feature_names=list(prepared.feature_names),
        threshold=threshold,
        nan_fill=dict(prepared.nan_fill),
        metadata={"fingerprint": prepared.data.fingerprint, "window": prepared.window},
        threads=threads,
    )
    members_metrics = {}
    for j, m in enumerate(names):
        a, b = fit_platt(mv[:, j], yv, wv)
        members_metrics[m] = _variant_metrics(mv[:, j], mh[:, j], a, b, prepared)
    p_hold = ensemble.predict_proba(prepared.X["holdout"])
    metrics = {
        "ensemble": holdout_metrics(prepared.y["holdout"], p_hold, weight=prepared.w["holdout"], threshold=threshold,
                                    groups=prepared.groups["holdout"]),
        "equal_weights": _variant_metrics(mv @ equal, mh @ equal, ea, eb, prepared),
        "members": members_metrics,
    }
    validation_metrics = holdout_metrics(yv, p_val, weight=wv, threshold=threshold,
                                         groups=prepared.groups["validation"])
    log.info("ensemble weights %s, Platt a=%.4f b=%.4f; holdout PR-AUC %.4f ROC-AUC %s",
             {m: round(w, 4) for m, w in ensemble.weights.items()}, blend.a, blend.b,
             metrics["ensemble"]["pr_auc"] or float("nan"), metrics["ensemble"]["roc_auc"])
    return TrainResult(
        ensemble=ensemble, window=prepared.window, fingerprint=prepared.data.fingerprint,
        feature_names=list(prepared.feature_names), metrics=metrics, validation_metrics=validation_metrics,
        tuning={m: dict(tuning.get(m, {})) for m in names}, blend=blend, equal_blend=equal_blend,
        timings={"assemble_s": time.perf_counter() - t0},
    )


def train_ensemble(
    training_set_or_frames: Any,
    settings: Settings,
    *,
    n_trials: int | None = None,
    timeout: float | None = None,
    members: Sequence[str] | None = None,
    postgres_url: str | None = None,
    feature_names: Sequence[str] | None = None,
) -> TrainResult:
    """Split by time, tune + fit every member, blend, calibrate and evaluate on the holdout: all in memory.

    ``training_set_or_frames``: a :class:`TrainingData`, a features ``TrainingSet`` or a DataFrame (see
    :func:`as_training_data`). ``n_trials``/``timeout``: budget per member (default: settings). ``members``: subset of
    ``catboost, xgboost, lightgbm, random_forest`` (default: settings). Raises :class:`ModelError` when the data cannot
    be split or trained on.
    """
    t0 = time.perf_counter()
    data = as_training_data(training_set_or_frames, feature_names, settings)
    prepared = split_training_data(data, settings)
    result = train_prepared(prepared, settings, n_trials=n_trials, timeout=timeout, members=members,
                            postgres_url=postgres_url)
    result.timings = {**result.timings, "total_s": time.perf_counter() - t0}
    return result


def train_prepared(
    prepared: PreparedData,
    settings: Settings,
    *,
    n_trials: int | None = None,
    timeout: float | None = None,
    members: Sequence[str] | None = None,
    postgres_url: str | None = None,
) -> TrainResult:
    """:func:`train_ensemble` on data already split (see :func:`split_training_data`)."""
    t0 = time.perf_counter()
    members = list(members or settings.members)
    for m in members:
        member_kind(m)  # fail fast on an unknown name
    w = prepared.window
    log.info("training %s on %d rows (train %d, validation %d, holdout %d; %d features), holdout snapshot %s",
             ", ".join(members), w["n_train"] + w["n_validation"] + w["n_holdout"], w["n_train"], w["n_validation"],
             w["n_holdout"], len(prepared.feature_names), w["holdout"])
    timings: dict[str, float] = {}
    progress = Progress("training members", total=len(members), unit="members", every_s=0.0)
    fitted, tuning = {}, {}
    for m in members:
        res = fit_member(prepared, m, settings, n_trials=n_trials, timeout=timeout, postgres_url=postgres_url)
        fitted[m], tuning[m] = res.fitted, tuning_summary(res)
        timings[f"tune_{m}_s"] = res.seconds
        progress.advance(1)
    result = assemble_ensemble(prepared, fitted, tuning, settings)
    result.timings = {**timings, **result.timings, "train_s": time.perf_counter() - t0}
    return result


# --- registration, gate, the weekly job ---------------------------------------------------------------------------
def evaluate_champion(
    engine: Engine, prepared: PreparedData, settings: Settings
) -> tuple[str | None, dict[str, Any] | None, str]:
    """The champion's version and holdout metrics on *this* holdout (None when there is no champion or it cannot
    read these features), and a note."""
    from ml import registry

    champ = registry.champion(engine)
    if champ is None:
        return None, None, "no champion"
    missing = [c for c in champ.features if c not in prepared.data.frame.columns]
    if missing:
        return champ.version, None, f"champion {champ.version} needs features absent from this data: {missing[:5]}"
    _, ens = registry.load_version(engine, settings, champ.version, threads=settings.train_threads)
    hold = prepared.data.frame.iloc[prepared.split.holdout]
    p = ens.predict_proba(hold)
    thr = ens.threshold if ens.threshold is not None else 0.5
    return champ.version, holdout_metrics(prepared.y["holdout"], p, weight=prepared.w["holdout"], threshold=thr,
                                          groups=prepared.groups["holdout"]), "evaluated on the same holdout"


@dataclass
class Registered:
    """What registering a trained result did: the stored version row and the gate decision applied to it."""

    version: str
    status: str
    decision: GateDecision
    artifact_uri: str


def register_result(
    engine: Engine,
    settings: Settings,
    result: TrainResult,
    prepared: PreparedData,
    *,
    data_uri: str | None = None,
    force_promote: bool = False,
    dag_run_id: str | None = None,
) -> Registered:
    """Save artifacts, insert the ``ml.model_versions`` row (candidate), evaluate the champion on the same holdout,
    apply the gate (or promote when ``force_promote``, recorded as manual) and return what happened."""
    from ml import registry

    version = registry.new_version_id()
    uri = registry.artifact_uri(settings, version)
    result.ensemble.metadata = {**result.ensemble.metadata, "version": version}
    manifest = registry.save_artifacts(result.ensemble, uri)
    ens = result.ensemble
    try:
        holdout_as_of = pd.Timestamp(result.window["holdout"])
    except (ValueError, TypeError):
        holdout_as_of = pd.NaT
    mv = registry.ModelVersion(
        version=version,
        members=list(ens.members),
        params={m: t.get("best_params", {}) for m, t in result.tuning.items()},
        weights=ens.weights,
        calibration={"a": ens.calibration[0], "b": ens.calibration[1]},
        threshold=ens.threshold,
        features=list(ens.feature_names),
        training_window={**result.window, "data_uri": data_uri, "nan_fill": ens.nan_fill},
        holdout_as_of=holdout_as_of.to_pydatetime() if holdout_as_of is not pd.NaT and holdout_as_of.tzinfo else None,
        data_fingerprint=result.fingerprint,
        library_versions=manifest["library_versions"],
        metrics={**result.metrics, "validation": result.validation_metrics},
        tuning=result.tuning,
        artifact_uri=uri,
        dag_run_id=dag_run_id,
    )
    registry.register_version(engine, mv)
    champ_version, champ_metrics, note = evaluate_champion(engine, prepared, settings)
    if champ_version is not None and champ_metrics is None:
        auto = GateDecision(False, f"not comparable: {note}; promote manually if intended",
                            result.metrics["ensemble"], None, champ_version,
                            {"pr_auc": settings.gate_pr_auc_tolerance, "ece": settings.gate_ece_tolerance})
    else:
        auto = decide_gate(result.metrics["ensemble"], champ_metrics, champion_version=champ_version,
                           pr_auc_tolerance=settings.gate_pr_auc_tolerance, ece_tolerance=settings.gate_ece_tolerance)
    decision = auto
    if force_promote:
        decision = GateDecision(True, f"manual: force_promote (the gate alone would have said: {auto.reason})",
                                auto.challenger_metrics, auto.champion_metrics, auto.champion_version,
                                auto.tolerances, manual=True)
    row = registry.apply_gate(engine, version, decision, decided_by=dag_run_id)
    return Registered(version, row.status, decision, uri)


@dataclass
class TrainingRun:
    """The outcome of :func:`run_training`."""

    version: str
    status: str
    decision: GateDecision
    artifact_uri: str
    report_uri: str | None
    metrics: dict[str, Any]
    timings: dict[str, float]
    tuning: dict[str, dict[str, Any]] = field(default_factory=dict)


def run_training(
    engine: Engine,
    settings: Settings,
    as_of: dt.datetime | dt.date | str | None = None,
    *,
    n_trials: int | None = None,
    timeout: float | None = None,
    members: Sequence[str] | None = None,
    force_promote: bool = False,
    dag_run_id: str | None = None,
    write_report: bool = True,
    data: TrainingData | None = None,
) -> TrainingRun:
    """The weekly job in one call: snapshots (or ``data``) -> split -> tune/fit members (Optuna studies in the
    pipeline database) -> blend, calibrate, evaluate -> artifacts + registry row -> gate -> HTML report."""
    t0 = time.perf_counter()
    if data is None:
        data = prepare_training_data(engine, settings, as_of)
    data_uri = save_training_data(data, Path(settings.location("artifacts")) / "training")
    timings = {"snapshots_s": time.perf_counter() - t0}
    pg_url = engine.url.render_as_string(hide_password=False)
    prepared = split_training_data(data, settings)
    result = train_prepared(prepared, settings, n_trials=n_trials, timeout=timeout, members=members,
                            postgres_url=pg_url)
    reg = register_result(engine, settings, result, prepared, data_uri=data_uri, force_promote=force_promote,
                          dag_run_id=dag_run_id)
    report_uri = None
    if write_report:
        from ml.report import write_version_report

        report_uri = write_version_report(engine, settings, reg.version)
    timings = {**timings, **result.timings, "total_s": time.perf_counter() - t0}
    log.info("model %s registered as %s (%s); report %s", reg.version, reg.status, reg.decision.reason, report_uri)
    return TrainingRun(reg.version, reg.status, reg.decision, reg.artifact_uri, report_uri, result.metrics, timings,
                       result.tuning)


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (dt.datetime, dt.date, pd.Timestamp)):
        return o.isoformat()
    return str(o)
