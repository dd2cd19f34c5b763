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
4. on success: ONE transaction inserts the ``raw.ingested_files`` record (checksum, rows, validation id), COPYs
   the rows (PostgreSQL binary COPY through psycopg 3) with their ``file_id`` and ``line_no``, and adds them to
   the feature rollups (:mod:`ml.events_load`: a new day is loaded index-free and attached at the end); a crash
   before the commit leaves neither rows, rollups nor a file record;
5. files taken from the landing location are moved out of it (``archive/`` on success or duplicate,
   ``quarantine/`` on failure), so landing only holds files not yet processed. Files given from elsewhere (e.g. a
   read-only sample) are left in place and copied to quarantine when they fail.

Where the parts live: file locations and listing in :mod:`ml.locations`, reading and parsing in
:mod:`ml.events_io`, the suite in :mod:`ml.validate`, the load transaction in :mod:`ml.events_load`; this module is
the pipeline step and its exactly-once bookkeeping. :func:`ingest_files` (several files: the CLI, each DAG task)
validates the next files in a forked child process while earlier ones load (docs/ingest.md, "Performance"). Times
are UTC. Nothing here imports Airflow.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import posixpath
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from ml.errors import PipelineError, ValidationFailed
from ml.events_load import (  # noqa: F401 - re-exported: callers load events through ml.ingest
    COPY_COLUMNS,
    compute_rollups,
    encode_events_binary,
    ensure_partitions,
    event_days,
    events_table_from_frame,
    load_events_frame,
    load_events_table,
    sort_events,
)
from ml.jsonutil import dumps
from ml.locations import (  # noqa: F401 - re-exported: discover_files and file_format are part of ingest's API
    data_docs_dir,
    discover_files,
    file_format,
    free_uri,
    fs_of,
    is_under,
    join_uri,
    norm_uri,
    put_file,
    write_text,
)
from ml.pgcopy import connect

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from ml.settings import Settings
    from ml.validate import GxRunner, ParsedEvents, ValidationReport
    from ml.validation_report import RuleResult

log = logging.getLogger(__name__)

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


def row_count_history(engine: Engine, settings: Settings, pending: Sequence[int] = ()) -> tuple[float | None, int]:
    """(mean rows per file, files) over the latest ``settings.row_count_history_files`` loaded files; ``pending``:
    row counts of files about to be loaded (newest first), counted as the newest ones."""
    with engine.connect() as c:
        rows = c.execute(
            sa.text("select row_count from raw.ingested_files order by ingested_at desc, file_id desc limit :k"),
            {"k": settings.row_count_history_files},
        ).scalars().all()
    counts = [*pending, *rows][: settings.row_count_history_files]
    return (float(sum(counts)) / len(counts) if counts else None), len(counts)


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


# --- the pipeline step ------------------------------------------------------------------------------------------------
def _quarantine(
    source_uri: str, data: bytes, report: ValidationReport, settings: Settings, move: bool
) -> tuple[str, str]:
    """Write report + summary, then move (or copy) the original bytes into quarantine. Returns (file, report) URIs."""
    qdir = settings.location("quarantine")
    target = free_uri(qdir, report.file_name, report.checksum_sha256)
    report_uri = target + ".report.json"
    body = report.as_dict()
    body["quarantine_uri"] = target
    write_text(report_uri, dumps(body, indent=2) + "\n")
    write_text(target + ".summary.txt", report.summary_text())
    try:
        put_file(source_uri, target, data, move=move)
    except FileNotFoundError:  # a concurrent run of the same landing folder moved it first
        if not move:
            raise
        dfs, dp = fs_of(target)
        with dfs.open(dp, "wb") as f:  # the bytes we read are the file's: keep them next to the report
            f.write(data)
    return target, report_uri


def _archive(source_uri: str, data: bytes, checksum: str, settings: Settings) -> str:
    target = free_uri(settings.location("archive"), posixpath.basename(source_uri.rstrip("/")), checksum)
    try:
        put_file(source_uri, target, data, move=True)
    except FileNotFoundError:  # a concurrent run of the same landing folder archived it first
        log.info("%s: already moved out of landing by a concurrent run", source_uri)
    return target


@dataclass
class _Checked:
    """A file validated and, when it passed, prepared for its load (:func:`_check`); what a validating child process
    sends back. ``table`` (the events sorted for the load) and ``content`` (the content fingerprint) are None when
    the file failed validation; ``rollups`` (:func:`ml.events_load.compute_rollups`) None until computed.
    ``timings``: seconds of ``validate`` and ``prepare``."""

    report: ValidationReport
    table: pa.Table | None = None
    rollups: dict[str, pa.Table] | None = None
    content: str | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (to cross from the child process) with the tables as Arrow IPC streams: one copy of their buffers,
        several times faster than pickling the tables column by column."""
        state = dict(self.__dict__)
        state["table"] = None if self.table is None else _to_ipc(self.table)
        state["rollups"] = None if self.rollups is None else {k: _to_ipc(t) for k, t in self.rollups.items()}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state["table"] = None if state["table"] is None else _from_ipc(state["table"])
        if state["rollups"] is not None:
            state["rollups"] = {k: _from_ipc(b) for k, b in state["rollups"].items()}
        self.__dict__.update(state)


def _to_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _from_ipc(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()  # zero-copy: the table's buffers point into data


@dataclass
class _Validated:
    """A file read (and, once ``checked`` is set, validated), not yet recorded or loaded: the first half of
    :func:`ingest_file`."""

    uri: str
    name: str
    fmt: str
    raw: bytes
    in_landing: bool
    started: float
    result: IngestResult
    bounds: tuple[int, int] | None
    now: dt.datetime | None
    compression: str | None
    checked: _Checked | None = None

    @property
    def report(self) -> ValidationReport:
        assert self.checked is not None
        return self.checked.report


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
    step = _read_and_validate(path, settings, engine, check=_Checker(settings, runner), now=now)
    if isinstance(step, IngestResult):
        return step
    return _record_and_load(step, settings, engine, dag_run_id=dag_run_id, replace=replace)


def _already_loaded(result: IngestResult, existing: int, raw: bytes, settings: Settings, in_landing: bool,
                    started: float) -> IngestResult:
    result.status, result.file_id = "duplicate", existing
    if in_landing:
        result.archived_uri = _archive(result.source_uri, raw, result.checksum_sha256, settings)
    result.message = f"{result.file_name}: already loaded as file_id {existing} (same sha256); nothing to do"
    log.info(result.message)
    result.seconds = time.perf_counter() - started
    return result


def _read_and_validate(
    path: str | Path,
    settings: Settings,
    engine: Engine,
    *,
    check: _Checker,
    now: dt.datetime | None,
    pending_rows: Sequence[int] = (),
) -> IngestResult | _Validated:
    """Steps 1-2 of the module docstring: read, checksum, validate. Returns the final result when there is nothing
    to load (``skipped``, ``duplicate`` by checksum), else the validated file. ``pending_rows``: row counts of files
    validated earlier in this run and about to load, taken into the row-count band as the newest loaded files
    (:func:`ingest_files` checks that guess before loading)."""
    from ml.validate import row_count_bounds as bounds_of

    started = time.perf_counter()
    uri = str(path)
    name = posixpath.basename(uri.rstrip("/"))
    fmt, compression = file_format(name)
    fs, fpath = fs_of(uri)
    in_landing = is_under(uri, settings.location("landing"))
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

    existing = find_ingested(engine, checksum)
    if existing is not None:
        return _already_loaded(result, existing, raw, settings, in_landing, started)
    bounds = bounds_of(*row_count_history(engine, settings, pending_rows), settings)
    v = _Validated(uri=uri, name=name, fmt=fmt, raw=raw, in_landing=in_landing, started=started, result=result,
                   bounds=bounds, now=now, compression=compression)
    return _validate(v, check)


def _validate(v: _Validated, check: _Checker) -> _Validated:
    """Run the structural rules and the GX suite on ``v``'s bytes with ``v.bounds`` as the row-count band, and
    prepare the load of a file that passed (:func:`_check`, through ``check``)."""
    v.checked = check(v)
    v.result.timings.update(v.checked.timings)
    return v


def _check(raw: bytes, settings: Settings, runner: GxRunner, *, name: str, fmt: str, compression: str | None,
           uri: str, checksum: str, now: dt.datetime | None, bounds: tuple[int, int] | None) -> _Checked:
    """Validate one file's bytes (:func:`ml.validate.validate_bytes`) and, if it passed, do part of the load's work
    that needs no database: sort the events (:func:`ml.events_load.sort_events`) and compute their content
    fingerprint. Pure: runs in this process or in a validating child (:class:`_Checker`). The rollups are computed
    by the loader (:func:`_record_and_load`): that split keeps the child and the loader about equally busy."""
    from ml.events_io import content_fingerprint
    from ml.validate import validate_bytes

    mark = time.perf_counter()
    report, parsed = validate_bytes(raw, settings, file_name=name, file_format=fmt, compression=compression,
                                    file_uri=uri, checksum=checksum, now=now, row_count_bounds=bounds, runner=runner)
    checked = _Checked(report, timings={"validate": time.perf_counter() - mark})
    if report.success and parsed.table is not None:
        mark = time.perf_counter()
        checked.table = sort_events(_events_only(parsed))
        checked.content = content_fingerprint(checked.table)
        checked.timings["prepare"] = time.perf_counter() - mark
    return checked


_CHILD: dict[str, Any] = {}  # in a validating child process: its settings and GX runner (set by _child_init)


def _child_init(settings: Settings, runner: GxRunner) -> None:
    _CHILD.update(settings=settings, runner=runner)
    parent = os.getppid()

    def orphaned() -> None:  # the ingest process was killed (no clean shutdown): the forked child holds both ends of
        while os.getppid() == parent:  # its task pipe, so it would wait forever; leave instead
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=orphaned, name="ingest-child-watch", daemon=True).start()


def _check_in_child(raw: bytes, kw: dict[str, Any]) -> _Checked:
    return _check(raw, _CHILD["settings"], _CHILD["runner"], **kw)


class _Checker:
    """Validates and prepares files (:func:`_check`): in one forked child process when ``processes`` (an ingest
    of several files with ``settings.ingest_validation_process``), else in the calling thread.

    Why a process: validating (Great Expectations, pandas) and loading (encoding, psycopg) are both Python, and in
    threads they take turns on the interpreter lock; in a child, the next file is validated on the other core while
    this process streams the previous one to PostgreSQL. The child is forked (it shares the imported Great
    Expectations and settings, nothing is re-imported); it never touches the database. Where a child cannot be
    started (a daemonic process such as some task runners, a platform without fork), files are validated in the
    calling thread, exactly as before. If the child dies (e.g. killed for memory), the file it held fails with an
    error (it stays where it was, for a retry) and the next file gets a new child; if this process is killed, the
    child notices within a second that it is orphaned and exits."""

    def __init__(self, settings: Settings, runner: GxRunner | None = None, *, processes: bool = False) -> None:
        from ml.validate import GxRunner

        self.settings = settings
        self.runner = runner or GxRunner(data_docs_dir(settings))
        self.processes = processes and _can_fork()
        self._pool: Any = None
        self._lock = threading.Lock()

    def __call__(self, v: _Validated) -> _Checked:
        kw = {"name": v.name, "fmt": v.fmt, "compression": v.compression, "uri": v.uri,
              "checksum": v.result.checksum_sha256, "now": v.now, "bounds": v.bounds}
        if self.processes:
            submitted = self._submit(v.raw, kw)
            if submitted is not None:
                return self._result(v, *submitted)
        with self._lock:  # in this process: the loader thread may validate again while the ingest thread validates
            return _check(v.raw, self.settings, self.runner, **kw)

    def _submit(self, raw: bytes, kw: dict[str, Any]) -> tuple[Any, Future[_Checked]] | None:
        """(pool, future) of ``raw`` handed to the child; None when no child can be started (validate here)."""
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor
        from concurrent.futures.process import BrokenProcessPool

        with self._lock:  # the ingest thread and the loader thread (validating again) share the child
            for _ in range(2):
                if self._pool is None:
                    self._pool = ProcessPoolExecutor(1, mp_context=mp.get_context("fork"), initializer=_child_init,
                                                     initargs=(self.settings, self.runner))
                try:
                    return self._pool, self._pool.submit(_check_in_child, raw, kw)
                except BrokenProcessPool:  # the child died while idle, since the last file: a new child
                    self._close_locked()
                except OSError as e:  # fork failed (memory, process limits): this process validates from now on
                    log.warning("cannot start a validating child process (%s); validating in this process", e)
                    break
            self._close_locked()
            self.processes = False
            return None

    def _result(self, v: _Validated, pool: Any, future: Future[_Checked]) -> _Checked:
        from concurrent.futures.process import BrokenProcessPool

        try:
            return future.result()
        except BrokenProcessPool as e:
            with self._lock:
                if self._pool is pool:
                    self._close_locked()
            raise PipelineError(f"{v.name}: the child process validating it died ({e}); the file stays where it "
                                "was, for a retry") from None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _can_fork() -> bool:
    import multiprocessing as mp

    return "fork" in mp.get_all_start_methods() and not mp.current_process().daemon


def _record_and_load(
    v: _Validated, settings: Settings, engine: Engine, *, dag_run_id: str | None, replace: bool
) -> IngestResult:
    """Steps 2-5 of the module docstring for a validated file: record the validation, then quarantine, or check
    exactly-once by content and load in one transaction, then archive."""
    result, report, name, uri, raw = v.result, v.report, v.name, v.uri, v.raw
    checksum, started, in_landing = result.checksum_sha256, v.started, v.in_landing
    result.row_count = report.row_count
    result.data_docs_uri = report.data_docs_uri
    if report.data_docs_uri:
        log.info("%s: Data Docs %s", name, report.data_docs_uri)
    for w in report.warnings:
        log.warning("validation warning: %s", w.headline(name))

    assert v.checked is not None
    table = v.checked.table if report.success else None
    content = replaced = None
    if table is not None:
        existing = find_ingested(engine, checksum)  # a concurrent run loaded these very bytes while we validated
        if existing is not None and not replace:
            return _already_loaded(result, existing, raw, settings, in_landing, started)
        mark = time.perf_counter()
        content, replaced = _content_rules(engine, report, table, name, replace, checksum, v.checked.content)
        result.timings["content"] = time.perf_counter() - mark

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
    rollups = v.checked.rollups
    if rollups is None:  # computed on the loader's side (see _check)
        rollups = compute_rollups(table) if table.num_rows else {}
    try:
        file_id, rows = load_events_table(
            engine,
            table,
            file_record={
                "file_name": name,
                "file_uri": uri,
                "checksum_sha256": checksum,
                "file_format": v.fmt,
                "row_count": table.num_rows,
                "min_event_time": report.min_event_time,
                "max_event_time": report.max_event_time,
                "validation_id": result.validation_id,
                "content_sha256": content,
                "replaced_file_id": replaced,
            },
            rollups=rollups,
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
                   replace: bool, checksum: str = "", content: str | None = None) -> tuple[str, int | None]:
    """Exactly-once by content (docs/ingest.md): add the ``duplicate_delivery`` rule (critical) when another file
    already loaded the same events, unless ``replace``, and the ``cross_file_duplicates`` rule (a warning with
    counts) for events already loaded from other files. ``content``: the table's content fingerprint when already
    computed. Returns (content fingerprint, file_id to replace)."""
    from ml.events_io import content_fingerprint
    from ml.validation_report import RuleResult

    content = content or content_fingerprint(table)
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
            fs, fpath = fs_of(str(p))
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


#: Most validated files in the loader's hands (the one loading and those waiting) when the next file starts
#: validating: enough to keep the validating child busy when one file loads slower than the next validates, few
#: enough to bound memory (each holds its parsed events and rollups).
LOAD_QUEUE = 2


def ingest_files(
    paths: Sequence[str | Path],
    settings: Settings,
    engine: Engine,
    *,
    dag_run_id: str | None = None,
    replace: bool = False,
) -> list[IngestResult]:
    """Ingest several files, each on its own (one bad or broken file never stops the others).

    Pipelined: this thread reads each file and has it validated and prepared (:class:`_Checker`: in a forked child
    process, so Great Expectations runs on the other core), while a loader thread records and loads the files
    already validated, one at a time, in the order given (the next file starts validating while at most
    :data:`LOAD_QUEUE` files are loading or waiting). Every file goes through exactly the steps of :func:`ingest_file`. A file's row-count band is
    first computed counting the files validated before it and not yet loaded as loaded; just before its load the
    band is computed again from what was actually loaded, and the file validated again if the band differs (a file
    before it was not loaded after all), so the outcome is the one a one-file-at-a-time run would give.

    Returns one result per path in order; an unexpected error becomes status ``error`` with its message."""
    from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

    from ml.observe import Progress
    from ml.validate import GxRunner
    from ml.validate import row_count_bounds as bounds_of

    check = _Checker(settings, GxRunner(data_docs_dir(settings)),
                     processes=settings.ingest_validation_process and len(paths) > 1)
    progress = Progress("ingest", total=len(paths), unit="files")
    queued: list[tuple[Future[IngestResult], _Validated | None]] = []  # one per path handled so far, in order
    reported = 0

    def failed(p: str | Path, e: Exception) -> IngestResult:
        log.error("%s: ingest failed", p, exc_info=e)
        return IngestResult(file_name=posixpath.basename(str(p)), source_uri=str(p), status="error",
                            message=f"{p}: {e}")

    def load(v: _Validated) -> IngestResult:  # the loader thread, one file at a time in order
        try:
            bounds = bounds_of(*row_count_history(engine, settings), settings)
            if bounds != v.bounds:  # a file before this one was not loaded after all: validate with the true band
                v.bounds = bounds
                _validate(v, check)
            return _record_and_load(v, settings, engine, dag_run_id=dag_run_id, replace=replace)
        except Exception as e:  # noqa: BLE001 - reported per file; the caller decides the exit status
            return failed(v.uri, e)

    def waiting_loads() -> list[tuple[Future[IngestResult], _Validated]]:
        return [(f, v) for f, v in queued if v is not None and not f.done()]

    def report_done() -> None:
        nonlocal reported
        while reported < len(queued) and queued[reported][0].done():
            reported += 1
            progress.advance(1)

    with check, ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-load") as pool:
        for p in paths:
            while len(pending := waiting_loads()) > LOAD_QUEUE:
                wait([f for f, _ in pending], return_when=FIRST_COMPLETED)
            report_done()
            ahead = [v.report.row_count for _, v in reversed(pending) if v.report.success]  # newest first
            try:
                step = _read_and_validate(p, settings, engine, check=check, now=None, pending_rows=ahead)
            except Exception as e:  # noqa: BLE001 - reported per file
                step = failed(p, e)
            if isinstance(step, IngestResult):
                finished: Future[IngestResult] = Future()
                finished.set_result(step)
                queued.append((finished, None))
            else:
                queued.append((pool.submit(load, step), step))
        results = [f.result() for f, _ in queued]
    report_done()
    progress.finish()
    return results


def requeue(name: str, settings: Settings) -> str:
    """Move a quarantined file back to the landing location (e.g. after a threshold was fixed) and drop its
    ``.report.json``/``.summary.txt`` (the report stays in quality.validation_runs). Returns the new landing URI.

    ``name`` is the file name inside quarantine or a full path/URL. Raises PipelineError if it is not there."""
    qdir = settings.location("quarantine")
    src = name if ("/" in name or "://" in name) else join_uri(qdir, name)
    if not is_under(src, qdir) or norm_uri(src) == norm_uri(qdir):
        raise PipelineError(f"{name}: not a file in the quarantine location {qdir}; requeue only moves quarantined "
                            "files back to landing (to ingest another file: propensity ingest PATH)")
    fs, sp = fs_of(src)
    if not fs.exists(sp) or name.endswith((".report.json", ".summary.txt")):
        raise PipelineError(f"{name}: no such quarantined file in {qdir}")
    landing = settings.location("landing")
    lfs, lp = fs_of(landing)
    lfs.makedirs(lp, exist_ok=True)
    base = posixpath.basename(sp)
    dst = join_uri(landing, base)
    _, dp = fs_of(dst)
    if lfs.exists(dp):
        raise PipelineError(f"{base}: a file of that name is already waiting in landing ({dst})")
    put_file(src, dst, fs.cat_file(sp), move=True)
    for suffix in (".report.json", ".summary.txt"):
        if fs.exists(sp + suffix):
            fs.rm(sp + suffix)
    log.info("requeued %s -> %s", src, dst)
    return dst
