"""The control logic of ml.score.score_block (probability source, additivity check, native fallback) on a small
linear stand-in for the ensemble: exact contributions are X * w, so every path can be checked by hand."""

from __future__ import annotations

import numpy as np
import pytest

from ml.features import FEATURE_COLUMNS
from ml.score import score_block
from ml.settings import Settings


class LinearModel:
    """logit = X @ w + b; explain() is exact unless ``broken_rows`` (then those rows are off by 0.5)."""

    def __init__(self, broken_rows: tuple[int, ...] = ()) -> None:
        self.feature_names = list(FEATURE_COLUMNS)
        self.w = np.linspace(-0.02, 0.03, len(self.feature_names))
        self.b = -2.0
        self.broken_rows = broken_rows
        self.calls: list[tuple[str, int]] = []

    def predict_logit(self, X: np.ndarray) -> np.ndarray:
        self.calls.append(("predict", len(X)))
        return np.nan_to_num(X) @ self.w + self.b

    def explain(self, X: np.ndarray, method: str = "auto") -> tuple[np.ndarray, np.ndarray]:
        self.calls.append((f"explain:{method}", len(X)))
        phi = np.nan_to_num(X) * self.w
        if method != "native":
            for i in self.broken_rows:
                if i < len(phi):
                    phi[i, 0] += 0.5
        return phi, np.full(len(X), self.b)


def block(n: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.gamma(2.0, 3.0, (n, len(FEATURE_COLUMNS)))
    return np.arange(n, dtype=np.int64) + 1000, np.arange(n, dtype=np.int64) % 7 + 1, X


@pytest.mark.parametrize("fraction", [1.0, 0.25])
def test_exact_explainer_gives_additive_rows_and_the_models_probability(fraction: float) -> None:
    model = LinearModel()
    uid, pid, X = block()
    timings: dict[str, float] = {}
    out = score_block(model, uid, pid, X, Settings(score_verify_fraction=fraction), timings)
    z = np.nan_to_num(X) @ model.w + model.b
    np.testing.assert_allclose(out.logit, z, rtol=0, atol=1e-12)
    np.testing.assert_allclose(out.probability, 1 / (1 + np.exp(-z)), rtol=1e-12)
    assert out.max_residual < 1e-5 and "native_fallback_rows" not in timings
    predicted = sum(n for what, n in model.calls if what == "predict")
    assert predicted == len(X) if fraction == 1.0 else 0 < predicted < len(X) / 2  # only the check sample
    assert {"predict", "explain", "insights"} <= set(timings)


def test_rows_that_do_not_add_up_are_recomputed_natively() -> None:
    model = LinearModel(broken_rows=(3, 40))
    uid, pid, X = block()
    timings: dict[str, float] = {}
    # every row predicted by the libraries (score_verify_fraction=1): a wrong row is caught wherever it is
    out = score_block(model, uid, pid, X, Settings(score_verify_fraction=1.0), timings)
    assert timings["native_fallback_rows"] == 2
    assert ("explain:native", 2) in model.calls
    np.testing.assert_allclose(out.contributions, np.nan_to_num(X) * model.w, rtol=0, atol=1e-12)
    assert out.max_residual < 1e-5


def test_a_disagreeing_sample_makes_the_block_predict_every_row() -> None:
    model = LinearModel(broken_rows=tuple(range(64)))  # every row off: any sample sees it
    uid, pid, X = block()
    timings: dict[str, float] = {}
    out = score_block(model, uid, pid, X, Settings(score_verify_fraction=0.1), timings)
    assert ("predict", len(X)) in model.calls  # fell back to predicting the whole block
    np.testing.assert_allclose(out.logit, np.nan_to_num(X) @ model.w + model.b, rtol=0, atol=1e-12)
    assert timings["native_fallback_rows"] == len(X) and out.max_residual < 1e-5
