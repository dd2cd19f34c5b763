"""User hash buckets, equal in Python and in SQL: the unit of parallel scoring work is "bucket k of K".

``bucket_of(user_id, K)`` equals ``ml.user_bucket(user_id, K)`` in SQL (migration 0020) for every bigint id, and
``user_hash32`` equals ``ml.user_hash32``. Bucket k of K is also the half-open range ``bucket_hash_range(k, K)`` of
hash values (migration 0022), so the feature SQL filters a bucket's events in its first scan, and an index on
``ml.user_hash32(user_id)`` can serve it as a range scan. Stable across runs, machines and versions.
"""

from __future__ import annotations

import re

import numpy as np

_MASK32 = 0xFFFFFFFF
_HASH_MULTIPLIER = 1540483477  # odd and < 2^31: a 32-bit value times it stays below 2^63 (no bigint overflow)


def user_hash32(user_id: int | np.ndarray) -> int | np.ndarray:
    """The 32-bit hash of ``user_id`` (int or int64 array), equal to SQL ``ml.user_hash32(user_id)``."""
    if isinstance(user_id, np.ndarray):
        x = user_id.astype(np.int64, copy=False)
        folded = (x ^ (x >> 32)) & _MASK32
        return (folded * _HASH_MULTIPLIER) & _MASK32
    x = int(user_id)
    folded = (x ^ (x >> 32)) & _MASK32  # Python's >> on negative ints is arithmetic, like PostgreSQL's
    return (folded * _HASH_MULTIPLIER) & _MASK32


def bucket_of(user_id: int | np.ndarray, n_buckets: int) -> int | np.ndarray:
    """Bucket in ``[0, n_buckets)`` of ``user_id``: equal to SQL ``ml.user_bucket(user_id, n_buckets)``.

    Stable across runs, machines and versions; vectorised over int64 arrays. Raises ValueError for ``n_buckets``
    outside 1 .. 2^31 - 1.
    """
    check_buckets(0, n_buckets)
    h = user_hash32(user_id)
    if isinstance(h, np.ndarray):
        return ((h * np.int64(n_buckets)) >> 32).astype(np.int64)
    return (h * n_buckets) >> 32


def bucket_hash_range(bucket: int, n_buckets: int) -> tuple[int, int]:
    """The half-open range ``[lo, hi)`` of :func:`user_hash32` values in bucket ``bucket`` of ``n_buckets``; equal
    to SQL ``[ml.bucket_hash_lo(k, K), ml.bucket_hash_lo(k + 1, K))``. The feature SQL filters buckets this way,
    so an index on ``ml.user_hash32(user_id)`` can serve "bucket k of K" as a range scan."""
    check_buckets(bucket, n_buckets)
    return -(-(bucket << 32) // n_buckets), -(-((bucket + 1) << 32) // n_buckets)


def user_bucket_sql(column: str = "user_id", n_buckets: str = ":n_buckets") -> str:
    """The SQL expression of a column's bucket, for other queries (e.g. ``where {expr} = :bucket``).

    ``column`` may be qualified (``e.user_id``); each part is quoted as an identifier. ``n_buckets`` is a bind
    parameter name (``:name``) or an integer literal.
    """
    if not re.fullmatch(r":[A-Za-z_]\w*|\d+", n_buckets):
        raise ValueError(f"n_buckets must be a :bind_name or an integer literal, not {n_buckets!r}")
    quoted = ".".join('"' + part.replace('"', '""') + '"' for part in column.split("."))
    return f"ml.user_bucket({quoted}, cast({n_buckets} as integer))"


def check_buckets(bucket: int | None, n_buckets: int | None) -> None:
    """Raise ValueError unless ``bucket`` and ``n_buckets`` are both None or a valid bucket k of K."""
    if (bucket is None) != (n_buckets is None):
        raise ValueError("give both bucket and n_buckets, or neither")
    if n_buckets is not None:
        if not 1 <= n_buckets < 2**31:
            raise ValueError(f"n_buckets must be in 1 .. 2^31 - 1, not {n_buckets}")
        if bucket is not None and not 0 <= bucket < n_buckets:
            raise ValueError(f"bucket must be in 0 .. {n_buckets - 1}, not {bucket}")
