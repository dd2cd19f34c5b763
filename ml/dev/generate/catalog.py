"""The shop the synthetic events happen in: the category tree, the dataset's knobs (:class:`GeneratorConfig`),
the product catalogue and which products show an empty ``category_code`` or ``brand``.

The catalogue depends only on ``n_products`` and ``seed`` (not on days or users). Prices are in the shop's currency;
ids are int64 (19-digit category ids, 7-8 digit product ids).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np

from ml.dev.generate._vectorised import _unique_ints


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

    uplift_experiment: str | None = None
    """A/B uplift knob (issue 14): the experiment id whose assignment hash (ml.experiments) picks the uplifted users."""
    uplift_buckets: tuple[int, int] = (5000, 10000)
    """The uplifted arm's assignment buckets [from, to) (default: the second arm of a 50/50 experiment)."""
    uplift_from: date | None = None
    """From this day (UTC) the uplifted users' sessions convert better; None: the whole period."""
    uplift_factor: float = 1.0
    """Odds multiplier on carting and buying in the uplifted users' sessions (1.0: no uplift)."""

    def __post_init__(self) -> None:
        if self.uplift_factor <= 0:
            raise ValueError(f"uplift_factor must be > 0, got {self.uplift_factor}")
        if not 0 <= self.uplift_buckets[0] < self.uplift_buckets[1] <= 10_000:
            raise ValueError(f"uplift_buckets must be 0 <= from < to <= 10000, got {self.uplift_buckets}")
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


# --- the catalogue ---------------------------------------------------------------------------------------------------
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
