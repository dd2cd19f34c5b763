"""PSI helpers of ml.drift on small arrays."""

from __future__ import annotations

import numpy as np
import pytest

from ml.drift import histogram, psi, psi_of, quantile_edges


def test_identical_distributions_have_zero_psi() -> None:
    x = np.random.default_rng(0).normal(size=5_000)
    value, details = psi_of(x, x.copy(), 10)
    assert value == pytest.approx(0.0, abs=1e-12)
    assert sum(details["reference"]) == sum(details["current"]) == 5_000


def test_a_shifted_distribution_is_a_major_shift() -> None:
    rng = np.random.default_rng(1)
    value, _ = psi_of(rng.normal(size=20_000), rng.normal(loc=1.0, size=20_000), 10)
    assert value > 0.25


def test_small_moves_of_discrete_levels_are_not_drift() -> None:
    """Per-category shares move a little every day; edges between levels keep them in their bins."""
    rng = np.random.default_rng(2)
    levels = np.array([0.01, 0.05, 0.08, 0.2, 0.3])
    ref = rng.choice(levels, 10_000)
    cur = rng.choice(levels * 1.01, 10_000)  # every level 1% higher
    value, details = psi_of(ref, cur, 10)
    assert value < 0.01
    assert all(a < e < b for a, e, b in zip(levels[:-1], details["edges"], levels[1:]))


def test_missing_values_have_their_own_bin() -> None:
    edges = quantile_edges(np.array([1.0, 2.0, 3.0, 4.0]), 2)
    counts = histogram(np.array([1.0, np.nan, 4.0, np.nan, np.inf]), edges)
    assert counts.tolist()[-1] == 3 and counts.sum() == 5
    assert psi(np.array([10, 0]), np.array([5, 5])) > 1.0
    assert np.isnan(psi(np.array([0, 0]), np.array([1, 1])))
