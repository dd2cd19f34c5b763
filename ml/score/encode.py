"""The rows of scoring.scores and scoring.feature_samples in PostgreSQL's binary COPY format, built in one pass.

The framing (header, trailer, field and array words, the date epoch) is :mod:`ml.pgcopy`'s; the row layouts are
here. Fixed-width fields (date, bigint, double, constant texts; base_value and the real[] of a fixed length) are laid
out per row with numpy structured dtypes; variable-width ones (tier, the two text[] of reasons, the jsonb of top
contributions) come from small dictionaries of pre-encoded bytes indexed per row, plus numbers formatted in the
kernel. One numba pass (rows split over threads) writes every row; there is no per-row Python.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence

import numpy as np
from numba import njit, prange

from ml.pgcopy import (
    ARRAY_HEADER_BYTES,
    TEXT_OID,
    float4_array_dtype,
    len_prefixed,
    pg_days,
    put_float4_array,
)
from ml.score.records import ScoredBlock

SCORE_COLUMNS: tuple[str, ...] = (
    "score_date", "user_id", "product_id", "probability", "model_version", "run_id", "tier", "reason_codes",
    "reason_texts", "top_contributions", "base_value", "contributions", "experiment_id", "arm",
)
SAMPLE_COLUMNS: tuple[str, ...] = ("score_date", "run_id", "bucket", "user_id", "product_id", "features")
_NUM_MAX = 32  # bytes of the longest number the kernel writes ("-" + 19 digits + "." + 6 digits)
_ENCODE_CHUNK = 4096  # rows per parallel work item of the encoder
_ARRAY_FIELD_BYTES = 4 + ARRAY_HEADER_BYTES  # a one-dimensional array field's length word and header


def _dictionary(items: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated bytes and offsets (len + 1) of ``items``."""
    off = np.zeros(len(items) + 1, dtype=np.int64)
    off[1:] = np.cumsum([len(b) for b in items])
    data = np.frombuffer(b"".join(items), dtype=np.uint8) if off[-1] else np.zeros(1, dtype=np.uint8)
    return data, off


@njit(cache=True, inline="always")
def _put_i32(buf, pos, v):  # noqa: ANN001, ANN202
    buf[pos] = (v >> 24) & 255
    buf[pos + 1] = (v >> 16) & 255
    buf[pos + 2] = (v >> 8) & 255
    buf[pos + 3] = v & 255


@njit(cache=True, inline="always")
def _put_bytes(buf, pos, data, a, b):  # noqa: ANN001, ANN202
    for q in range(b - a):
        buf[pos + q] = data[a + q]
    return pos + b - a


@njit(cache=True)
def _put_number(buf, pos, x):  # noqa: ANN001, ANN202
    """JSON number of x rounded to 6 decimals (trailing zeros dropped); null for NaN, inf, |x| >= 9.2e18."""
    if not np.isfinite(x) or abs(x) >= 9.2e18:
        buf[pos] = 110  # n
        buf[pos + 1] = 117  # u
        buf[pos + 2] = 108  # l
        buf[pos + 3] = 108  # l
        return pos + 4
    ax = abs(x)
    if ax < 9.2e12:
        v = np.int64(ax * 1e6 + 0.5)
        ip = v // 1000000
        frac = v % 1000000
    else:
        ip = np.int64(ax + 0.5)
        frac = np.int64(0)
    if x < 0 and (ip > 0 or frac > 0):
        buf[pos] = 45  # -
        pos += 1
    nd = 1
    t = ip // 10
    while t > 0:
        nd += 1
        t //= 10
    for q in range(nd - 1, -1, -1):
        buf[pos + q] = 48 + ip % 10
        ip //= 10
    pos += nd
    if frac > 0:
        buf[pos] = 46  # .
        pos += 1
        width = 6
        while frac % 10 == 0:
            frac //= 10
            width -= 1
        for q in range(width - 1, -1, -1):
            buf[pos + q] = 48 + frac % 10
            frac //= 10
        pos += width
    return pos


@njit(cache=True)
def _put_text_array(buf, pos, idx, i, data, off):  # noqa: ANN001, ANN202
    """A text[] field (length, 20-byte header, elements) of the dictionary entries idx[i, :] (until the first -1)."""
    at = pos
    pos += 24
    count = 0
    for j in range(idx.shape[1]):
        c = idx[i, j]
        if c < 0:
            break
        pos = _put_bytes(buf, pos, data, off[c], off[c + 1])
        count += 1
    _put_i32(buf, at, pos - at - 4)
    _put_i32(buf, at + 4, 1)  # ndim (one dimension of length 0 is the empty array, as array_recv reads it)
    _put_i32(buf, at + 8, 0)  # flags: no nulls
    _put_i32(buf, at + 12, TEXT_OID)
    _put_i32(buf, at + 16, count)
    _put_i32(buf, at + 20, 1)  # lower bound
    return pos


@njit(cache=True)
def _write_rows(buf, start, row0, row1, head, tail, tier, tier_d, tier_o, code, code_d, code_o, text, text_d,
                text_o, feat, feat_d, feat_o, tvalue, tshap, shap_key):  # noqa: ANN001, ANN202
    pos = start
    k = feat.shape[1]
    wh, wt = head.shape[1], tail.shape[1]
    for i in range(row0, row1):
        for q in range(wh):
            buf[pos + q] = head[i, q]
        pos += wh
        t = tier[i]
        pos = _put_bytes(buf, pos, tier_d, tier_o[t], tier_o[t + 1])
        pos = _put_text_array(buf, pos, code, i, code_d, code_o)
        pos = _put_text_array(buf, pos, text, i, text_d, text_o)
        at = pos
        pos += 4
        buf[pos] = 1  # jsonb binary format version, then the JSON text
        buf[pos + 1] = 91  # [
        pos += 2
        for j in range(k):
            f = feat[i, j]
            if f < 0:
                break
            if j > 0:
                buf[pos] = 44  # ,
                buf[pos + 1] = 32
                pos += 2
            pos = _put_bytes(buf, pos, feat_d, feat_o[f], feat_o[f + 1])
            pos = _put_number(buf, pos, tvalue[i, j])
            pos = _put_bytes(buf, pos, shap_key, 0, shap_key.shape[0])
            pos = _put_number(buf, pos, tshap[i, j])
            buf[pos] = 125  # }
            pos += 1
        buf[pos] = 93  # ]
        pos += 1
        _put_i32(buf, at, pos - at - 4)
        for q in range(wt):
            buf[pos + q] = tail[i, q]
        pos += wt
    return pos


@njit(cache=True, parallel=True)
def _encode_kernel(bound, chunk, head, tail, tier, tier_d, tier_o, code, code_d, code_o, text, text_d, text_o,
                   feat, feat_d, feat_o, tvalue, tshap, shap_key):  # noqa: ANN001, ANN202
    """Every row into one buffer: chunks of rows are written in parallel into regions of ``bound`` bytes per row,
    then compacted in order."""
    n = head.shape[0]
    n_chunks = (n + chunk - 1) // chunk
    buf = np.empty(max(n * bound, 1), dtype=np.uint8)
    ends = np.zeros(n_chunks, dtype=np.int64)
    for c in prange(n_chunks):
        row0 = c * chunk
        row1 = min(n, row0 + chunk)
        ends[c] = _write_rows(buf, row0 * bound, row0, row1, head, tail, tier, tier_d, tier_o, code, code_d,
                              code_o, text, text_d, text_o, feat, feat_d, feat_o, tvalue, tshap, shap_key)
    total = 0
    for c in range(n_chunks):
        total += ends[c] - c * chunk * bound
    out = np.empty(total, dtype=np.uint8)
    pos = 0
    for c in range(n_chunks):
        a = c * chunk * bound
        size = ends[c] - a
        out[pos : pos + size] = buf[a : ends[c]]
        pos += size
    return out


def encode_score_rows(
    block: ScoredBlock, score_date: dt.date, model_version: str, run_id: str, experiment_id: str | None = None,
    arm: str | None = None,
) -> memoryview:
    """The COPY BINARY rows (no header/trailer) of ``block`` for the columns :data:`SCORE_COLUMNS`.

    ``experiment_id`` and ``arm``: the experiment arm whose model scored every row of the block (None: null, the
    row was scored outside any experiment).

    ``top_contributions`` numbers are rounded to 6 decimals (``null`` for a missing feature value); contributions
    are stored as float32 (real[]), the full vector in the model's feature order."""
    n = len(block)
    f = block.contributions.shape[1]
    ins = block.insights
    mv, rid = model_version.encode(), run_id.encode()
    head = np.zeros(n, dtype=[
        ("nf", ">i2"), ("l_date", ">i4"), ("date", ">i4"), ("l_user", ">i4"), ("user", ">i8"), ("l_prod", ">i4"),
        ("prod", ">i8"), ("l_prob", ">i4"), ("prob", ">f8"), ("l_mv", ">i4"), ("mv", f"S{len(mv)}"),
        ("l_run", ">i4"), ("run", f"S{len(rid)}"),
    ])
    head["nf"] = len(SCORE_COLUMNS)
    head["l_date"], head["date"] = 4, pg_days(score_date)
    head["l_user"], head["user"] = 8, block.user_id
    head["l_prod"], head["prod"] = 8, block.product_id
    head["l_prob"], head["prob"] = 8, block.probability
    head["l_mv"], head["mv"] = len(mv), mv
    head["l_run"], head["run"] = len(rid), rid
    xp = [(name, None if value is None else value.encode()) for name, value in (("exp", experiment_id), ("arm", arm))]
    tail = np.zeros(n, dtype=[("l_base", ">i4"), ("base", ">f8"), *float4_array_dtype(f),
                              *[d for name, v in xp for d in ((f"l_{name}", ">i4"),
                                                               *(((name, f"S{len(v)}"),) if v else ()))]])
    tail["l_base"], tail["base"] = 8, block.base_value
    put_float4_array(tail, block.contributions)
    for name, v in xp:  # a null is length -1 and no bytes; a text its UTF-8 bytes
        tail[f"l_{name}"] = -1 if v is None else len(v)
        if v:
            tail[name] = v
    tiers = [len_prefixed(t.encode()) for t in ins.tiers]
    codes = [len_prefixed(c.encode()) for c in ins.codes]
    texts = [len_prefixed(t.encode()) for t in ins.texts]
    heads = [('{"feature": ' + json.dumps(name) + ', "value": ').encode() for name in ins.feature_names]
    shap_key = np.frombuffer(b', "shap": ', dtype=np.uint8)
    r, k = ins.reason_code.shape[1], ins.top_feature.shape[1]
    bound = (head.dtype.itemsize + tail.dtype.itemsize + max(map(len, tiers), default=0) + 2 * _ARRAY_FIELD_BYTES
             + r * (max(map(len, codes), default=0) + max(map(len, texts), default=0))
             + 7 + k * (2 + max(map(len, heads), default=0) + 2 * _NUM_MAX + len(shap_key) + 1))
    out = _encode_kernel(
        bound, _ENCODE_CHUNK, head.view(np.uint8).reshape(n, -1), tail.view(np.uint8).reshape(n, -1),
        ins.tier.astype(np.int64), *_dictionary(tiers), np.ascontiguousarray(ins.reason_code), *_dictionary(codes),
        np.ascontiguousarray(ins.reason_text), *_dictionary(texts), np.ascontiguousarray(ins.top_feature),
        *_dictionary(heads), np.ascontiguousarray(ins.top_value, dtype=np.float64),
        np.ascontiguousarray(ins.top_shap, dtype=np.float64), shap_key)
    return memoryview(out)


def encode_sample_rows(
    score_date: dt.date, run_id: str, bucket: int, user_id: np.ndarray, product_id: np.ndarray, X: np.ndarray
) -> bytes:
    """COPY BINARY rows of scoring.feature_samples for the columns :data:`SAMPLE_COLUMNS` (score_date, run_id,
    bucket, user_id, product_id, features as real[])."""
    n, f = X.shape
    rid = run_id.encode()
    rows = np.zeros(n, dtype=[
        ("nf", ">i2"), ("l_date", ">i4"), ("date", ">i4"), ("l_run", ">i4"), ("run", f"S{len(rid)}"),
        ("l_bucket", ">i4"), ("bucket", ">i4"), ("l_user", ">i4"), ("user", ">i8"), ("l_prod", ">i4"),
        ("prod", ">i8"), *float4_array_dtype(f),
    ])
    rows["nf"] = len(SAMPLE_COLUMNS)
    rows["l_date"], rows["date"] = 4, pg_days(score_date)
    rows["l_run"], rows["run"] = len(rid), rid
    rows["l_bucket"], rows["bucket"] = 4, bucket
    rows["l_user"], rows["user"] = 8, user_id
    rows["l_prod"], rows["prod"] = 8, product_id
    put_float4_array(rows, X)
    return rows.tobytes()
