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

The result is a :class:`ValidationReport` (machine-readable ``as_dict``, human-readable ``summary_text``).

Where the parts live: steps 1 and 2 in :mod:`ml.events_io` (:func:`read_events`, :class:`ParsedEvents`, the
``parse_*`` kernels), the records in :mod:`ml.validation_report`, the GX runner in :mod:`ml.quality`; this module
holds the suite and the combination of both into a report, and re-exports the names callers import from here.
Great Expectations is imported lazily (it takes seconds to import).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ml.events_io import (  # noqa: F401 - re-exported: callers import the reader from ml.validate
    INT_FIELDS,
    REES46_TIME_FORMAT,
    TEXT_FIELDS,
    ParsedEvents,
    parse_event_time,
    parse_float64,
    parse_int64,
    read_events,
)
from ml.quality import GxRunner, SuiteOutcome
from ml.schema import EVENT_TYPES
from ml.schema import REES46_COLUMNS as EVENT_COLUMNS
from ml.validation_report import (  # noqa: F401 - re-exported
    MAX_SAMPLE_CHARS,
    SAMPLE_ROWS,
    SUITE_NAME,
    RuleResult,
    ValidationReport,
)

if TYPE_CHECKING:
    from ml.settings import Settings

PARSED_FIELDS: tuple[str, ...] = ("event_time", "product_id", "category_id", "price", "user_id")
LINE_COLUMN = "_line_no"
DUPLICATE_COLUMN = "_duplicate_of"
UUID_REGEX = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"


def invalid_column(name: str) -> str:
    """The helper column holding the raw text of ``name`` where it is missing or does not parse."""
    return f"_invalid_{name}"


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
        elif name in ("event_type", *TEXT_FIELDS, "user_session"):
            # categorical: GX filters the whole frame per expectation, and a categorical filters as a numpy take of
            # its codes (an Arrow-backed string column costs an Arrow take each time: about 40% of GX's time)
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
    for name, arr in parsed.invalid.items():  # null where the value parsed: categorical too (see above)
        df[invalid_column(name)] = pc.dictionary_encode(arr).to_pandas()
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
_GX_ASSET = {"datasource": "landing", "asset": "event_file"}


def _result_format(with_rows: bool) -> dict[str, Any]:
    """GX result format BASIC: counts and a few unexpected values, all vectorised. ``with_rows`` adds the first
    :data:`SAMPLE_ROWS` failing rows of each expectation (with ``_line_no``): used in a second pass over the failed
    rules only, because GX copies the whole frame per expectation to find them. (SUMMARY would be worse: it builds
    ``unexpected_index_list`` with a Python loop over EVERY failing row.)"""
    return {"result_format": "BASIC", "include_unexpected_rows": with_rows, "partial_unexpected_count": SAMPLE_ROWS}


def _rules_from_gx(
    outcome: SuiteOutcome, parsed: ParsedEvents, rows_by_rule: dict[str, pd.DataFrame] | None = None
) -> list[RuleResult]:
    rules: list[RuleResult] = []
    for e in outcome.expectations:
        res = e.result
        rule = RuleResult(
            rule=e.rule,
            description=e.description or e.expectation_type,
            success=e.success,
            field=e.meta.get("field"),
            severity=e.severity,
            source="great_expectations",
            expectation_type=e.expectation_type,
            kwargs=dict(e.kwargs),
        )
        if e.exception is not None:
            rule.observed = f"error: {e.exception}"
        if "unexpected_count" in res:
            rule.failing_count = int(res.get("unexpected_count") or 0)
            rule.element_count = int(res.get("element_count") or 0)
            rows = (rows_by_rule or {}).get(rule.rule)
            column = e.kwargs.get("column")
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


def _isna(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


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
        passed_pages = getattr(settings, "data_docs_passed_files", True)
        outcome = runner.validate_frame(suite, frame, run_name=file_name, result_format=_result_format(False),
                                        data_docs=passed_pages, **_GX_ASSET)
        if not passed_pages and runner.docs_dir and not outcome.success:  # a failing file's page, its evidence
            outcome = runner.validate_frame(suite, frame, run_name=file_name, result_format=_result_format(False),
                                            **_GX_ASSET)
        docs = outcome.data_docs_uri
        failed_rows = {e.meta.get("rule") for e in outcome.failed if "unexpected_count" in e.result}
        rows_by_rule: dict[str, pd.DataFrame] = {}
        if failed_rows:  # failure path only: a second pass to fetch the first failing rows of each failed rule
            again = build_suite(settings, present=present, now=now, row_count_bounds=row_count_bounds,
                                only_rules=failed_rows)
            sampled = runner.validate_frame(again, frame, run_name=file_name, result_format=_result_format(True),
                                            data_docs=False, **_GX_ASSET)
            rows_by_rule = {e.meta.get("rule"): e.result.get("unexpected_rows") for e in sampled.expectations}
        rules += _rules_from_gx(outcome, parsed, rows_by_rule)
        statistics = dict(outcome.statistics)
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
