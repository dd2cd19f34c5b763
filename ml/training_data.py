"""The training data: one labelled table (:class:`TrainingData`), its file form and its time-based split.

:class:`TrainingData` is what every trainer here consumes: one row = one example (for us a (user, product) pair at a
weekly snapshot time, UTC). Built from the pipeline's snapshots (:func:`prepare_training_data`), from the features'
``TrainingSet`` or any DataFrame (:func:`as_training_data`), or from a generic labelled table
(:func:`frame_from_table`). On disk (:func:`save_training_data` / :func:`load_training_data`) it is a Parquet file
named by the data's fingerprint plus a JSON sidecar: what DAG tasks pass to each other (a path, never data).
:func:`split_training_data` turns it into :class:`PreparedData`: float64 matrices of the train / validation / holdout
parts. Raises :class:`ml.errors.ModelError` naming what is wrong with the data.

Both :mod:`ml.train` and :mod:`ml.report` import this module, so the report no longer imports :mod:`ml.train`
(the dependency is one way: ml.train -> ml.report -> ml.training_data).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy.engine import Engine

from ml.ensemble import as_matrix, nan_fill_values
from ml.dates import utc_datetime
from ml.errors import ModelError
from ml.evaluate import Split, split_by_time
from ml.settings import Settings


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
    """Build the weekly training snapshots with :mod:`ml.snapshots` (snapshots whose label horizon is covered by
    data up to ``as_of``, default: all data) and wrap them as :class:`TrainingData`."""
    from ml import features, snapshots

    end = utc_datetime(as_of, what="as_of") if as_of is not None else None
    dates = snapshots.snapshot_dates(engine, settings, end=end)
    if not dates:
        raise ModelError(f"no labelled training snapshot before {as_of or 'the end of the data'}: load more events")
    ts = snapshots.build_training_snapshots(engine, settings, as_of_dates=dates)
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
