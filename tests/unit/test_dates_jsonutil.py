"""The one home for date coercion (ml.dates) and JSON coercion (ml.jsonutil)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ml.dates import midnight_utc, utc_date, utc_datetime
from ml.errors import ConfigError
from ml.jsonutil import dumps, to_jsonable


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-11-20", dt.date(2026, 11, 20)),
        ("2026-11-20T23:30:00-05:00", dt.date(2026, 11, 21)),
        ("2026-11-20T23:30:00Z", dt.date(2026, 11, 20)),
        (dt.datetime(2026, 11, 20, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-5))), dt.date(2026, 11, 21)),
        (dt.datetime(2026, 11, 20, 23, 30), dt.date(2026, 11, 20)),
        (dt.date(2026, 11, 20), dt.date(2026, 11, 20)),
        (pd.Timestamp("2026-11-21 01:00", tz="Europe/Berlin"), dt.date(2026, 11, 21)),
        (pd.Timestamp("2026-11-21 00:30", tz="Europe/Berlin"), dt.date(2026, 11, 20)),
    ],
)
def test_utc_date(value, expected) -> None:
    assert utc_date(value) == expected


@pytest.mark.parametrize("bad", ["2026-13-01", "yesterday", "", "2026/11/20", 20261120, None])
def test_utc_date_rejects_with_a_named_error(bad) -> None:
    with pytest.raises(ConfigError, match="score_date"):
        utc_date(bad, what="score_date")


def test_utc_datetime_and_midnight() -> None:
    assert utc_datetime(dt.date(2026, 1, 2)) == dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
    assert midnight_utc(dt.date(2026, 1, 2)) == dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
    assert utc_datetime("2026-01-02T03:04:05+01:00").hour == 2


def test_to_jsonable_covers_numpy_nan_dates_paths() -> None:
    value = {
        1: np.int64(3), "f": np.float32(0.5), "nan": float("nan"), "inf": np.float64("inf"),
        "arr": np.array([1, 2]), "d": dt.date(2026, 1, 2), "ts": pd.Timestamp("2026-01-02T03:04:05Z"),
        "nat": pd.NaT, "p": Path("/x/y"), "t": (1, {2}), "long": "x" * 50, "b": np.bool_(True),
    }
    out = to_jsonable(value, max_str=10)
    assert out == {
        "1": 3, "f": 0.5, "nan": None, "inf": None, "arr": [1, 2], "d": "2026-01-02",
        "ts": "2026-01-02T03:04:05+00:00", "nat": None, "p": "/x/y", "t": [1, [2]],
        "long": "xxxxxxxxxx... (50 chars)", "b": True,
    }
    assert json.loads(dumps(value))["long"] == "x" * 50
