"""ml.score.plan.fit_bucket_count: a small night is planned in fewer bucket tasks, merged exactly."""

from __future__ import annotations

import numpy as np
import pytest

from ml.features import bucket_of
from ml.score.plan import fit_bucket_count


@pytest.mark.parametrize(("counts", "min_pairs", "expected"), [
    ([10] * 8, 0, 8),                      # 0: the configured count, always
    ([10] * 8, 100, 1),                    # 80 pairs: one task
    ([100_000] * 8, 150_000, 4),           # 800k: 4 buckets of 200k (8 would be 100k each)
    ([200_000] * 8, 150_000, 8),           # 1.6M: every bucket is worth a task
    ([30_000] * 6, 50_000, 3),             # divisors of 6: 1, 2, 3, 6 -> 3 (60k each)
    ([0] * 8, 150_000, 1),                 # an empty night: one (empty) task
    ([5], 150_000, 1),
])
def test_bucket_count_is_the_largest_divisor_worth_its_fixed_cost(counts: list[int], min_pairs: int,
                                                                    expected: int) -> None:
    k, merged = fit_bucket_count(counts, min_pairs)
    assert k == expected and len(merged) == k and sum(merged) == sum(counts)
    assert len(counts) % k == 0


def test_merged_buckets_are_exactly_the_smaller_counts_buckets() -> None:
    """bucket j of K/g = buckets j*g .. j*g+g-1 of K, for every user id (so merged counts are exact)."""
    rng = np.random.default_rng(3)
    users = rng.integers(1, 2**62, 50_000)
    for big, small in ((8, 4), (8, 2), (8, 1), (6, 3), (12, 4)):
        g = big // small
        fine = np.bincount(bucket_of(users, big), minlength=big).tolist()
        coarse = np.bincount(bucket_of(users, small), minlength=small).tolist()
        min_pairs = len(users) // small  # exactly enough for `small` buckets, not for more
        k, merged = fit_bucket_count(fine, min_pairs)
        assert (k, merged) == (small, coarse), (big, small)
        assert (bucket_of(users, small) == bucket_of(users, big) // g).all()
