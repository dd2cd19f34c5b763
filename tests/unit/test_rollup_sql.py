"""The rollup variants of the feature SQL (issue 17): bound parameters, include mapping, and when they are used."""

from __future__ import annotations

import datetime as dt
import re

from ml import features as F
from ml.settings import Settings


def test_rollup_sql_binds_only_window_and_bucket_parameters(tmp_path) -> None:  # noqa: ANN001
    window = F.FeatureWindow.at(dt.date(2019, 11, 1), Settings(state_dir=tmp_path))
    known = set(window.params()) | {"n_buckets", "bucket", "with_labels", "negative_rate", "sample_salt",
                                    "item_stats_key"}
    for name in ("pair_features", "labels", "active_pair_count", "item_stats_insert"):
        text = F.render_sql(name, **F.ROLLUP_INCLUDES)
        assert "raw.rollup_pair_day" in text, name
        params = set(re.findall(r"(?<![:\w]):([A-Za-z_]\w*)", text))
        assert params <= known, (name, params - known)
    # the raw definition never reads a rollup; the rollup one reads raw.events only for labels
    assert "raw.rollup_" not in F.render_sql("pair_features")
    rolled = F.render_sql("pair_features", **F.ROLLUP_INCLUDES)
    assert len(re.findall(r"from raw\.events as", rolled)) == 1 and "label_until" in rolled  # labels only


def test_rollups_only_for_a_utc_midnight_and_the_rollup_source(tmp_path) -> None:  # noqa: ANN001
    s = Settings(state_dir=tmp_path)
    assert s.feature_source == "rollups"
    midnight = F.FeatureWindow.at(dt.date(2019, 11, 1), s)
    assert midnight.at_midnight and F.uses_rollups(midnight, s)
    p = midnight.params()
    assert (p["as_of_day"], p["day_24h"], p["day_7d"]) == (dt.date(2019, 11, 1), dt.date(2019, 10, 31),
                                                          dt.date(2019, 10, 25))
    assert p["since_day"] == dt.date(2019, 11, 1) - dt.timedelta(days=s.lookback_days)
    noon = F.FeatureWindow.at(dt.datetime(2019, 11, 1, 12, tzinfo=dt.UTC), s)
    assert not noon.at_midnight and not F.uses_rollups(noon, s)
    assert not F.uses_rollups(midnight, s.model_copy(update={"feature_source": "raw"}))
    assert F.feature_sql("pair_features", noon, s) == F.render_sql("pair_features")
