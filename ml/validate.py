"""Validation of one REES46 event file: structural reading rules, typed parsing, and a Great Expectations suite.

One *row* of a file is one REES46 event. Rows are identified by ``line_no``: for CSV the physical 1-based line number
in the file (the header is line 1, the first event line 2; a quoted value spanning lines counts from its first
line); for Parquet the 1-based row number. Every failure names the file, the rule, the field and sample lines.

How a file is checked (all vectorised, no per-row Python loop on the good path):

1. **Structure** (:func:`read_events`, rules of source ``structure``): ``file_not_empty``, ``encoding_utf8``,
   ``delimiter`` (the header must be comma-separated), ``field_count`` (every line has as many fields as the header),
   ``last_line_complete`` (the file ends with a line terminator: a cut upload is not loaded), ``csv_structure``
   (records could be aligned to lines), ``file_readable`` (Parquet). Lines that break ``field_count`` are left out
   of the typed frame; the file fails anyway.
2. **Typed parsing**: every field is parsed to its type with Arrow kernels; a value that is missing where required
   or does not parse is kept, as text, in a helper column ``_invalid_<field>`` so that the GX rule can name the
   line and show the value.
3. **Great Expectations 1.x** (:func:`build_suite`, suite ``raw_events``, defined here in code, run in an ephemeral
   context on the typed pandas frame): exact column set, row count > 0, row count within a band around the trailing
   average of loaded files, duplicate-row ratio, per-field type / range / set / uuid / length rules and null-ratio
   thresholds. Data Docs (HTML) are written under ``reports/data_docs``.

The result is a :class:`ValidationReport` (machine-readable ``to_dict``, human-readable ``summary_text``).
Great Expectations is imported lazily (it takes seconds to import).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import logging
import uuid
from collections.abc import Sequence
import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    from ml.settings import Settings

log = logging.getLogger(__name__)

SUITE_NAME = "raw_events"
from ml.schema import EVENT_TYPES  # noqa: E402 - the one definition
from ml.schema import REES46_COLUMNS as EVENT_COLUMNS  # noqa: E402
INT_FIELDS: tuple[str, ...] = ("product_id", "category_id", "user_id")
TEXT_FIELDS: tuple[str, ...] = ("category_code", "brand")
PARSED_FIELDS: tuple[str, ...] = ("event_time", "product_id", "category_id", "price", "user_id")
LINE_COLUMN = "_line_no"
DUPLICATE_COLUMN = "_duplicate_of"
UUID_REGEX = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
REES46_TIME_FORMAT = "%Y-%m-%d %H:%M:%S UTC"
SAMPLE_ROWS = 5
MAX_SAMPLE_CHARS = 200

_REES46_TIME_RE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2} UTC$"
_ISO_TIME_RE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?(Z|[+-][0-9]{2}:?[0-9]{2})$"
_INT_RE = r"^[0-9]{1,19}$"
_FLOAT_RE = r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?$"
_INT64_MAX = "9223372036854775807"
_OTHER_DELIMITERS = (";", "\t", "|")


def invalid_column(name: str) -> str:
    """The helper column holding the raw text of ``name`` where it is missing or does not parse."""
    return f"_invalid_{name}"


# --- records ----------------------------------------------------------------------------------------------------------
@dataclass
class RuleResult:
    """The outcome of one rule on one file.

    ``samples`` holds up to :data:`SAMPLE_ROWS` failing rows: ``{"line": int, "value": str, "row": str}`` where
    ``row`` is the raw CSV line (or the Parquet row's values), cut to :data:`MAX_SAMPLE_CHARS` characters.
    ``failing_count`` counts failing rows (row rules) or is 1 for a failed file-level rule.
    """

    rule: str
    description: str
    success: bool
    field: str | None = None
    severity: str = "critical"
    source: str = "structure"
    failing_count: int = 0
    element_count: int | None = None
    observed: Any = None
    samples: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    expectation_type: str | None = None
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def blocking(self) -> bool:
        """A failed rule of severity ``critical`` sends the file to quarantine."""
        return not self.success and self.severity == "critical"

    def headline(self, file_name: str) -> str:
        """One line naming the file, rule, field, count and the first failing lines."""
        where = f" field {self.field}" if self.field else ""
        count = ""
        if self.element_count is not None and self.failing_count:
            count = f": {self.failing_count:,} of {self.element_count:,} rows fail"
        elif self.observed is not None:
            count = f": observed {_short(self.observed)}"
        lines = [s["line"] for s in self.samples if s.get("line") is not None]
        more = ", ..." if self.failing_count > len(lines) else ""
        at = f" (lines {', '.join(str(n) for n in lines)}{more})" if lines else ""
        return f"{file_name}: rule {self.rule}{where}{count}{at} - {self.description}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "field": self.field,
            "description": self.description,
            "success": self.success,
            "severity": self.severity,
            "source": self.source,
            "failing_count": self.failing_count,
            "element_count": self.element_count,
            "observed": _jsonable(self.observed),
            "samples": _jsonable(self.samples),
            "expectation_type": self.expectation_type,
            "kwargs": _jsonable(self.kwargs),
        }


@dataclass
class ValidationReport:
    """Everything known about one validation of one file; ``success`` is False when any critical rule failed.

    Times are UTC. ``row_count`` counts the event rows that were read (lines breaking ``field_count`` excluded).
    """

    file_name: str
    file_uri: str
    checksum_sha256: str
    file_format: str
    size_bytes: int
    row_count: int
    rules: list[RuleResult]
    validated_at: dt.datetime
    suite_name: str = SUITE_NAME
    statistics: dict[str, Any] = dataclasses.field(default_factory=dict)
    data_docs_uri: str | None = None
    min_event_time: dt.datetime | None = None
    max_event_time: dt.datetime | None = None

    @property
    def success(self) -> bool:
        return not any(r.blocking for r in self.rules)

    @property
    def failed(self) -> list[RuleResult]:
        """The critical rules that failed, in suite order."""
        return [r for r in self.rules if r.blocking]

    @property
    def warnings(self) -> list[RuleResult]:
        return [r for r in self.rules if not r.success and not r.blocking]

    @property
    def failed_rules(self) -> list[str]:
        return [r.rule for r in self.failed]

    def failure_lines(self) -> list[str]:
        """One human-readable line per failed critical rule (what :class:`ml.errors.ValidationFailed` carries)."""
        return [r.headline(self.file_name) for r in self.failed]

    def to_dict(self) -> dict[str, Any]:
        """The machine-readable report (JSON-safe), as written to ``<name>.report.json``."""
        return {
            "file_name": self.file_name,
            "file_uri": self.file_uri,
            "checksum_sha256": self.checksum_sha256,
            "file_format": self.file_format,
            "size_bytes": self.size_bytes,
            "row_count": self.row_count,
            "suite_name": self.suite_name,
            "validated_at": self.validated_at.isoformat(),
            "success": self.success,
            "failed_rules": self.failed_rules,
            "warnings": [r.rule for r in self.warnings],
            "statistics": _jsonable(self.statistics),
            "data_docs_uri": self.data_docs_uri,
            "min_event_time": self.min_event_time.isoformat() if self.min_event_time else None,
            "max_event_time": self.max_event_time.isoformat() if self.max_event_time else None,
            "rules": [r.to_dict() for r in self.rules],
        }

    def summary_text(self) -> str:
        """The human-readable summary written to ``<name>.summary.txt``: each failed rule, its failing count and
        sample rows with their line numbers."""
        unit = "row" if self.file_format == "parquet" else "line"
        out = [
            f"File:      {self.file_uri}",
            f"Format:    {self.file_format}, {self.size_bytes:,} bytes, sha256 {self.checksum_sha256}",
            f"Rows read: {self.row_count:,}",
            f"Validated: {self.validated_at:%Y-%m-%d %H:%M:%S} UTC, suite {self.suite_name}",
            f"Result:    {'PASSED' if self.success else 'FAILED'}"
            + (f" - {len(self.failed)} rule(s) failed: {', '.join(self.failed_rules)}" if self.failed else ""),
        ]
        if self.data_docs_uri:
            out.append(f"Data Docs: {self.data_docs_uri}")
        for title, rules in (("Failed rules", self.failed), ("Warnings", self.warnings)):
            if not rules:
                continue
            out += ["", f"{title}:"]
            for r in rules:
                out.append("")
                out.append(f"[{r.rule}]{' field ' + r.field if r.field else ''}: {r.description}")
                if r.element_count is not None and r.failing_count:
                    pct = 100.0 * r.failing_count / max(r.element_count, 1)
                    out.append(f"  failing: {r.failing_count:,} of {r.element_count:,} rows ({pct:.2f}%)")
                if r.observed is not None:
                    out.append(f"  observed: {_short(r.observed)}")
                for s in r.samples:
                    value = f" value={_short(s.get('value'))}" if "value" in s else ""
                    out.append(f"  {unit} {s.get('line')}:{value}")
                    if s.get("row") is not None:
                        out.append(f"      {s['row']}")
        return "\n".join(out) + "\n"


@dataclass
class ParsedEvents:
    """A file read into typed columns.

    ``table`` holds the typed REES46 columns present in the header (event_time timestamp[us, UTC], ids int64,
    price float64, text as string with empty = null), any extra header columns as raw strings, and ``line_no``
    (int64); ``invalid`` maps each parsed field to the raw text where it is missing or unparseable (null elsewhere).
    ``table`` is None when the structure is unusable (wrong delimiter, unreadable file): no GX run then.
    """

    file_format: str
    header: list[str]
    structure: list[RuleResult]
    table: pa.Table | None
    invalid: dict[str, pa.Array]
    source_bytes: bytes = b""
    row_text: Any = None  # callable(lines: list[int]) -> dict[int, str], for report samples

    @property
    def row_count(self) -> int:
        return 0 if self.table is None else self.table.num_rows


# --- reading ----------------------------------------------------------------------------------------------------------
def read_events(
    data: bytes, file_format: str, settings: Settings, compression: str | None = None
) -> ParsedEvents:
    """Read the bytes of one file (``csv`` or ``parquet``; ``compression`` None or ``gzip``) into typed columns plus
    structural rule results. Never raises for bad content: structural problems become failed rules.
    """
    if compression == "gzip":
        import gzip

        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            rule = _structure_rule("file_readable", f"the file decompresses as gzip ({e})", False, failing_count=1)
            return ParsedEvents(file_format, [], [rule], None, {}, b"", None)
    elif compression is not None:
        raise ValueError(f"unsupported compression {compression!r}")
    if file_format == "parquet":
        return _read_parquet(data)
    if file_format != "csv":
        raise ValueError(f"unsupported file format {file_format!r} (csv or parquet)")
    return _read_csv(data, settings)


def _structure_rule(rule: str, description: str, success: bool = True, **kw: Any) -> RuleResult:
    return RuleResult(rule=rule, description=description, success=success, source="structure", **kw)


def _read_csv(data: bytes, settings: Settings) -> ParsedEvents:
    rules: list[RuleResult] = []
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    empty = not data[:65536].strip() and not data.strip()  # the full strip copies: only for a blank head
    rules.append(
        _structure_rule(
            "file_not_empty", "the file holds at least a header line", not empty, failing_count=int(empty)
        )
    )
    if empty:
        return ParsedEvents("csv", [], rules, _empty_table([]), {}, data, _csv_row_text(data))

    # encoding: ASCII is the common fast case; otherwise strict UTF-8, and on failure keep validating the text with
    # the bad bytes replaced (U+FFFD) so that the report also lists the other broken rules.
    bad_lines: list[int] = []
    if not data.isascii():
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            text = data.decode("utf-8", errors="replace")
            bad_lines = [i + 1 for i, line in enumerate(text.split("\n")) if "\ufffd" in line]
            data = text.encode("utf-8")
    if b"\x00" in data:  # PostgreSQL text cannot hold NUL: reject here rather than fail the COPY later
        text = data.decode("utf-8")
        bad_lines = sorted(set(bad_lines) | {i + 1 for i, line in enumerate(text.split("\n")) if "\x00" in line})
        data = data.replace(b"\x00", b"\xef\xbf\xbd")
    row_text = _csv_row_text(data)
    rules.append(
        _structure_rule(
            "encoding_utf8",
            "the file is valid UTF-8 text without NUL bytes",
            not bad_lines,
            failing_count=len(bad_lines),
            samples=_line_samples(row_text, bad_lines),
        )
    )

    first_nl = data.find(b"\n")
    header_line = (data if first_nl < 0 else data[:first_nl]).rstrip(b"\r").decode("utf-8")
    header = next(csv.reader([header_line]), [])
    wrong = [d for d in _OTHER_DELIMITERS if len(header) == 1 and d in header_line]
    rules.append(
        _structure_rule(
            "delimiter",
            "fields are separated by commas",
            not wrong,
            failing_count=int(bool(wrong)),
            observed=f"header looks {wrong[0]!r}-separated: {header_line[:MAX_SAMPLE_CHARS]!r}" if wrong else None,
            samples=_line_samples(row_text, [1]) if wrong else [],
        )
    )
    if wrong:
        return ParsedEvents("csv", header, rules, None, {}, data, row_text)
    header = _dedupe(header)

    strings, line_no, structure_rules, ok = _split_records(data, len(header))
    rules += structure_rules
    ends_ok = data.endswith(b"\n")
    if settings.require_final_newline:
        last = 0 if ends_ok else data.count(b"\n") + 1
        rules.append(
            _structure_rule(
                "last_line_complete",
                "the last line ends with a line terminator (otherwise the upload may be cut)",
                ends_ok,
                failing_count=int(not ends_ok),
                samples=[] if ends_ok else _line_samples(row_text, [last]),
            )
        )
    if not ok:
        return ParsedEvents("csv", header, rules, None, {}, data, row_text)
    table, invalid = _typed_table(strings, header, line_no)
    return ParsedEvents("csv", header, rules, table, invalid, data, row_text)


def _dedupe(names: list[str]) -> list[str]:
    """Header names made unique pandas-style (``price``, ``price.1``) so that a duplicated column shows as extra."""
    seen: dict[str, int] = {}
    out = []
    for n in names:
        if n in seen:
            seen[n] += 1
            out.append(f"{n}.{seen[n]}")
        else:
            seen[n] = 0
            out.append(n)
    return out


def _arrow_csv(
    body: bytes, n_cols: int, quoted: bool, use_threads: bool
) -> tuple[pa.Table, list[tuple[int | None, int]]]:
    """Parse CSV ``body`` (header line included, skipped) into ``n_cols`` string columns named c0..; rows with another
    number of fields are skipped and returned as (line number or None, field count)."""
    import pyarrow.csv as pcsv

    names = [f"c{i}" for i in range(n_cols)]
    skipped: list[tuple[int | None, int]] = []

    def on_bad_row(row: Any) -> str:
        skipped.append((row.number, row.actual_columns))
        return "skip"

    block = 1 << 22
    while True:
        skipped.clear()
        try:
            table = pcsv.read_csv(
                io.BytesIO(body),
                read_options=pcsv.ReadOptions(
                    use_threads=use_threads, skip_rows=1, column_names=names, block_size=block
                ),
                parse_options=pcsv.ParseOptions(
                    newlines_in_values=quoted, ignore_empty_lines=False, invalid_row_handler=on_bad_row
                ),
                convert_options=pcsv.ConvertOptions(
                    column_types={n: pa.string() for n in names},
                    strings_can_be_null=False,
                    quoted_strings_can_be_null=False,
                ),
            )
            return table, list(skipped)
        except pa.ArrowInvalid as e:
            # a line longer than the block (e.g. a 10 MB field) "straddles" blocks: retry with bigger blocks
            if "straddl" in str(e) and block < len(body) + 1:
                block = min(block * 8, len(body) + 1)
                continue
            raise


def _has_stray_cr(data: bytes) -> bool:
    """True if a carriage return appears other than right before a line feed (Arrow would split lines there)."""
    if b"\r" not in data:
        return False
    a = np.frombuffer(data, dtype=np.uint8)
    cr = np.flatnonzero(a == 13)
    nxt = cr + 1
    return bool((nxt >= len(a)).any() or (a[np.minimum(nxt, len(a) - 1)] != 10).any())


def _any_blank_row(table: pa.Table) -> bool:
    if table.num_rows == 0 or table.num_columns == 0:
        return False
    blank = pc.equal(pc.utf8_length(table.column(0)), 0)
    for col in table.columns[1:]:
        blank = pc.and_(blank, pc.equal(pc.utf8_length(col), 0))
    return bool(pc.any(blank).as_py())


def _split_records(data: bytes, n_cols: int) -> tuple[pa.Table | None, np.ndarray, list[RuleResult], bool]:
    """Split the CSV into records of ``n_cols`` string fields and their first line numbers.

    Fast path (no quotes, no stray CR, no blank lines, every line well-formed): Arrow's multi-threaded reader, line
    numbers 2..n+1. Otherwise a quote-aware numpy scan finds every record and its field count; bad records are
    reported under ``field_count`` and removed before parsing. Returns (strings, line_no, rules, ok).
    """
    has_quotes = b'"' in data
    simple = not has_quotes and not _has_stray_cr(data)
    if simple:
        table, skipped = _arrow_csv(data, n_cols, quoted=False, use_threads=True)
        n_lines = data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
        # Arrow reads a blank line as a row of empty fields: those go through the general path (field_count)
        if not skipped and table.num_rows == n_lines - 1 and not _any_blank_row(table):
            rule = _structure_rule(
                "field_count", f"every line has {n_cols} comma-separated fields", element_count=table.num_rows
            )
            return table, np.arange(2, table.num_rows + 2, dtype=np.int64), [rule], True

    # general path: quote-aware record scan
    a = np.frombuffer(data, dtype=np.uint8)
    all_nl = np.flatnonzero(a == 10)
    nl, commas = all_nl, np.flatnonzero(a == 44)
    if has_quotes:
        q = np.flatnonzero(a == 34)
        nl = nl[np.searchsorted(q, nl) % 2 == 0]
        commas = commas[np.searchsorted(q, commas) % 2 == 0]
    starts = np.concatenate([[0], nl + 1])
    ends = np.concatenate([nl, [len(a)]])
    if starts[-1] == len(a):  # the file ends with a newline: no record after it
        starts, ends = starts[:-1], ends[:-1]
    # content end excludes a CR before the LF
    cend = ends - ((ends > starts) & (a[np.maximum(ends - 1, 0)] == 13))
    blank = cend == starts
    fields = np.diff(np.searchsorted(commas, np.concatenate([starts, [len(a)]]))) + 1
    fields = np.where(blank, 0, fields)
    # trailing blank lines at the end of the file carry nothing: ignore them
    keep_n = len(starts)
    while keep_n > 1 and blank[keep_n - 1]:
        keep_n -= 1
    starts, ends, cend, blank, fields = starts[:keep_n], ends[:keep_n], cend[:keep_n], blank[:keep_n], fields[:keep_n]
    first_line = np.searchsorted(all_nl, starts) + 1
    rec_lines, rec_fields = first_line[1:], fields[1:]
    bad = rec_fields != n_cols
    bad_lines = rec_lines[bad]
    row_text = _csv_row_text(data)
    samples = _line_samples(row_text, bad_lines[:SAMPLE_ROWS].tolist())
    for s, nf in zip(samples, rec_fields[bad][:SAMPLE_ROWS].tolist(), strict=False):
        s["value"] = f"{nf} field(s)"
    rules = [
        _structure_rule(
            "field_count",
            f"every line has {n_cols} comma-separated fields",
            not bad.any(),
            failing_count=int(bad.sum()),
            element_count=int(len(rec_lines)),
            samples=samples,
        )
    ]
    good_lines = rec_lines[~bad]
    # keep the header and the good records only (a byte mask built from record spans, no per-row loop); this also
    # drops the ignored blank lines at the end
    spans = np.zeros(len(a) + 1, dtype=np.int64)
    keep = np.concatenate([[True], ~bad])
    span_end = np.minimum(ends + 1, len(a))
    np.add.at(spans, starts[keep], 1)
    np.add.at(spans, span_end[keep], -1)
    body = a[np.cumsum(spans[:-1]) > 0].tobytes()
    if body and not body.endswith(b"\n"):
        body += b"\n"
    try:
        table, skipped = _arrow_csv(body, n_cols, quoted=has_quotes, use_threads=True)
    except pa.ArrowInvalid as e:
        rules.append(_structure_rule("csv_structure", f"the file parses as CSV ({e})", False, failing_count=1))
        return None, good_lines, rules, False
    if skipped or table.num_rows != len(good_lines):
        rules.append(
            _structure_rule(
                "csv_structure",
                "records align with lines (quotes balanced, no stray carriage returns)",
                False,
                failing_count=1,
                observed=f"{table.num_rows} records parsed for {len(good_lines)} lines",
            )
        )
        return None, good_lines, rules, False
    return table, good_lines.astype(np.int64), rules, True


def _read_parquet(data: bytes) -> ParsedEvents:
    import pyarrow.parquet as pq

    try:
        raw = pq.read_table(io.BytesIO(data))
    except Exception as e:  # noqa: BLE001 - any reader error is a failed rule, named below
        rule = _structure_rule("file_readable", f"the file is a readable Parquet file ({e})", False, failing_count=1)
        return ParsedEvents("parquet", [], [rule], None, {}, data, None)
    rules = [_structure_rule("file_readable", "the file is a readable Parquet file")]
    header = list(raw.column_names)
    line_no = np.arange(1, raw.num_rows + 1, dtype=np.int64)
    table, invalid = _typed_table(raw, header, line_no, positional=False)
    row_text = _parquet_row_text(table)
    # Arrow strings are valid UTF-8 already; PostgreSQL text still cannot hold NUL
    nul = np.zeros(table.num_rows, dtype=bool)
    for name in ("event_type", *TEXT_FIELDS, "user_session"):
        if name in table.column_names:
            hit = pc.fill_null(pc.match_substring(table.column(name), "\x00"), False)
            nul |= np.asarray(hit.to_numpy(zero_copy_only=False), dtype=bool)
    bad_rows = (np.flatnonzero(nul) + 1).tolist()
    rules.append(
        _structure_rule(
            "encoding_utf8",
            "text values hold no NUL bytes",
            not bad_rows,
            failing_count=len(bad_rows),
            samples=_line_samples(row_text, bad_rows),
        )
    )
    return ParsedEvents("parquet", header, rules, table, invalid, b"", row_text)


def _empty_table(header: list[str]) -> pa.Table:
    table, _ = _typed_table(pa.table({f"c{i}": pa.array([], pa.string()) for i in range(len(header))}), header,
                            np.zeros(0, dtype=np.int64))
    return table


# --- typed parsing ----------------------------------------------------------------------------------------------------
def _as_string(col: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """A column as plain strings (dictionaries decoded, other types rendered as text); chunking is kept."""
    if pa.types.is_dictionary(col.type):
        col = pc.cast(col, col.type.value_type)
    if pa.types.is_large_string(col.type) or not pa.types.is_string(col.type):
        col = pc.cast(col, pa.string())
    return col


def _blank_to_null(s: pa.Array) -> pa.Array:
    return pc.if_else(pc.equal(s, ""), pa.scalar(None, pa.string()), s)


def _invalid_text(raw: pa.Array, ok: pa.Array) -> pa.Array:
    """The raw text where ``ok`` is False (null elsewhere); a null raw value shows as an empty string."""
    text = pc.fill_null(_as_string(raw), "")
    return pc.if_else(pc.fill_null(ok, False), pa.scalar(None, pa.string()), text)


def parse_event_time(raw: pa.Array) -> tuple[pa.Array, pa.Array]:
    """Parse event_time to timestamp[us, UTC]; returns (values with null where invalid, ok mask).

    Accepted: the REES46 form ``2019-10-01 00:00:00 UTC``; ISO 8601 with ``Z`` or an explicit offset; for Parquet,
    timestamp columns (tz-naive ones are taken as UTC). Missing values are invalid (the field is required)."""
    utc = pa.timestamp("us", tz="UTC")
    if pa.types.is_timestamp(raw.type):
        vals = pc.cast(raw, pa.timestamp("us", tz=raw.type.tz)) if raw.type.unit != "us" else raw
        vals = vals.cast(utc) if raw.type.tz is None else pc.cast(vals, utc)
        return vals, pc.is_valid(vals)
    s = _as_string(raw)
    shaped = pc.fill_null(pc.match_substring_regex(s, _REES46_TIME_RE), False)
    vals = pc.strptime(pc.if_else(shaped, s, pa.scalar(None, pa.string())), format=REES46_TIME_FORMAT, unit="us",
                       error_is_null=True).cast(utc)
    ok = pc.is_valid(vals)
    iso = pc.and_(pc.invert(ok), pc.fill_null(pc.match_substring_regex(s, _ISO_TIME_RE), False))
    if pc.any(iso).as_py():
        vals = vals.combine_chunks() if isinstance(vals, pa.ChunkedArray) else vals
        iso = iso.combine_chunks() if isinstance(iso, pa.ChunkedArray) else iso
        subset = pc.filter(s, iso).to_pylist()
        parsed = pd.to_datetime(pd.Series(subset, dtype=object), format="ISO8601", utc=True, errors="coerce")
        vals = pc.replace_with_mask(vals, iso, pa.array(parsed.astype("datetime64[us, UTC]"), type=utc))
        ok = pc.is_valid(vals)
    return vals, ok


def parse_int64(raw: pa.Array) -> tuple[pa.Array, pa.Array]:
    """Parse a decimal integer field to int64 (digits only, no sign, within int64); (values, ok mask).

    Integer Parquet columns pass through; float columns are accepted only where they hold whole numbers."""
    if pa.types.is_integer(raw.type):
        if pa.types.is_uint64(raw.type):
            big = pc.greater(raw, pa.scalar(2**63 - 1, pa.uint64()))
            raw = pc.if_else(big, pa.scalar(None, pa.uint64()), raw)
        vals = pc.cast(raw, pa.int64())
        return vals, pc.is_valid(vals)
    if pa.types.is_floating(raw.type):
        f = pc.cast(raw, pa.float64())
        whole = pc.and_(pc.equal(pc.floor(f), f), pc.less(pc.abs(f), 2.0**53))
        whole = pc.fill_null(whole, False)
        vals = pc.cast(pc.if_else(whole, f, pa.scalar(None, pa.float64())), pa.int64())
        return vals, whole
    s = _as_string(raw)
    digits = pc.fill_null(pc.match_substring_regex(s, _INT_RE), False)
    too_big = pc.and_(pc.equal(pc.utf8_length(s), 19), pc.greater(s, _INT64_MAX))
    ok = pc.and_(digits, pc.invert(pc.fill_null(too_big, False)))
    vals = pc.cast(pc.if_else(ok, s, pa.scalar(None, pa.string())), pa.int64())
    return vals, ok


def parse_float64(raw: pa.Array) -> tuple[pa.Array, pa.Array]:
    """Parse a decimal number (optionally signed, optional exponent) to a finite float64; (values, ok mask)."""
    if pa.types.is_integer(raw.type) or pa.types.is_floating(raw.type) or pa.types.is_decimal(raw.type):
        vals = pc.cast(raw, pa.float64())
    else:
        s = _as_string(raw)
        shaped = pc.fill_null(pc.match_substring_regex(s, _FLOAT_RE), False)
        vals = pc.cast(pc.if_else(shaped, s, pa.scalar(None, pa.string())), pa.float64())
    finite = pc.fill_null(pc.is_finite(vals), False)
    vals = pc.if_else(finite, vals, pa.scalar(None, pa.float64()))
    return vals, finite


def _typed_table(
    raw: pa.Table, header: list[str], line_no: np.ndarray, positional: bool = True
) -> tuple[pa.Table, dict[str, pa.Array]]:
    """Typed columns for the REES46 fields in ``header`` (raw strings for unknown columns), plus ``line_no``."""
    cols: dict[str, pa.Array] = {}
    invalid: dict[str, pa.Array] = {}
    for i, name in enumerate(header):
        col = raw.column(i if positional else name)  # chunked: Arrow kernels run per chunk, no copy
        if name == "event_time":
            cols[name], ok = parse_event_time(col)
            invalid[name] = _invalid_text(col, ok)
        elif name in INT_FIELDS:
            cols[name], ok = parse_int64(col)
            invalid[name] = _invalid_text(col, ok)
        elif name == "price":
            cols[name], ok = parse_float64(col)
            invalid[name] = _invalid_text(col, ok)
        elif name in EVENT_COLUMNS:  # event_type, category_code, brand, user_session: text, empty = null
            cols[name] = _blank_to_null(_as_string(col))
        else:
            cols[name] = _as_string(col)
    cols["line_no"] = pa.array(line_no, pa.int64())
    return pa.table(cols), invalid


# --- samples ----------------------------------------------------------------------------------------------------------
def _short(value: Any, limit: int = MAX_SAMPLE_CHARS) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text):,} chars)"


def _csv_row_text(data: bytes) -> Any:
    """A function mapping line numbers to their raw text (cut), for report samples; failure path only."""
    cache: dict[str, np.ndarray] = {}

    def lookup(lines: Sequence[int]) -> dict[int, str]:
        if "nl" not in cache:
            cache["nl"] = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10)
        nl = cache["nl"]
        out = {}
        for n in lines:
            n = int(n)
            start = 0 if n <= 1 else (int(nl[n - 2]) + 1 if n - 2 < len(nl) else len(data))
            end = int(nl[n - 1]) if n - 1 < len(nl) else len(data)
            chunk = data[start : min(end, start + MAX_SAMPLE_CHARS * 4)].rstrip(b"\r")
            text = chunk.decode("utf-8", errors="replace")
            more = end - start > len(chunk) + 1
            if more or len(text) > MAX_SAMPLE_CHARS:
                text = text[:MAX_SAMPLE_CHARS] + f"... ({end - start:,} bytes)"
            out[n] = text
        return out

    return lookup


def _parquet_row_text(table: pa.Table) -> Any:
    def lookup(lines: Sequence[int]) -> dict[int, str]:
        out = {}
        for n in lines:
            row = table.slice(int(n) - 1, 1).to_pylist()
            if row:
                out[int(n)] = _short({k: v for k, v in row[0].items() if k != "line_no"}, MAX_SAMPLE_CHARS * 2)
        return out

    return lookup


def _line_samples(row_text: Any, lines: Sequence[int]) -> list[dict[str, Any]]:
    lines = [int(n) for n in list(lines)[:SAMPLE_ROWS]]
    if not lines or row_text is None:
        return [{"line": n} for n in lines]
    texts = row_text(lines)
    return [{"line": n, "row": texts.get(n)} for n in lines]


def _isna(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, (dt.datetime, dt.date, pd.Timestamp)):
        return value.isoformat()
    if isinstance(value, str) and len(value) > MAX_SAMPLE_CHARS * 2:
        return value[: MAX_SAMPLE_CHARS * 2] + f"... ({len(value):,} chars)"
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


# --- the GX frame and suite -------------------------------------------------------------------------------------------
def to_gx_frame(parsed: ParsedEvents) -> pd.DataFrame:
    """The pandas frame Great Expectations validates: the file's columns (typed where known), ``_line_no``,
    ``_duplicate_of`` (line of the first identical row, null for first occurrences) and ``_invalid_<field>``."""
    assert parsed.table is not None
    t = parsed.table
    frame: dict[str, Any] = {}
    for name in t.column_names:
        if name == "line_no":
            continue
        col = t.column(name)
        if name in INT_FIELDS:
            nullable = {pa.int64(): pd.Int64Dtype()}.get
            frame[name] = col.to_pandas(types_mapper=nullable) if col.null_count else col.to_numpy()
        elif name in ("event_type", *TEXT_FIELDS):
            # categorical: few distinct values, and GX copies the frame (row filters) per expectation
            frame[name] = pc.dictionary_encode(col).to_pandas()
        else:
            frame[name] = col.to_pandas()
    df = pd.DataFrame(frame, copy=False)
    line_no = t.column("line_no").to_numpy()
    data_cols = [c for c in df.columns]
    if len(df) and data_cols:
        h = pd.util.hash_pandas_object(df[data_cols], index=False).to_numpy()
        first = pd.Series(line_no).groupby(h, sort=False).transform("first").to_numpy()
        dup = pd.array(np.where(first != line_no, first, 0), dtype="Int64")
        dup[first == line_no] = pd.NA
    else:
        dup = pd.array([pd.NA] * len(df), dtype="Int64")
    df[LINE_COLUMN] = line_no
    df[DUPLICATE_COLUMN] = dup
    for name, arr in parsed.invalid.items():
        df[invalid_column(name)] = arr.to_pandas()
    return df


def gx_columns(present: Sequence[str]) -> list[str]:
    """The exact column set the GX frame must have: the REES46 columns plus the helpers of the present fields."""
    return [
        *EVENT_COLUMNS,
        LINE_COLUMN,
        DUPLICATE_COLUMN,
        *(invalid_column(f) for f in PARSED_FIELDS if f in present),
    ]


def build_suite(
    settings: Settings,
    *,
    present: Sequence[str] = EVENT_COLUMNS,
    now: dt.datetime,
    row_count_bounds: tuple[int, int] | None = None,
    only_rules: set[str] | None = None,
):  # noqa: ANN201 - gx.ExpectationSuite, imported lazily
    """The ``raw_events`` Expectation Suite, defined in code (``only_rules``: just those rule ids).

    ``present``: the REES46 columns the file has (column rules are added only for those; the column-set rule names
    the missing ones). ``now`` (UTC): event_time may not exceed now + settings.future_tolerance_minutes.
    ``row_count_bounds``: (low, high) rows allowed by the trailing average of loaded files, or None when there is
    not enough history. Every expectation carries ``meta.rule`` (a stable rule id) and ``meta.field``.
    """
    import great_expectations as gx
    import great_expectations.expectations as gxe

    expectations: list[Any] = []

    def add(exp_cls: Any, rule: str, description: str, field_: str | None = None, **kw: Any) -> None:
        expectations.append(exp_cls(meta={"rule": rule, "field": field_}, description=description, **kw))

    s = settings
    add(gxe.ExpectTableColumnsToMatchSet, "columns_match", f"the columns are exactly {', '.join(EVENT_COLUMNS)}",
        column_set=gx_columns(present), exact_match=True)
    add(gxe.ExpectTableRowCountToBeBetween, "row_count_positive", "the file holds at least one event row",
        min_value=1)
    if row_count_bounds is not None:
        lo, hi = row_count_bounds
        add(gxe.ExpectTableRowCountToBeBetween, "row_count_vs_trailing_average",
            f"rows within [{lo:,}, {hi:,}]: 1/{s.row_count_tolerance:g} to {s.row_count_tolerance:g} times the "
            f"trailing average of the last {s.row_count_history_files} loaded files",
            min_value=lo, max_value=hi, severity=s.row_count_check_severity)
    add(gxe.ExpectColumnValuesToBeNull, "duplicate_rows",
        f"at most {s.max_duplicate_ratio:.2%} of rows repeat an earlier identical row", None,
        column=DUPLICATE_COLUMN, mostly=1.0 - s.max_duplicate_ratio)
    horizon = now + dt.timedelta(minutes=s.future_tolerance_minutes)
    if "event_time" in present:
        add(gxe.ExpectColumnValuesToBeNull, "event_time_type",
            "event_time is present and parses as a UTC timestamp ('2019-10-01 00:00:00 UTC' or ISO 8601 with zone)",
            "event_time", column=invalid_column("event_time"))
        add(gxe.ExpectColumnValuesToBeBetween, "event_time_not_future",
            f"event_time is not in the future (<= {horizon:%Y-%m-%d %H:%M:%S} UTC, "
            f"{s.future_tolerance_minutes} min clock skew allowed)", "event_time",
            column="event_time", max_value=horizon)
    if "event_type" in present:
        add(gxe.ExpectColumnValuesToNotBeNull, "event_type_required", "event_type is present", "event_type",
            column="event_type")
        add(gxe.ExpectColumnValuesToBeInSet, "event_type_allowed",
            f"event_type is one of {', '.join(EVENT_TYPES)}", "event_type",
            column="event_type", value_set=list(EVENT_TYPES))
    for f in INT_FIELDS:
        if f in present:
            add(gxe.ExpectColumnValuesToBeNull, f"{f}_type", f"{f} is present and parses as a 64-bit integer", f,
                column=invalid_column(f))
            add(gxe.ExpectColumnValuesToBeBetween, f"{f}_positive", f"{f} is a positive integer", f,
                column=f, min_value=1)
    if "price" in present:
        add(gxe.ExpectColumnValuesToBeNull, "price_type", "price is present and parses as a finite number", "price",
            column=invalid_column("price"))
        add(gxe.ExpectColumnValuesToBeBetween, "price_range", f"price is >= 0 and < {s.price_cap:,.0f}", "price",
            column="price", min_value=0, max_value=s.price_cap, strict_max=True)
    ratios = {
        "category_code": s.max_null_ratio_category_code,
        "brand": s.max_null_ratio_brand,
        "user_session": s.max_null_ratio_user_session,
    }
    for f in TEXT_FIELDS:
        if f in present:
            add(gxe.ExpectColumnValueLengthsToBeBetween, f"{f}_length",
                f"{f} is at most {s.max_text_length} characters", f, column=f, max_value=s.max_text_length)
    if "user_session" in present:
        add(gxe.ExpectColumnValuesToMatchRegex, "user_session_uuid", "user_session is a well-formed uuid when present",
            "user_session", column="user_session", regex=UUID_REGEX)
    for f, ratio in ratios.items():
        if f in present:
            add(gxe.ExpectColumnValuesToNotBeNull, f"{f}_null_ratio", f"at most {ratio:.0%} of {f} values are empty",
                f, column=f, mostly=1.0 - ratio)
    if only_rules is not None:
        expectations = [e for e in expectations if e.meta["rule"] in only_rules]
    return gx.ExpectationSuite(name=SUITE_NAME, expectations=expectations)


# --- running GX -------------------------------------------------------------------------------------------------------
class GxRunner:
    """Runs the suite in an ephemeral Great Expectations context with a pandas datasource and (optionally) a
    filesystem Data Docs site under ``docs_dir`` (a local directory; None: no Data Docs).

    Each run gets a fresh context: GX caches metrics per batch id inside a context, and a fresh context also frees
    the validated frame afterwards. (Creating one costs milliseconds; importing GX costs seconds, once.)
    """

    SITE = "propensity"

    def __init__(self, docs_dir: str | None) -> None:
        import great_expectations as gx

        # one INFO line per ephemeral context ("Created temporary directory ...") is noise in task logs
        logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)
        self._gx = gx
        self.docs_dir = docs_dir

    def _context(self) -> tuple[Any, Any]:
        from great_expectations.data_context.types.base import ProgressBarsConfig

        ctx = self._gx.get_context(mode="ephemeral")
        ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
        if self.docs_dir:
            ctx.add_data_docs_site(
                site_name=self.SITE,
                site_config={
                    "class_name": "SiteBuilder",
                    "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": self.docs_dir},
                    "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
                },
            )
        source = ctx.data_sources.add_pandas("landing")
        return ctx, source.add_dataframe_asset("event_file").add_batch_definition_whole_dataframe("file")

    def run(
        self, suite: Any, frame: pd.DataFrame, run_name: str, *, with_rows: bool = False
    ) -> tuple[Any, str | None]:
        """Validate ``frame`` against ``suite``; returns (ExpectationSuiteValidationResult, Data Docs page URL).

        Result format BASIC: counts and a few unexpected values, all vectorised. ``with_rows`` adds the first
        :data:`SAMPLE_ROWS` failing rows of each expectation (with ``_line_no``) and skips Data Docs: a second pass
        over the failed rules only, because GX copies the whole frame per expectation to find them. (SUMMARY would
        be worse: it builds ``unexpected_index_list`` with a Python loop over EVERY failing row.)
        """
        gx = self._gx
        ctx, batch_definition = self._context()
        suite = ctx.suites.add(suite)
        vd = ctx.validation_definitions.add(gx.ValidationDefinition(name=run_name, data=batch_definition, suite=suite))
        result_format = {
            "result_format": "BASIC",
            "include_unexpected_rows": with_rows,
            "partial_unexpected_count": SAMPLE_ROWS,
        }
        if with_rows or not self.docs_dir:
            return vd.run(batch_parameters={"dataframe": frame}, result_format=result_format), None
        cp = ctx.checkpoints.add(
            gx.Checkpoint(
                name="ingest",
                validation_definitions=[vd],
                actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=[self.SITE])],
                result_format=result_format,
            )
        )
        try:
            result = cp.run(batch_parameters={"dataframe": frame}, run_id=gx.RunIdentifier(run_name=run_name))
        except Exception as e:  # noqa: BLE001 - a Data Docs write error must not lose the validation
            log.warning("Data Docs update failed (%s); validating without it", e)
            return vd.run(batch_parameters={"dataframe": frame}, result_format=result_format), None
        ((identifier, validation),) = result.run_results.items()
        url = None
        try:
            urls = ctx.get_docs_sites_urls(resource_identifier=identifier, site_name=self.SITE)
            url = urls[0]["site_url"] if urls else None
        except Exception as e:  # noqa: BLE001
            log.warning("could not resolve the Data Docs page: %s", e)
        return validation, url


def _rules_from_gx(
    validation: Any, parsed: ParsedEvents, rows_by_rule: dict[str, pd.DataFrame] | None = None
) -> list[RuleResult]:
    rules: list[RuleResult] = []
    for r in validation.results:
        cfg = r.expectation_config
        meta = cfg.meta or {}
        res = r.result or {}
        kwargs = {k: v for k, v in (cfg.kwargs or {}).items() if k != "batch_id"}
        rule = RuleResult(
            rule=meta.get("rule") or cfg.type,
            description=cfg.description or cfg.type,
            success=bool(r.success),
            field=meta.get("field"),
            severity=str(getattr(getattr(cfg, "severity", None), "value", None) or "critical"),
            source="great_expectations",
            expectation_type=cfg.type,
            kwargs=kwargs,
        )
        if r.exception_info and r.exception_info.get("raised_exception"):
            rule.observed = f"error: {r.exception_info.get('exception_message')}"
        if "unexpected_count" in res:
            rule.failing_count = int(res.get("unexpected_count") or 0)
            rule.element_count = int(res.get("element_count") or 0)
            rows = (rows_by_rule or {}).get(rule.rule)
            column = kwargs.get("column")
            if isinstance(rows, pd.DataFrame) and LINE_COLUMN in rows.columns:
                values = rows[column].tolist() if column in rows.columns else [None] * len(rows)
                for line, value in zip(rows[LINE_COLUMN].tolist(), values, strict=True):
                    if value is not None and rule.rule == "duplicate_rows":
                        value = f"repeats line {int(value)}"
                    rule.samples.append({"line": int(line), "value": None if _isna(value) else value})
        elif "observed_value" in res:
            rule.observed = res.get("observed_value")
            if not rule.success:
                rule.failing_count = 1
            details = (res.get("details") or {}).get("mismatched")
            if details:
                missing = [c for c in details.get("missing", []) if c in EVENT_COLUMNS]
                extra = list(details.get("unexpected", []))
                rule.observed = {"missing": missing, "unexpected": extra}
        if rule.success:
            rule.samples = []
        rules.append(rule)
    sample_lines = {n for rule in rules for s in rule.samples if (n := s.get("line")) is not None}
    if sample_lines and parsed.row_text is not None:
        texts = parsed.row_text(sorted(sample_lines))
        for rule in rules:
            for s in rule.samples:
                if s.get("line") in texts:
                    s["row"] = texts[s["line"]]
    return rules


def validate_parsed(
    parsed: ParsedEvents,
    settings: Settings,
    *,
    file_name: str,
    file_uri: str,
    checksum: str,
    size_bytes: int,
    now: dt.datetime | None = None,
    row_count_bounds: tuple[int, int] | None = None,
    runner: GxRunner | None = None,
) -> ValidationReport:
    """Run the GX suite on a parsed file and combine it with the structural rules into one report."""
    now = now or dt.datetime.now(dt.UTC)
    rules = list(parsed.structure)
    docs = None
    statistics: dict[str, Any] = {}
    min_t = max_t = None
    if parsed.table is not None:
        frame = to_gx_frame(parsed)
        present = [c for c in EVENT_COLUMNS if c in parsed.header]
        suite = build_suite(settings, present=present, now=now, row_count_bounds=row_count_bounds)
        runner = runner or GxRunner(docs_dir=None)
        validation, docs = runner.run(suite, frame, run_name=file_name)
        failed_rows = {
            r.expectation_config.meta.get("rule")
            for r in validation.results
            if not r.success and "unexpected_count" in (r.result or {})
        }
        rows_by_rule: dict[str, pd.DataFrame] = {}
        if failed_rows:  # failure path only: a second pass to fetch the first failing rows of each failed rule
            again = build_suite(settings, present=present, now=now, row_count_bounds=row_count_bounds,
                                only_rules=failed_rows)
            sampled, _ = runner.run(again, frame, run_name=file_name, with_rows=True)
            rows_by_rule = {
                r.expectation_config.meta.get("rule"): (r.result or {}).get("unexpected_rows") for r in sampled.results
            }
        rules += _rules_from_gx(validation, parsed, rows_by_rule)
        statistics = dict(validation.statistics or {})
        if "event_time" in parsed.table.column_names and parsed.table.num_rows:
            mm = pc.min_max(parsed.table.column("event_time"))
            min_t, max_t = mm["min"].as_py(), mm["max"].as_py()
    statistics.update(
        {
            "rows": parsed.row_count,
            "rules_evaluated": len(rules),
            "rules_failed": sum(1 for r in rules if not r.success),
        }
    )
    return ValidationReport(
        file_name=file_name,
        file_uri=file_uri,
        checksum_sha256=checksum,
        file_format=parsed.file_format,
        size_bytes=size_bytes,
        row_count=parsed.row_count,
        rules=rules,
        validated_at=now,
        statistics=statistics,
        data_docs_uri=docs,
        min_event_time=min_t,
        max_event_time=max_t,
    )


def validate_bytes(
    data: bytes,
    settings: Settings,
    *,
    file_name: str,
    file_format: str = "csv",
    compression: str | None = None,
    file_uri: str | None = None,
    checksum: str = "",
    now: dt.datetime | None = None,
    row_count_bounds: tuple[int, int] | None = None,
    runner: GxRunner | None = None,
) -> tuple[ValidationReport, ParsedEvents]:
    """Read and validate the bytes of one file (as delivered; ``compression`` None or ``gzip``). Never raises for
    bad content. Returns the report and the parsed file (whose ``table`` is what gets loaded)."""
    parsed = read_events(data, file_format, settings, compression=compression)
    report = validate_parsed(
        parsed,
        settings,
        file_name=file_name,
        file_uri=file_uri or file_name,
        checksum=checksum,
        size_bytes=len(data),
        now=now,
        row_count_bounds=row_count_bounds,
        runner=runner,
    )
    return report, parsed


def row_count_bounds(mean_rows: float | None, n_files: int, settings: Settings) -> tuple[int, int] | None:
    """The allowed row band from the trailing average: [mean / tolerance, mean * tolerance], or None when fewer than
    ``settings.row_count_min_history`` files have been loaded."""
    if mean_rows is None or n_files < settings.row_count_min_history or mean_rows <= 0:
        return None
    tol = max(settings.row_count_tolerance, 1.0)
    return max(1, int(np.floor(mean_rows / tol))), int(np.ceil(mean_rows * tol))
