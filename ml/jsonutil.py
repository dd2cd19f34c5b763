"""JSON coercion for jsonb columns, XCom and reports: one behaviour everywhere.

``to_jsonable`` turns numpy scalars and arrays into Python numbers and lists, NaN and ±inf into ``null`` (jsonb has no
NaN), datetimes, dates and pandas timestamps into ISO-8601 strings, paths and anything else into ``str``, dict keys
into strings and tuples/sets into lists. ``max_str`` optionally shortens long strings (sample rows in reports).
"""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import Any


def to_jsonable(value: Any, *, max_str: int | None = None) -> Any:
    """``value`` made of dict/list/str/int/float/bool/None only (see the module docstring)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        if max_str is not None and len(value) > max_str:
            return value[:max_str] + f"... ({len(value):,} chars)"
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): to_jsonable(v, max_str=max_str) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v, max_str=max_str) for v in value]
    if hasattr(value, "isoformat") and hasattr(value, "to_pydatetime"):  # pandas.Timestamp, before datetime: NaT is one
        return None if value != value else value.isoformat()  # NaT != NaT
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return to_jsonable(value.tolist(), max_str=max_str)
    return str(value)


def dumps(value: Any, **kwargs: Any) -> str:
    """``json.dumps(to_jsonable(value))``: never raises on numpy, NaN, dates or paths."""
    return json.dumps(to_jsonable(value), **kwargs)
