"""The behavioural model: users, sessions, product visits, funnel decisions, follow-up purchases and drift, turned
into one frame of REES46 events by :func:`generate_events`.

One row of the frame is one REES46 event (``view``, ``cart``, ``remove_from_cart`` or ``purchase``) of one user on
one product, in the exact REES46 schema (:data:`ml.schema.REES46_COLUMNS`). Times are UTC, prices are in the shop's
currency with two decimals, ids are int64. Every draw has its own seeded ``numpy.random.Generator`` stream, so a
config maps to the same frame on every run.
"""

from __future__ import annotations

import logging
import time
import zlib
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from ml.dev.generate._vectorised import (
    _DAY_S,
    _arange_within,
    _categorical,
    _first_occurrences,
    _hash_uniform,
    _sample_grouped,
    _sample_rows,
    _segment_starts,
    _sigmoid,
    _stable_argsort,
    _unique_ints,
    _uuid4_index,
)
from ml.dev.generate.catalog import (
    _TOP_BEHAVIOUR,
    BEHAVIOURS,
    CATEGORY_TREE,
    GeneratorConfig,
    _calibrate_nulls,
    build_catalog,
)
from ml.schema import EVENT_TYPES, REES46_COLUMNS

log = logging.getLogger(__name__)

_VIEW, _CART, _REMOVE, _PURCHASE = range(4)

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


def _uplifted_sessions(config: GeneratorConfig, user_id: np.ndarray, s_user: np.ndarray,
                       s_day: np.ndarray) -> np.ndarray:
    """Sessions of users in the uplifted arm (the experiment's assignment hash, as ml.experiments computes it) on
    or after ``uplift_from``."""
    from ml.experiments import assignment_buckets

    lo, hi = config.uplift_buckets
    bucket = assignment_buckets(str(config.uplift_experiment), user_id.tolist())
    in_arm = (bucket >= lo) & (bucket < hi)
    first_day = 0 if config.uplift_from is None else (config.uplift_from - config.start).days
    return in_arm[s_user] & (s_day >= first_day)


def _no_events() -> pd.DataFrame:
    """An empty frame with :func:`generate_events`' columns and dtypes."""
    def empty_categorical() -> pd.Categorical:
        return pd.Categorical([], categories=pd.Index([], dtype="str"))

    return pd.DataFrame(
        {
            "event_time": pd.DatetimeIndex([], dtype="datetime64[us, UTC]"),
            "event_type": pd.Categorical([], categories=pd.Index(EVENT_TYPES, dtype="str")),
            "product_id": np.zeros(0, np.int64),
            "category_id": np.zeros(0, np.int64),
            "category_code": empty_categorical(),
            "brand": empty_categorical(),
            "price": np.zeros(0, np.float64),
            "user_id": np.zeros(0, np.int64),
            "user_session": empty_categorical(),
        },
        columns=list(REES46_COLUMNS),
    )


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
    if n_sess == 0:  # a tiny config (e.g. 12 users for one day) can draw no session at all: no events
        log.info("generate: no sessions for %s users over %s days: no events", f"{U:,}", D)
        return _no_events()
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
    if config.uplift_experiment and config.uplift_factor != 1.0:  # the A/B knob: one arm's users convert better
        conv = conv + np.where(_uplifted_sessions(config, user_id, s_user, s_day)[sl_sess],
                               np.log(config.uplift_factor), 0.0)
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
