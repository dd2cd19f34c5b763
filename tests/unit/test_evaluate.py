"""Time-based splits, holdout metrics and the champion/challenger gate, on small hand-made data."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from ml.errors import ModelError
from ml.evaluate import (
    best_f1_threshold,
    decide_gate,
    expected_calibration_error,
    hit_rate_at_k,
    holdout_metrics,
    split_by_time,
)


def _weekly(n_weeks: int, rows: int = 3) -> pd.Series:
    start = pd.Timestamp("2019-10-07", tz="UTC")
    return pd.Series([start + pd.Timedelta(weeks=w) for w in range(n_weeks) for _ in range(rows)])


def test_holdout_is_the_latest_snapshot_and_parts_are_ordered_in_time() -> None:
    times = _weekly(5).sample(frac=1.0, random_state=0).reset_index(drop=True)  # row order must not matter
    s = split_by_time(times)
    t = times.to_numpy()
    assert set(t[s.holdout]) == {times.max()}
    assert set(t[s.validation]) == {sorted(times.unique())[-2]}
    assert t[s.train].max() < t[s.validation].min() < t[s.holdout].min()
    assert len(s.train) + len(s.validation) + len(s.holdout) == len(times)
    assert not set(s.train) & set(s.validation) and not set(s.validation) & set(s.holdout)
    w = s.window()
    assert w["holdout"].startswith("2019-11-04") and w["train_snapshots"] == 3


def test_label_horizon_purges_rows_whose_labels_overlap_the_next_part() -> None:
    # snapshots every 7 days, 7-day labels: nothing overlaps; 10-day labels: the last train and validation
    # snapshots reach into the next part and are purged
    times = _weekly(6)
    assert split_by_time(times, label_horizon=dt.timedelta(days=7)).purged_rows == 0
    s = split_by_time(times, validation_snapshots=2, label_horizon=dt.timedelta(days=10))
    assert s.purged_rows == 6
    assert [t.day for t in s.train_times] == [7, 14] and [t.day for t in s.validation_times] == [28]
    with pytest.raises(ModelError, match="validation part empty"):
        split_by_time(_weekly(5), label_horizon=dt.timedelta(days=10))


def test_too_few_snapshots_is_a_clear_error() -> None:
    with pytest.raises(ModelError, match="at least 3 labelled snapshots"):
        split_by_time(_weekly(2))


def test_validation_snapshots_setting() -> None:
    s = split_by_time(_weekly(6), validation_snapshots=2)
    assert len(s.validation_times) == 2 and len(s.train_times) == 3


def test_ece_zero_for_calibrated_bins_and_large_when_off() -> None:
    p = np.repeat([0.1, 0.5, 0.9], 10)
    y = np.concatenate([[1] + [0] * 9, [1] * 5 + [0] * 5, [1] * 9 + [0]])
    assert expected_calibration_error(y, p) == pytest.approx(0.0, abs=1e-12)
    assert expected_calibration_error(y, np.full(30, 0.9)) == pytest.approx(abs(15 / 30 - 0.9))


def test_hit_rate_at_k_per_user() -> None:
    groups = np.array([1] * 12 + [2] * 3 + [3] * 2)
    y = np.zeros(17)
    y[11] = 1  # user 1's purchase is ranked 12th of 12: a miss at k=10
    y[12] = 1  # user 2's purchase ranked first: a hit
    p = np.concatenate([np.linspace(0.9, 0.1, 12), [0.8, 0.5, 0.1], [0.3, 0.2]])  # user 3: no purchase, ignored
    assert hit_rate_at_k(groups, y, p, 10) == pytest.approx(0.5)
    assert hit_rate_at_k(groups, y, p, 12) == pytest.approx(1.0)
    assert hit_rate_at_k(groups, np.zeros(17), p, 10) is None


def test_threshold_and_metrics() -> None:
    y = np.array([0, 0, 0, 0, 1, 1, 0, 1])
    p = np.array([0.05, 0.1, 0.2, 0.3, 0.4, 0.7, 0.75, 0.9])
    thr = best_f1_threshold(y, p)
    assert thr == pytest.approx(0.4)
    m = holdout_metrics(y, p, threshold=thr, groups=np.zeros(8))
    assert m["recall"] == 1.0 and m["precision"] == pytest.approx(0.75) and m["f1"] == pytest.approx(6 / 7)
    assert m["roc_auc"] == pytest.approx(13 / 15)  # positives beat 4, 4 and 5 of the 5 negatives
    assert 0 < m["log_loss"] and 0 < m["brier"] < 0.25 and m["hit_rate_at_10"] == 1.0
    single = holdout_metrics(np.zeros(4), np.full(4, 0.1))
    assert single["roc_auc"] is None and single["pr_auc"] is None


@pytest.mark.parametrize(
    ("challenger", "champion", "tol", "promote"),
    [
        ({"pr_auc": 0.30, "ece": 0.010}, None, 0.0, True),
        ({"pr_auc": 0.30, "ece": 0.010}, {"pr_auc": 0.28, "ece": 0.012}, 0.0, True),
        ({"pr_auc": 0.25, "ece": 0.010}, {"pr_auc": 0.28, "ece": 0.010}, 0.0, False),  # worse PR-AUC
        ({"pr_auc": 0.27, "ece": 0.010}, {"pr_auc": 0.28, "ece": 0.010}, 0.02, True),  # within tolerance
        ({"pr_auc": 0.30, "ece": 0.050}, {"pr_auc": 0.28, "ece": 0.010}, 0.0, False),  # calibration much worse
        ({"pr_auc": None, "ece": 0.010}, {"pr_auc": 0.28, "ece": 0.010}, 0.0, False),
    ],
)
def test_gate(challenger: dict, champion: dict | None, tol: float, promote: bool) -> None:
    d = decide_gate(challenger, champion, champion_version="v0" if champion else None, pr_auc_tolerance=tol,
                    ece_tolerance=0.01)
    assert d.promote is promote
    assert d.challenger_metrics == challenger and d.champion_metrics == champion
    if not promote:
        assert d.reason.startswith(("refused", "PR-AUC or ECE undefined"))
