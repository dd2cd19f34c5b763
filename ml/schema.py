"""The REES46 input contract, defined once (see ../shared/DESIGN.md, "Input contract").

One row of an event file is one shopping event: ``event_time`` (UTC, ``YYYY-MM-DD HH:MM:SS UTC``), ``event_type``,
``product_id``, ``category_id`` (int64 > 0), ``category_code`` and ``brand`` (nullable text), ``price`` (>= 0),
``user_id`` (int64 > 0), ``user_session`` (uuid text, nullable).
"""

from __future__ import annotations

REES46_COLUMNS: tuple[str, ...] = (
    "event_time",
    "event_type",
    "product_id",
    "category_id",
    "category_code",
    "brand",
    "price",
    "user_id",
    "user_session",
)
EVENT_TYPES: tuple[str, ...] = ("view", "cart", "remove_from_cart", "purchase")
