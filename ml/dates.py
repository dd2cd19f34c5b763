"""Date coercion at the boundary: one place where CLI arguments, DAG params and Airflow's logical dates become a UTC
``datetime.date`` (or an aware UTC ``datetime``). Stages take ``dt.date`` and never parse strings themselves.

Rules: an aware datetime is converted to UTC first (``2026-11-20T23:30-05:00`` is 2026-11-21 UTC); a naive datetime
is UTC; a string is ISO 8601 (``YYYY-MM-DD`` or a full timestamp, ``Z`` allowed). Anything else raises
:class:`ml.errors.ConfigError` naming the value, never a raw ``ValueError``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from ml.errors import ConfigError


def utc_datetime(value: Any, *, what: str = "date") -> dt.datetime:
    """An aware UTC datetime from a datetime (naive means UTC), a date (its midnight UTC), a pandas/pendulum
    timestamp or an ISO-8601 string. ``what`` names the argument in the error message."""
    if hasattr(value, "to_pydatetime"):  # pandas.Timestamp
        value = value.to_pydatetime()
    if isinstance(value, str):
        text = value.strip()
        try:
            value = dt.datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
        except ValueError as e:
            raise ConfigError(f"{what} {value!r} is not an ISO date (YYYY-MM-DD) or timestamp") from e
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
    raise ConfigError(f"{what} {value!r} is not a date: expected YYYY-MM-DD, a date or a datetime")


def utc_date(value: Any, *, what: str = "date") -> dt.date:
    """The UTC calendar date of ``value`` (see :func:`utc_datetime` for what is accepted)."""
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return value
    return utc_datetime(value, what=what).date()


def midnight_utc(day: dt.date) -> dt.datetime:
    """``day`` 00:00 UTC: the as_of of a score date (features use events strictly before it)."""
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
