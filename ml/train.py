"""Training: per-member Optuna tuning, the log-odds blend, Platt calibration, holdout evaluation, registration and
the champion/challenger gate. The training data itself (type, file form, time-based split) lives in
:mod:`ml.training_data`; its public names are re-exported here.

Two entry points:

* :func:`train_ensemble` works on any labelled table (a :class:`TrainingData`, or the features' ``TrainingSet``)
  and returns a :class:`TrainResult` in memory: no database needed (pass ``postgres_url`` to keep Optuna studies).
* :func:`run_training` is the weekly job: snapshots from :mod:`ml.features`, :func:`train_ensemble`, artifacts,
  ``ml.model_versions``, the gate and the HTML report. The CLI ``propensity train`` calls it.

The DAG runs the same steps as separate tasks, passing file paths (never data) between them:
:func:`prepare_training_data` + :func:`save_training_data` -> :func:`tune_and_stage_member` (one task per member) ->
:func:`register_staged_members` -> :func:`ml.report.write_version_report`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy.engine import Engine

from ml.ensemble import MEMBER_NAMES, Blend, Ensemble, FittedMember, fit_blend, fit_platt, member_kind, sigmoid
from ml.errors import ModelError
from ml.evaluate import GateDecision, best_f1_threshold, decide_gate, holdout_metrics
from ml.jsonutil import dumps
from ml.observe import Progress
from ml.report import write_version_report
from ml.settings import Settings
from ml.training_data import (  # the data's public names stay importable from ml.train
    PreparedData,
    TrainingData,
    as_training_data,
    fingerprint_frame,
    frame_from_table,
    load_training_data,
    prepare_training_data,
    save_training_data,
    split_training_data,
)
from ml.tune import TuneResult, open_storage, study_name, tune_member

__all__ = [
    "PreparedData", "Registered", "StagedMember", "TrainResult", "TrainingData", "TrainingRun", "as_training_data",
    "assemble_ensemble", "evaluate_champion", "fingerprint_frame", "fit_member", "frame_from_table",
    "load_staged_member", "load_training_data", "prepare_training_data", "register_result", "register_staged_members",
    "run_training", "save_training_data", "split_training_data", "stage_member", "train_ensemble", "train_prepared",
    "tune_and_stage_member", "tuning_summary",
]

log = logging.getLogger(__name__)


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
    (d / f"{result.member}.tuning.json").write_text(dumps(summary, indent=2))
    return summary


def load_staged_member(summary: Mapping[str, Any]) -> tuple[FittedMember, dict[str, Any]]:
    """The fitted member and tuning summary saved by :func:`stage_member`."""
    kind = member_kind(summary["member"])
    model = kind.load(Path(summary["file"]))
    return FittedMember(summary["member"], model, kind.n_trees(model), dict(summary["best_params"])), dict(summary)


@dataclass(frozen=True)
class StagedMember:
    """One tuned member on disk: the model file in its native format and its tuning summary (``tuning_file``, JSON),
    trained on the data at ``data_uri``. What a DAG task hands to the next one (paths, never data)."""

    member: str
    data_uri: str
    file: str
    tuning_file: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def tune_and_stage_member(
    data_uri: str,
    member: str,
    settings: Settings,
    staging_dir: str | Path,
    *,
    n_trials: int | None = None,
    timeout: float | None = None,
) -> StagedMember:
    """Tune and fit one member on the training data saved at ``data_uri`` (see :func:`save_training_data`) and stage
    it under ``staging_dir``. The Optuna study lives in ``settings.postgres_url`` (schema ``experiments``), so a
    retried call resumes it. ``n_trials``/``timeout`` (seconds): budget, default from settings."""
    prepared = split_training_data(load_training_data(data_uri), settings)
    res = fit_member(prepared, member, settings, n_trials=n_trials, timeout=timeout,
                     postgres_url=settings.postgres_url)
    staged = stage_member(res, staging_dir)
    log.info("%s: best val loss %.5f after %d complete / %d pruned trials (study %s)", member,
             res.best_value, res.n_complete, res.n_pruned, res.study_name)
    return StagedMember(member, data_uri, staged["file"],
                        str(Path(staged["file"]).parent / f"{member}.tuning.json"))


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
    from ml.drift import record_reference  # issue 13: the holdout reference of every feature and of the score

    record_reference(engine, settings, version, prepared.data.frame.iloc[prepared.split.holdout],
                     list(ens.feature_names), ens.predict_proba(prepared.X["holdout"]))
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
    if row.status == "rejected":  # issue 13: a refused challenger is an alert
        from ml.alerts import challenger_refused

        challenger_refused(engine, settings, version, decision.reason)
    return Registered(version, row.status, decision, uri)


def register_staged_members(
    engine: Engine,
    settings: Settings,
    staged: Sequence[StagedMember | Mapping[str, Any]],
    *,
    force_promote: bool = False,
    dag_run_id: str | None = None,
) -> Registered:
    """The members staged by :func:`tune_and_stage_member` (all on the same ``data_uri``), blended, calibrated and
    evaluated (:func:`assemble_ensemble`), then registered with the gate applied (:func:`register_result`)."""
    items = [s if isinstance(s, StagedMember) else StagedMember(**s) for s in staged]
    if not items:
        raise ModelError("no staged member to register")
    data_uri = items[0].data_uri
    prepared = split_training_data(load_training_data(data_uri), settings)
    fitted, tuning = {}, {}
    for item in items:
        summary = json.loads(Path(item.tuning_file).read_text())
        fitted[item.member], tuning[item.member] = load_staged_member(summary)
    result = assemble_ensemble(prepared, fitted, tuning, settings)
    reg = register_result(engine, settings, result, prepared, data_uri=data_uri, force_promote=force_promote,
                          dag_run_id=dag_run_id)
    log.info("version %s: %s. %s", reg.version, reg.status, reg.decision.reason)
    return reg


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
        report_uri = write_version_report(engine, settings, reg.version)
    timings = {**timings, **result.timings, "total_s": time.perf_counter() - t0}
    log.info("model %s registered as %s (%s); report %s", reg.version, reg.status, reg.decision.reason, report_uri)
    return TrainingRun(reg.version, reg.status, reg.decision, reg.artifact_uri, report_uri, result.metrics, timings,
                       result.tuning)
