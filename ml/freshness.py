"""Freshness gate: before scoring date D, the events of D - 1 (UTC) must have landed.

The day counts as landed when (1) ``raw.events`` holds rows of the day up to its end (the newest event of the day
is at most ``settings.freshness_max_gap_hours`` before midnight, or events of a later day exist, so an hourly ingest
that has not delivered the evening yet is caught), and (2) its
row count is at least ``settings.freshness_min_row_ratio`` of the trailing average of the
``settings.freshness_history_days`` days before it that hold events (no history: only (1) applies). The ingested
files overlapping the day are reported too (``raw.ingested_files``).

:func:`check_freshness` only reads; :func:`require_fresh` raises :class:`ml.errors.FreshnessError` naming the
missing day (and records a ``freshness`` alert) when the gate is shut.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import asdict, dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ml.dates import midnight_utc, utc_date
from ml.errors import FreshnessError
from ml.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Freshness:
    """What the gate saw for ``day`` (the day before the score date)."""

    score_date: dt.date
    day: dt.date
    rows: int
    files: int
    last_event: dt.datetime | None
    trailing_avg: float | None
    min_rows: float | None
    fresh: bool
    reason: str

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        return {k: (v.isoformat() if isinstance(v, (dt.date, dt.datetime)) else v) for k, v in d.items()}


def check_freshness(engine: Engine, settings: Settings, score_date: dt.date | str) -> Freshness:
    """Whether the events of the UTC day before ``score_date`` have landed (see the module docstring)."""
    score_day = utc_date(score_date, what="score_date")
    day = score_day - dt.timedelta(days=1)
    start, end = midnight_utc(day), midnight_utc(score_day)
    hist_start = start - dt.timedelta(days=settings.freshness_history_days)
    with engine.connect() as conn:
        rows, last = conn.execute(sa.text(
            "select count(*), max(event_time) from raw.events where event_time >= :a and event_time < :b"),
            {"a": start, "b": end}).one()
        later = conn.execute(sa.text("select exists (select 1 from raw.events where event_time >= :b)"),
                             {"b": end}).scalar_one()
        files = conn.execute(sa.text(
            "select count(*) from raw.ingested_files where min_event_time < :b and max_event_time >= :a"),
            {"a": start, "b": end}).scalar_one()
        avg = conn.execute(sa.text(
            "select avg(n) from (select count(*) as n from raw.events where event_time >= :a and event_time < :b"
            " group by date_trunc('day', event_time at time zone 'UTC')) t"),
            {"a": hist_start, "b": start}).scalar_one()
    avg = float(avg) if avg is not None else None
    min_rows = avg * settings.freshness_min_row_ratio if avg is not None else None
    if rows == 0:
        fresh, reason = False, f"no events of {day} have landed (score date {score_day})"
    elif not later and last < end - dt.timedelta(hours=settings.freshness_max_gap_hours):
        fresh, reason = False, (f"events of {day} stop at {last.isoformat()}: the day has not fully landed "
                                f"(score date {score_day})")
    elif min_rows is not None and rows < min_rows:
        fresh, reason = False, (f"{day} holds {rows} events, below {settings.freshness_min_row_ratio:.0%} of the "
                                f"trailing average {avg:.0f} (score date {score_day})")
    else:
        fresh, reason = True, f"{day}: {rows} events in {files} file(s), last at {last.isoformat()}"
    return Freshness(score_day, day, int(rows), int(files), last, avg, min_rows, fresh, reason)


def require_fresh(engine: Engine, settings: Settings, score_date: dt.date | str, *, alert: bool = True) -> Freshness:
    """:func:`check_freshness`, raising :class:`FreshnessError` (after recording a ``freshness`` alert when
    ``alert``) when the day has not landed."""
    f = check_freshness(engine, settings, score_date)
    if f.fresh:
        log.info("freshness gate open: %s", f.reason)
        from ml.alerts import resolve_alerts

        resolve_alerts(engine, "freshness")
        return f
    if alert:
        from ml.alerts import Alert, raise_alert

        raise_alert(engine, settings, Alert("freshness", "events", "critical", f"freshness gate shut: {f.reason}",
                                            value=float(f.rows), threshold=f.min_rows, metric_date=f.day))
    raise FreshnessError(f"freshness gate: {f.reason}; load the missing file(s), or trigger with "
                         f"skip_freshness_check=true to score anyway (backfills)")
