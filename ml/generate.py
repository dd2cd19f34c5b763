"""Seeded, vectorised synthetic REES46 event generator, daily file writer and file corrupter.

One row of :func:`generate_events`' frame is one REES46 event (``view``, ``cart``, ``remove_from_cart`` or
``purchase``) of one user on one product, in the exact REES46 schema (:data:`REES46_COLUMNS`). Times are UTC,
prices are in the shop's currency with two decimals, ids are int64.

What is modelled (see docs/generator.md):

- a category tree with 19-digit category ids, brands per category and a lognormal price per category; a share of
  products sits in category ids without a ``category_code`` and a share has no brand, so the event-level empty
  rates match the real sample (about 33 % and 14 %);
- users with a latent purchase propensity, an activity rate, category preferences and join dates;
- sessions (uuid4 ``user_session``) with day-of-week and hour-of-day seasonality (weekends busier, an evening peak);
- within a session, product visits in funnel order: views, then maybe ``cart``, then maybe ``remove_from_cart``;
  purchases happen at checkout, at the end of the session, only for products carted and not removed in it;
- revisits across days (users come back to products they saw before; the cart chance grows with each visit) and
  follow-up purchase sessions days after a cart that was not bought at once: this is the learnable signal (pair
  history, user propensity, product appeal) that the 7-day label horizon picks up;
- category-specific behaviour: electronics = long research sessions (more views, longer gaps, more revisits),
  fashion = more products per session, home = quick decisions (few views, high buy-now rate);
- drift from ``drift_from``: a price level shift, a category-mix shift and a lower conversion.

Everything is drawn from ``numpy.random.Generator`` streams seeded from one seed (one stream per named draw), so a
config maps to the same frame and the same file bytes on every run. No Python loop runs per user, session or event:
10M events take about 10 CPU seconds (bench/bench_generate.py).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

log = logging.getLogger(__name__)

from ml.schema import EVENT_TYPES, REES46_COLUMNS  # noqa: E402 - the one definition
CORRUPTION_KINDS: tuple[str, ...] = (
    "missing_column",
    "extra_column",
    "wrong_type",
    "negative_price",
    "unknown_event_type",
    "unparseable_timestamp",
    "future_timestamp",
    "empty_file",
    "header_only",
    "truncated_last_line",
    "wrong_delimiter",
    "non_utf8",
    "huge_field",
    "sql_injection_brand",
    "duplicated_rows",
)
SQL_INJECTION_TEXT = "x'); drop table raw.events; --"
HUGE_FIELD_BYTES = 10 * 1024 * 1024
FILE_FORMATS: tuple[str, ...] = ("csv", "parquet")

_VIEW, _CART, _REMOVE, _PURCHASE = range(4)
_DAY_S = 86_400


# --- catalogue --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LeafCategory:
    """One leaf of the category tree.

    ``code`` is the REES46 ``category_code`` (None for categories that carry no code in the data); ``weight`` is the
    leaf's share of products; prices are lognormal with median ``price_median`` and log-sd ``price_sigma``.
    """

    code: str | None
    top: str
    weight: float
    price_median: float
    price_sigma: float
    brands: tuple[str, ...]
    label: str = ""


def _leaf(code: str, weight: float, median: float, sigma: float, brands: str) -> LeafCategory:
    return LeafCategory(code, code.split(".")[0], weight, median, sigma, tuple(brands.split()))


# Shares loosely follow the real October-2019 sample (electronics dominate, then appliances, computers, ...).
CATEGORY_TREE: tuple[LeafCategory, ...] = (
    _leaf("electronics.smartphone", 0.220, 250, 0.70, "samsung apple xiaomi huawei oppo nokia meizu honor"),
    _leaf("electronics.clocks", 0.030, 180, 0.80, "casio apple samsung garmin xiaomi"),
    _leaf("electronics.audio.headphone", 0.028, 60, 0.90, "apple samsung sony jbl xiaomi sennheiser"),
    _leaf("electronics.video.tv", 0.025, 400, 0.60, "samsung lg sony philips artel"),
    _leaf("electronics.telephone", 0.010, 25, 0.60, "nokia texet maxvi philips"),
    _leaf("electronics.tablet", 0.008, 300, 0.60, "apple samsung lenovo huawei"),
    _leaf("electronics.audio.subwoofer", 0.006, 120, 0.70, "pioneer jbl kenwood alpine"),
    _leaf("electronics.camera.photo", 0.005, 500, 0.70, "canon nikon sony fujifilm"),
    _leaf("computers.notebook", 0.035, 650, 0.50, "lenovo hp acer asus apple dell"),
    _leaf("computers.desktop", 0.008, 500, 0.60, "lenovo hp dell acer"),
    _leaf("computers.peripherals.monitor", 0.006, 200, 0.50, "samsung lg dell aoc philips"),
    _leaf("computers.components.videocards", 0.005, 350, 0.70, "msi gigabyte asus palit"),
    _leaf("computers.peripherals.mouse", 0.006, 20, 0.80, "logitech a4tech razer hp"),
    _leaf("appliances.kitchen.refrigerators", 0.040, 500, 0.50, "samsung lg bosch indesit atlant beko"),
    _leaf("appliances.kitchen.washer", 0.030, 380, 0.45, "samsung lg bosch indesit beko artel"),
    _leaf("appliances.environment.vacuum", 0.032, 130, 0.70, "samsung philips bosch dyson xiaomi vitek"),
    _leaf("appliances.environment.air_heater", 0.028, 45, 0.60, "ballu electrolux timberk polaris"),
    _leaf("appliances.environment.water_heater", 0.007, 150, 0.60, "ariston thermex aqua electrolux"),
    _leaf("appliances.kitchen.meat_grinder", 0.009, 90, 0.50, "redmond bosch moulinex polaris"),
    _leaf("appliances.kitchen.microwave", 0.007, 100, 0.40, "samsung lg midea bosch"),
    _leaf("appliances.iron", 0.007, 40, 0.60, "philips tefal bosch braun vitek"),
    _leaf("appliances.kitchen.blender", 0.006, 50, 0.70, "redmond philips bosch moulinex"),
    _leaf("appliances.kitchen.kettle", 0.005, 25, 0.60, "redmond bosch tefal xiaomi polaris"),
    _leaf("appliances.environment.air_conditioner", 0.005, 400, 0.40, "lg samsung ballu artel"),
    _leaf("appliances.sewing_machine", 0.004, 180, 0.50, "janome brother singer"),
    _leaf("furniture.living_room.sofa", 0.010, 550, 0.50, "brw mebelson hoff askona"),
    _leaf("furniture.living_room.cabinet", 0.010, 150, 0.60, "brw mebelson hoff"),
    _leaf("furniture.bedroom.bed", 0.008, 300, 0.60, "askona ormatek brw hoff"),
    _leaf("furniture.kitchen.table", 0.005, 120, 0.60, "brw hoff mebelson"),
    _leaf("apparel.shoes", 0.014, 70, 0.60, "nike adidas puma reebok respect baden"),
    _leaf("apparel.shoes.keds", 0.010, 50, 0.50, "nike adidas converse vans puma"),
    _leaf("apparel.costume", 0.006, 40, 0.60, "adidas nike puma demix"),
    _leaf("apparel.jeans", 0.005, 45, 0.50, "levis wrangler lee mango"),
    _leaf("apparel.shirt", 0.004, 25, 0.50, "lacoste mango zara tommy"),
    _leaf("accessories.bag", 0.005, 40, 0.70, "samsonite kipling guess"),
    _leaf("accessories.wallet", 0.004, 25, 0.60, "guess tommy calvin"),
    _leaf("auto.accessories.player", 0.018, 70, 0.60, "pioneer kenwood alpine prology jvc"),
    _leaf("auto.accessories.alarm", 0.010, 110, 0.50, "starline pandora sheriff"),
    _leaf("auto.accessories.videoregister", 0.006, 70, 0.60, "xiaomi neoline prology"),
    _leaf("construction.tools.drill", 0.006, 75, 0.60, "bosch makita dewalt interskol"),
    _leaf("construction.tools.saw", 0.005, 90, 0.60, "bosch makita interskol"),
    _leaf("kids.carriage", 0.006, 250, 0.50, "cybex chicco tutis"),
    _leaf("kids.toys", 0.005, 20, 0.80, "lego hasbro mattel"),
    _leaf("sport.bicycle", 0.006, 250, 0.60, "stels forward merida stern"),
    _leaf("sport.trainer", 0.003, 200, 0.60, "torneo oxygen kettler"),
    _leaf("stationery.cartrige", 0.002, 30, 0.60, "hp canon epson"),
    _leaf("country_yard.lawn_mower", 0.001, 200, 0.50, "bosch makita patriot"),
    _leaf("medicine.tools.tonometer", 0.001, 40, 0.40, "omron microlife"),
    # categories that never carry a category_code in REES46 (cosmetics, jewellery, household goods)
    LeafCategory(None, "beauty", 0.060, 12, 0.90, ("shiseido", "estel", "kapous", "lovular", "concept"), "beauty"),
    LeafCategory(None, "jewelry", 0.030, 150, 0.90, ("sokolov", "sanlight", "alrosa"), "jewelry"),
    LeafCategory(None, "household", 0.025, 15, 0.80, ("tefal", "lucente", "elenberg", "dauscher"), "household"),
)

# behaviour groups: how a category's shoppers browse and decide
BEHAVIOURS: tuple[str, ...] = ("electronics", "fashion", "home", "other")
_TOP_BEHAVIOUR = {
    "electronics": "electronics",
    "computers": "electronics",
    "apparel": "fashion",
    "accessories": "fashion",
    "beauty": "fashion",
    "jewelry": "fashion",
    "appliances": "home",
    "furniture": "home",
    "construction": "home",
    "country_yard": "home",
    "household": "home",
}
#                          electronics fashion home  other
_SLOTS_LAMBDA = np.array([1.3, 5.0, 0.7, 1.2])  # extra products per session (1 + Poisson)
_VIEWS_LAMBDA = np.array([2.2, 0.5, 0.6, 1.0])  # extra views per product visit (1 + Poisson)
_GAP_MEDIAN_S = np.array([70.0, 20.0, 30.0, 35.0])  # median seconds between events
_REVISIT_P = np.array([0.40, 0.22, 0.25, 0.30])  # a product slot returns to an earlier product of the user
_CART_BASE = np.array([-3.7, -3.6, -2.9, -3.3])  # cart logit intercept per visit
_BUY_NOW_BASE = np.array([-1.2, -0.8, 0.3, -0.6])  # buy-at-checkout logit intercept (given cart kept)

# hour-of-day session starts (UTC); the shop's evening (UTC+3) peaks at 17-20 UTC
_HOUR_WEEKDAY = np.array(
    [0.25, 0.15, 0.10, 0.10, 0.15, 0.30, 0.50, 0.70, 0.85, 0.95, 1.00, 1.00,
     1.00, 1.00, 1.05, 1.15, 1.30, 1.55, 1.75, 1.85, 1.60, 1.20, 0.80, 0.45]
)  # fmt: skip
_HOUR_WEEKEND = _HOUR_WEEKDAY * np.array([1.0] * 8 + [1.1, 1.2, 1.3, 1.3, 1.3, 1.3, 1.2, 1.1] + [1.0] * 8)

# the category mix drifted sessions move toward
_DRIFT_TOPS = {"apparel": 0.35, "furniture": 0.25, "kids": 0.15, "sport": 0.15, "beauty": 0.10}


@dataclass
class GeneratorConfig:
    """Size, seed and behaviour knobs of a synthetic REES46 dataset.

    The defaults make the "demo" dataset: 84 days from 2019-10-01, 3,500 users, 2,000 products, about 0.5M events:
    ten weekly labelled snapshots (as_of day 14, 21, ..., 77) with a 14-day active window and a 7-day label horizon.
    Events outside ``[start, start + days)`` (UTC) are dropped, so follow-ups past the end never appear.
    """

    start: date = date(2019, 10, 1)
    days: int = 84
    n_users: int = 3_500
    n_products: int = 2_000
    seed: int = 42
    drift_from: date | None = None
    sessions_per_user_day: float = 0.30
    """Mean sessions per user per weekday (users vary lognormally around it)."""
    weekend_factor: float = 1.30
    """Session volume on Saturdays and Sundays relative to weekdays."""
    late_joiner_share: float = 0.30
    """Share of users whose first day falls inside the period (the rest are active from the start)."""
    null_category_code_rate: float = 0.33
    """Target share of events with an empty category_code (real sample: 0.330)."""
    null_brand_rate: float = 0.14
    """Target share of events with an empty brand (real sample: 0.142)."""
    null_session_rate: float = 2e-5
    """Share of events with an empty user_session (real sample: 0 of 17,434; very rare in the full data)."""
    conversion_scale: float = 1.0
    """Multiplies the odds of carting and of buying (1.0 = default behaviour)."""
    drift_price_factor: float = 1.20
    """From drift_from: prices are multiplied by this."""
    drift_category_shift: float = 0.35
    """From drift_from: this share of sessions focuses on the drift mix (apparel, furniture, kids, sport, beauty)."""
    drift_conversion_factor: float = 0.55
    """From drift_from: odds of carting and buying are multiplied by this."""

    def __post_init__(self) -> None:
        if self.days < 1:
            raise ValueError(f"days must be >= 1, got {self.days}")
        if self.n_users < 1:
            raise ValueError(f"n_users must be >= 1, got {self.n_users}")
        if self.n_products < len(CATEGORY_TREE):
            raise ValueError(
                f"n_products must be >= {len(CATEGORY_TREE)} (one per leaf category), got {self.n_products}"
            )
        if self.n_users > 99_000_000 or self.n_products > 90_000_000:
            raise ValueError("n_users must be <= 99M and n_products <= 90M (id ranges)")

    @property
    def end(self) -> date:
        """First day after the period (exclusive)."""
        return self.start + timedelta(days=self.days)


@dataclass
class Catalog:
    """Products (index = product number) with their categories, brands, prices and latent appeal."""

    product_id: np.ndarray  # int64, 7-8 digits
    leaf: np.ndarray  # index into CATEGORY_TREE (products sorted by it)
    code_idx: np.ndarray  # index into codes of the leaf's category_code, -1 for code-less leaves
    category_ids: np.ndarray  # (n, 2) int64, 19 digits: the leaf's id with its code, and its code-less twin's id
    brand_idx: np.ndarray  # index into brands
    base_cents: np.ndarray  # int64 price in cents before promotions and drift
    appeal: np.ndarray  # float, raises cart and purchase odds
    popularity: np.ndarray  # float weight: how often the product is picked within its leaf
    behaviour: np.ndarray  # index into BEHAVIOURS
    codes: list[str]
    brands: list[str]


# --- small vectorised helpers -----------------------------------------------------------------------------------------
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


class _Laps:
    """Stage timings (CPU seconds: robust to other load) of one run, for profiling. With ``progress`` each stage
    is logged at INFO as it finishes (large runs), otherwise only the summary at DEBUG."""

    def __init__(self, progress: bool = False) -> None:
        self.laps: dict[str, float] = {}
        self.progress = progress
        self._t = time.process_time()

    def __call__(self, name: str) -> None:
        now = time.process_time()
        self.laps[name] = now - self._t
        self._t = now
        if self.progress:
            log.info("generate: %s done (%.1fs CPU)", name, self.laps[name])


def _hour_profile(weekend: bool) -> np.ndarray:
    p = _HOUR_WEEKEND if weekend else _HOUR_WEEKDAY
    return p / p.sum()


# --- the generator ----------------------------------------------------------------------------------------------------
def build_catalog(config: GeneratorConfig) -> Catalog:
    """Products for ``config.n_products`` and ``config.seed`` (independent of days and users).

    Every leaf category gets at least one product, products are grouped by leaf. Which products have an empty
    category_code or brand is decided later, by :func:`generate_events`, from the realised event counts."""
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 1]))
    n = config.n_products
    leaves = CATEGORY_TREE
    w = np.array([lf.weight for lf in leaves])
    leaf = np.concatenate([np.arange(len(leaves)), rng.choice(len(leaves), size=n - len(leaves), p=w / w.sum())])
    leaf = np.sort(leaf)  # products grouped by leaf (needed by _sample_grouped)
    appeal = rng.normal(0.0, 0.6, n)
    popularity = np.exp(0.8 * appeal + rng.normal(0.0, 1.0, n))
    med = np.array([lf.price_median for lf in leaves])[leaf]
    sig = np.array([lf.price_sigma for lf in leaves])[leaf]
    base_cents = np.maximum(np.round(med * np.exp(sig * rng.normal(0.0, 1.0, n)) * 100), 1).astype(np.int64)

    codes = sorted({lf.code for lf in leaves if lf.code is not None})
    code_of_leaf = np.array([codes.index(lf.code) if lf.code is not None else -1 for lf in leaves])
    # category ids: one 19-digit id per leaf with its code and one per code-less twin (REES46 has ids without codes)
    cat_ids = _unique_ints(rng, 2_053_013_550_000_000_000, 2_053_013_570_000_000_000, 2 * len(leaves))
    category_ids = np.stack([cat_ids[leaf], cat_ids[len(leaves) + leaf]], axis=1).astype(np.int64)

    brands = sorted({b for lf in leaves for b in lf.brands})
    brand_idx = np.empty(n, dtype=np.int64)
    for i, lf in enumerate(leaves):
        m = leaf == i
        bw = 1.0 / np.arange(1, len(lf.brands) + 1) ** 0.9  # first brands are the big ones
        pick = rng.choice(len(lf.brands), size=int(m.sum()), p=bw / bw.sum())
        brand_idx[m] = np.array([brands.index(b) for b in lf.brands])[pick]

    behaviour = np.array([BEHAVIOURS.index(_TOP_BEHAVIOUR.get(lf.top, "other")) for lf in leaves])[leaf]
    product_id = _unique_ints(rng, 1_000_000, 1_000_000 + max(60_000_000, 4 * n), n)
    return Catalog(product_id, leaf, code_of_leaf[leaf], category_ids, brand_idx, base_cents, appeal, popularity,
                   behaviour, codes, brands)


def _prefix_until(counts: np.ndarray, order: np.ndarray, eligible: np.ndarray, needed: float) -> np.ndarray:
    """Mark eligible items, taken in ``order``, while their cumulative count stays within ``needed``; an item that
    would overshoot is skipped and the walk goes on with the rest (a few vectorised passes), so one very popular
    product cannot throw the total far off."""
    mask = np.zeros(counts.size, bool)
    items = order[eligible[order]]
    budget = float(needed)
    for _ in range(16):
        if items.size == 0 or budget <= 0:
            break
        csum = np.cumsum(counts[items])
        k = int(np.searchsorted(csum, budget, side="right"))  # items[:k] fit
        mask[items[:k]] = True
        budget -= float(csum[k - 1]) if k else 0.0
        items = items[k + 1 :]  # items[k] would overshoot: skip it
    return mask


def _calibrate_nulls(cat: Catalog, counts: np.ndarray, config: GeneratorConfig) -> tuple[np.ndarray, ...]:
    """Per-product (code_idx, category_id, brand_idx), -1 = empty, whose empty shares over ``counts`` events hit the
    configured targets. Products of code-less leaves are always empty; others are taken in a seeded random order."""
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 3]))
    n, total = counts.size, float(counts.sum())
    codeless = cat.code_idx == -1
    code_null = codeless | _prefix_until(counts, rng.permutation(n), ~codeless,
                                         config.null_category_code_rate * total - counts[codeless].sum())
    code_idx = np.where(code_null, -1, cat.code_idx)
    category_id = np.where(code_null, cat.category_ids[:, 1], cat.category_ids[:, 0])
    brand_null = _prefix_until(counts, rng.permutation(n), np.ones(n, bool), config.null_brand_rate * total)
    brand_idx = np.where(brand_null, -1, cat.brand_idx)
    return code_idx, category_id, brand_idx


def _streams(seed: int):  # noqa: ANN202 - returns a small factory
    """One independent ``Generator`` per named draw. Each draw gets its own stream so a draw whose length changes
    (e.g. more slots after ``drift_from``) never shifts the numbers of another draw."""

    def stream(name: str) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([seed, 2, zlib.crc32(name.encode())]))

    return stream


def _sample_hours(u: np.ndarray, weekend: np.ndarray) -> np.ndarray:
    """Hour of day (0-23, UTC) per draw from the weekday or weekend profile, one uniform per draw."""
    hours = np.searchsorted(np.cumsum(_hour_profile(False)), u, side="right")
    hours_we = np.searchsorted(np.cumsum(_hour_profile(True)), u, side="right")
    return np.minimum(np.where(weekend, hours_we, hours), 23).astype(np.int64)


def generate_events(config: GeneratorConfig | None = None) -> pd.DataFrame:
    """Generate every event of the configured period.

    Returns a frame with columns :data:`REES46_COLUMNS` in that order, sorted by ``event_time`` (ties keep the
    within-session order), with dtypes: ``event_time`` datetime64[us, UTC] (whole seconds); ``product_id``,
    ``category_id``, ``user_id`` int64; ``price`` float64 (two decimals); ``event_type``, ``category_code``,
    ``brand`` and ``user_session`` pandas categoricals of strings (NaN = empty field; categoricals keep 10M-event
    frames small, ``.astype("str")`` gives plain strings).

    The same config gives the same frame. Sessions are processed in start-time order and every draw has its own
    random stream, so a config with ``drift_from`` produces the same events as the config without it for every
    session that starts before ``drift_from`` (only which products have an empty category_code or brand may differ:
    those are calibrated on the whole run's event counts).
    """
    config = config or GeneratorConfig()
    t_start = time.perf_counter()
    lap = _Laps(progress=config.n_users * config.days >= 1_000_000)  # roughly >= 2M events: report stages
    rs = _streams(config.seed)
    cat = build_catalog(config)
    n_leaves = len(CATEGORY_TREE)
    tops = sorted({lf.top for lf in CATEGORY_TREE})
    top_of_leaf = np.array([tops.index(lf.top) for lf in CATEGORY_TREE])
    beh_of_leaf = np.array([BEHAVIOURS.index(_TOP_BEHAVIOUR.get(lf.top, "other")) for lf in CATEGORY_TREE])
    leaf_w = np.array([lf.weight for lf in CATEGORY_TREE])
    leaf_by_top = np.argsort(top_of_leaf, kind="stable")
    t0 = int(datetime(config.start.year, config.start.month, config.start.day, tzinfo=UTC).timestamp())
    t_end = t0 + config.days * _DAY_S
    drift_day = (config.drift_from - config.start).days if config.drift_from is not None else None
    P = config.n_products

    # users: propensity (latent, standard normal), activity, join day, category-top preferences
    U, D = config.n_users, config.days
    r = rs("users")
    user_id = _unique_ints(r, 510_000_000, 610_000_000, U)
    propensity = r.normal(0.0, 1.0, U)
    activity = np.exp(0.8 * r.normal(0.0, 1.0, U) + 0.15 * propensity - 0.331)
    join_day = np.where(r.random(U) < config.late_joiner_share, r.integers(0, D, U), 0)
    top_share = np.bincount(top_of_leaf, weights=leaf_w, minlength=len(tops))
    top_share /= top_share.sum()
    pref = r.gamma(np.maximum(top_share * 3.0, 0.02), size=(U, len(tops))) + 1e-9
    pref /= pref.sum(axis=1, keepdims=True)
    lap("catalog+users")

    # sessions per user-day: Poisson(activity x weekday factor), only on or after the join day; then put every
    # session in start-time order (the order all later draws follow)
    dow = (config.start.weekday() + np.arange(D)) % 7
    weekend = dow >= 5
    lam = config.sessions_per_user_day * activity[:, None] * np.where(weekend, config.weekend_factor, 1.0)[None, :]
    lam[np.arange(D)[None, :] < join_day[:, None]] = 0.0
    counts = rs("session_counts").poisson(lam)
    cell = np.flatnonzero(counts)
    cell = np.repeat(cell, counts.ravel()[cell])
    del counts, lam
    s_user, s_day = cell // D, cell % D
    n_sess = s_user.size
    hours = _sample_hours(rs("session_hours").random(n_sess), weekend[s_day])
    s_start = t0 + s_day * _DAY_S + hours * 3600 + rs("session_seconds").integers(0, 3600, n_sess)
    order = _stable_argsort(s_start - t0)
    s_user, s_day, s_start = s_user[order], s_day[order], s_start[order]
    del cell, hours, order
    s_drift = np.zeros(n_sess, bool) if drift_day is None else s_day >= drift_day
    lap("sessions")

    # each session has a focus leaf: a top from the user's preferences (or, after drift_from, sometimes the drift
    # mix), then a leaf in that top by weight
    s_top = _sample_rows(np.cumsum(pref, axis=1), s_user, rs("session_top").random(n_sess))
    u_shift, u_dtop = rs("drift_shift").random(n_sess), rs("drift_top").random(n_sess)  # drawn with or without drift
    if drift_day is not None:
        dmix = np.array([_DRIFT_TOPS.get(t, 0.0) for t in tops])
        shift = s_drift & (u_shift < config.drift_category_shift)
        s_top[shift] = np.searchsorted(np.cumsum(dmix / dmix.sum())[:-1], u_dtop[shift], side="right")
    del u_shift, u_dtop
    s_leaf = leaf_by_top[_sample_grouped(s_top, leaf_w[leaf_by_top], top_of_leaf[leaf_by_top], len(tops),
                                         rs("session_leaf").random(n_sess))]
    s_beh = beh_of_leaf[s_leaf]
    log.info("generate: %s sessions for %s users over %s days", f"{n_sess:,}", f"{U:,}", D)
    lap("focus")

    # product slots: 1 + Poisson(lambda[behaviour]) per session; a new product from the focus leaf (sometimes
    # another leaf of the focus top), or a revisit of one of the user's earlier slots (recent ones more likely)
    k = 1 + rs("slots_per_session").poisson(_SLOTS_LAMBDA[s_beh])
    n_slots = int(k.sum())
    sl_sess = np.repeat(np.arange(n_sess), k)
    sl_user = s_user[sl_sess]
    other_leaf = leaf_by_top[_sample_grouped(s_top[sl_sess], leaf_w[leaf_by_top], top_of_leaf[leaf_by_top],
                                             len(tops), rs("slot_other_leaf").random(n_slots))]
    sl_leaf = np.where(rs("slot_use_focus").random(n_slots) < 0.8, s_leaf[sl_sess], other_leaf)
    new_product = _sample_grouped(sl_leaf, cat.popularity, cat.leaf, n_leaves, rs("slot_product").random(n_slots))
    back = np.floor(rs("revisit_back").exponential(10.0, n_slots)).astype(np.int64)
    wants_revisit = rs("revisit").random(n_slots) < _REVISIT_P[s_beh[sl_sess]]
    del other_leaf, sl_leaf
    # revisit references live in user-major order: (user, time) is a stable sort of the time-ordered slots
    perm = _stable_argsort(sl_user)
    inv = np.empty(n_slots, dtype=np.int64)
    inv[perm] = np.arange(n_slots)
    u_sess_first = inv[_segment_starts(k)][sl_sess]  # user-order index of the first slot of this slot's session
    u_user_first = _segment_starts(np.bincount(sl_user, minlength=U))[sl_user]  # ... and of the user's first slot
    avail = u_sess_first - u_user_first  # how many earlier slots this user has
    ref = u_sess_first - 1 - back
    far = ref < u_user_first
    ref[far] = u_user_first[far] + (back[far] % np.maximum(avail[far], 1))
    revisit = wants_revisit & (avail > 0)
    root = np.where(revisit, perm[np.minimum(ref, n_slots - 1)], np.arange(n_slots))  # back to time order
    while True:  # follow revisit chains to the slot that introduced the product (pointer jumping)
        nxt = root[root]
        if np.array_equal(nxt, root):
            break
        root = nxt
    sl_prod = new_product[root]
    del new_product, back, wants_revisit, perm, inv, u_sess_first, u_user_first, avail, ref, far, revisit, root
    lap("slots+revisits")

    # one visit per (session, product), keeping the first
    keep = _first_occurrences(sl_sess.astype(np.int64) * P + sl_prod)
    sl_sess, sl_prod, sl_user = sl_sess[keep], sl_prod[keep], sl_user[keep]
    n_slots = sl_sess.size
    del keep
    lap("dedupe")

    # pair history: how many earlier visits this (user, product) pair had (slots are in time order)
    pair = sl_user.astype(np.int64) * P + sl_prod
    po = _stable_argsort(pair)
    ps = pair[po]
    grp_start = np.flatnonzero(np.r_[True, ps[1:] != ps[:-1]])
    visit_idx = np.empty(n_slots, dtype=np.int64)
    visit_idx[po] = _arange_within(np.diff(np.r_[grp_start, n_slots]))
    del po, ps, grp_start
    lap("pair history")

    # decisions per visit: the learnable signal (propensity, appeal, pair history, a persistent pair taste)
    beh = cat.behaviour[sl_prod]
    z = propensity[sl_user]
    a = cat.appeal[sl_prod]
    uu = np.clip(_hash_uniform(pair, salt=config.seed * 7 + 1), 1e-9, 1 - 1e-9)
    taste = 0.5 * np.log(uu / (1 - uu))  # logistic(0, 0.5): some pairs are simply liked more
    conv = np.log(config.conversion_scale) + np.where(s_drift[sl_sess], np.log(config.drift_conversion_factor), 0.0)
    n_views = 1 + rs("views").poisson(_VIEWS_LAMBDA[beh] + 0.3 * np.minimum(visit_idx, 3) * (beh == 0))
    cart_logit = _CART_BASE[beh] + 0.9 * z + 0.7 * a + 0.6 * np.log1p(visit_idx) + taste + conv
    carted = rs("cart").random(n_slots) < _sigmoid(cart_logit)
    removed = carted & (rs("remove").random(n_slots) < _sigmoid(-0.7 - 0.6 * z - 0.8 * taste))
    bought = carted & ~removed & (rs("buy_now").random(n_slots) < _sigmoid(_BUY_NOW_BASE[beh] + 0.5 * z + conv))
    # carted but not bought now: come back and buy on a later day (rarely after a remove)
    p_follow = np.where(removed, 0.05, _sigmoid(-0.6 + 1.0 * z + 0.4 * a + 0.5 * taste + conv))
    follow = carted & ~bought & (rs("follow").random(n_slots) < p_follow)
    del uu, taste, cart_logit, a, z, pair, p_follow, visit_idx, beh
    lap("decisions")

    # follow-up sessions: 1-10 days later (mostly 1-4), view(s) -> cart -> purchase (15 % remove instead)
    f_idx = np.flatnonzero(follow)
    nf = f_idx.size
    f_delay = 1 + np.minimum(rs("follow_delay").geometric(0.35, nf) - 1, 9)
    f_day = s_day[sl_sess[f_idx]] + f_delay
    f_hour = _sample_hours(rs("follow_hours").random(nf), weekend[np.minimum(f_day, D - 1)])
    f_start = t0 + f_day * _DAY_S + f_hour * 3600 + rs("follow_seconds").integers(0, 3600, nf)
    f_buy = rs("follow_buy").random(nf) < 0.85
    f_views = 1 + rs("follow_views").poisson(0.4, nf)
    del f_delay, f_day, f_hour, follow

    # all sessions (browse + follow-up) in start-time order; slots re-laid out in that session order
    all_start = np.concatenate([s_start, f_start])
    n_all_sess = all_start.size
    sess_order = _stable_argsort(all_start - t0)
    rank = np.empty(n_all_sess, dtype=np.int64)
    rank[sess_order] = np.arange(n_all_sess)
    all_start = all_start[sess_order]
    all_user = np.concatenate([s_user, sl_user[f_idx]])[sess_order]
    slot_sess = rank[np.concatenate([sl_sess, n_sess + np.arange(nf)])]
    slot_order = np.argsort(slot_sess, kind="stable")  # keeps the in-session position order
    all_sess = slot_sess[slot_order]
    all_prod = np.concatenate([sl_prod, sl_prod[f_idx]])[slot_order]
    all_views = np.concatenate([n_views, f_views])[slot_order]
    all_cart = np.concatenate([carted, np.ones(nf, bool)])[slot_order]
    all_remove = np.concatenate([removed, ~f_buy])[slot_order]
    all_buy = np.concatenate([bought, f_buy])[slot_order]
    del sl_sess, sl_prod, n_views, carted, removed, bought, sl_user, slot_sess, slot_order, rank, sess_order
    del s_start, f_start, f_buy, f_views, f_idx
    lap("follow-ups")

    # events: per slot, views then cart then remove ("browse"), laid out per session; purchases at checkout (end)
    n_browse = all_views + all_cart + all_remove
    b_slot = np.repeat(np.arange(all_sess.size), n_browse)
    b_step = _arange_within(n_browse)
    b_type = np.full(b_slot.size, _VIEW, dtype=np.int8)
    nv = all_views[b_slot]
    at_cart = b_step == nv
    b_type[at_cart] = np.where(all_cart[b_slot[at_cart]], _CART, _REMOVE)
    b_type[b_step == nv + 1] = _REMOVE
    del nv, b_step, at_cart
    p_slot = np.flatnonzero(all_buy)
    browse_per_sess = np.bincount(all_sess, weights=n_browse, minlength=n_all_sess).astype(np.int64)
    buy_per_sess = np.bincount(all_sess[p_slot], minlength=n_all_sess)
    ev_per_sess = browse_per_sess + buy_per_sess
    sess_off = _segment_starts(ev_per_sess)
    n_ev = int(ev_per_sess.sum())
    b_pos = sess_off[all_sess[b_slot]] + _arange_within(browse_per_sess)  # browse slots are in session order
    p_sess = all_sess[p_slot]
    p_pos = sess_off[p_sess] + browse_per_sess[p_sess] + _arange_within(buy_per_sess)
    ev_slot = np.empty(n_ev, dtype=np.int64)
    ev_type = np.empty(n_ev, dtype=np.int8)
    ev_slot[b_pos], ev_type[b_pos] = b_slot, b_type
    ev_slot[p_pos], ev_type[p_pos] = p_slot, _PURCHASE
    del b_slot, b_type, b_pos, p_pos, p_sess, n_browse, p_slot
    ev_sess = all_sess[ev_slot]
    ev_prod = all_prod[ev_slot]
    ev_user = all_user[ev_sess]
    del ev_slot
    lap("event layout")

    # times: session start + cumulative lognormal gaps (whole seconds, >= 1); first event at the session start
    gap_med = _GAP_MEDIAN_S[cat.behaviour[ev_prod]]
    gaps = np.maximum(np.rint(gap_med * np.exp(0.9 * rs("gaps").standard_normal(n_ev, dtype=np.float32))), 1)
    gaps = gaps.astype(np.int64)
    nonempty = ev_per_sess > 0
    gaps[sess_off[nonempty]] = 0
    cs = np.cumsum(gaps)
    ev_time = all_start[ev_sess] + cs - np.repeat(cs[sess_off[nonempty]], ev_per_sess[nonempty])
    del gaps, cs, gap_med
    lap("times")

    inside = (ev_time >= t0) & (ev_time < t_end)
    sel = np.flatnonzero(inside)
    sel = sel[_stable_argsort(ev_time[sel] - t0)]
    ev_time, ev_type, ev_prod, ev_user, ev_sess = ev_time[sel], ev_type[sel], ev_prod[sel], ev_user[sel], ev_sess[sel]
    del sel, inside
    n_ev = ev_time.size
    lap("sort")

    # empty category_code / brand: products in a random order are made empty until the realised event share
    # reaches the target (products in code-less leaves are always empty), so the rates match at any size. (This
    # is the one place where a drift run differs before drift_from: which products lack a code or brand.)
    code_idx, category_id, brand_idx = _calibrate_nulls(cat, np.bincount(ev_prod, minlength=P), config)

    # prices: base price, an occasional 10 % promotion (per product and day), the drift level shift
    ev_day = (ev_time - t0) // _DAY_S
    promo = _hash_uniform(ev_prod, ev_day, salt=config.seed * 7 + 2) < 0.08
    mult = np.where(promo, 0.9, 1.0)
    if drift_day is not None:
        mult = mult * np.where(ev_day >= drift_day, config.drift_price_factor, 1.0)
    cents = np.rint(cat.base_cents[ev_prod] * mult).astype(np.int64)
    del ev_day, promo, mult
    lap("nulls+prices")

    # user_session: one uuid4 per session; a very rare empty one
    uuids = _uuid4_index(rs("uuids"), n_all_sess)
    sess_code = ev_sess.astype(np.int32 if n_all_sess < 2**31 else np.int64)
    sess_code[rs("null_session").random(n_ev) < config.null_session_rate] = -1
    lap("uuids")

    df = pd.DataFrame(
        {
            "event_time": pd.DatetimeIndex(ev_time.astype("datetime64[s]").astype("datetime64[us]")).tz_localize(UTC),
            "event_type": _categorical(ev_type, pd.Index(EVENT_TYPES, dtype="str")),
            "product_id": cat.product_id[ev_prod],
            "category_id": category_id[ev_prod],
            "category_code": _categorical(code_idx[ev_prod], pd.Index(cat.codes, dtype="str")),
            "brand": _categorical(brand_idx[ev_prod], pd.Index(cat.brands, dtype="str")),
            "price": cents / 100.0,
            "user_id": user_id[ev_user],
            "user_session": _categorical(sess_code, uuids),
        },
        columns=list(REES46_COLUMNS),
        copy=False,  # the arrays are fresh: no need to copy them into consolidated blocks (0.5-1 s at 10M rows)
    )
    lap("frame")
    log.debug("generate stage timings: %s", ", ".join(f"{k} {v:.2f}s" for k, v in lap.laps.items()))
    log.info(
        "generate: %s events (%s sessions) in %.1fs", f"{n_ev:,}", f"{n_all_sess:,}", time.perf_counter() - t_start
    )
    return df


# --- reading and writing ----------------------------------------------------------------------------------------------
def _arrow_table(df: pd.DataFrame) -> pa.Table:
    """The REES46 columns of ``df`` as an Arrow table with plain types (dictionaries decoded)."""
    missing = [c for c in REES46_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"frame lacks REES46 column(s): {', '.join(missing)}")
    t = pa.Table.from_pandas(df[list(REES46_COLUMNS)], preserve_index=False)
    cols = []
    for name in REES46_COLUMNS:
        col = t.column(name).combine_chunks()
        if pa.types.is_dictionary(col.type):
            col = col.dictionary_decode()
        if name == "event_time":
            col = pc.cast(col, pa.timestamp("us", tz="UTC"))
        elif name in ("product_id", "category_id", "user_id"):
            col = pc.cast(col, pa.int64())
        elif name == "price":
            col = pc.cast(col, pa.float64())
        else:
            col = pc.cast(col, pa.string())
        cols.append(col)
    return pa.Table.from_arrays(cols, names=list(REES46_COLUMNS))


def _csv_quote(col: pa.Array) -> pa.Array:
    """RFC 4180 quoting for the values that need it (comma, quote, CR or LF); others unchanged."""
    need = pc.match_substring_regex(col, r'[,"\r\n]')
    if not pc.any(need).as_py():
        return col
    quoted = pc.binary_join_element_wise('"', pc.replace_substring(col, '"', '""'), '"', "")
    return pc.if_else(need, quoted, col)


def _fixed_width_strings(chars: np.ndarray) -> pa.Array:
    """An Arrow string array from an (n, width) uint8 matrix of ASCII characters (no copies through Python)."""
    n, width = chars.shape
    typ, off = (pa.string(), np.int32) if n * width < 2**31 else (pa.large_string(), np.int64)
    offsets = pa.py_buffer((np.arange(n + 1, dtype=off) * width).tobytes())
    return pa.Array.from_buffers(typ, n, [None, offsets, pa.py_buffer(np.ascontiguousarray(chars))])


_TWO_DIGITS = np.array([[ord(f"{i:02d}"[0]), ord(f"{i:02d}"[1])] for i in range(100)], dtype=np.uint8)


def _format_event_times(col: pd.Series) -> pa.Array:
    """``YYYY-MM-DD HH:MM:SS UTC`` for a datetime column (tz-aware in any zone, or naive = UTC; fractions of a
    second truncated), built from integer fields with lookup tables: about 10x faster than Arrow's ``strftime``.
    Raises ``ValueError`` on nulls."""
    if col.isna().any():
        raise ValueError("event_time holds nulls")
    t = col.dt.tz_convert("UTC").dt.tz_localize(None) if col.dt.tz is not None else col
    s = t.to_numpy().astype("datetime64[s]").astype(np.int64)
    n = s.size
    day, tod = np.divmod(s, _DAY_S)
    d0, d1 = int(day.min()), int(day.max())
    if d1 - d0 > 100_000:  # absurd spans: format the distinct days only
        days, inv = np.unique(day, return_inverse=True)
    else:
        days, inv = np.arange(d0, d1 + 1), day - d0
    table = np.frombuffer(np.datetime_as_string(days.astype("datetime64[D]")).astype("S10").tobytes(), np.uint8)
    table = table.reshape(-1, 10)
    out = np.empty((n, 23), dtype=np.uint8)
    out[:, 0:10] = table[inv]
    out[:, 10], out[:, 13], out[:, 16] = ord(" "), ord(":"), ord(":")
    out[:, 11:13] = _TWO_DIGITS[tod // 3600]
    out[:, 14:16] = _TWO_DIGITS[tod % 3600 // 60]
    out[:, 17:19] = _TWO_DIGITS[tod % 60]
    out[:, 19:23] = np.frombuffer(b" UTC", np.uint8)
    return _fixed_width_strings(out)


def _format_prices(col: pd.Series) -> pa.Array:
    """Prices with exactly two decimals (``33.20``, ``-1.00``), rounded to cents; nulls stay null."""
    v = col.to_numpy(dtype=np.float64, na_value=np.nan)
    null = np.isnan(v)
    cents = np.rint(np.where(null, 0.0, v) * 100).astype(np.int64)
    whole, frac = np.divmod(np.abs(cents), 100)
    dot_frac = np.empty((v.size, 3), dtype=np.uint8)  # ".dd" as a fixed-width column
    dot_frac[:, 0] = ord(".")
    dot_frac[:, 1:] = _TWO_DIGITS[frac]
    sign = pa.array(np.where(cents < 0, "-", ""), pa.string()) if (cents < 0).any() else pa.scalar("", pa.string())
    out = pc.binary_join_element_wise(sign, pc.cast(pa.array(whole), pa.string()), _fixed_width_strings(dot_frac), "")
    return pc.if_else(pa.array(null), pa.scalar(None, pa.string()), out) if null.any() else out


def _format_strings(col: pd.Series) -> pa.Array:
    """A string column as Arrow strings, quoted where needed, nulls as nulls. A categorical is quoted per category
    and then expanded when it has fewer categories than rows (brands, codes), else expanded first (the session
    uuids of a one-day slice of a big frame)."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        cats = pc.cast(pa.array(col.cat.categories.array), pa.string())
        codes = col.cat.codes.to_numpy()
        indices = pa.array(codes, mask=codes < 0)
        if len(cats) <= len(col):
            return pc.take(_csv_quote(cats), indices)
        return _csv_quote(pc.take(cats, indices))
    return _csv_quote(pc.cast(pa.array(col.astype("str"), from_pandas=True), pa.string()))


def _csv_header(line_terminator: str) -> bytes:
    return (",".join(REES46_COLUMNS) + line_terminator).encode()


def _csv_body(df: pd.DataFrame, line_terminator: str) -> pa.Buffer:
    """The data lines of :func:`format_rees46_csv` as one Arrow buffer (no copy into Python bytes)."""
    missing = [c for c in REES46_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"frame lacks REES46 column(s): {', '.join(missing)}")
    if len(df) == 0:
        return pa.py_buffer(b"")

    def ints(c: str) -> pa.Array:
        return pc.cast(pa.array(df[c].to_numpy(dtype=np.int64)), pa.string())

    parts = [
        _format_event_times(df["event_time"]),
        _format_strings(df["event_type"]),
        ints("product_id"),
        ints("category_id"),
        _format_strings(df["category_code"]),
        _format_strings(df["brand"]),
        _format_prices(df["price"]),
        ints("user_id"),
        # the last field carries the line terminator: joining [value, ""] with it as the separator appends it
        pc.binary_join_element_wise(pc.fill_null(_format_strings(df["user_session"]), ""), "", line_terminator),
    ]
    # one string type for all (large_string once a column passes 2 GiB of text)
    typ = pa.large_string() if any(pa.types.is_large_string(p.type) for p in parts) else pa.string()
    parts = [p.cast(typ) if p.type != typ else p for p in parts]
    lines = pc.binary_join_element_wise(*parts, ",", null_handling="replace", null_replacement="")
    lines = lines.combine_chunks() if isinstance(lines, pa.ChunkedArray) else lines
    off = np.int64 if pa.types.is_large_string(lines.type) else np.int32
    offsets = np.frombuffer(lines.buffers()[1], dtype=off, count=len(lines) + 1, offset=lines.offset * off().itemsize)
    return lines.buffers()[2].slice(int(offsets[0]), int(offsets[-1] - offsets[0]))


def format_rees46_csv(df: pd.DataFrame, line_terminator: str = "\n") -> bytes:
    """``df`` as REES46 CSV bytes: header, one line per row, UTF-8.

    Formats like the real files: ``2019-10-01 00:00:00 UTC`` (seconds, fractions truncated), price with exactly two
    decimals, integers as digits, empty fields for nulls, values quoted only when they hold a comma, quote or line
    break. ``line_terminator`` ends every line, the last one too (the real sample uses CRLF; the default LF)."""
    return _csv_header(line_terminator) + _csv_body(df, line_terminator).to_pybytes()


def read_rees46_csv(path: str | Path) -> pd.DataFrame:
    """Read a REES46 CSV into the dtypes :func:`generate_events` returns (strings as plain ``str``; empty = NaN).

    Raises ``ValueError`` when the header is not exactly :data:`REES46_COLUMNS`."""
    df = pd.read_csv(
        path,
        dtype={"event_type": "str", "product_id": "int64", "category_id": "int64", "category_code": "str",
               "brand": "str", "price": "float64", "user_id": "int64", "user_session": "str"},
        keep_default_na=False,
        na_values={"category_code": [""], "brand": [""], "user_session": [""]},
    )
    if tuple(df.columns) != REES46_COLUMNS:
        raise ValueError(f"{path}: header {list(df.columns)} is not the REES46 header")
    df["event_time"] = pd.to_datetime(df["event_time"], format="%Y-%m-%d %H:%M:%S UTC", utc=True).astype(
        "datetime64[us, UTC]"
    )
    return df


def _write_atomic(
    data: bytes | Sequence[bytes | pa.Buffer] | None, dst: str | Path, writer: Callable[[Path], object] | None = None
) -> None:
    """Write ``data`` (bytes or a sequence of byte chunks; or call ``writer(tmp_path)``) to a hidden temp name
    beside ``dst``, fsync, then rename onto it, so a watcher never sees a half-written file. Local paths and fsspec
    URLs (rename via ``fs.mv``)."""
    if isinstance(data, bytes | bytearray):
        data = [data]
    dst_s = str(dst)
    if "://" in dst_s:
        import fsspec

        fs, path = fsspec.core.url_to_fs(dst_s)
        parent, name = path.rsplit("/", 1)
        tmp = f"{parent}/.{name}.tmp-{os.getpid()}"
        if data is not None:
            with fs.open(tmp, "wb") as f:
                for chunk in data:
                    f.write(memoryview(chunk))
        else:
            local = Path(tempfile.gettempdir()) / f".{name}.tmp-{os.getpid()}"
            writer(local)
            fs.put_file(str(local), tmp)
            local.unlink()
        fs.mv(tmp, path)
        return
    dst_p = Path(dst_s)
    tmp_p = dst_p.with_name(f".{dst_p.name}.tmp-{os.getpid()}")
    try:
        if data is not None:
            with open(tmp_p, "wb") as f:
                for chunk in data:
                    f.write(memoryview(chunk))
                f.flush()
                os.fsync(f.fileno())
        else:
            writer(tmp_p)
        os.replace(tmp_p, dst_p)
    finally:
        if tmp_p.exists():
            tmp_p.unlink()


def write_daily_files(
    df: pd.DataFrame,
    out_dir: str | Path,
    formats: Sequence[str] = ("csv",),
    line_terminator: str = "\n",
    workers: int | None = None,
) -> list[Path]:
    """Write one file per UTC day of ``df`` into ``out_dir``: ``events_YYYY-MM-DD.csv`` (REES46 CSV, see
    :func:`format_rees46_csv`) and/or ``events_YYYY-MM-DD.parquet`` (same columns; event_time timestamp[us, UTC],
    ids int64, price float64, nullable strings; zstd).

    Each file is written under a hidden temp name, fsynced and renamed into place, so a watcher never picks up a
    half-written file; an existing file of the same name is replaced. Days are written by ``workers`` threads
    (default: the CPU count, at most 4; Arrow and numpy release the GIL). Returns the written paths in day order,
    CSV before Parquet per day (for an fsspec URL ``out_dir``, the URLs as ``str``). Raises ``ValueError`` for an
    unknown format."""
    from concurrent.futures import ThreadPoolExecutor

    from ml.observe import Progress

    bad = [f for f in formats if f not in FILE_FORMATS]
    if bad or not formats:
        raise ValueError(f"unknown file format(s) {bad or list(formats)}; choose from {FILE_FORMATS}")
    out_s = str(out_dir)
    is_url = "://" in out_s
    if is_url:
        import fsspec

        fs, root = fsspec.core.url_to_fs(out_s)
        fs.makedirs(root, exist_ok=True)
    else:
        Path(out_s).mkdir(parents=True, exist_ok=True)
    if len(df) == 0:
        return []
    if not df["event_time"].is_monotonic_increasing:
        df = df.sort_values("event_time", kind="stable")
    day = df["event_time"].values.astype("datetime64[D]")  # UTC days (tz-aware values are UTC)
    bounds = np.r_[np.flatnonzero(np.r_[True, day[1:] != day[:-1]]), len(df)]

    def write_day(a: int, b: int) -> list[Path]:
        part = df.iloc[a:b]
        out: list[Path] = []
        for fmt in formats:
            name = f"events_{day[a]}.{fmt}"
            dst = f"{out_s.rstrip('/')}/{name}" if is_url else Path(out_s) / name
            if fmt == "csv":
                _write_atomic([_csv_header(line_terminator), _csv_body(part, line_terminator)], dst)
            else:
                import pyarrow.parquet as pq

                table = _arrow_table(part)
                _write_atomic(None, dst, writer=lambda p, t=table: pq.write_table(t, p, compression="zstd"))
            out.append(dst)  # type: ignore[arg-type]
        return out

    progress = Progress("writing daily files", total=len(df), unit="events")
    spans = list(zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True))
    n_workers = max(1, min(workers or min(os.cpu_count() or 1, 4), len(spans)))
    written: list[Path] = []
    with ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="write-day") as pool:
        futures = [pool.submit(write_day, a, b) for a, b in spans]
        for (a, b), fut in zip(spans, futures, strict=True):
            written += fut.result()
            progress.advance(b - a)
    progress.finish()
    return written


# --- corrupt files for validation tests -------------------------------------------------------------------------------
def _choose_rows(rng: np.random.Generator, n: int, share: float = 0.01, cap: int = 1000) -> np.ndarray:
    m = min(n, max(1, min(cap, math.ceil(n * share))))
    return np.sort(rng.choice(n, size=m, replace=False))


def corrupt_file(src: Path, dst: Path, kind: str, seed: int = 0) -> Path:
    """Copy the REES46 CSV ``src`` to ``dst`` with one defect of ``kind`` (one of :data:`CORRUPTION_KINDS`).

    Rows are chosen with ``seed`` (about 1 % of data rows, at least one); the line terminator of ``src`` is kept.

    - ``missing_column``: one column (chosen by seed) removed from header and rows.
    - ``extra_column``: a 10th column ``coupon_code`` appended.
    - ``wrong_type``: text in an integer or price column (column chosen by seed) of the chosen rows.
    - ``negative_price``: chosen rows' price negated (``-35.79``; ``-1.00`` for a zero price).
    - ``unknown_event_type``: chosen rows' event_type = ``wishlist``.
    - ``unparseable_timestamp``: chosen rows' event_time = ``not a timestamp``.
    - ``future_timestamp``: chosen rows' event_time moved to the year 2099 (valid format).
    - ``empty_file``: zero bytes. ``header_only``: the header line alone.
    - ``truncated_last_line``: the last line cut inside its third field, with no line terminator.
    - ``wrong_delimiter``: ``;`` instead of ``,`` everywhere.
    - ``non_utf8``: chosen rows' brand holds Latin-1 bytes (``caf\\xe9``), invalid as UTF-8.
    - ``huge_field``: one row's brand is a 10 MiB string.
    - ``sql_injection_brand``: a *valid* file whose chosen rows' brand is :data:`SQL_INJECTION_TEXT`.
    - ``duplicated_rows``: 3 % of rows (at least 2) repeated right after themselves: duplicate ratio > 1 %.

    ``src`` needs at least one data row (except for ``empty_file``/``header_only``). Writes ``dst`` atomically
    and returns it. Raises ``ValueError`` for an unknown kind or an unusable ``src``."""
    if kind not in CORRUPTION_KINDS:
        raise ValueError(f"unknown corruption kind {kind!r}; choose from {', '.join(CORRUPTION_KINDS)}")
    src, dst = Path(src), Path(dst)
    raw = src.read_bytes()
    first_nl = raw.find(b"\n")
    term = "\r\n" if first_nl > 0 and raw[first_nl - 1 : first_nl] == b"\r" else "\n"
    text = raw.decode("utf-8")
    rows = list(csv.reader(io.StringIO(text, newline="")))
    if not rows or tuple(rows[0]) != REES46_COLUMNS:
        raise ValueError(f"{src}: not a REES46 CSV (header {rows[0] if rows else None})")
    header, body = rows[0], rows[1:]
    rng = np.random.default_rng(seed)

    def dump(hdr: list[str], data: Iterable[list[str]], delimiter: str = ",") -> bytes:
        buf = io.StringIO(newline="")
        w = csv.writer(buf, delimiter=delimiter, lineterminator=term, quoting=csv.QUOTE_MINIMAL)
        w.writerow(hdr)
        w.writerows(data)
        return buf.getvalue().encode("utf-8")

    if kind == "empty_file":
        out = b""
    elif kind == "header_only":
        out = (",".join(REES46_COLUMNS) + term).encode()
    else:
        if not body:
            raise ValueError(f"{src}: needs at least one data row for {kind!r}")
        n = len(body)
        col = {c: i for i, c in enumerate(header)}
        if kind == "missing_column":
            drop = int(rng.integers(len(header)))
            out = dump([h for i, h in enumerate(header) if i != drop], ([v for i, v in enumerate(r) if i != drop]
                                                                         for r in body))
        elif kind == "extra_column":
            codes = ["", "SALE10", "WELCOME", "BF2019"]
            out = dump(header + ["coupon_code"], (r + [codes[int(x)]] for r, x in zip(body, rng.integers(0, 4, n))))
        elif kind == "wrong_type":
            target = ("product_id", "category_id", "price", "user_id")[int(rng.integers(4))]
            for i in _choose_rows(rng, n):
                body[i][col[target]] = "twelve"
            out = dump(header, body)
        elif kind == "negative_price":
            for i in _choose_rows(rng, n):
                p = body[i][col["price"]]
                body[i][col["price"]] = "-" + p if float(p) > 0 else "-1.00"
            out = dump(header, body)
        elif kind == "unknown_event_type":
            for i in _choose_rows(rng, n):
                body[i][col["event_type"]] = "wishlist"
            out = dump(header, body)
        elif kind == "unparseable_timestamp":
            for i in _choose_rows(rng, n):
                body[i][col["event_time"]] = "not a timestamp"
            out = dump(header, body)
        elif kind == "future_timestamp":
            for i in _choose_rows(rng, n):
                body[i][col["event_time"]] = "2099" + body[i][col["event_time"]][4:]
            out = dump(header, body)
        elif kind == "truncated_last_line":
            full = dump(header, body)
            last_start = full.rstrip(term.encode()).rfind(term.encode()) + len(term)
            last = full[last_start:]
            cut = last.index(b",", last.index(b",") + 1) + 1  # keep two fields and part of the third
            out = full[:last_start] + last[: cut + max(1, (last.find(b",", cut) - cut) // 2)]
        elif kind == "wrong_delimiter":
            out = dump(header, body, delimiter=";")
        elif kind == "non_utf8":
            marker = "\x00NONUTF8\x00"
            for i in _choose_rows(rng, n):
                body[i][col["brand"]] = marker
            out = dump(header, body).replace(marker.encode(), "café".encode("latin-1"))
        elif kind == "huge_field":
            body[int(rng.integers(n))][col["brand"]] = "x" * HUGE_FIELD_BYTES
            out = dump(header, body)
        elif kind == "sql_injection_brand":
            for i in _choose_rows(rng, n):
                body[i][col["brand"]] = SQL_INJECTION_TEXT
            out = dump(header, body)
        elif kind == "duplicated_rows":
            dup = set(_choose_rows(rng, n, share=0.03).tolist())
            if len(dup) < 2 and n >= 2:
                dup = {0, n - 1}
            out_rows: list[list[str]] = []
            for i, r in enumerate(body):
                out_rows.append(r)
                if i in dup:
                    out_rows.append(list(r))
            if n == 1:
                out_rows.append(list(body[0]))
            out = dump(header, out_rows)
        else:  # pragma: no cover - every kind is handled above
            raise AssertionError(kind)
    dst.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(out, dst)
    return dst
