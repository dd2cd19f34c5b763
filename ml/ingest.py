"""Ingest REES46 event files into ``raw.events``: validate, quarantine or load exactly once, and archive.

One call of :func:`ingest_file` handles one file (CSV, ``.csv.gz`` or Parquet; a local path or an fsspec URL such as
``s3://bucket/landing/x.csv`` when the backend is installed):

1. read the bytes and their sha256; a file whose checksum is already in ``raw.ingested_files`` is a no-op
   (status ``duplicate``), so re-delivery and re-runs never load twice;
2. validate (:mod:`ml.validate`: structural rules + the Great Expectations suite ``raw_events``), with the row band
   taken from the trailing average of the latest loaded files; every result becomes a row of
   ``quality.validation_runs`` (suite, file, success, statistics, per-rule results, Data Docs link);
3. on failure: the original bytes go to the quarantine location unchanged, next to ``<name>.report.json``
   (machine-readable) and ``<name>.summary.txt`` (each failed rule, its failing count, sample lines); nothing is
   written to ``raw.events`` (status ``quarantined``);
4. on success: the day partitions are ensured, then ONE transaction inserts the ``raw.ingested_files`` record
   (checksum, rows, validation id) and COPYs the rows (PostgreSQL binary COPY through psycopg 3) with their
   ``file_id`` and ``line_no``; a crash before the commit leaves neither rows nor a file record;
5. files taken from the landing location are moved out of it (``archive/`` on success or duplicate,
   ``quarantine/`` on failure), so landing only holds files not yet processed. Files given from elsewhere (e.g. a
   read-only sample) are left in place and copied to quarantine when they fail.

Times are UTC. Nothing here imports Airflow.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import posixpath
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from ml.errors import PipelineError, ValidationFailed
from ml.jsonutil import dumps
from ml.pgcopy import COPY_HEADER, COPY_TRAILER, PG_EPOCH_US, connect

if TYPE_CHECKING:
    import pandas as pd
    from sqlalchemy.engine import Engine

    from ml.settings import Settings
    from ml.validate import GxRunner, ParsedEvents, ValidationReport
    from ml.validation_report import RuleResult

log = logging.getLogger(__name__)

SUFFIXES: dict[str, tuple[str, str | None]] = {
    ".csv": ("csv", None),
    ".csv.gz": ("csv", "gzip"),
    ".parquet": ("parquet", None),
    ".pq": ("parquet", None),
}
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
COPY_CHUNK_ROWS = 65_536
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


# --- results ----------------------------------------------------------------------------------------------------------
@dataclass
class IngestResult:
    """The outcome of one file. ``status``: ``loaded`` (rows in raw.events), ``duplicate`` (checksum already loaded:
    nothing written), ``quarantined`` (validation failed: nothing written), ``skipped`` (the file left landing
    before it was read: a concurrent run took it), ``error`` (an unexpected failure;
    only :func:`ingest_files` returns it, :func:`ingest_file` raises instead)."""

    file_name: str
    source_uri: str
    status: str
    checksum_sha256: str = ""
    row_count: int = 0
    rows_loaded: int = 0
    file_id: int | None = None
    validation_id: int | None = None
    failed_rules: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    quarantine_uri: str | None = None
    report_uri: str | None = None
    data_docs_uri: str | None = None
    archived_uri: str | None = None
    days: list[str] = field(default_factory=list)
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage: read, validate, load, move
    message: str = ""

    def as_dict(self) -> dict[str, Any]:
        """A small JSON-safe dict (what a DAG task returns through XCom)."""
        return asdict(self)

    def raise_for_status(self) -> None:
        """Raise :class:`ValidationFailed` (naming the file and each failed rule) if the file was quarantined."""
        if self.status == "quarantined":
            raise ValidationFailed(self.message, self.failures)
        if self.status == "error":
            raise PipelineError(self.message)


# --- locations --------------------------------------------------------------------------------------------------------
def _fs(uri: str) -> tuple[Any, str]:
    import fsspec

    return fsspec.core.url_to_fs(uri)


def _join(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}" if "://" in base else str(Path(base) / name)


def _norm(uri: str) -> str:
    """A comparable form of a location: an absolute local path, or ``protocol://`` + fsspec's stripped path."""
    if "://" in uri and not uri.startswith("file://"):
        protocol, rest = uri.split("://", 1)
        try:
            _, rest = _fs(uri)
        except ImportError:  # backend not installed: compare the URLs as written
            pass
        return f"{protocol}://{rest.rstrip('/')}"
    path = uri[len("file://") :] if uri.startswith("file://") else uri
    return str(Path(path).expanduser().resolve())


def _is_under(uri: str, base: str) -> bool:
    u, b = _norm(uri), _norm(base)
    return u == b or u.startswith(b.rstrip("/") + "/")


def file_format(name: str) -> tuple[str, str | None]:
    """(format, compression) from a file name: ``csv``/``parquet`` and None/``gzip``. Raises PipelineError."""
    lower = name.lower()
    for suffix in sorted(SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix):
            return SUFFIXES[suffix]
    raise PipelineError(f"{name}: unsupported file type (expected one of {', '.join(SUFFIXES)})")


def discover_files(
    settings: Settings, location: str | None = None, *, date: dt.date | None = None, limit: int | None = None
) -> list[str]:
    """New event files under ``location`` (default: the landing location), oldest name first.

    Recursive; skips hidden or temporary names (a path part starting with ``.`` or ``_``: writers should upload
    under such a name and rename) and the archive/quarantine locations if they sit inside landing. ``date``
    (a UTC ``dt.date``) keeps files whose name holds that date (``2019-10-01`` or ``20191001``). ``location`` may be one
    file. Returns local paths or URLs; ``limit`` caps the count (default settings.ingest_max_files_per_run).
    Raises PipelineError when an explicit ``location`` does not exist or is one file of an unsupported type."""
    base = location or settings.location("landing")
    fs, root = _fs(base)
    if not fs.exists(root):
        if location is None:  # no landing folder yet: nothing has arrived
            return []
        raise PipelineError(f"{location}: no such file or folder")
    protocol = base.split("://", 1)[0] if "://" in base else None
    if fs.isfile(root):
        file_format(str(location or root))  # a file given by name must be a supported type: PipelineError if not
        candidates = [root]
    else:
        candidates = sorted(fs.find(root))
    skip = [settings.location("archive"), settings.location("quarantine")]
    tokens = [date.isoformat(), f"{date:%Y%m%d}"] if date else []
    out: list[str] = []
    for p in candidates:
        rel = posixpath.relpath(p, root) if p != root else posixpath.basename(p)
        if any(part.startswith((".", "_")) for part in rel.split("/")):
            continue
        try:
            file_format(p)
        except PipelineError:
            continue
        uri = f"{protocol}://{p}" if protocol and protocol != "file" else p
        if any(_is_under(uri, s) for s in skip) and not _is_under(base, skip[0]) and not _is_under(base, skip[1]):
            continue
        if tokens and not any(t in posixpath.basename(p) for t in tokens):
            continue
        out.append(uri)
    cap = limit if limit is not None else settings.ingest_max_files_per_run
    if len(out) > cap:
        log.info("discovered %d files; taking the first %d this run", len(out), cap)
    return out[:cap]


def _free_uri(directory: str, name: str, checksum: str) -> str:
    """``directory/name``, or ``directory/<sha12>-name`` if another file already holds that name."""
    fs, d = _fs(directory)
    fs.makedirs(d, exist_ok=True)
    uri = _join(directory, name)
    _, p = _fs(uri)
    if fs.exists(p):
        if hashlib.sha256(fs.cat_file(p)).hexdigest() == checksum:
            return uri
        uri = _join(directory, f"{checksum[:12]}-{name}")
    return uri


def _put_file(src_uri: str, dst_uri: str, data: bytes, move: bool) -> None:
    """Move ``src`` to ``dst`` (rename when both are on one filesystem), or write ``data`` there if not moving."""
    sfs, sp = _fs(src_uri)
    dfs, dp = _fs(dst_uri)
    same_fs = type(sfs) is type(dfs) and getattr(sfs, "storage_options", None) == getattr(dfs, "storage_options", None)
    if move and same_fs:
        sfs.mv(sp, dp)
        return
    with dfs.open(dp, "wb") as f:
        f.write(data)
    if move:
        sfs.rm(sp)


def _write_text(uri: str, text: str) -> None:
    fs, p = _fs(uri)
    with fs.open(p, "wb") as f:
        f.write(text.encode("utf-8"))


def data_docs_dir(settings: Settings) -> str | None:
    """The local directory of the GX Data Docs site: ``<reports>/data_docs``; None when settings.data_docs_enabled
    is off or reports is a remote URL (GX's filesystem site needs a local directory)."""
    reports = settings.location("reports")
    if not settings.data_docs_enabled or "://" in reports:
        return None
    path = Path(reports) / "data_docs"
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


# --- database ---------------------------------------------------------------------------------------------------------
def find_ingested(engine: Engine, checksum: str) -> int | None:
    """The file_id of an already-loaded file with this sha256, or None."""
    with engine.connect() as c:
        return c.execute(
            sa.text("select file_id from raw.ingested_files where checksum_sha256 = :c"), {"c": checksum}
        ).scalar()


def find_by_content(engine: Engine, content_sha256: str) -> tuple[int, str] | None:
    """(file_id, file_name) of the loaded file holding exactly these events (:func:`ml.events_io.content_fingerprint`),
    or None."""
    with engine.connect() as c:
        row = c.execute(
            sa.text("select file_id, file_name from raw.ingested_files where content_sha256 = :c"), {"c": content_sha256}
        ).first()
    return (int(row.file_id), str(row.file_name)) if row else None


def latest_by_name(engine: Engine, file_name: str) -> int | None:
    """The file_id of the newest loaded file called ``file_name``, or None."""
    with engine.connect() as c:
        return c.execute(
            sa.text("select file_id from raw.ingested_files where file_name = :n order by ingested_at desc, file_id desc"
                    " limit 1"),
            {"n": file_name},
        ).scalar()


def count_loaded_events(engine: Engine, table: pa.Table, lo: dt.datetime | None, hi: dt.datetime | None,
                        exclude_file_id: int | None = None) -> int:
    """How many events of ``table`` are already in raw.events from other files: the same (event_time, user_id,
    product_id, event_type). Cheap when no loaded file's time range overlaps [lo, hi] (no query on raw.events)."""
    if table.num_rows == 0 or lo is None or hi is None:
        return 0
    with engine.connect() as c:
        overlaps = c.execute(
            sa.text("select exists(select 1 from raw.ingested_files where min_event_time <= :hi"
                    " and max_event_time >= :lo and file_id is distinct from :x)"),
            {"lo": lo, "hi": hi, "x": exclude_file_id},
        ).scalar()
    if not overlaps:
        return 0
    import pyarrow.csv as pcsv

    keys = table.select(["event_time", "user_id", "product_id", "event_type"])
    buf = pa.BufferOutputStream()
    pcsv.write_csv(keys.set_column(0, "event_time", pc.cast(keys.column(0), pa.timestamp("us", tz="UTC"))
                                   .cast(pa.int64())), buf)
    with connect(engine) as conn, conn.transaction():
        conn.execute("create temp table _incoming (t bigint, u bigint, p bigint, e text) on commit drop")
        with conn.cursor() as cur, cur.copy("copy _incoming from stdin (format csv, header true)") as copy:
            copy.write(buf.getvalue().to_pybytes())
        return int(conn.execute(
            "select count(*) from _incoming x where exists (select 1 from raw.events r where r.user_id = x.u"
            " and r.event_time = timestamptz 'epoch' + x.t * interval '1 microsecond' and r.product_id = x.p"
            " and r.event_type = x.e and r.file_id is distinct from %s)",
            [exclude_file_id],
        ).fetchone()[0])


def _delete_file_rows(conn: Any, file_id: int) -> None:
    """Inside a load transaction (psycopg ``conn``): remove a loaded file's rows and its record (``--replace``)."""
    row = conn.execute(
        "select min_event_time, max_event_time from raw.ingested_files where file_id = %s for update", [file_id]
    ).fetchone()
    if row is None:
        raise PipelineError(f"file_id {file_id} to be replaced is no longer loaded (replaced concurrently?)")
    if row[0] is not None:
        conn.execute("delete from raw.events where file_id = %s and event_time between %s and %s",
                     [file_id, row[0], row[1]])
    conn.execute("delete from raw.ingested_files where file_id = %s", [file_id])


def row_count_history(engine: Engine, settings: Settings) -> tuple[float | None, int]:
    """(mean rows per file, files) over the latest ``settings.row_count_history_files`` loaded files."""
    with engine.connect() as c:
        row = c.execute(
            sa.text(
                "select avg(row_count)::float8 as mean, count(*) as n from ("
                " select row_count from raw.ingested_files order by ingested_at desc, file_id desc limit :k) t"
            ),
            {"k": settings.row_count_history_files},
        ).one()
    return row.mean, int(row.n)


def record_validation(
    engine: Engine,
    report: ValidationReport,
    *,
    quarantine_uri: str | None = None,
    report_uri: str | None = None,
    dag_run_id: str | None = None,
) -> int:
    """Insert one row of ``quality.validation_runs`` for a file's report (committed at once); returns its id."""
    from ml.quality import record_validation as record

    d = report.as_dict()
    return record(
        engine, suite_name=report.suite_name, file_name=report.file_name, file_uri=report.file_uri,
        checksum_sha256=report.checksum_sha256, success=report.success, row_count=report.row_count,
        statistics=d["statistics"], results=d["rules"], failed_rules=report.failed_rules,
        quarantine_uri=quarantine_uri, report_uri=report_uri, data_docs_uri=report.data_docs_uri,
        dag_run_id=dag_run_id, validated_at=report.validated_at,
    )


def ensure_partitions(engine: Engine, days: Sequence[dt.date]) -> None:
    """Create the raw.events day partitions for ``days`` (UTC) if missing, in one short committed transaction.

    Done before the load transaction on purpose: partition DDL held open for a whole COPY would serialise concurrent
    loaders of the same day. An empty partition left by a crashed load holds no rows and is harmless."""
    if not days:
        return
    with engine.begin() as c:
        for day in sorted(set(days)):
            c.execute(sa.text("select raw.ensure_event_partition(:d)"), {"d": day})


# --- binary COPY ------------------------------------------------------------------------------------------------------
# The raw.events row layout; the framing (header, trailer, epoch) and the connection are ml.pgcopy's.
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

    Built with numpy (a ragged gather per chunk), no per-row Python. Types: event_time timestamptz (microseconds),
    ids/file_id int8, price float8, line_no int4, user_session uuid, text columns as UTF-8."""
    yield COPY_HEADER
    n = table.num_rows
    for lo in range(0, n, chunk_rows):
        yield _encode_chunk(table.slice(lo, min(chunk_rows, n - lo)), file_id)
    yield COPY_TRAILER


def _encode_chunk(t: pa.Table, file_id: int) -> bytes:
    n = t.num_rows
    fixed = np.empty(n, dtype=_FIXED)
    fixed["n"] = len(COPY_COLUMNS)
    for lname, col, size in (
        ("l_time", "event_time", 8), ("l_pid", "product_id", 8), ("l_cid", "category_id", 8), ("l_price", "price", 8),
        ("l_uid", "user_id", 8), ("l_fid", "file_id", 8), ("l_line", "line_no", 4),
    ):  # fmt: skip
        fixed[lname] = size
    ts = t.column("event_time").combine_chunks()
    ts = pc.cast(ts, pa.timestamp("us", tz="UTC")).cast(pa.int64())
    fixed["event_time"] = ts.to_numpy() - PG_EPOCH_US
    for col in ("product_id", "category_id", "user_id"):
        fixed[col] = t.column(col).combine_chunks().cast(pa.int64()).to_numpy()
    fixed["price"] = t.column("price").combine_chunks().cast(pa.float64()).to_numpy()
    fixed["file_id"] = file_id
    fixed["line_no"] = t.column("line_no").combine_chunks().cast(pa.int64()).to_numpy()
    sess, sess_ok = uuid_bytes(t.column("user_session"))
    fixed["l_session"] = np.where(sess_ok, 16, -1)

    # the source buffer: every segment kind laid out one after another
    parts: list[np.ndarray] = [fixed.view(np.uint8), sess.ravel()]
    seg_src: list[np.ndarray] = [np.arange(n, dtype=np.int64) * _FIXED.itemsize]
    seg_len: list[np.ndarray] = [np.full(n, _FIXED.itemsize, dtype=np.int64)]
    base = fixed.nbytes
    seg_src.append(base + np.arange(n, dtype=np.int64) * 16)
    seg_len.append(np.where(sess_ok, 16, 0).astype(np.int64))
    base += sess.nbytes
    for col in ("event_type", "category_code", "brand"):
        data, starts, lengths, valid = _string_parts(t.column(col))
        header = np.where(valid, lengths, -1).astype(">i4")
        parts.append(header.view(np.uint8))
        seg_src.append(base + np.arange(n, dtype=np.int64) * 4)
        seg_len.append(np.full(n, 4, dtype=np.int64))
        base += header.nbytes
        parts.append(data)
        seg_src.append(base + starts)
        seg_len.append(lengths)
        base += data.nbytes
    src = np.concatenate(parts)
    src_start = np.stack(seg_src, axis=1).ravel()
    lengths = np.stack(seg_len, axis=1).ravel()
    total = int(lengths.sum())
    dst_start = np.cumsum(lengths) - lengths
    idx = np.repeat(src_start - dst_start, lengths) + np.arange(total, dtype=np.int64)
    return src[idx].tobytes()


def load_events_table(
    engine: Engine,
    table: pa.Table,
    *,
    file_record: dict[str, Any] | None = None,
    file_id: int = 0,
) -> tuple[int, int]:
    """COPY a typed events table into raw.events in ONE transaction; return (file_id, rows).

    With ``file_record`` (keys: file_name, file_uri, checksum_sha256, file_format, row_count, min_event_time,
    max_event_time, validation_id) the ``raw.ingested_files`` row is inserted in the same transaction and its new
    file_id stamped on every row; a file already recorded with that checksum makes this a no-op returning
    (its file_id, 0). Without it, rows carry ``file_id`` as given. Day partitions must exist
    (:func:`ensure_partitions`).

    Rows are sent sorted by (user_id, event_time): the B-tree insertions into raw.events' (user_id, event_time)
    index become sequential, which makes the COPY about 1.5-2x faster, and the heap ends up clustered by user,
    which the per-user feature queries read. ``line_no`` keeps each row's place in its file."""
    columns = ", ".join(COPY_COLUMNS)
    if table.num_rows > 1:
        table = table.take(pc.sort_indices(table, sort_keys=[("user_id", "ascending"), ("event_time", "ascending")]))
    with connect(engine) as conn:
        with conn.transaction():
            if file_record is not None:
                sha = file_record["checksum_sha256"]
                # serialise concurrent loaders of the same file; the unique checksum is the final guard
                conn.execute("select pg_advisory_xact_lock(hashtextextended(%s, 0))", [sha])
                file_record = {"content_sha256": None, "replaced_file_id": None, **file_record}
                if file_record["replaced_file_id"] is not None:  # issue 15: --replace swaps rows in this transaction
                    _delete_file_rows(conn, int(file_record["replaced_file_id"]))
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
                    file_record,
                ).fetchone()[0]
            with conn.cursor() as cur, cur.copy(f"copy raw.events ({columns}) from stdin (format binary)") as copy:
                for chunk in encode_events_binary(table, int(file_id)):
                    copy.write(chunk)
    return int(file_id), table.num_rows


def event_days(table: pa.Table) -> list[dt.date]:
    """The distinct UTC days of ``event_time`` in ``table``."""
    if table.num_rows == 0:
        return []
    us = pc.cast(table.column("event_time"), pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy()
    days = np.unique(us // 86_400_000_000)
    return [dt.date(1970, 1, 1) + dt.timedelta(days=int(d)) for d in days]


def events_table_from_frame(df: pd.DataFrame, *, line_start: int = 1) -> pa.Table:
    """A typed events table (as :func:`load_events_table` wants) from a pandas frame with the REES46 columns.

    event_time may be tz-aware (converted to UTC) or naive (taken as UTC); empty strings and NaN are NULL for the
    nullable text columns; ``line_no`` is taken from the frame if present, else numbered from ``line_start``."""
    import pandas as pd

    from ml.validate import EVENT_COLUMNS

    missing = [c for c in EVENT_COLUMNS if c not in df.columns]
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
    """Put a DataFrame of REES46 events straight into raw.events (no validation, no file record): a fast helper for
    tests and demos. Creates the day partitions, COPYs in one transaction, returns the rows loaded."""
    table = events_table_from_frame(df, line_start=line_start)
    ensure_partitions(engine, event_days(table))
    return load_events_table(engine, table, file_id=file_id)[1]


# --- the pipeline step ------------------------------------------------------------------------------------------------
def _quarantine(
    source_uri: str, data: bytes, report: ValidationReport, settings: Settings, move: bool
) -> tuple[str, str]:
    """Write report + summary, then move (or copy) the original bytes into quarantine. Returns (file, report) URIs."""
    qdir = settings.location("quarantine")
    target = _free_uri(qdir, report.file_name, report.checksum_sha256)
    report_uri = target + ".report.json"
    body = report.as_dict()
    body["quarantine_uri"] = target
    _write_text(report_uri, dumps(body, indent=2) + "\n")
    _write_text(target + ".summary.txt", report.summary_text())
    try:
        _put_file(source_uri, target, data, move=move)
    except FileNotFoundError:  # a concurrent run of the same landing folder moved it first
        if not move:
            raise
        dfs, dp = _fs(target)
        with dfs.open(dp, "wb") as f:  # the bytes we read are the file's: keep them next to the report
            f.write(data)
    return target, report_uri


def _archive(source_uri: str, data: bytes, checksum: str, settings: Settings) -> str:
    target = _free_uri(settings.location("archive"), posixpath.basename(source_uri.rstrip("/")), checksum)
    try:
        _put_file(source_uri, target, data, move=True)
    except FileNotFoundError:  # a concurrent run of the same landing folder archived it first
        log.info("%s: already moved out of landing by a concurrent run", source_uri)
    return target


def ingest_file(
    path: str | Path,
    settings: Settings,
    engine: Engine,
    *,
    dag_run_id: str | None = None,
    runner: GxRunner | None = None,
    now: dt.datetime | None = None,
    replace: bool = False,
) -> IngestResult:
    """Validate one file and load it exactly once (see the module docstring). Returns the outcome; a failed
    validation is a result (status ``quarantined``), not an exception - call ``raise_for_status()`` to raise.

    Raises on infrastructure problems (file unreadable, database down): the file then stays where it was, so a
    retry picks it up again."""
    from ml.validate import GxRunner, validate_bytes
    from ml.validate import row_count_bounds as bounds_of

    started = time.perf_counter()
    uri = str(path)
    name = posixpath.basename(uri.rstrip("/"))
    fmt, compression = file_format(name)
    fs, fpath = _fs(uri)
    in_landing = _is_under(uri, settings.location("landing"))
    try:
        raw = fs.cat_file(fpath)
    except FileNotFoundError:
        if not in_landing:
            raise PipelineError(f"{uri}: no such file") from None
        # a concurrent run of the same landing folder took it (archived or quarantined it) between listing and now
        result = IngestResult(file_name=name, source_uri=uri, status="skipped",
                              message=f"{name}: no longer in landing (taken by a concurrent run); nothing to do")
        log.info(result.message)
        return result
    checksum = hashlib.sha256(raw).hexdigest()
    result = IngestResult(file_name=name, source_uri=uri, status="duplicate", checksum_sha256=checksum)
    result.timings["read"] = time.perf_counter() - started

    def already_loaded(existing: int) -> IngestResult:
        result.status, result.file_id = "duplicate", existing
        if in_landing:
            result.archived_uri = _archive(uri, raw, checksum, settings)
        result.message = f"{name}: already loaded as file_id {existing} (same sha256); nothing to do"
        log.info(result.message)
        result.seconds = time.perf_counter() - started
        return result

    existing = find_ingested(engine, checksum)
    if existing is not None:
        return already_loaded(existing)

    mark = time.perf_counter()
    mean, n_files = row_count_history(engine, settings)
    report, parsed = validate_bytes(
        raw,
        settings,
        file_name=name,
        file_format=fmt,
        compression=compression,
        file_uri=uri,
        checksum=checksum,
        now=now,
        row_count_bounds=bounds_of(mean, n_files, settings),
        runner=runner or GxRunner(data_docs_dir(settings)),
    )
    result.timings["validate"] = time.perf_counter() - mark
    result.row_count = report.row_count
    result.data_docs_uri = report.data_docs_uri
    if report.data_docs_uri:
        log.info("%s: Data Docs %s", name, report.data_docs_uri)
    for w in report.warnings:
        log.warning("validation warning: %s", w.headline(name))

    table = _events_only(parsed) if report.success else None
    content = replaced = None
    if table is not None:
        existing = find_ingested(engine, checksum)  # a concurrent run loaded these very bytes while we validated
        if existing is not None and not replace:
            return already_loaded(existing)
        content, replaced = _content_rules(engine, report, table, name, replace, checksum)

    def quarantined() -> IngestResult:
        q_uri, r_uri = _quarantine(uri, raw, report, settings, move=in_landing)
        result.validation_id = record_validation(
            engine, report, quarantine_uri=q_uri, report_uri=r_uri, dag_run_id=dag_run_id
        )
        result.status = "quarantined"
        result.failed_rules = report.failed_rules
        result.failures = report.failure_lines()
        result.quarantine_uri, result.report_uri = q_uri, r_uri
        result.message = (
            f"{name}: validation failed ({', '.join(report.failed_rules)}); quarantined to {q_uri}; report "
            f"{r_uri}\n" + "\n".join("  - " + line for line in result.failures)
        )
        log.error(result.message)
        result.seconds = time.perf_counter() - started
        return result

    if not report.success or table is None:
        return quarantined()

    mark = time.perf_counter()
    result.validation_id = record_validation(engine, report, dag_run_id=dag_run_id)
    days = event_days(table)
    ensure_partitions(engine, days)
    try:
        file_id, rows = load_events_table(
            engine,
            table,
            file_record={
                "file_name": name,
                "file_uri": uri,
                "checksum_sha256": checksum,
                "file_format": fmt,
                "row_count": table.num_rows,
                "min_event_time": report.min_event_time,
                "max_event_time": report.max_event_time,
                "validation_id": result.validation_id,
                "content_sha256": content,
                "replaced_file_id": replaced,
            },
        )
    except Exception as e:  # another run loaded the same events (other bytes) first: a duplicate delivery
        if "ingested_files_content_idx" not in str(e):
            raise
        holder = find_by_content(engine, content) if content else None
        report.rules.append(_duplicate_rule(report, holder, content or ""))
        return quarantined()
    result.timings["load"] = time.perf_counter() - mark
    result.file_id, result.rows_loaded = file_id, rows
    result.days = [d.isoformat() for d in days]
    result.status = "loaded" if rows else "duplicate"
    if in_landing:
        mark = time.perf_counter()
        result.archived_uri = _archive(uri, raw, checksum, settings)
        result.timings["move"] = time.perf_counter() - mark
    result.seconds = time.perf_counter() - started
    if rows and replaced is not None:
        result.message = f"{name}: replaced file_id {replaced} with {rows:,} rows as file_id {file_id}"
    elif rows:
        result.message = f"{name}: loaded {rows:,} rows as file_id {file_id} in {result.seconds:.1f}s"
    else:
        result.message = f"{name}: loaded concurrently by another run as file_id {file_id}; nothing to do"
    log.info(result.message)
    return result


def _duplicate_rule(report: ValidationReport, holder: tuple[int, str] | None, content: str) -> RuleResult:
    from ml.validation_report import RuleResult

    who = f"file_id {holder[0]} ({holder[1]})" if holder else "another file"
    return RuleResult(
        rule="duplicate_delivery", source="content", success=False, failing_count=report.row_count,
        description="a re-delivery of events already loaded (other bytes, same events) is not loaded again; "
        "ingest it with --replace (DAG param replace) to swap that file's rows",
        observed=f"the same {report.row_count:,} events as {who} (content sha256 {content[:16]})",
    )


def _content_rules(engine: Engine, report: ValidationReport, table: pa.Table, name: str,
                   replace: bool, checksum: str = "") -> tuple[str, int | None]:
    """Exactly-once by content (docs/ingest.md): add the ``duplicate_delivery`` rule (critical) when another file
    already loaded the same events, unless ``replace``, and the ``cross_file_duplicates`` rule (a warning with
    counts) for events already loaded from other files. Returns (content fingerprint, file_id to replace)."""
    from ml.events_io import content_fingerprint
    from ml.validation_report import RuleResult

    content = content_fingerprint(table)
    from ml.fingerprints import backfill_fingerprints  # files loaded before 0141 that this one could repeat

    backfill_fingerprints(engine, lo=report.min_event_time, hi=report.max_event_time)
    holder = find_by_content(engine, content)
    if holder is not None and find_ingested(engine, checksum) == holder[0]:
        return content, None  # these very bytes were loaded by a concurrent run: the load is a no-op
    replaced: int | None = None
    if replace:
        replaced = holder[0] if holder else latest_by_name(engine, name)
        if replaced is not None:
            log.warning("%s: --replace: swaps the rows of file_id %d", name, replaced)
    elif holder is not None:
        report.rules.append(_duplicate_rule(report, holder, content))
        return content, None
    overlap = count_loaded_events(engine, table, report.min_event_time, report.max_event_time, replaced)
    report.rules.append(RuleResult(
        rule="cross_file_duplicates", source="content", severity="warning", success=overlap == 0,
        failing_count=overlap, element_count=report.row_count,
        description="events not already loaded from another file (same event_time, user_id, product_id, "
        "event_type); counted, loaded anyway",
    ))
    return content, replaced


#: Bytes per row used to estimate a file's rows before reading it (REES46 CSV lines are about 110 bytes; gzip
#: shrinks them about 4x; Parquet about 30 bytes a row). Only sizes the ingest groups, never checks anything.
ROW_BYTES_ESTIMATE: dict[str, float] = {"csv": 110.0, "csv.gz": 28.0, "parquet": 30.0}


def group_files(paths: Sequence[str], settings: Settings) -> list[list[str]]:
    """Split ``paths`` (in order) into groups of at most ``settings.ingest_group_max_files`` files and about
    ``settings.ingest_group_max_rows`` rows (estimated from sizes, :data:`ROW_BYTES_ESTIMATE`): one mapped
    ingest task per group. A file above the row bound is a group of its own. Each file of a group is still
    validated, loaded or quarantined and recorded on its own (:func:`ingest_files`)."""
    groups: list[list[str]] = []
    rows = 0.0
    for p in paths:
        name = posixpath.basename(str(p).rstrip("/"))
        try:
            fmt, compression = file_format(name)
            fs, fpath = _fs(str(p))
            est = float(fs.size(fpath) or 0) / ROW_BYTES_ESTIMATE["csv.gz" if compression else fmt]
        except (OSError, ValueError, PipelineError):  # unreadable here: ingest_file will report it
            est = 0.0
        if (not groups or len(groups[-1]) >= settings.ingest_group_max_files
                or (groups[-1] and rows + est > settings.ingest_group_max_rows)):
            groups.append([])
            rows = 0.0
        groups[-1].append(str(p))
        rows += est
    return groups


def _events_only(parsed: ParsedEvents) -> pa.Table:
    assert parsed.table is not None
    from ml.validate import EVENT_COLUMNS

    return parsed.table.select([*EVENT_COLUMNS, "line_no"])


def ingest_files(
    paths: Sequence[str | Path],
    settings: Settings,
    engine: Engine,
    *,
    dag_run_id: str | None = None,
    replace: bool = False,
) -> list[IngestResult]:
    """Ingest several files, one at a time, each on its own (one bad or broken file never stops the others).

    Returns one result per path in order; an unexpected error becomes status ``error`` with its message."""
    from ml.observe import Progress
    from ml.validate import GxRunner

    runner = GxRunner(data_docs_dir(settings))
    progress = Progress("ingest", total=len(paths), unit="files")
    results = []
    for p in paths:
        try:
            results.append(ingest_file(p, settings, engine, dag_run_id=dag_run_id, runner=runner, replace=replace))
        except Exception as e:  # noqa: BLE001 - reported per file; the caller decides the exit status
            log.exception("%s: ingest failed", p)
            results.append(
                IngestResult(
                    file_name=posixpath.basename(str(p)), source_uri=str(p), status="error", message=f"{p}: {e}"
                )
            )
        progress.advance(1)
    progress.finish()
    return results


def requeue(name: str, settings: Settings) -> str:
    """Move a quarantined file back to the landing location (e.g. after a threshold was fixed) and drop its
    ``.report.json``/``.summary.txt`` (the report stays in quality.validation_runs). Returns the new landing URI.

    ``name`` is the file name inside quarantine or a full path/URL. Raises PipelineError if it is not there."""
    qdir = settings.location("quarantine")
    src = name if ("/" in name or "://" in name) else _join(qdir, name)
    if not _is_under(src, qdir) or _norm(src) == _norm(qdir):
        raise PipelineError(f"{name}: not a file in the quarantine location {qdir}; requeue only moves quarantined "
                            "files back to landing (to ingest another file: propensity ingest PATH)")
    fs, sp = _fs(src)
    if not fs.exists(sp) or name.endswith((".report.json", ".summary.txt")):
        raise PipelineError(f"{name}: no such quarantined file in {qdir}")
    landing = settings.location("landing")
    lfs, lp = _fs(landing)
    lfs.makedirs(lp, exist_ok=True)
    base = posixpath.basename(sp)
    dst = _join(landing, base)
    _, dp = _fs(dst)
    if lfs.exists(dp):
        raise PipelineError(f"{base}: a file of that name is already waiting in landing ({dst})")
    _put_file(src, dst, fs.cat_file(sp), move=True)
    for suffix in (".report.json", ".summary.txt"):
        if fs.exists(sp + suffix):
            fs.rm(sp + suffix)
    log.info("requeued %s -> %s", src, dst)
    return dst
