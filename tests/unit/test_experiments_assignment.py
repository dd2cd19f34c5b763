"""The assignment hash: documented formula, uniform over 100k users, independent across experiments."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from scipy import stats

from ml import experiments as X


def arms(shares, traffic=100.0):
    return X.slice_buckets([X.Arm(f"a{i}", f"v{i}", s, is_control=i == 0) for i, s in enumerate(shares)], traffic)


def test_bucket_is_the_documented_md5_formula() -> None:
    for eid, uid in (("e1", 42), ("checkout-2030", 512475445), ("x", 0), ("x", 2**62)):
        want = int(hashlib.md5(f"{eid}:{uid}".encode()).hexdigest()[:8], 16) % 10000
        assert X.assignment_bucket(eid, uid) == want == X.assignment_buckets(eid, [uid])[0]
    assert X.assignment_bucket("e1", 42) == 8213  # the value PostgreSQL 15 computes (docs/experiments.md)


@pytest.mark.parametrize("shares", [(0.5, 0.5), (0.1, 0.9), (0.2, 0.3, 0.5)])
def test_arm_shares_pass_a_chi_square_on_100k_users(shares) -> None:
    exp = X.Experiment("uniform", arms(shares), None, None)  # type: ignore[arg-type]
    idx = X.assign_arms(exp, np.arange(1, 100_001))
    counts = np.bincount(idx, minlength=len(shares))
    assert (idx >= 0).all()
    p = stats.chisquare(counts, np.asarray(shares) * len(idx)).pvalue
    assert p > 1e-4, (counts, p)


def test_two_experiments_are_independent() -> None:
    users = np.arange(1, 100_001)
    a = X.assign_arms(X.Experiment("first", arms((0.5, 0.5)), None, None), users)  # type: ignore[arg-type]
    b = X.assign_arms(X.Experiment("second", arms((0.5, 0.5)), None, None), users)  # type: ignore[arg-type]
    table = np.histogram2d(a, b, bins=2)[0]
    assert stats.chi2_contingency(table).pvalue > 1e-4, table
    assert 0.45 < (a == b).mean() < 0.55


def test_traffic_percent_leaves_users_out() -> None:
    sliced = arms((0.5, 0.5), traffic=30)
    assert [(a.bucket_from, a.bucket_to) for a in sliced] == [(0, 1500), (1500, 3000)]
    idx = X.assign_arms(X.Experiment("t", sliced, None, None), np.arange(1, 50_001))  # type: ignore[arg-type]
    assert (idx == -1).mean() == pytest.approx(0.7, abs=0.01)


@pytest.mark.parametrize(("spec", "message"), [("60,30", "sum to 1"), ("1,2,3", "3 share"), ("x,y", "numbers")])
def test_split_errors(spec, message) -> None:
    with pytest.raises(X.ExperimentError, match=message):
        X.parse_split(spec, 2)
