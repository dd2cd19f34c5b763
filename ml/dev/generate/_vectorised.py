"""Vectorised numpy / Arrow building blocks of the generator: stable hashing, grouped sampling, a radix argsort,
segment arithmetic, and categoricals and uuid4 strings built straight from buffers. None of them loops in Python
per row; none knows anything about shops or events."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

_DAY_S = 86_400


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a deterministic, well-mixed uint64 hash of each element."""
    x = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _hash_uniform(*keys: np.ndarray, salt: int) -> np.ndarray:
    """Uniform [0, 1) floats that depend only on the keys and the salt (same key, same value across runs)."""
    h = np.full(np.broadcast(*keys).shape, np.uint64(salt & 0xFFFFFFFFFFFFFFFF), dtype=np.uint64)
    for k in keys:
        h = _mix64(h ^ np.asarray(k).astype(np.uint64))
    return (h >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _sample_grouped(group: np.ndarray, weights: np.ndarray, group_of_item: np.ndarray, n_groups: int,
                    u: np.ndarray) -> np.ndarray:
    """For each draw i pick an item of group ``group[i]`` with probability proportional to its weight.

    Items must be sorted by group. A global cumulative array where group g covers [g, g + 1) turns every draw into
    one ``searchsorted``. Returns item indices."""
    totals = np.bincount(group_of_item, weights=weights, minlength=n_groups)
    starts = np.concatenate(([0], np.cumsum(np.bincount(group_of_item, minlength=n_groups))[:-1]))
    within = np.cumsum(weights) - np.repeat(np.cumsum(totals) - totals, np.bincount(group_of_item, minlength=n_groups))
    cum = group_of_item + within / totals[group_of_item]
    idx = np.searchsorted(cum, group + np.minimum(u, 1 - 1e-12), side="right")
    # guard against float round-off at a group's upper edge
    last = starts + np.bincount(group_of_item, minlength=n_groups) - 1
    return np.minimum(idx, last[group])


def _sample_rows(cum: np.ndarray, rows: np.ndarray, u: np.ndarray, chunk: int = 1 << 20) -> np.ndarray:
    """For each draw i, the column picked from row ``rows[i]`` of the row-wise cumulative weights ``cum`` (rows
    summing to 1) by the uniform ``u[i]``. Cheaper than one global ``searchsorted`` when rows are short."""
    out = np.empty(rows.size, dtype=np.int64)
    last = cum.shape[1] - 1
    for a in range(0, rows.size, chunk):
        b = min(a + chunk, rows.size)
        out[a:b] = np.minimum((cum[rows[a:b]] <= u[a:b, None]).sum(axis=1), last)
    return out


def _unique_ints(rng: np.random.Generator, low: int, high: int, n: int) -> np.ndarray:
    """``n`` distinct int64 in [low, high), in random order."""
    out = np.unique(rng.integers(low, high, size=int(n * 1.1) + 16))
    while out.size < n:
        out = np.unique(np.concatenate([out, rng.integers(low, high, size=n)]))
    return rng.permutation(out)[:n].astype(np.int64)


def _segment_starts(sizes: np.ndarray) -> np.ndarray:
    return np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.int64)


def _arange_within(sizes: np.ndarray) -> np.ndarray:
    """0..size-1 for each segment, concatenated."""
    total = int(sizes.sum())
    return np.arange(total, dtype=np.int64) - np.repeat(_segment_starts(sizes), sizes)


def _stable_argsort(keys: np.ndarray) -> np.ndarray:
    """``np.argsort(keys, kind="stable")`` for non-negative integer keys below 2**48, as 16-bit LSD radix passes
    (numpy radix-sorts 16-bit keys in linear time): about 2x faster than numpy's merge sort on 10M keys."""
    k = np.asarray(keys)
    if k.size == 0:
        return np.zeros(0, dtype=np.int64)
    lo, hi = int(k.min()), int(k.max())
    if lo < 0 or hi >= 2**48:
        return np.argsort(k, kind="stable")
    order = np.argsort((k & 0xFFFF).astype(np.uint16), kind="stable")
    shift = 16
    while hi >> shift:
        order = order[np.argsort(((k[order] >> shift) & 0xFFFF).astype(np.uint16), kind="stable")]
        shift += 16
    return order


def _first_occurrences(keys: np.ndarray) -> np.ndarray:
    """Boolean mask of the first occurrence of each distinct key (like ``np.unique(return_index=True)``)."""
    order = _stable_argsort(keys)
    sk = keys[order]
    mask = np.zeros(keys.size, bool)
    mask[order[np.r_[True, sk[1:] != sk[:-1]]]] = True
    return mask


def _categorical(codes: np.ndarray, categories: pd.Index) -> pd.Categorical:
    """``Categorical.from_codes`` without re-checking that ``categories`` are unique (they are by construction; the
    check hashes every category, seconds for millions of session uuids)."""
    fast = getattr(pd.CategoricalDtype, "_from_fastpath", None)
    dtype = fast(categories, False) if fast is not None else pd.CategoricalDtype(categories)
    return pd.Categorical.from_codes(codes, dtype=dtype, validate=False)


def _uuid4_index(rng: np.random.Generator, n: int) -> pd.Index:
    """``n`` random uuid4 strings as a pandas ``str`` Index built straight from Arrow buffers (no Python objects).
    Collisions among 122 random bits are negligible (p < 1e-20 for 10M sessions)."""
    raw = _uuid4_strings(rng, n)
    string_type, offset_type = (pa.string(), np.int32) if 36 * n < 2**31 else (pa.large_string(), np.int64)
    offsets = pa.py_buffer((np.arange(n + 1, dtype=offset_type) * 36).tobytes())
    arr = pa.Array.from_buffers(string_type, n, [None, offsets, pa.py_buffer(raw.tobytes())])
    return pd.Index(pd.array(arr, dtype="str"))


def _uuid4_strings(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` random uuid4 strings (lower-case hex, 8-4-4-4-12) as a numpy ``S36`` array."""
    b = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
    b[:, 6] = (b[:, 6] & 0x0F) | 0x40
    b[:, 8] = (b[:, 8] & 0x3F) | 0x80
    hexd = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    digits = np.empty((n, 32), dtype=np.uint8)
    digits[:, 0::2] = hexd[b >> 4]
    digits[:, 1::2] = hexd[b & 0x0F]
    out = np.full((n, 36), ord("-"), dtype=np.uint8)
    for dst, src in ((0, 0), (9, 8), (14, 12), (19, 16), (24, 20)):
        width = {0: 8, 24: 12}.get(dst, 4)
        out[:, dst : dst + width] = digits[:, src : src + width]
    return out.view("S36").ravel()
