"""The nightly benchmark in a small configuration (correctness only, never timing): both paths (features from the
rollups and from raw events) run the whole night - plan, buckets in parallel processes, finalize, publish, drift -
and score the same pairs with the same probabilities."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_bench_nightly_small(server_pg_url: str, redis_url: str, tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    from bench import bench_nightly

    monkeypatch.setenv("PROPENSITY_STATE_DIR", str(tmp_path / "state"))
    report = bench_nightly.main([
        "--users", "150", "--products", "120", "--days", "35", "--trees", "5", "--model-users", "150",
        "--buckets", "2", "--workers", "2", "--curve", "", "--no-doc",
        "--postgres-url", server_pg_url, "--redis-url", redis_url,
    ])
    new, base = report["rollups"], report["baseline"]
    assert new["pairs"] > 50 and new["pairs"] == base["pairs"]
    # a small night: the new path plans one bucket task (score_bucket_min_pairs), the baseline always --buckets
    assert (new["buckets"], base["buckets"]) == (1, 2)
    assert (len(new["bucket_peaks"]), len(base["bucket_peaks"])) == (1, 2)
    for night in (new, base):  # the buckets' own timings were collected: features, explain, ... and total
        assert {"load_model", "features", "explain", "encode", "total"} <= set(night["bucket_parts"])
        assert night["bucket_parts"]["total"] > 0
    assert [c["pairs"] for c in report["curve"]] == [new["pairs"]]  # the main night is a point of the curve
    # same probabilities: the baseline's are the libraries' own predictions (score_verify_fraction=1, XGBoost in
    # float32), the new path's the exact float64 sums of the contributions (the default 0.05): equal to ~1e-8 each
    assert math.isclose(new["probability_sum"], base["probability_sum"], rel_tol=1e-6)
    for night in (new, base):
        assert set(night["stages"]) == set(bench_nightly.STAGES)
        assert all(s["seconds"] >= 0 and s["peak_mib"] > 0 for s in night["stages"].values())
