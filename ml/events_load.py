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
import io
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
COPY_CHUNK_ROWS = 131_072
ROLLUPS: tuple[str, ...] = ("rollup_pair_day", "rollup_user_session_day", "rollup_product_day")
# the fixed-width head of every binary COPY tuple: field count, then (length, value) for the fixed-size columns,
# then the length word of user_session (16, or -1 for NULL); big-endian as the protocol wants
_FIXED = np.dtype(
    [
        ("n", ">i2"),
        ("l_time", ">i4"), ("event_time", ">i8"),
        ("l_pid", ">i4"), ("product_id", ">i8"),
        ("l_cid", ">i4"), ("category_id", ">i8"),
        ("l_price", ">i4"), ("price", ">f8"),
        ("l_uid", ">i4"), ("user_id", ">i8"),
        ("l_fid", ">i4"), ("file_id", ">i8"),
        ("l_line", ">i4"), ("line_no", ">i4"),
        ("l_session", ">i4"),
    ]
)  # fmt: skip
_HEX = np.full(256, 255, dtype=np.uint8)
_HEX[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10)
_HEX[np.frombuffer(b"abcdef", np.uint8)] = np.arange(10, 16)
_HEX[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16)
_UUID_HEX_POS = np.array([*range(0, 8), *range(9, 13), *range(14, 18), *range(19, 23), *range(24, 36)])
_US_PER_DAY = 86_400_000_000
_KEY_SCALE = 1 << 36  # packed price key: seconds since the UTC midnight * 2^36 + price in cents (migration 0180)
_EVENING_SECONDS = 18 * 3600


# --- binary COPY of raw.events ----------------------------------------------------------------------------------------
def _string_parts(arr: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(data bytes, start offsets, lengths with 0 for nulls, valid mask) of a string array, zero-copy."""
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    if not pa.types.is_string(arr.type):
        arr = pc.cast(arr, pa.string())
    n = len(arr)
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], dtype=np.int32, count=n + 1, offset=arr.offset * 4).astype(np.int64)
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    valid = arr.is_valid().to_numpy(zero_copy_only=False) if arr.null_count else np.ones(n, dtype=bool)
    lengths = np.where(valid, offsets[1:] - offsets[:-1], 0)
    return data, offsets[:-1], lengths, valid


def uuid_bytes(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Canonical uuid text (36 chars, any hex case) to 16 bytes per row: ((n, 16) uint8, valid mask).

    Raises ValueError on a malformed value (validation guarantees none reach here)."""
    data, starts, lengths, valid = _string_parts(arr)
    out = np.zeros((len(starts), 16), dtype=np.uint8)
    if not valid.any():
        return out, valid
    if (lengths[valid] != 36).any():
        raise ValueError("user_session holds a value that is not a 36-character uuid")
    chars = data[starts[valid][:, None] + np.arange(36)]
    nib = _HEX[chars[:, _UUID_HEX_POS]]
    if (nib == 255).any() or (chars[:, [8, 13, 18, 23]] != ord("-")).any():
        raise ValueError("user_session holds a value that is not a uuid")
    out[valid] = (nib[:, 0::2] << 4) | nib[:, 1::2]
    return out, valid


def encode_events_binary(table: pa.Table, file_id: int, chunk_rows: int = COPY_CHUNK_ROWS) -> Iterator[bytes]:
    """Yield PostgreSQL binary COPY data for ``table`` (the typed REES46 columns + ``line_no``), columns in
    :data:`COPY_COLUMNS` order: the header, one chunk per ``chunk_rows`` rows, then the trailer.

    No per-row Python: the fixed-width head of every tuple is one numpy structured array, and Arrow's
    ``binary_join_element_wise`` kernel concatenates it with the variable-length fields row by row. Types:
    event_time timestamptz (microseconds), ids/file_id int8, price float8, line_no int4, user_session uuid, text
    columns as UTF-8."""
    yield COPY_HEADER
    n = table.num_rows
    for lo in range(0, n, chunk_rows):
        yield _encode_chunk(table.slice(lo, min(chunk_rows, n - lo)), file_id)
    yield COPY_TRAILER


def _fixed_binary(values: np.ndarray, width: int, valid: np.ndarray | None = None) -> pa.Array:
    """A contiguous numpy buffer of ``width`` bytes per row as an Arrow binary array (zero-copy view, one cast)."""
    n = values.nbytes // width
    bitmap = None if valid is None or valid.all() else pa.array(valid).buffers()[1]
    nulls = 0 if bitmap is None else int((~valid).sum())
    fixed = pa.Array.from_buffers(pa.binary(width), n, [bitmap, pa.py_buffer(values)], null_count=nulls)
    return fixed.cast(pa.binary())


def _encode_chunk(t: pa.Table, file_id: int) -> bytes:
    n = t.num_rows
    fixed = np.empty(n, dtype=_FIXED)
    fixed["n"] = len(COPY_COLUMNS)
    for lname, size in (
        ("l_time", 8), ("l_pid", 8), ("l_cid", 8), ("l_price", 8), ("l_uid", 8), ("l_fid", 8), ("l_line", 4),
    ):  # fmt: skip
        fixed[lname] = size
    ts = pc.cast(t.column("event_time"), pa.timestamp("us", tz="UTC")).cast(pa.int64())
    fixed["event_time"] = ts.to_numpy() - PG_EPOCH_US
    for col in ("product_id", "category_id", "user_id"):
        fixed[col] = t.column(col).cast(pa.int64()).to_numpy()
    fixed["price"] = t.column("price").cast(pa.float64()).to_numpy()
    fixed["file_id"] = file_id
    fixed["line_no"] = t.column("line_no").cast(pa.int64()).to_numpy()
    sess, sess_ok = uuid_bytes(t.column("user_session"))
    fixed["l_session"] = np.where(sess_ok, 16, -1)
    parts = [_fixed_binary(fixed.view(np.uint8), _FIXED.itemsize), _fixed_binary(sess.ravel(), 16, sess_ok)]
    for col in ("event_type", "category_code", "brand"):
        arr = t.column(col).combine_chunks()
        if not pa.types.is_string(arr.type):
            arr = pc.cast(arr, pa.string())
        _, _, lengths, valid = _string_parts(arr)
        parts.append(_fixed_binary(np.where(valid, lengths, -1).astype(">i4").view(np.uint8), 4))
        parts.append(arr.cast(pa.binary()))
    rows = pc.binary_join_element_wise(*parts, b"", null_handling="replace", null_replacement=b"")
    offsets = np.frombuffer(rows.buffers()[1], dtype=np.int32, count=n + 1)
    return rows.buffers()[2].to_pybytes()[offsets[0] : offsets[n]] if n else b""


# --- rollups, client-side ---------------------------------------------------------------------------------------------
def compute_rollups(table: pa.Table) -> dict[str, pa.Table]:
    """The three per-day rollups of migration 0180 for the events of ``table`` (typed REES46 columns), one Arrow
    table per rollup with its columns in table order, exactly what ``raw.rollups_add_sql`` aggregates on the
    server from the same rows: day = UTC day of event_time; evening = hour >= 18 UTC; packed key = (whole seconds
    since the UTC midnight) * 2^36 + min(round-half-even(price * 100), 2^36 - 1); brand maxima compare bytes
    (collation "C"); ``sessions`` = the distinct non-null session ids of the (user, product, day), as a uuid[]
    literal; user_session compared case-insensitively (a uuid)."""
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
    pair = base.group_by(["user_id", "product_id", "day"]).aggregate([
        ([], "count_all"), ("views", "sum"), ("carts", "sum"), ("removes", "sum"), ("purchases", "sum"),
        ("evening", "sum"), ("t_view", "min"), ("t_view", "max"), ("t_cart", "max"), ("t_purchase", "max"),
        ("t", "max"), ("k_view", "min"), ("k_view", "max"), ("category_id", "max"), ("brand", "max"),
        ("user_session", "distinct", sessions),
    ])
    listed = pc.binary_join(pair.column("user_session_distinct"), ",")
    pair = pa.table({
        "user_id": pair.column("user_id"), "product_id": pair.column("product_id"), "day": pair.column("day"),
        "events": pair.column("count_all"), "views": pair.column("views_sum"), "carts": pair.column("carts_sum"),
        "removes": pair.column("removes_sum"), "purchases": pair.column("purchases_sum"),
        "evening_events": pair.column("evening_sum"), "first_view_at": pair.column("t_view_min"),
        "last_view_at": pair.column("t_view_max"), "last_cart_at": pair.column("t_cart_max"),
        "last_purchase_at": pair.column("t_purchase_max"), "last_at": pair.column("t_max"),
        "first_view_key": pair.column("k_view_min"), "last_view_key": pair.column("k_view_max"),
        "category_id": pair.column("category_id_max"), "brand": pair.column("brand_max"),
        "sessions": pc.binary_join_element_wise("{", pc.fill_null(listed, ""), "}", ""),
    })
    session = base.group_by(["user_id", "user_session", "day"]).aggregate(
        [([], "count_all"), ("t", "min"), ("t", "max")])
    session = pa.table({
        "user_id": session.column("user_id"), "user_session": session.column("user_session"),
        "day": session.column("day"), "events": session.column("count_all"),
        "first_at": session.column("t_min"), "last_at": session.column("t_max"),
    })
    product = base.group_by(["product_id", "day"]).aggregate([
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


def _csv(table: pa.Table) -> bytes:
    """``table`` as headerless CSV for COPY (format csv): nulls unquoted-empty (NULL), strings quoted ("" = '')."""
    import pyarrow.csv as pcsv

    buf = io.BytesIO()
    pcsv.write_csv(table, buf, pcsv.WriteOptions(include_header=False))
    return buf.getvalue()


# --- the load transaction ---------------------------------------------------------------------------------------------
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
        " where to_regclass(format('raw.%%I', raw.day_partition_name(p, %s))) is null order by i",
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
            cols = ", ".join(r.column_names)
            if name in missing:  # a new day: straight into its index-free table
                target = conn.execute("select raw.day_partition_name(%s, %s)", [name, day]).fetchone()[0]
                with conn.cursor() as cur, cur.copy(f"copy raw.{target} ({cols}) from stdin (format csv)") as copy:
                    copy.write(_csv(r))
                continue
            stage = f"_stage_{name}"
            conn.execute(f"create temp table if not exists {stage} (like raw.{name}) on commit drop")
            conn.execute(f"truncate {stage}")
            with conn.cursor() as cur, cur.copy(f"copy {stage} ({cols}) from stdin (format csv)") as copy:
                copy.write(_csv(r))
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


def load_events_table(
    engine: Engine,
    table: pa.Table,
    *,
    file_record: dict[str, Any] | None = None,
    file_id: int = 0,
) -> tuple[int, int]:
    """COPY a typed events table into raw.events, and its rollups into theirs, in ONE transaction; return
    (file_id, rows).

    With ``file_record`` (keys: file_name, file_uri, checksum_sha256, file_format, row_count, min_event_time,
    max_event_time, validation_id, optional content_sha256 and replaced_file_id) the ``raw.ingested_files`` row is
    inserted in the same transaction and its new file_id stamped on every row; a file already recorded with that
    checksum makes this a no-op returning (its file_id, 0); a ``replaced_file_id`` has its rows and record deleted
    first, in the same transaction (``--replace``). Without it, rows carry ``file_id`` as given. Day partitions are
    created as needed (module docstring)."""
    if table.num_rows > 1:
        table = table.take(pc.sort_indices(table, sort_keys=[("user_id", "ascending"), ("event_time", "ascending")]))
    rollups = compute_rollups(table) if table.num_rows else {}
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
