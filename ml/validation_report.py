"""The records of one event-file validation: :class:`RuleResult` (one rule on one file) and
:class:`ValidationReport` (every rule on one file; machine-readable ``as_dict``, human-readable ``summary_text``).

Rows are identified by their line number (CSV: the physical 1-based line, header = 1; Parquet: the 1-based row
number); see :mod:`ml.validate` for the rules and :mod:`ml.events_io` for how a file is read. Times are UTC.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from typing import Any

from ml.jsonutil import to_jsonable

SUITE_NAME = "raw_events"
SAMPLE_ROWS = 5
MAX_SAMPLE_CHARS = 200
_MAX_JSON_STR = MAX_SAMPLE_CHARS * 2  # strings in the JSON report (as_dict) are cut to this length


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
            count = f": observed {shorten(self.observed)}"
        lines = [s["line"] for s in self.samples if s.get("line") is not None]
        more = ", ..." if self.failing_count > len(lines) else ""
        at = f" (lines {', '.join(str(n) for n in lines)}{more})" if lines else ""
        return f"{file_name}: rule {self.rule}{where}{count}{at} - {self.description}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "field": self.field,
            "description": self.description,
            "success": self.success,
            "severity": self.severity,
            "source": self.source,
            "failing_count": self.failing_count,
            "element_count": self.element_count,
            "observed": to_jsonable(self.observed, max_str=_MAX_JSON_STR),
            "samples": to_jsonable(self.samples, max_str=_MAX_JSON_STR),
            "expectation_type": self.expectation_type,
            "kwargs": to_jsonable(self.kwargs, max_str=_MAX_JSON_STR),
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

    def as_dict(self) -> dict[str, Any]:
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
            "statistics": to_jsonable(self.statistics, max_str=_MAX_JSON_STR),
            "data_docs_uri": self.data_docs_uri,
            "min_event_time": self.min_event_time.isoformat() if self.min_event_time else None,
            "max_event_time": self.max_event_time.isoformat() if self.max_event_time else None,
            "rules": [r.as_dict() for r in self.rules],
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
                    out.append(f"  observed: {shorten(r.observed)}")
                for s in r.samples:
                    value = f" value={shorten(s.get('value'))}" if "value" in s else ""
                    out.append(f"  {unit} {s.get('line')}:{value}")
                    if s.get("row") is not None:
                        out.append(f"      {s['row']}")
        return "\n".join(out) + "\n"


# --- text of values -------------------------------------------------------------------------------------------------
def shorten(value: Any, limit: int = MAX_SAMPLE_CHARS) -> str:
    """``value`` as text for reports (strings quoted), cut to ``limit`` characters with the full length noted."""
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text):,} chars)"
