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

Layout: :mod:`.catalog` (category tree, :class:`GeneratorConfig`, products), :mod:`.events` (users, sessions,
visits, decisions: :func:`generate_events`), :mod:`.files` (REES46 CSV / Parquet text, atomic daily files),
:mod:`.corrupt` (one-defect copies for validation tests), :mod:`._vectorised` (numpy / Arrow primitives). Import
from this package; the modules are its implementation.
"""

from __future__ import annotations

from ml.dev.generate.catalog import BEHAVIOURS, CATEGORY_TREE, Catalog, GeneratorConfig, LeafCategory, build_catalog
from ml.dev.generate.corrupt import CORRUPTION_KINDS, HUGE_FIELD_BYTES, SQL_INJECTION_TEXT, corrupt_file
from ml.dev.generate.events import generate_events
from ml.dev.generate.files import FILE_FORMATS, format_rees46_csv, read_rees46_csv, write_daily_files
from ml.schema import EVENT_TYPES, REES46_COLUMNS

__all__ = [
    "BEHAVIOURS",
    "CATEGORY_TREE",
    "CORRUPTION_KINDS",
    "EVENT_TYPES",
    "FILE_FORMATS",
    "HUGE_FIELD_BYTES",
    "REES46_COLUMNS",
    "SQL_INJECTION_TEXT",
    "Catalog",
    "GeneratorConfig",
    "LeafCategory",
    "build_catalog",
    "corrupt_file",
    "format_rees46_csv",
    "generate_events",
    "read_rees46_csv",
    "write_daily_files",
]
