"""Numbers in the jsonb top_contributions are written by ml.score's compiled encoder: valid JSON, 6 decimals."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ml.score.encode import _put_number


def render(x: float) -> str:
    buf = np.zeros(64, dtype=np.uint8)
    end = _put_number(buf, 0, x)
    return bytes(buf[:end]).decode()


@pytest.mark.parametrize(
    ("x", "text"),
    [(0.0, "0"), (-0.0, "0"), (1.0, "1"), (-2.5, "-2.5"), (0.1234567, "0.123457"), (123.5, "123.5"),
     (1e-7, "0"), (-4e-7, "0"), (-2.5e-6, "-0.000003"), (0.000001, "0.000001"), (19.99, "19.99"),
     (1e9, "1000000000"), (1e15, "1000000000000000"), (float("nan"), "null"), (float("inf"), "null"),
     (-float("inf"), "null"), (1e19, "null")],
)
def test_numbers_are_json_rounded_to_6_decimals(x: float, text: str) -> None:
    assert render(x) == text


def test_random_numbers_parse_back_within_rounding() -> None:
    rng = np.random.default_rng(0)
    for x in np.concatenate([rng.normal(0, 1, 500), rng.lognormal(3, 4, 500) * rng.choice([-1, 1], 500)]):
        y = json.loads(render(float(x)))
        assert math.isclose(y, round(float(x), 6), rel_tol=1e-12, abs_tol=1e-9)
