"""Time-based splits, holdout metrics and the champion/challenger gate.

Everything here works on plain arrays and DataFrames, so it serves our pair features and any labelled table alike.
Probabilities are calibrated P(label = 1); weights are the training set's row weights (1 / negative sampling rate),
so weighted metrics estimate the un-sampled population.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ml.errors import ModelError

METRIC_NAMES = (
    "roc_auc", "pr_auc", "log_loss", "brier", "ece", "f1", "precision", "recall", "hit_rate_at_10",
)
LOWER_IS_BETTER = frozenset({"log_loss", "brier", "ece"})


# --- splits -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Split:
    """Row positions (into the input frame) of each part, and the snapshot times (UTC) each part covers."""

    train: np.ndarray
    validation: np.ndarray
    holdout: np.ndarray
    train_times: list[Any]
    validation_times: list[Any]
    holdout_times: list[Any]
    purged_rows: int = 0

    def window(self) -> dict[str, Any]:
        """JSON-able description of the training window (ISO times)."""

        def iso(v: Any) -> str:
            return pd.Timestamp(v).isoformat() if not isinstance(v, (int, np.integer)) else str(v)

        return {
            "train_start": iso(self.train_times[0]),
            "train_end": iso(self.train_times[-1]),
            "validation_start": iso(self.validation_times[0]),
            "validation_end": iso(self.validation_times[-1]),
            "holdout": iso(self.holdout_times[-1]),
            "n_train": int(len(self.train)),
            "n_validation": int(len(self.validation)),
            "n_holdout": int(len(self.holdout)),
            "train_snapshots": len(self.train_times),
            "validation_snapshots": len(self.validation_times),
            "purged_rows": int(self.purged_rows),
        }


def split_by_time(
    times: pd.Series | Sequence[Any],
    *,
    validation_snapshots: int = 1,
    label_horizon: dt.timedelta | None = None,
) -> Split:
    """Split rows by snapshot time: holdout = the latest snapshot, validation = the ``validation_snapshots`` before
    it, train = every earlier snapshot. Never a random split across time.

    ``label_horizon``: a row at snapshot t has a label looking into (t, t + horizon]; train (validation) rows whose
    label window reaches past the first validation (holdout) snapshot are purged, so no part's labels overlap the
    next part's period. Raises :class:`ModelError` with fewer than ``validation_snapshots + 2`` snapshots or when a
    part ends up empty.
    """
    t = pd.Series(pd.Series(times).to_numpy())
    uniq = sorted(t.dropna().unique())
    need = validation_snapshots + 2
    if len(uniq) < need:
        raise ModelError(
            f"a time-based split needs at least {need} labelled snapshots (train, {validation_snapshots} validation, "
            f"holdout); found {len(uniq)}: {[str(u) for u in uniq]}"
        )
    holdout_t = uniq[-1]
    val_ts = uniq[-1 - validation_snapshots : -1]
    train_ts = uniq[: -1 - validation_snapshots]
    values = t.to_numpy()
    is_hold = values == holdout_t
    is_val = np.isin(values, np.asarray(val_ts, dtype=values.dtype))
    is_train = np.isin(values, np.asarray(train_ts, dtype=values.dtype))
    purged = 0
    if label_horizon is not None and label_horizon > dt.timedelta(0):
        horizon = pd.Timedelta(label_horizon)
        ts = pd.to_datetime(values, utc=True)
        late_train = is_train & np.asarray(ts + horizon > _utc(val_ts[0]))
        late_val = is_val & np.asarray(ts + horizon > _utc(holdout_t))
        purged = int(late_train.sum() + late_val.sum())
        is_train &= ~late_train
        is_val &= ~late_val
    split = Split(
        train=np.flatnonzero(is_train),
        validation=np.flatnonzero(is_val),
        holdout=np.flatnonzero(is_hold),
        train_times=[u for u in train_ts if (values[is_train] == u).any()],
        validation_times=[u for u in val_ts if (values[is_val] == u).any()],
        holdout_times=[holdout_t],
        purged_rows=purged,
    )
    for part in ("train", "validation", "holdout"):
        if len(getattr(split, part)) == 0:
            raise ModelError(f"time-based split left the {part} part empty (purged {purged} rows by label horizon)")
    return split


def _utc(v: Any) -> pd.Timestamp:
    ts = pd.Timestamp(v)
    return ts.tz_convert("UTC") if ts.tzinfo else ts.tz_localize("UTC")


# --- metrics ------------------------------------------------------------------------------------------------------
def expected_calibration_error(y: np.ndarray, p: np.ndarray, w: np.ndarray | None = None, n_bins: int = 15) -> float:
    """ECE with ``n_bins`` equal-width probability bins: sum over bins of (bin weight share) * |mean(y) - mean(p)|."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    w = np.ones_like(p) if w is None else np.asarray(w, dtype=np.float64)
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    tot = np.bincount(bins, weights=w, minlength=n_bins)
    sum_y = np.bincount(bins, weights=w * y, minlength=n_bins)
    sum_p = np.bincount(bins, weights=w * p, minlength=n_bins)
    nz = tot > 0
    return float(np.sum(np.abs(sum_y[nz] - sum_p[nz])) / tot.sum())


def best_f1_threshold(y: np.ndarray, p: np.ndarray, w: np.ndarray | None = None) -> float:
    """The probability threshold maximising F1 (``p >= threshold`` is positive), chosen on the data given
    (validation). Returns 0.5 when ``y`` has no positive."""
    from sklearn.metrics import precision_recall_curve

    y = np.asarray(y)
    if y.sum() == 0:
        return 0.5
    prec, rec, thr = precision_recall_curve(y, p, sample_weight=w)
    f1 = np.where(prec + rec > 0, 2 * prec * rec / np.maximum(prec + rec, 1e-300), 0.0)[:-1]
    return float(thr[int(np.argmax(f1))])


def hit_rate_at_k(groups: np.ndarray, y: np.ndarray, p: np.ndarray, k: int = 10) -> float | None:
    """Share of groups (users) with at least one positive whose top-``k`` rows by ``p`` hold a positive.

    Ties in ``p`` are broken by row order (stable sort), so the figure is deterministic. None when no group has a
    positive."""
    df = pd.DataFrame({"g": np.asarray(groups), "y": np.asarray(y) > 0, "p": np.asarray(p, dtype=np.float64)})
    pos_groups = df.groupby("g", sort=False)["y"].any()
    if not pos_groups.any():
        return None
    df = df[df["g"].isin(pos_groups.index[pos_groups])]
    df = df.sort_values(["g", "p"], ascending=[True, False], kind="stable")
    top = df.groupby("g", sort=False).head(k)
    return float(top.groupby("g")["y"].any().mean())


def holdout_metrics(
    y: np.ndarray,
    p: np.ndarray,
    *,
    weight: np.ndarray | None = None,
    threshold: float = 0.5,
    groups: np.ndarray | None = None,
) -> dict[str, float | None]:
    """Every holdout metric of one model: ROC-AUC, PR-AUC (average precision), log loss, Brier, ECE, and F1 /
    precision / recall at ``threshold`` (chosen on validation), hit-rate@10 per group (None without groups).
    Weighted by ``weight`` except hit-rate. AUCs are None when ``y`` has a single class."""
    from sklearn.metrics import (
        average_precision_score,
        brier_score_loss,
        f1_score,
        log_loss,
        precision_score,
        recall_score,
        roc_auc_score,
    )

    y = np.asarray(y).astype(int)
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    two = len(np.unique(y)) == 2
    pred = (p >= threshold).astype(int)
    out: dict[str, float | None] = {
        "roc_auc": float(roc_auc_score(y, p, sample_weight=weight)) if two else None,
        "pr_auc": float(average_precision_score(y, p, sample_weight=weight)) if two else None,
        "log_loss": float(log_loss(y, np.clip(p, 1e-15, 1 - 1e-15), sample_weight=weight, labels=[0, 1])),
        "brier": float(brier_score_loss(y, p, sample_weight=weight)),
        "ece": expected_calibration_error(y, p, weight),
        "f1": float(f1_score(y, pred, sample_weight=weight, zero_division=0)),
        "precision": float(precision_score(y, pred, sample_weight=weight, zero_division=0)),
        "recall": float(recall_score(y, pred, sample_weight=weight, zero_division=0)),
        "hit_rate_at_10": hit_rate_at_k(groups, y, p, 10) if groups is not None else None,
        "threshold": float(threshold),
        "n": int(len(y)),
        "positives": int(y.sum()),
    }
    return out


def curves(y: np.ndarray, p: np.ndarray, weight: np.ndarray | None = None, n_bins: int = 15) -> dict[str, Any]:
    """ROC curve and PR curve points for any score ``p``; reliability (calibration) curve points when ``p`` holds
    probabilities. For plotting."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=np.float64)
    w = np.ones_like(p) if weight is None else np.asarray(weight, dtype=np.float64)
    out: dict[str, Any] = {}
    if len(np.unique(y)) == 2:
        fpr, tpr, _ = roc_curve(y, p, sample_weight=weight)
        prec, rec, _ = precision_recall_curve(y, p, sample_weight=weight)
        out["roc"] = (fpr, tpr)
        out["pr"] = (rec, prec)
    if len(p) == 0 or p.min() < 0.0 or p.max() > 1.0:  # scores, not probabilities: no reliability curve
        return out
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    tot = np.bincount(bins, weights=w, minlength=n_bins)
    nz = tot > 0
    out["calibration"] = (
        (np.bincount(bins, weights=w * p, minlength=n_bins)[nz] / tot[nz]),
        (np.bincount(bins, weights=w * y, minlength=n_bins)[nz] / tot[nz]),
        tot[nz],
    )
    return out


# --- the gate -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GateDecision:
    """The champion/challenger verdict. ``promote``: whether the challenger becomes champion; ``reason``: one line
    a human can act on; both metric sets are kept (the champion's measured on the challenger's holdout)."""

    promote: bool
    reason: str
    challenger_metrics: dict[str, Any]
    champion_metrics: dict[str, Any] | None
    champion_version: str | None
    tolerances: dict[str, float] = field(default_factory=dict)
    manual: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide_gate(
    challenger: Mapping[str, Any],
    champion: Mapping[str, Any] | None,
    *,
    champion_version: str | None = None,
    pr_auc_tolerance: float = 0.0,
    ece_tolerance: float = 0.01,
) -> GateDecision:
    """Promote the challenger only if ``pr_auc >= champion.pr_auc - pr_auc_tolerance`` and ``ece <= champion.ece +
    ece_tolerance``, both measured on the same holdout. No champion: promote. A challenger without a PR-AUC (single-
    class holdout) is refused while a champion exists."""
    tol = {"pr_auc": float(pr_auc_tolerance), "ece": float(ece_tolerance)}
    if champion is None:
        return GateDecision(True, "no champion yet: the first valid model is promoted", dict(challenger), None,
                            None, tol)
    c_pr, k_pr = challenger.get("pr_auc"), champion.get("pr_auc")
    c_ece, k_ece = challenger.get("ece"), champion.get("ece")
    if c_pr is None or k_pr is None or c_ece is None or k_ece is None or any(
        isinstance(v, float) and math.isnan(v) for v in (c_pr, k_pr, c_ece, k_ece)
    ):
        return GateDecision(False, "PR-AUC or ECE undefined on this holdout (single-class labels?): not promoted",
                            dict(challenger), dict(champion), champion_version, tol)
    failures = []
    if c_pr < k_pr - pr_auc_tolerance:
        failures.append(f"PR-AUC {c_pr:.4f} < champion {k_pr:.4f} - tolerance {pr_auc_tolerance:g}")
    if c_ece > k_ece + ece_tolerance:
        failures.append(f"ECE {c_ece:.4f} > champion {k_ece:.4f} + tolerance {ece_tolerance:g}")
    if failures:
        return GateDecision(False, "refused: " + "; ".join(failures), dict(challenger), dict(champion),
                            champion_version, tol)
    return GateDecision(
        True,
        f"promoted: PR-AUC {c_pr:.4f} vs champion {k_pr:.4f} (tol {pr_auc_tolerance:g}), "
        f"ECE {c_ece:.4f} vs {k_ece:.4f} (tol {ece_tolerance:g})",
        dict(challenger), dict(champion), champion_version, tol,
    )
