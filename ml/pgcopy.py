"""PostgreSQL binary COPY framing, and psycopg 3 connections from a SQLAlchemy engine: one home for both.

The format (``COPY ... (format binary)``, PostgreSQL docs "Binary Format"): a 19-byte header (the signature, an
int32 flags word 0 and an int32 header-extension length 0), then one tuple per row (an int16 field count, then per
field an int32 byte length, -1 for NULL, and the value in network byte order), then an int16 -1 trailer. A ``date``
is int32 days and a ``timestamptz`` int64 microseconds since 2000-01-01 (UTC), the PostgreSQL epoch. A one-dimensional
array (``array_send``) is: int32 ndim 1, int32 flags (1 if it holds NULLs), uint32 element type OID, int32 length,
int32 lower bound 1, then its elements framed like fields.

Only the generic framing lives here; the row layouts live with their tables (``ml.ingest``: raw.events,
``ml.score.encode``: scoring.scores and scoring.feature_samples). Both build whole blocks of rows with numpy
structured dtypes (big-endian fields), never row by row in Python.
"""

from __future__ import annotations

import datetime as dt
import struct
from typing import TYPE_CHECKING, Any

import numpy as np

from ml.db import libpq_url

if TYPE_CHECKING:
    import psycopg
    from sqlalchemy.engine import Engine

COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
COPY_TRAILER = struct.pack(">h", -1)
PG_EPOCH = dt.date(2000, 1, 1)
PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 UTC in microseconds since 1970-01-01
TEXT_OID = 25
FLOAT4_OID = 700
ARRAY_HEADER_BYTES = 20  # ndim, flags, element OID, length, lower bound: five int32 words


def pg_days(day: dt.date) -> int:
    """A ``date`` field's value: days since 2000-01-01."""
    return (day - PG_EPOCH).days


def len_prefixed(value: bytes) -> bytes:
    """``value`` framed as one field (or array element): its int32 length, then the bytes."""
    return struct.pack(">i", len(value)) + value


def array_header_dtype() -> list[tuple[str, str]]:
    """Structured-dtype fields of a one-dimensional array field's framing: the field length word, then the array
    header (ndim, flags, element OID, length, lower bound)."""
    return [("len", ">i4"), ("ndim", ">i4"), ("flags", ">i4"), ("oid", ">u4"), ("dim", ">i4"), ("lb", ">i4")]


def float4_array_dtype(n: int) -> list[tuple[Any, ...]]:
    """Structured-dtype fields of a ``real[]`` field of exactly ``n`` non-null elements (fill with
    :func:`put_float4_array`)."""
    return [*array_header_dtype(), ("el", [("l", ">i4"), ("v", ">f4")], (n,))]


def put_float4_array(rows: np.ndarray, values: np.ndarray) -> None:
    """Fill the :func:`float4_array_dtype` fields of ``rows`` (n,) with ``values`` (n, f), rounded to float32."""
    f = values.shape[1]
    rows["len"], rows["ndim"], rows["oid"], rows["dim"], rows["lb"] = ARRAY_HEADER_BYTES + 8 * f, 1, FLOAT4_OID, f, 1
    rows["el"]["l"] = 4
    rows["el"]["v"] = values.astype(np.float32)


def connect(engine: Engine, **kwargs: Any) -> psycopg.Connection:
    """A new psycopg 3 connection to the database of a SQLAlchemy ``engine`` (whose driver is psycopg2), for COPY.
    The caller closes it (``with connect(engine) as conn``); ``kwargs`` go to ``psycopg.connect``."""
    import psycopg

    return psycopg.connect(libpq_url(engine.url.render_as_string(hide_password=False)), **kwargs)
