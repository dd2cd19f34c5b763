"""Recommendation tiers, reason codes and top contributions for scored pairs: explanations drawn from the data.

One row is one scored (user, product) pair. Inputs are aligned matrices over the model's features (in the model's
``feature_names`` order): the feature *values* ``X`` (n, f) and their exact SHAP *contributions* ``phi`` (n, f) in
calibrated log-odds space, plus the probability (n,).

**Tiers** come from probability bands (``settings.tier_bands``: name -> lower bound; below the lowest band a pair is
``cold``).

**Reason codes** (the list :data:`REASON_CODES` is the single source: migration 0041 seeds the dimension table
``scoring.reason_codes`` from it, and a test keeps the two equal). A code is given to a row only when both hold:

1. *grounded in the model*: one of the code's driver features is among the row's ``top_features`` largest
   contributions and that contribution is positive (it pushed this score up);
2. *supported by the data*: the row's feature values pass the code's condition (e.g. a cart within 72 hours), and
   the sentence states only those values (counts, percentages and times are read from the features, floored or
   rounded as documented per code; windows are the feature windows: ``lookback_days``, 7 days, 24 hours, UTC).

Codes of one *group* say related things (e.g. two ways of describing views), so a row gets at most one code per group.
A row gets at most ``max_reasons`` codes, strongest first (the largest driver contribution; ties in list order).
Everything is vectorised with numpy; texts are rendered once per distinct parameter tuple (a few hundred per night),
not once per row.

**Top contributions**: the ``top_k`` features with the largest absolute contribution (zeros dropped), as
(feature, value, shap) — the jsonb ``top_contributions`` of ``scoring.scores``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from numba import njit, prange

# --- thresholds (documented in docs/scoring.md; changing one changes what the texts claim) --------------------------
CART_RECENT_HOURS = 72.0  # a cart "recent" when at most this many hours before the score date's midnight (UTC)
REPEAT_VIEWS_7D = 3  # views in the 7 days before the score date
MULTI_SESSION = 2  # distinct sessions with the product
PRICE_BELOW_MEDIAN = 0.95  # price / category median at or below this (5% or more below)
PRICE_DROP = -0.02  # relative change from the first to the last viewed price at or below this
EVENING_SHARE = 0.5  # share of the user's events between 18:00 and midnight UTC
WEEKEND_SHARE = 0.5  # share of the user's events on Saturday/Sunday (UTC); a uniform week gives 2/7
PRODUCT_VIEWERS = 20  # distinct users who viewed the product in the lookback
PRODUCT_PURCHASES = 3  # purchase events of the product in the lookback
BRAND_SHARE = 0.02  # share of all store events that fall on the product's brand
USER_PURCHASES = 2  # purchase events of the user in the lookback
CART_CONVERTER_SHARE = 0.5  # share of the user's carted products that they bought
CART_CONVERTER_CARTS = 2  # ... counted only when the user carted at least this many times
RETURNING_DAYS = 3  # distinct active days of the user in the lookback
ACTIVE_HOURS = 24.0  # the user's last event at most this many hours before the score date
POSITIVE_EPS = 1e-9  # a contribution must exceed this (log-odds) to count as "pushing the score up"

Values = Mapping[str, np.ndarray]
"""Feature name -> (n,) float64 values of the rows being rendered."""


def _nan_false(mask: np.ndarray) -> np.ndarray:
    return np.asarray(mask, dtype=bool)


@dataclass(frozen=True)
class Param:
    """One template placeholder: ``value(V)`` gives an integer per row (the key of the rendered text), ``kind`` how
    the integer is written (``int``, ``times`` "once/twice/3 times", ``hours_ago`` "5 hours"/"3 days", ``pct``)."""

    name: str
    value: Callable[[Values], np.ndarray]
    kind: str = "int"


@dataclass(frozen=True)
class ReasonCode:
    """One reason code. ``feature`` is the primary driver (the one listed in ``scoring.reason_codes.feature``);
    ``drivers`` every feature whose top positive contribution may trigger it; ``requires`` every feature the
    condition and the text read (a code is inactive for a model lacking any of them); ``template`` uses ``{name}``
    placeholders from ``params`` plus ``{window_days}`` (the feature lookback)."""

    code: str
    group: str
    description: str
    template: str
    drivers: tuple[str, ...]
    requires: tuple[str, ...]
    condition: Callable[[Values], np.ndarray]
    params: tuple[Param, ...] = ()

    @property
    def feature(self) -> str:
        return self.drivers[0]


def _floor_int(x: np.ndarray) -> np.ndarray:
    return np.floor(np.nan_to_num(x, nan=0.0)).astype(np.int64)


def _round_int(x: np.ndarray) -> np.ndarray:
    return np.rint(np.nan_to_num(x, nan=0.0)).astype(np.int64)


def _pct(x: np.ndarray) -> np.ndarray:
    return _round_int(100.0 * x)


REASON_CODES: tuple[ReasonCode, ...] = (
    ReasonCode(
        "CART_RECENT", "cart",
        "Added the product to the cart recently (last cart within 72 hours).",
        "added to cart {carts} in the last {window_days} days, most recently {ago} ago",
        drivers=("pair_hours_since_last_cart", "pair_carts", "pair_cart_without_purchase"),
        requires=("pair_carts", "pair_hours_since_last_cart"),
        condition=lambda v: _nan_false((v["pair_carts"] >= 1) & (v["pair_hours_since_last_cart"] <= CART_RECENT_HOURS)),
        params=(Param("carts", lambda v: _round_int(v["pair_carts"]), "times"),
                Param("ago", lambda v: _floor_int(v["pair_hours_since_last_cart"]), "hours_ago")),
    ),
    ReasonCode(
        "CART_ABANDONED", "cart",
        "Put the product in the cart more than 72 hours ago and has not bought it since.",
        "put it in the cart {ago} ago and has not bought it since",
        drivers=("pair_cart_without_purchase", "pair_hours_since_last_cart", "pair_carts"),
        requires=("pair_cart_without_purchase", "pair_hours_since_last_cart"),
        condition=lambda v: _nan_false((v["pair_cart_without_purchase"] == 1)
                                       & (v["pair_hours_since_last_cart"] > CART_RECENT_HOURS)),
        params=(Param("ago", lambda v: _floor_int(v["pair_hours_since_last_cart"]), "hours_ago"),),
    ),
    ReasonCode(
        "VIEWED_TODAY", "views",
        "Viewed the product in the 24 hours before the score date.",
        "viewed it {views} in the last 24 hours",
        drivers=("pair_views_24h", "pair_hours_since_last_view"),
        requires=("pair_views_24h",),
        condition=lambda v: _nan_false(v["pair_views_24h"] >= 1),
        params=(Param("views", lambda v: _round_int(v["pair_views_24h"]), "times"),),
    ),
    ReasonCode(
        "REPEAT_VIEWS", "views",
        "Viewed the product at least 3 times in the 7 days before the score date.",
        "viewed it {views} in the last 7 days",
        drivers=("pair_views_7d", "pair_views", "pair_hours_since_first_view"),
        requires=("pair_views_7d",),
        condition=lambda v: _nan_false(v["pair_views_7d"] >= REPEAT_VIEWS_7D),
        params=(Param("views", lambda v: _round_int(v["pair_views_7d"]), "times"),),
    ),
    ReasonCode(
        "MULTI_SESSION", "views",
        "Came back to the product in at least 2 separate sessions.",
        "came back to it in {sessions} separate sessions",
        drivers=("pair_sessions",),
        requires=("pair_sessions",),
        condition=lambda v: _nan_false(v["pair_sessions"] >= MULTI_SESSION),
        params=(Param("sessions", lambda v: _round_int(v["pair_sessions"])),),
    ),
    ReasonCode(
        "PRICE_BELOW_CATEGORY", "price",
        "The product's price is at least 5% below the median price of its category.",
        "price {pct}% below the category median",
        drivers=("product_price_vs_category_median", "product_price"),
        requires=("product_price_vs_category_median",),
        condition=lambda v: _nan_false(v["product_price_vs_category_median"] <= PRICE_BELOW_MEDIAN),
        params=(Param("pct", lambda v: _pct(1.0 - v["product_price_vs_category_median"]), "pct"),),
    ),
    ReasonCode(
        "PRICE_DROP", "price",
        "The price fell by at least 2% between the user's first and last view of the product.",
        "price dropped {pct}% since they first viewed it",
        drivers=("pair_price_change",),
        requires=("pair_price_change",),
        condition=lambda v: _nan_false(v["pair_price_change"] <= PRICE_DROP),
        params=(Param("pct", lambda v: _pct(-v["pair_price_change"]), "pct"),),
    ),
    ReasonCode(
        "EVENING_SHOPPER", "timing",
        "At least half of the user's activity falls between 18:00 and midnight UTC.",
        "evening shopper: {pct}% of their activity is between 18:00 and midnight UTC",
        drivers=("user_evening_share", "last_hour"),
        requires=("user_evening_share",),
        condition=lambda v: _nan_false(v["user_evening_share"] >= EVENING_SHARE),
        params=(Param("pct", lambda v: _pct(v["user_evening_share"]), "pct"),),
    ),
    ReasonCode(
        "WEEKEND_SHOPPER", "timing",
        "At least half of the user's activity falls on Saturdays and Sundays (UTC).",
        "weekend shopper: {pct}% of their activity is on Saturdays and Sundays",
        drivers=("user_weekend_share", "last_is_weekend", "last_day_of_week"),
        requires=("user_weekend_share",),
        condition=lambda v: _nan_false(v["user_weekend_share"] >= WEEKEND_SHARE),
        params=(Param("pct", lambda v: _pct(v["user_weekend_share"]), "pct"),),
    ),
    ReasonCode(
        "PRODUCT_POPULAR", "product",
        "At least 20 shoppers viewed the product in the lookback window.",
        "viewed by {viewers} shoppers in the last {window_days} days",
        drivers=("product_viewers", "product_views"),
        requires=("product_viewers",),
        condition=lambda v: _nan_false(v["product_viewers"] >= PRODUCT_VIEWERS),
        params=(Param("viewers", lambda v: _round_int(v["product_viewers"])),),
    ),
    ReasonCode(
        "BESTSELLER", "product",
        "The product was bought at least 3 times in the lookback window.",
        "bought {purchases} by shoppers in the last {window_days} days",
        drivers=("product_purchases", "product_view_to_purchase", "product_carts"),
        requires=("product_purchases",),
        condition=lambda v: _nan_false(v["product_purchases"] >= PRODUCT_PURCHASES),
        params=(Param("purchases", lambda v: _round_int(v["product_purchases"]), "times"),),
    ),
    ReasonCode(
        "BRAND_POPULAR", "brand",
        "The product's brand draws at least 2% of all store activity (branded products only).",
        "its brand draws {pct}% of all store activity in the last {window_days} days",
        drivers=("brand_popularity", "brand_purchase_rate"),
        # product_has_brand tells branded products from the "unbranded" level that brand_popularity also encodes;
        # without it the code stays inactive rather than call "no brand" a popular brand
        requires=("brand_popularity", "product_has_brand"),
        condition=lambda v: _nan_false((v["brand_popularity"] >= BRAND_SHARE) & (v["product_has_brand"] == 1)),
        params=(Param("pct", lambda v: _pct(v["brand_popularity"]), "pct"),),
    ),
    ReasonCode(
        "FREQUENT_BUYER", "buyer",
        "The user made at least 2 purchases in the lookback window.",
        "made {purchases} purchases in the last {window_days} days",
        drivers=("user_purchases", "pair_purchases"),
        requires=("user_purchases",),
        condition=lambda v: _nan_false(v["user_purchases"] >= USER_PURCHASES),
        params=(Param("purchases", lambda v: _round_int(v["user_purchases"])),),
    ),
    ReasonCode(
        "CART_CONVERTER", "buyer",
        "The user bought at least half of the products they put in the cart (2 or more carts).",
        "buys {pct}% of the products they put in the cart",
        drivers=("user_cart_to_purchase", "user_carts"),
        requires=("user_cart_to_purchase", "user_carts"),
        condition=lambda v: _nan_false((v["user_cart_to_purchase"] >= CART_CONVERTER_SHARE)
                                       & (v["user_carts"] >= CART_CONVERTER_CARTS)),
        params=(Param("pct", lambda v: _pct(v["user_cart_to_purchase"]), "pct"),),
    ),
    ReasonCode(
        "RETURNING_VISITOR", "engagement",
        "The user was active on at least 3 different days in the lookback window.",
        "active on {days} different days in the last {window_days} days",
        drivers=("user_days_active", "user_sessions", "user_events"),
        requires=("user_days_active",),
        condition=lambda v: _nan_false(v["user_days_active"] >= RETURNING_DAYS),
        params=(Param("days", lambda v: _round_int(v["user_days_active"])),),
    ),
    ReasonCode(
        "ACTIVE_RECENTLY", "engagement",
        "The user's last event is at most 24 hours before the score date.",
        "last active {ago} ago",
        drivers=("user_hours_since_last_event",),
        requires=("user_hours_since_last_event",),
        condition=lambda v: _nan_false(v["user_hours_since_last_event"] <= ACTIVE_HOURS),
        params=(Param("ago", lambda v: _floor_int(v["user_hours_since_last_event"]), "hours_ago"),),
    ),
)

CODES: tuple[str, ...] = tuple(rc.code for rc in REASON_CODES)
_BY_CODE: dict[str, ReasonCode] = {rc.code: rc for rc in REASON_CODES}


def reason_code_rows() -> list[dict[str, Any]]:
    """The rows of ``scoring.reason_codes`` as the module defines them (the migration must match; a test checks)."""
    return [
        {"code": rc.code, "reason_group": rc.group, "description": rc.description, "template": rc.template,
         "feature": rc.feature, "drivers": list(rc.drivers), "sort_order": i + 1}
        for i, rc in enumerate(REASON_CODES)
    ]


# --- text rendering -------------------------------------------------------------------------------------------------
def _times(n: int) -> str:
    return {1: "once", 2: "twice"}.get(n, f"{n} times")


def _hours_ago(h: int) -> str:
    if h < 1:
        return "less than an hour"
    if h < 48:
        return f"{h} hour" + ("s" if h != 1 else "")
    return f"{h // 24} days"


_FORMATTERS: dict[str, Callable[[int], str]] = {
    "int": str,
    "times": _times,
    "hours_ago": _hours_ago,
    "pct": str,
}


def render(code: ReasonCode, values: tuple[int, ...], window_days: int) -> str:
    """The text of ``code`` for one tuple of integer parameter values (in ``code.params`` order)."""
    return _render(code.code, values, window_days)


@lru_cache(maxsize=1 << 16)
def _render(code_name: str, values: tuple[int, ...], window_days: int) -> str:
    code = _BY_CODE[code_name]
    words = {p.name: _FORMATTERS[p.kind](int(x)) for p, x in zip(code.params, values, strict=True)}
    text = code.template.format(window_days=window_days, **words)
    return text[:1].upper() + text[1:]


# --- tiers ----------------------------------------------------------------------------------------------------------
COLD = "cold"


def tier_names(bands: Mapping[str, float]) -> list[str]:
    """Tier names from the lowest band up: ``["cold", <lowest band>, ..., <highest band>]``."""
    return [COLD] + [name for name, _ in sorted(bands.items(), key=lambda kv: kv[1])]


def assign_tiers(probability: np.ndarray, bands: Mapping[str, float]) -> np.ndarray:
    """Index into :func:`tier_names` per row: the highest band whose lower bound is <= p (0 = cold). Bands must
    have distinct bounds in (0, 1]."""
    bounds = sorted(bands.values())
    if len(set(bounds)) != len(bounds) or any(not 0 < b <= 1 for b in bounds) or COLD in bands:
        raise ValueError(f"tier bands need distinct lower bounds in (0, 1] and no band named 'cold': {dict(bands)}")
    return np.searchsorted(np.asarray(bounds), np.asarray(probability, dtype=np.float64), side="right").astype(np.int8)


# --- the result -----------------------------------------------------------------------------------------------------
@dataclass
class Insights:
    """Insights of n rows, stored as small dictionaries plus integer matrices (the COPY encoder reads these).

    ``tier`` (n,) int8 into ``tiers``; ``reason_code`` (n, R) int16 into ``codes`` (-1: none; filled from the left,
    strongest first); ``reason_text`` (n, R) int32 into ``texts`` (-1 where no code); ``top_feature`` (n, k) int32
    into ``feature_names`` (-1: fewer than k non-zero contributions); ``top_shap`` / ``top_value`` (n, k) float64
    (contribution and feature value; NaN where ``top_feature`` is -1, and a feature value may itself be NaN).
    """

    feature_names: list[str]
    tiers: list[str]
    tier: np.ndarray
    codes: list[str]
    reason_code: np.ndarray
    texts: list[str]
    reason_text: np.ndarray
    top_feature: np.ndarray
    top_shap: np.ndarray
    top_value: np.ndarray
    stats: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.tier)

    def row(self, i: int) -> dict[str, Any]:
        """Row ``i`` as plain Python: tier, reason_codes, reason_texts, top_contributions (list of dicts)."""
        codes = [self.codes[c] for c in self.reason_code[i] if c >= 0]
        texts = [self.texts[t] for t in self.reason_text[i] if t >= 0]
        top = []
        for j, s, v in zip(self.top_feature[i], self.top_shap[i], self.top_value[i]):
            if j < 0:
                continue
            top.append({"feature": self.feature_names[j], "value": None if not np.isfinite(v) else float(v),
                        "shap": float(s)})
        return {"tier": self.tiers[self.tier[i]], "reason_codes": codes, "reason_texts": texts,
                "top_contributions": top}


def active_codes(feature_names: Sequence[str]) -> list[ReasonCode]:
    """The codes a model with these features can give (all required features present, at least one driver)."""
    names = set(feature_names)
    return [rc for rc in REASON_CODES if set(rc.requires) <= names and any(d in names for d in rc.drivers)]


# --- kernels -------------------------------------------------------------------------------------------------------
# One pass per row over its f contributions, in blocks of rows spread over threads (numba prange). Small insertion
# lists keep the k largest |phi| and the m largest positive phi; ties always go to the lower feature / code index, so
# the output is deterministic and independent of blocking and threads.
_BLOCK = 2048


@njit(cache=True, parallel=True)
def _select_kernel(phi, X, k, m, eps, drv_ptr, drv_idx, fired, group, n_groups, r):  # noqa: ANN001, ANN202
    n, f = phi.shape
    n_codes = fired.shape[1]
    top_idx = np.full((n, k), -1, dtype=np.int32)
    top_shap = np.full((n, k), np.nan)
    top_val = np.full((n, k), np.nan)
    reason = np.full((n, r), -1, dtype=np.int16)
    n_blocks = (n + _BLOCK - 1) // _BLOCK
    for b in prange(n_blocks):
        ki = np.empty(k + 1, dtype=np.int64)  # slot k is scratch: an insertion into a full list shifts into it
        kv = np.empty(k + 1)
        mi = np.empty(m + 1, dtype=np.int64)
        mv = np.empty(m + 1)
        in_top = np.zeros(f, dtype=np.bool_)
        strength = np.empty(n_codes)
        best_in_group = np.empty(n_groups, dtype=np.int64)
        for i in range(b * _BLOCK, min(n, (b + 1) * _BLOCK)):
            kc = 0
            k_thr = 0.0  # admission thresholds: strictly above (ties keep the lower feature index)
            mc = 0
            m_thr = eps
            for j in range(f):
                v = phi[i, j]
                a = abs(v)
                if a > k_thr and k > 0:
                    p = kc
                    while p > 0 and kv[p - 1] < a:
                        kv[p] = kv[p - 1]
                        ki[p] = ki[p - 1]
                        p -= 1
                    kv[p] = a
                    ki[p] = j
                    if kc < k:
                        kc += 1
                    if kc == k:
                        k_thr = kv[k - 1]
                if v > m_thr and m > 0:
                    p = mc
                    while p > 0 and mv[p - 1] < v:
                        mv[p] = mv[p - 1]
                        mi[p] = mi[p - 1]
                        p -= 1
                    mv[p] = v
                    mi[p] = j
                    if mc < m:
                        mc += 1
                    if mc == m:
                        m_thr = mv[m - 1]
            for q in range(kc):
                top_idx[i, q] = ki[q]
                top_shap[i, q] = phi[i, ki[q]]
                top_val[i, q] = X[i, ki[q]]
            if r == 0:
                continue
            for q in range(mc):
                in_top[mi[q]] = True
            # strength of each fired code: its largest driver contribution among the top positive features
            for c in range(n_codes):
                s = -np.inf
                if fired[i, c]:
                    for t in range(drv_ptr[c], drv_ptr[c + 1]):
                        j = drv_idx[t]
                        if in_top[j] and phi[i, j] > s:
                            s = phi[i, j]
                strength[c] = s
            for q in range(mc):
                in_top[mi[q]] = False
            # one code per group: the strongest, the first in list order on ties
            for g in range(n_groups):
                best_in_group[g] = -1
            for c in range(n_codes):
                if strength[c] > -np.inf:
                    g = group[c]
                    if best_in_group[g] < 0 or strength[c] > strength[best_in_group[g]]:
                        best_in_group[g] = c
            # the r strongest groups' codes, strongest first (ties: lower code index)
            for q in range(r):
                bc = -1
                for g in range(n_groups):
                    c = best_in_group[g]
                    if c >= 0 and (bc < 0 or strength[c] > strength[bc] or (strength[c] == strength[bc] and c < bc)):
                        bc = c
                if bc < 0:
                    break
                reason[i, q] = bc
                best_in_group[group[bc]] = -1
    return top_idx, top_shap, top_val, reason


def top_contributions(phi: np.ndarray, X: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``k`` largest |contributions| per row, largest first (ties: lower feature index first): (feature index
    (n, k) int32, -1 where fewer than k contributions are non-zero; contribution (n, k); feature value (n, k), NaN
    in the empty slots)."""
    phi = np.ascontiguousarray(phi, dtype=np.float64)
    X = np.ascontiguousarray(X, dtype=np.float64)
    n, f = phi.shape
    k = max(0, min(k, f))
    top_idx, top_shap, top_val, _ = _select_kernel(
        phi, X, k, 0, POSITIVE_EPS, np.zeros(1, np.int64), np.zeros(0, np.int64), np.zeros((n, 0), np.bool_),
        np.zeros(0, np.int64), 0, 0)
    return top_idx, top_shap, top_val


def _pack_keys(columns: list[np.ndarray]) -> np.ndarray:
    """One int64 key per row from up to two small non-negative integer columns (clipped to 31 bits)."""
    if len(columns) > 2:
        raise ValueError("a reason code template takes at most two parameters")
    keys = np.zeros(len(columns[0]) if columns else 0, dtype=np.int64)
    for c in columns:
        keys = (keys << 31) | np.clip(c, 0, 2**31 - 1).astype(np.int64)
    return keys


def derive_insights(
    X: np.ndarray,
    phi: np.ndarray,
    probability: np.ndarray,
    feature_names: Sequence[str],
    *,
    bands: Mapping[str, float],
    top_k: int = 5,
    top_features: int = 5,
    max_reasons: int = 3,
    window_days: int = 60,
) -> Insights:
    """Tiers, reason codes (with texts) and top contributions of n rows. See the module docstring for the rules.

    ``X`` and ``phi``: (n, f) float64 in ``feature_names`` order; ``probability``: (n,). ``top_k``: contributions
    kept per row; ``top_features``: how many of the row's largest positive contributions may trigger a code;
    ``max_reasons``: codes per row; ``window_days``: the feature lookback named in texts. Raises ValueError on
    mismatched shapes or bad tier bands.
    """
    import pandas as pd

    X = np.ascontiguousarray(X, dtype=np.float64)
    phi = np.ascontiguousarray(phi, dtype=np.float64)
    n, f = phi.shape
    if X.shape != (n, f) or len(feature_names) != f or len(probability) != n:
        raise ValueError(f"shapes differ: X {X.shape}, phi {phi.shape}, probability {len(probability)}, "
                         f"{len(feature_names)} feature names")
    names = list(feature_names)
    col = {name: j for j, name in enumerate(names)}
    tiers = tier_names(bands)
    tier = assign_tiers(probability, bands)

    codes = active_codes(names)
    code_names = [rc.code for rc in codes]
    values: dict[str, np.ndarray] = {name: X[:, j] for name, j in col.items()}
    fired = np.zeros((n, len(codes)), dtype=np.bool_)
    drv_ptr = [0]
    drv_idx: list[int] = []
    group_ids: dict[str, int] = {}
    group = np.zeros(len(codes), dtype=np.int64)
    for c, rc in enumerate(codes):
        fired[:, c] = rc.condition(values)
        drv_idx.extend(col[d] for d in rc.drivers if d in col)
        drv_ptr.append(len(drv_idx))
        group[c] = group_ids.setdefault(rc.group, len(group_ids))
    k = max(0, min(top_k, f))
    r = max(0, min(max_reasons, len(codes)))
    top_feature, top_shap, top_value, reason_code = _select_kernel(
        phi, X, k, max(0, min(top_features, f)), POSITIVE_EPS, np.asarray(drv_ptr, np.int64),
        np.asarray(drv_idx, np.int64), fired, group, len(group_ids), r)

    # render each code's texts once per distinct parameter tuple (and cache texts across calls)
    texts: list[str] = []
    reason_text = np.full(reason_code.shape, -1, dtype=np.int32)
    flat = reason_code.reshape(-1)
    order = np.argsort(flat, kind="stable")  # cells grouped by code, row-major within a code
    bounds = np.searchsorted(flat[order], np.arange(-1, len(codes) + 1))
    stats: dict[str, int] = {}
    for c, rc in enumerate(codes):
        cells = order[bounds[c + 1] : bounds[c + 2]]
        stats[rc.code] = len(cells)
        if not len(cells):
            continue
        rows = cells // max(r, 1)
        sub_values = {name: values[name][rows] for name in rc.requires}
        params = [p.value(sub_values) for p in rc.params]
        inverse, uniq_keys = pd.factorize(_pack_keys(params))
        first = np.zeros(len(uniq_keys), dtype=np.int64)
        first[inverse[::-1]] = np.arange(len(inverse))[::-1]  # a row holding each distinct key
        offset = len(texts)
        texts.extend(render(rc, tuple(int(p[i]) for p in params), window_days) for i in first)
        reason_text.reshape(-1)[cells] = offset + inverse
    return Insights(
        feature_names=names, tiers=tiers, tier=tier, codes=code_names, reason_code=reason_code, texts=texts,
        reason_text=reason_text, top_feature=top_feature, top_shap=top_shap, top_value=top_value, stats=stats,
    )
