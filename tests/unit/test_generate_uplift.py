"""The generator's A/B uplift knob: the uplifted arm (by the experiment's assignment hash) converts significantly
better after uplift_from; the other arm, and everyone without the knob, does not."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from ml import experiments as X
from ml.dev.generate import GeneratorConfig, generate_events

START = dt.date(2019, 10, 29)


def arm_conversion(frame: pd.DataFrame) -> tuple[list[int], list[int]]:
    """(converters, users) per arm [control (buckets 0-4999), treatment (5000-9999)] among users active from START:
    a converter bought anything from START on."""
    frame = frame[frame.event_time >= pd.Timestamp(START, tz="UTC")]
    users = np.unique(frame.user_id.to_numpy())
    buyers = set(frame.loc[frame.event_type == "purchase", "user_id"].tolist())
    arm = X.assignment_buckets("gen-ab", users.tolist()) >= 5000
    conv = np.array([u in buyers for u in users])
    return [int(conv[~arm].sum()), int(conv[arm].sum())], [int((~arm).sum()), int(arm.sum())]


@pytest.fixture(scope="module")
def frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    base = {"days": 42, "n_users": 1500, "n_products": 300, "seed": 11}
    plain = generate_events(GeneratorConfig(**base))
    lifted = generate_events(GeneratorConfig(**base, uplift_experiment="gen-ab", uplift_from=START,
                                             uplift_factor=2.0))
    return plain, lifted


def test_uplift_knob_gives_the_treatment_arm_a_significant_lift(frames) -> None:
    _, lifted = frames
    (x_c, x_t), (n_c, n_t) = arm_conversion(lifted)
    t = X.two_proportion_test(x_t, n_t, x_c, n_c)
    assert t["abs_lift"] > 0 and t["p_value"] < 0.01, (x_c, n_c, x_t, n_t, t)


def test_without_the_knob_the_arms_do_not_differ(frames) -> None:
    plain, lifted = frames
    (x_c, x_t), (n_c, n_t) = arm_conversion(plain)
    assert X.two_proportion_test(x_t, n_t, x_c, n_c)["p_value"] > 0.01
    before = lifted[lifted.event_time < pd.Timestamp(START, tz="UTC")]
    same = plain[plain.event_time < pd.Timestamp(START, tz="UTC")]
    assert len(before) == len(same)  # before uplift_from, the knob changes nothing
