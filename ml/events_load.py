"""Writing typed REES46 events into ``raw.events`` and the feature rollups, in one transaction per file.

:func:`load_events_table` is the one loader (ingest, ``load_events_frame``, the benchmarks). Per UTC day of the
file, inside the caller's single transaction:

- a day whose ``raw.events`` partition does not exist yet is loaded into a plain, index-free table
  (``raw.create_day_table``, migration 0182) that is attached as the day's partition at the end of the transaction;
  the attach builds the two indexes with one sorted pass each, instead of one random B-tree insertion per row and
  index. The same goes for the day's three rollup partitions. An advisory lock per day (the one
  ``raw.ensure_event_partition`` takes) serialises loaders of the same new day: the second waits, then finds the
  partition and takes the path below;
- a day whose partition exists is COPYed straight into that partition, and its rollups are added with the upserts
  of ``raw.rollup_upsert_sql`` from a temporary stage.

The rollups (``raw.rollup_pair_day``, ``raw.rollup_user_session_day``, ``raw.rollup_product_day``; columns in
migration 0180) are computed here, client-side, from the Arrow table already in memory (:func:`compute_rollups`,
vectorised group-bys), rather than by the statement triggers of migration 0180 re-reading every written row on the
server. The triggers stay for every other writer of raw.events (a COPY or INSERT through the parent, a delete, a
truncate); ingest writes into the partitions directly, which statement triggers on the parent do not see, so
nothing is counted twice. Both paths combine rows through the same SQL (``raw.rollup_upsert_sql``).

Rows are sent sorted by (user_id, event_time): the (user_id, event_time) index is then filled in order, and the heap
ends up clustered by user, which the per-user feature queries read. ``line_no`` keeps each row's place in its file.
Times are UTC.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from ml.pgcopy import COPY_HEADER, COPY_TRAILER, PG_EPOCH_US, connect

if TYPE_CHECKING:
    import pandas as pd
    from sqlalchemy.engine import Engine

COPY_COLUMNS: tuple[str, ...] = (
    "event_time",
    "product_id",
    "category_id",
    "price",
    "user_id",
    "file_id",
    "line_no",
    "user_session",
    "event_type",
    "category_code",
    "brand",
)
COPY_CHUNK_ROWS = 8192
ROLLUPS: tuple[str, ...] = ("rollup_pair_day", "rollup_user_session_day", "rollup_product_day")
_HEX = np.full(256, 255, dtype=np.uint8)
_HEX[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10)
_HEX[np.frombuffer(b"abcdef", np.uint8)] = np.arange(10, 16)
_HEX[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16)
_UUID_HEX_POS = np.array([*range(0, 8), *range(9, 13), *range(14, 18), *range(19, 23), *range(24, 36)])
_US_PER_DAY = 86_400_000_000
_KEY_SCALE = 1 << 36  # packed price key: seconds since the UTC midnight * 2^36 + price in cents (migration 0180)
_EVENING_SECONDS = 18 * 3600


# --- binary COPY -----------------------------------------------------------------------------------------------------
def uuid_bytes(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Canonical uuid text (36 chars, any hex case) to 16 bytes per row: ((n, 16) uint8, valid mask).

    The non-null values are packed back to back (36 bytes each), so the text is one (m, 36) byte matrix, no gather.
    Raises ValueError on a malformed value (validation guarantees none reach here)."""
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    if not pa.types.is_string(arr.type):
        arr = pc.cast(arr, pa.string())
    valid = arr.is_valid().to_numpy(zero_copy_only=False) if arr.null_count else np.ones(len(arr), dtype=bool)
    out = np.zeros((len(arr), 16), dtype=np.uint8)
    present = pc.drop_null(arr) if arr.null_count else arr
    m = len(present)
    if not m:
        return out, valid
    offsets = np.frombuffer(present.buffers()[1], dtype=np.int32, count=m + 1, offset=present.offset * 4)
    if offsets[m] - offsets[0] != 36 * m or (np.diff(offsets) != 36).any():
        raise ValueError("user_session holds a value that is not a 36-character uuid")
    chars = np.frombuffer(present.buffers()[2], dtype=np.uint8, count=36 * m, offset=int(offsets[0])).reshape(m, 36)
    nib = _HEX[chars[:, _UUID_HEX_POS]]
    if (nib == 255).any() or (chars[:, [8, 13, 18, 23]] != ord("-")).any():
        raise ValueError("user_session holds a value that is not a uuid")
    out[valid] = (nib[:, 0::2] << 4) | nib[:, 1::2]
    return out, valid


#: PostgreSQL types of raw.events' COPY columns, as :func:`encode_binary` takes them
EVENT_COPY_TYPES: dict[str, str] = {
    "event_time": "timestamptz", "product_id": "int8", "category_id": "int8", "price": "float8", "user_id": "int8",
    "file_id": "int8", "line_no": "int4", "user_session": "uuid", "event_type": "text", "category_code": "text",
    "brand": "text",
}  # fmt: skip
#: ... and of the rollup tables' columns (migration 0180), in table order
ROLLUP_COPY_TYPES: dict[str, dict[str, str]] = {
    "rollup_pair_day": {
        "user_id": "int8", "product_id": "int8", "day": "date", "events": "int4", "views": "int4", "carts": "int4",
        "removes": "int4", "purchases": "int4", "evening_events": "int4", "first_view_at": "timestamptz",
        "last_view_at": "timestamptz", "last_cart_at": "timestamptz", "last_purchase_at": "timestamptz",
        "last_at": "timestamptz", "first_view_key": "int8", "last_view_key": "int8", "category_id": "int8",
        "brand": "text", "sessions": "uuid[]",
    },
    "rollup_user_session_day": {
        "user_id": "int8", "user_session": "uuid", "day": "date", "events": "int4", "first_at": "timestamptz",
        "last_at": "timestamptz",
    },
    "rollup_product_day": {
        "product_id": "int8", "day": "date", "events": "int4", "views": "int4", "carts": "int4", "purchases": "int4",
        "last_key": "int8", "category_id": "int8", "brand": "text",
    },
}  # fmt: skip
_FIXED_TYPES: dict[str, str] = {"int8": ">i8", "int4": ">i4", "float8": ">f8", "timestamptz": ">i8", "date": ">i4"}
_PG_EPOCH_DAYS = 10_957  # 2000-01-01 in days since 1970-01-01
_UUID_OID = 2950
_ARRAY_HEAD = np.dtype([("len", ">i4"), ("ndim", ">i4"), ("flags", ">i4"), ("oid", ">u4")])
_ARRAY_DIM = np.dtype([("dim", ">i4"), ("lb", ">i4")])
_UUID_ELEMENT = np.dtype([("len", ">i4"), ("value", "u1", (16,))])


def encode_binary(table: pa.Table, types: dict[str, str], chunk_rows: int = COPY_CHUNK_ROWS) -> Iterator[bytes]:
    """Yield PostgreSQL binary COPY data (ml.pgcopy framing) for the columns ``types`` names, in its order: the
    header, one chunk per ``chunk_rows`` rows, then the trailer. ``types`` maps a column to its PostgreSQL type:
    int8, int4, float8, timestamptz (a UTC timestamp column), date (date32), text, uuid (canonical uuid text) or
    uuid[] (a list of uuid texts, never null).

    No per-row Python: every field becomes two Arrow binary arrays (its length word, -1 for NULL, and its value in
    network byte order, built with numpy), and Arrow's ``binary_join_element_wise`` kernel concatenates them row by
    row. Raises ValueError on a malformed uuid (validation guarantees none reach here)."""
    yield COPY_HEADER
    n = table.num_rows
    for lo in range(0, n, chunk_rows):
        yield _encode_rows(table.slice(lo, min(chunk_rows, n - lo)), types)
    yield COPY_TRAILER


def encode_events_binary(table: pa.Table, file_id: int, chunk_rows: int = COPY_CHUNK_ROWS) -> Iterator[bytes]:
    """:func:`encode_binary` of a typed events table (REES46 columns + ``line_no``) with ``file_id`` on every row,
    columns in :data:`COPY_COLUMNS` order (``copy raw.events (COPY_COLUMNS) from stdin (format binary)``)."""
    with_file = table.append_column("file_id", pa.array(np.full(table.num_rows, file_id, dtype=np.int64)))
    yield from encode_binary(with_file, EVENT_COPY_TYPES, chunk_rows)


def _fixed_binary(values: np.ndarray, width: int, valid: np.ndarray | None = None) -> pa.Array:
    """A contiguous numpy buffer of ``width`` bytes per row as an Arrow binary array (zero-copy view, one cast)."""
    n = values.nbytes // width
    bitmap = None if valid is None or valid.all() else pa.array(valid).buffers()[1]
    nulls = 0 if bitmap is None else int((~valid).sum())
    fixed = pa.Array.from_buffers(pa.binary(width), n, [bitmap, pa.py_buffer(values)], null_count=nulls)
    return fixed.cast(pa.binary())


def _length_words(lengths: np.ndarray, valid: np.ndarray | None) -> pa.Array:
    words = (lengths if valid is None else np.where(valid, lengths, -1)).astype(">i4")
    return _fixed_binary(words.view(np.uint8), 4)


def _field(arr: pa.Array, pg_type: str) -> list[pa.Array]:
    """The binary COPY pieces of one column: [length words, values] (more pieces for an array type)."""
    n = len(arr)
    valid = arr.is_valid().to_numpy(zero_copy_only=False) if arr.null_count else None
    if pg_type in _FIXED_TYPES:
        dtype = np.dtype(_FIXED_TYPES[pg_type])
        values = np.ascontiguousarray(_fixed_values(arr, pg_type).astype(dtype)).view(np.uint8)
        return [_length_words(np.full(n, dtype.itemsize), valid), _fixed_binary(values, dtype.itemsize, valid)]
    if pg_type == "text":
        text = arr if pa.types.is_string(arr.type) else pc.cast(arr, pa.string())
        lengths = pc.fill_null(pc.binary_length(text), 0).to_numpy()
        return [_length_words(lengths, valid), text.cast(pa.binary())]
    if pg_type == "uuid":
        raw, ok = uuid_bytes(arr)
        return [_length_words(np.full(n, 16), ok), _fixed_binary(raw.ravel(), 16, ok)]
    if pg_type == "uuid[]":  # array_send: ndim, flags, element OID, [dim, lower bound], then each element framed
        offsets = arr.offsets.to_numpy()
        counts = np.diff(offsets)
        raw, ok = uuid_bytes(arr.flatten())
        if not ok.all():
            raise ValueError("a uuid[] value holds a NULL element")
        elements = np.empty(len(raw), dtype=_UUID_ELEMENT)
        elements["len"], elements["value"] = 16, raw
        joined = pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets - offsets[0], pa.int32()),
                                                         _fixed_binary(elements.view(np.uint8), 20)), b"")
        head = np.zeros(n, dtype=_ARRAY_HEAD)
        nonempty = counts > 0
        head["len"] = np.where(nonempty, 20 + 20 * counts, 12)
        head["ndim"], head["oid"] = nonempty.astype(np.int32), _UUID_OID
        dims = np.zeros(n, dtype=_ARRAY_DIM)
        dims["dim"], dims["lb"] = counts, 1
        return [_fixed_binary(head.view(np.uint8), 16), _fixed_binary(dims.view(np.uint8), 8, nonempty), joined]
    raise ValueError(f"unsupported COPY type {pg_type!r}")


def _fixed_values(arr: pa.Array, pg_type: str) -> np.ndarray:
    """The numpy values of a fixed-width column in PostgreSQL's units (timestamps in microseconds and dates in days
    since 2000-01-01), NULL as 0."""
    if pg_type == "timestamptz":
        vals = pc.cast(arr, pa.timestamp("us", tz="UTC")).cast(pa.int64())
        return pc.fill_null(vals, 0).to_numpy() - PG_EPOCH_US
    if pg_type == "date":
        return pc.fill_null(arr.cast(pa.int32()), 0).to_numpy() - _PG_EPOCH_DAYS
    return pc.fill_null(arr, 0).to_numpy()


def _encode_rows(t: pa.Table, types: dict[str, str]) -> bytes:
    """One chunk of rows. Consecutive fixed-width columns without NULLs (and the field count in front) are packed
    into one numpy record per row (length word + value per field), so Arrow joins a few wide pieces per row rather
    than two narrow ones per column."""
    n = t.num_rows
    if not n:
        return b""
    parts: list[pa.Array] = []
    fields: list[tuple[Any, ...]] = [("count", ">i2")]
    values: list[Any] = [len(types)]

    def pack() -> None:
        if fields:
            rec = np.empty(n, dtype=np.dtype(fields))
            for field_, v in zip(fields, values, strict=True):
                rec[field_[0]] = v
            parts.append(_fixed_binary(rec.view(np.uint8), rec.dtype.itemsize))
            fields.clear()
            values.clear()

    for i, (name, pg_type) in enumerate(types.items()):
        col = t.column(name)
        col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
        if pg_type in _FIXED_TYPES and not col.null_count:
            width = np.dtype(_FIXED_TYPES[pg_type]).itemsize
            fields.extend([(f"len{i}", ">i4"), (f"val{i}", _FIXED_TYPES[pg_type])])
            values.extend([width, _fixed_values(col, pg_type)])
            continue
        if pg_type == "uuid" and not col.null_count:
            fields.extend([(f"len{i}", ">i4"), (f"val{i}", "u1", (16,))])  # type: ignore[list-item]
            values.extend([16, uuid_bytes(col)[0]])
            continue
        pack()
        parts += _field(col, pg_type)
    pack()
    rows = pc.binary_join_element_wise(*parts, b"", null_handling="replace", null_replacement=b"")
    offsets = np.frombuffer(rows.buffers()[1], dtype=np.int32, count=n + 1)
    return rows.buffers()[2].to_pybytes()[offsets[0] : offsets[n]]


# --- rollups, client-side --------------------------------------------------------------------------------------------
def compute_rollups(table: pa.Table) -> dict[str, pa.Table]:
    """The three per-day rollups of migration 0180 for the events of ``table`` (typed REES46 columns), one Arrow
    table per rollup with its columns in table order, exactly what ``raw.rollups_add_sql`` aggregates on the
    server from the same rows: day = UTC day of event_time; evening = hour >= 18 UTC; packed key = (whole seconds
    since the UTC midnight) * 2^36 + min(round-half-even(price * 100), 2^36 - 1); brand maxima compare bytes
    (collation "C"); ``sessions`` = the distinct non-null session ids of the (user, product, day) (a list);
    user_session compared case-insensitively (a uuid). Column types: :data:`ROLLUP_COPY_TYPES`."""
    t = pc.cast(table.column("event_time"), pa.timestamp("us", tz="UTC"))
    us = t.cast(pa.int64()).to_numpy()
    day = us // _US_PER_DAY
    sec = (us - day * _US_PER_DAY) // 1_000_000
    price = table.column("price").cast(pa.float64()).to_numpy()
    k = sec * _KEY_SCALE + np.minimum(np.rint(price * 100), _KEY_SCALE - 1).astype(np.int64)
    et = table.column("event_type")
    is_ = {e: pc.equal(et, e).to_numpy(zero_copy_only=False) for e in ("view", "cart", "remove_from_cart", "purchase")}
    t = t.combine_chunks() if isinstance(t, pa.ChunkedArray) else t
    brand = table.column("brand")
    base = pa.table({
        "user_id": table.column("user_id"),
        "product_id": table.column("product_id"),
        "day": pa.array(day.astype(np.int32), pa.date32()),
        "user_session": pc.utf8_lower(table.column("user_session")),
        "views": is_["view"].astype(np.int32),
        "carts": is_["cart"].astype(np.int32),
        "removes": is_["remove_from_cart"].astype(np.int32),
        "purchases": is_["purchase"].astype(np.int32),
        "evening": (sec >= _EVENING_SECONDS).astype(np.int32),
        "t": t,
        "t_view": pc.if_else(pa.array(is_["view"]), t, pa.scalar(None, t.type)),
        "t_cart": pc.if_else(pa.array(is_["cart"]), t, pa.scalar(None, t.type)),
        "t_purchase": pc.if_else(pa.array(is_["purchase"]), t, pa.scalar(None, t.type)),
        "k": k,
        "k_view": pa.array(k, mask=~is_["view"]),
        "category_id": table.column("category_id"),
        "brand": brand,
        "brand_or_empty": pc.fill_null(brand, ""),
    })
    sessions = pc.CountOptions(mode="only_valid")
    pair = base.group_by(["user_id", "product_id", "day"], use_threads=False).aggregate([
        ([], "count_all"), ("views", "sum"), ("carts", "sum"), ("removes", "sum"), ("purchases", "sum"),
        ("evening", "sum"), ("t_view", "min"), ("t_view", "max"), ("t_cart", "max"), ("t_purchase", "max"),
        ("t", "max"), ("k_view", "min"), ("k_view", "max"), ("category_id", "max"), ("brand", "max"),
        ("user_session", "distinct", sessions),
    ])
    pair = pa.table({
        "user_id": pair.column("user_id"), "product_id": pair.column("product_id"), "day": pair.column("day"),
        "events": pair.column("count_all"), "views": pair.column("views_sum"), "carts": pair.column("carts_sum"),
        "removes": pair.column("removes_sum"), "purchases": pair.column("purchases_sum"),
        "evening_events": pair.column("evening_sum"), "first_view_at": pair.column("t_view_min"),
        "last_view_at": pair.column("t_view_max"), "last_cart_at": pair.column("t_cart_max"),
        "last_purchase_at": pair.column("t_purchase_max"), "last_at": pair.column("t_max"),
        "first_view_key": pair.column("k_view_min"), "last_view_key": pair.column("k_view_max"),
        "category_id": pair.column("category_id_max"), "brand": pair.column("brand_max"),
        "sessions": pair.column("user_session_distinct"),
    })
    session = base.group_by(["user_id", "user_session", "day"], use_threads=False).aggregate(
        [([], "count_all"), ("t", "min"), ("t", "max")])
    session = pa.table({
        "user_id": session.column("user_id"), "user_session": session.column("user_session"),
        "day": session.column("day"), "events": session.column("count_all"),
        "first_at": session.column("t_min"), "last_at": session.column("t_max"),
    })
    product = base.group_by(["product_id", "day"], use_threads=False).aggregate([
        ([], "count_all"), ("views", "sum"), ("carts", "sum"), ("purchases", "sum"), ("k", "max"),
        ("category_id", "max"), ("brand_or_empty", "max"),
    ])
    product = pa.table({
        "product_id": product.column("product_id"), "day": product.column("day"),
        "events": product.column("count_all"), "views": product.column("views_sum"),
        "carts": product.column("carts_sum"), "purchases": product.column("purchases_sum"),
        "last_key": product.column("k_max"), "category_id": product.column("category_id_max"),
        "brand": product.column("brand_or_empty_max"),
    })
    return {"rollup_pair_day": pair, "rollup_user_session_day": session, "rollup_product_day": product}


# --- the load transaction --------------------------------------------------------------------------------------------
def ensure_partitions(engine: Engine, days: Sequence[dt.date]) -> None:
    """Create the raw.events day partitions (and their rollup partitions) for ``days`` (UTC) if missing, in one short
    committed transaction. :func:`load_events_table` does not need this (it creates a missing day itself, index-free
    until the end of its transaction); other writers that insert through raw.events do."""
    if not days:
        return
    with engine.begin() as c:
        for day in sorted(set(days)):
            c.execute(sa.text("select raw.ensure_event_partition(:d)"), {"d": day})


def _missing_parts(conn: Any, day: dt.date) -> list[str]:
    """The day tables (raw.day_partitioned_tables order) without a partition for ``day``."""
    return [r[0] for r in conn.execute(
        "select p from unnest(raw.day_partitioned_tables()) with ordinality as t(p, i)"
        " where not raw.day_partition_exists(p, %s) order by i",
        [day],
    ).fetchall()]


def _day_rows(table: pa.Table, days: np.ndarray, day: dt.date, single: bool) -> pa.Table:
    return table if single else table.filter(pa.array(days == (day - dt.date(1970, 1, 1)).days))


def _write_days(conn: Any, table: pa.Table, rollups: dict[str, pa.Table], file_id: int) -> None:
    """Inside the load transaction: write ``table``'s events and their ``rollups`` day by day (module docstring)."""
    us = pc.cast(table.column("event_time"), pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy()
    event_day = us // _US_PER_DAY
    day_nums = np.unique(event_day)
    single = len(day_nums) == 1
    roll_days = {name: r.column("day").cast(pa.int32()).to_numpy() for name, r in rollups.items()}
    created: list[tuple[str, dt.date]] = []
    columns = ", ".join(COPY_COLUMNS)
    for num in day_nums.tolist():  # ascending: every loader takes the day locks in the same order
        day = dt.date(1970, 1, 1) + dt.timedelta(days=int(num))
        missing = _missing_parts(conn, day)
        if missing:  # the lock raw.ensure_event_partition takes; then look again (a concurrent loader may have won)
            conn.execute("select pg_advisory_xact_lock(hashtext('raw.ensure_event_partition'),"
                         " hashtext(raw.day_partition_name('events', %s)))", [day])
            missing = _missing_parts(conn, day)
        for parent in missing:
            conn.execute("select raw.create_day_table(%s, %s)", [parent, day])
            created.append((parent, day))
        part = conn.execute("select raw.day_partition_name('events', %s)", [day]).fetchone()[0]
        rows = _day_rows(table, event_day, day, single)
        with conn.cursor() as cur, cur.copy(f"copy raw.{part} ({columns}) from stdin (format binary)") as copy:
            for chunk in encode_events_binary(rows, file_id):
                copy.write(chunk)
        for name in ROLLUPS:
            r = _day_rows(rollups[name], roll_days[name], day, single)
            types = ROLLUP_COPY_TYPES[name]
            cols = ", ".join(types)
            if name in missing:  # a new day: straight into its index-free table
                target = conn.execute("select raw.day_partition_name(%s, %s)", [name, day]).fetchone()[0]
                with conn.cursor() as cur, cur.copy(f"copy raw.{target} ({cols}) from stdin (format binary)") as copy:
                    for chunk in encode_binary(r, types):
                        copy.write(chunk)
                continue
            stage = f"_stage_{name}"
            conn.execute(f"create temp table if not exists {stage} (like raw.{name}) on commit drop")
            conn.execute(f"truncate {stage}")
            with conn.cursor() as cur, cur.copy(f"copy {stage} ({cols}) from stdin (format binary)") as copy:
                for chunk in encode_binary(r, types):
                    copy.write(chunk)
            upsert = conn.execute("select raw.rollup_upsert_sql(%s, %s)", [name, f"select * from pg_temp.{stage}"])
            conn.execute(upsert.fetchone()[0])
    for parent, day in created:  # last: the parent locks of the attach are held only for the index builds
        conn.execute("select raw.attach_day_table(%s, %s)", [parent, day])


def delete_file_rows(conn: Any, file_id: int) -> None:
    """Inside a load transaction (psycopg ``conn``): remove a loaded file's rows and its record (``--replace``).
    The delete goes through raw.events, so its statement trigger rebuilds the rollups of the days it touched.
    Raises PipelineError if the file is no longer loaded."""
    from ml.errors import PipelineError

    row = conn.execute(
        "select min_event_time, max_event_time from raw.ingested_files where file_id = %s for update", [file_id]
    ).fetchone()
    if row is None:
        raise PipelineError(f"file_id {file_id} to be replaced is no longer loaded (replaced concurrently?)")
    if row[0] is not None:
        conn.execute("delete from raw.events where file_id = %s and event_time between %s and %s",
                     [file_id, row[0], row[1]])
    conn.execute("delete from raw.ingested_files where file_id = %s", [file_id])


def prepare_events(table: pa.Table) -> tuple[pa.Table, dict[str, pa.Table]]:
    """The client-side half of a load, no database needed: ``table`` sorted by (user_id, event_time) (module
    docstring) and its rollups (:func:`compute_rollups`)."""
    table = sort_events(table)
    return table, (compute_rollups(table) if table.num_rows else {})


def sort_events(table: pa.Table) -> pa.Table:
    """``table`` sorted by (user_id, event_time), the order events are written in (module docstring)."""
    if table.num_rows > 1:
        table = table.take(pc.sort_indices(table, sort_keys=[("user_id", "ascending"), ("event_time", "ascending")]))
    return table


def load_events_table(
    engine: Engine,
    table: pa.Table,
    *,
    file_record: dict[str, Any] | None = None,
    file_id: int = 0,
    rollups: dict[str, pa.Table] | None = None,
) -> tuple[int, int]:
    """COPY a typed events table into raw.events, and its rollups into theirs, in ONE transaction; return
    (file_id, rows). ``rollups`` given: ``table`` is already sorted (:func:`sort_events`) and ``rollups`` are its
    rollups, as :func:`prepare_events` returns them (ingest sorts in its validating child process and computes the
    rollups on its loader thread); None: both done here.

    With ``file_record`` (keys: file_name, file_uri, checksum_sha256, file_format, row_count, min_event_time,
    max_event_time, validation_id, optional content_sha256 and replaced_file_id) the ``raw.ingested_files`` row is
    inserted in the same transaction and its new file_id stamped on every row; a file already recorded with that
    checksum makes this a no-op returning (its file_id, 0); a ``replaced_file_id`` has its rows and record deleted
    first, in the same transaction (``--replace``). Without it, rows carry ``file_id`` as given. Day partitions are
    created as needed (module docstring)."""
    if rollups is None:
        table, rollups = prepare_events(table)
    with connect(engine) as conn:
        with conn.transaction():
            if file_record is not None:
                sha = file_record["checksum_sha256"]
                # serialise concurrent loaders of the same file; the unique checksum is the final guard
                conn.execute("select pg_advisory_xact_lock(hashtextextended(%s, 0))", [sha])
                record = {"content_sha256": None, "replaced_file_id": None, **file_record}
                if record["replaced_file_id"] is not None:  # issue 15: --replace swaps rows in this transaction
                    delete_file_rows(conn, int(record["replaced_file_id"]))
                row = conn.execute(
                    "select file_id from raw.ingested_files where checksum_sha256 = %s", [sha]
                ).fetchone()
                if row:
                    return int(row[0]), 0
                file_id = conn.execute(
                    "insert into raw.ingested_files (file_name, file_uri, checksum_sha256, file_format, row_count,"
                    " min_event_time, max_event_time, validation_id, content_sha256, replaced_file_id)"
                    " values (%(file_name)s, %(file_uri)s, %(checksum_sha256)s, %(file_format)s, %(row_count)s,"
                    " %(min_event_time)s, %(max_event_time)s, %(validation_id)s, %(content_sha256)s,"
                    " %(replaced_file_id)s) returning file_id",
                    record,
                ).fetchone()[0]
            if table.num_rows:
                _write_days(conn, table, rollups, int(file_id))
    return int(file_id), table.num_rows


def event_days(table: pa.Table) -> list[dt.date]:
    """The distinct UTC days of ``event_time`` in ``table``."""
    if table.num_rows == 0:
        return []
    us = pc.cast(table.column("event_time"), pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy()
    days = np.unique(us // _US_PER_DAY)
    return [dt.date(1970, 1, 1) + dt.timedelta(days=int(d)) for d in days]


def events_table_from_frame(df: pd.DataFrame, *, line_start: int = 1) -> pa.Table:
    """A typed events table (as :func:`load_events_table` wants) from a pandas frame with the REES46 columns.

    event_time may be tz-aware (converted to UTC) or naive (taken as UTC); empty strings and NaN are NULL for the
    nullable text columns; ``line_no`` is taken from the frame if present, else numbered from ``line_start``."""
    import pandas as pd

    from ml.schema import REES46_COLUMNS

    missing = [c for c in REES46_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"frame lacks REES46 column(s): {', '.join(missing)}")
    t = pd.to_datetime(df["event_time"], utc=True)
    cols: dict[str, pa.Array] = {"event_time": pa.array(t.astype("datetime64[us, UTC]"), pa.timestamp("us", tz="UTC"))}
    for c in ("product_id", "category_id", "user_id"):
        cols[c] = pa.array(df[c].to_numpy(dtype=np.int64), pa.int64())
    cols["price"] = pa.array(df["price"].to_numpy(dtype=np.float64), pa.float64())
    for c in ("event_type", "category_code", "brand", "user_session"):
        s = df[c].astype(object).where(df[c].notna(), None)
        arr = pa.array(s.tolist(), pa.string())
        if c != "event_type":
            arr = pc.if_else(pc.equal(arr, ""), pa.scalar(None, pa.string()), arr)
        cols[c] = arr
    if "line_no" in df.columns:
        cols["line_no"] = pa.array(df["line_no"].to_numpy(dtype=np.int64), pa.int64())
    else:
        cols["line_no"] = pa.array(np.arange(line_start, line_start + len(df), dtype=np.int64), pa.int64())
    return pa.table(cols)


def load_events_frame(engine: Engine, df: pd.DataFrame, *, file_id: int = 0, line_start: int = 1) -> int:
    """Put a DataFrame of REES46 events straight into raw.events and the rollups (no validation, no file record): a
    fast helper for tests and demos. One transaction; returns the rows loaded."""
    return load_events_table(engine, events_table_from_frame(df, line_start=line_start), file_id=file_id)[1]
