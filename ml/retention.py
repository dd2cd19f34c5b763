"""Retention: drop old score and event partitions and the files of archived models, and say what was freed.

One call, :func:`apply_retention`, serves the weekly ``maintenance`` DAG, ``propensity retention`` and the tests.
Dates are UTC; ``today`` defaults to the current UTC date. With ``dry_run`` nothing is changed and the report says
what would go.

What goes (settings ``retention_*``, docs/operations.md):

- ``scoring.scores`` partitions (``scores_pYYYYMMDD``) whose score date is older than ``today - retention_scores_days``;
- ``raw.events`` day partitions (``events_pYYYYMMDD``) older than ``today - retention_events_days``, each with the
  feature rollups' partitions of that day (``rollup_*_pYYYYMMDD``) in the same transaction;
- artifacts folder, HTML report and Optuna studies of archived model versions (status rejected, retired or
  rolled_back) beyond the newest ``retention_keep_archived_models`` of them; their registry rows stay.

What never goes, whatever the ages say (each protection is in the report):

- the score dates Redis serves or would roll back to (newest pointer flip per prefix: ``to`` and ``from``);
- score dates inside the monitoring horizon (``today - label_horizon_days - 7``: outcomes are evaluated once the
  horizon has passed) and, when ``monitoring.realized_metrics`` exists, none newer than its last evaluated date;
- score dates and events from the start of an unfinished experiment (``experiments.experiments`` status draft or
  running), when that table exists;
- events inside the champion's training window (``train_start - lookback_days`` onward) and the feature lookback
  of the next scoring night (``today - lookback_days - label_horizon_days``);
- the champion, candidates, the newest retired version (the rollback target) and the models of an unfinished
  experiment's arms (their files).

A partition is dropped with ``DROP TABLE`` under ``lock_timeout`` (a reader holding the parent waits it out; the
next week retries). Bytes are ``pg_total_relation_size`` before the drop, and ``fsspec`` ``du`` for files.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ml.errors import ConfigError

log = logging.getLogger(__name__)

ARCHIVED = ("rejected", "retired", "rolled_back")
MONITORING_GRACE_DAYS = 7
_PART = re.compile(r"^(scores|events)_p(\d{8})$")


@dataclass
class Dropped:
    """One dropped (or, in a dry run, droppable) partition."""

    table: str  # schema.name
    day: dt.date
    bytes: int
    rows: int  # pg_class.reltuples estimate; an exact count when the partition was never analyzed


@dataclass
class RemovedModel:
    version: str
    status: str
    bytes: int
    paths: list[str]
    studies: list[str]


@dataclass
class RetentionReport:
    """What a retention run freed (or would free), and what it kept on purpose."""

    today: dt.date
    dry_run: bool
    scores_cutoff: dt.date  # partitions with a score date before this may go
    events_cutoff: dt.date
    protected: dict[str, Any] = field(default_factory=dict)
    scores: list[Dropped] = field(default_factory=list)
    events: list[Dropped] = field(default_factory=list)
    models: list[RemovedModel] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # locked partitions, unreachable files: retried next run

    @property
    def bytes_freed(self) -> int:
        return sum(d.bytes for d in self.scores + self.events) + sum(m.bytes for m in self.models)

    def lines(self) -> list[str]:
        verb = "would free" if self.dry_run else "freed"
        out = [
            f"retention {self.today} ({'dry run' if self.dry_run else 'applied'}): {verb} {_mb(self.bytes_freed)}",
            f"  scores before {self.scores_cutoff}: {len(self.scores)} partition(s), "
            f"{_mb(sum(d.bytes for d in self.scores))}, ~{sum(d.rows for d in self.scores):,} rows",
            f"  events before {self.events_cutoff}: {len(self.events)} partition(s), "
            f"{_mb(sum(d.bytes for d in self.events))}, ~{sum(d.rows for d in self.events):,} rows",
            f"  archived models: {len(self.models)} version(s), {_mb(sum(m.bytes for m in self.models))}, "
            f"{sum(len(m.studies) for m in self.models)} Optuna stud(ies)",
        ]
        out += [f"  kept: {k} = {v}" for k, v in self.protected.items()]
        out += [f"  skipped: {s}" for s in self.skipped]
        return out


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def _exists(conn: sa.Connection, table: str) -> bool:
    return conn.execute(sa.text("select to_regclass(:t) is not null"), {"t": table}).scalar_one()


ROLLUPS = ("rollup_pair_day", "rollup_user_session_day", "rollup_product_day")  # day-partitioned (migration 0182)


def _rollup_partitions(day: dt.date) -> list[str]:
    """The feature rollups' partitions of ``day`` (raw.day_partition_name): dropped with the day's events, in the
    same transaction, so rollups never outlive the events they summarise."""
    return [f"raw.{parent}_p{day:%Y%m%d}" for parent in ROLLUPS]


def _partitions(conn: sa.Connection, parent: str) -> list[tuple[str, dt.date, int, int]]:
    """(qualified name, day, bytes, estimated rows) of ``parent``'s day partitions, oldest first."""
    rows = conn.execute(
        sa.text(
            """
            select n.nspname, c.relname, pg_total_relation_size(c.oid), greatest(c.reltuples, 0)::bigint
            from pg_inherits i
            join pg_class c on c.oid = i.inhrelid
            join pg_namespace n on n.oid = c.relnamespace
            where i.inhparent = cast(:parent as regclass)
            """
        ),
        {"parent": parent},
    ).all()
    out = []
    for schema, name, size, tuples in rows:
        m = _PART.match(name)
        if m:
            out.append((f"{schema}.{name}", dt.datetime.strptime(m.group(2), "%Y%m%d").date(), int(size), int(tuples)))
    return sorted(out, key=lambda r: r[1])


def _served_dates(conn: sa.Connection) -> set[dt.date]:
    if not (_exists(conn, "scoring.pointer_flips") and _exists(conn, "scoring.publications")):
        return set()
    rows = conn.execute(
        sa.text(
            """
            with newest as (
                select distinct on (redis_prefix) redis_prefix, to_version, from_version
                from scoring.pointer_flips
                order by redis_prefix, flipped_at desc, flip_id desc
            )
            select p.score_date
            from newest f
            join scoring.publications p
              on p.redis_prefix = f.redis_prefix and p.version in (f.to_version, f.from_version)
            """
        )
    ).scalars()
    return set(rows)


def _unfinished_experiment_start(conn: sa.Connection) -> dt.date | None:
    if not _exists(conn, "experiments.experiments"):
        return None
    return conn.execute(
        sa.text("select min(start_date) from experiments.experiments where status in ('draft', 'running')")
    ).scalar_one()


def _experiment_models(conn: sa.Connection) -> set[str]:
    if not (_exists(conn, "experiments.experiments") and _exists(conn, "experiments.arms")):
        return set()
    return set(
        conn.execute(
            sa.text(
                "select a.model_version from experiments.arms a join experiments.experiments e using (experiment_id) "
                "where e.status in ('draft', 'running')"
            )
        ).scalars()
    )


def _monitoring_floor(conn: sa.Connection) -> dt.date | None:
    """The day after the newest score date whose outcomes were evaluated (None: nothing evaluated / no table)."""
    if not _exists(conn, "monitoring.realized_metrics"):
        return None
    last = conn.execute(sa.text("select max(score_date) from monitoring.realized_metrics")).scalar_one()
    return last + dt.timedelta(days=1) if last else None


def _champion_window_start(conn: sa.Connection, lookback_days: int) -> dt.date | None:
    row = conn.execute(
        sa.text("select training_window ->> 'train_start' from ml.model_versions where status = 'champion'")
    ).first()
    if not row or not row[0]:
        return None
    return dt.date.fromisoformat(str(row[0])[:10]) - dt.timedelta(days=lookback_days)


def _drop(conn: sa.Connection, table: str, lock_timeout_s: int) -> None:
    conn.execute(sa.text(f"set local lock_timeout = '{int(lock_timeout_s)}s'"))
    conn.execute(sa.text(f"drop table if exists {table}"))  # name comes from pg_class and matched _PART


def apply_retention(
    engine: Engine,
    settings: Any,
    *,
    today: dt.date | None = None,
    dry_run: bool = False,
    scores_days: int | None = None,
    events_days: int | None = None,
    keep_archived_models: int | None = None,
    lock_timeout_s: int = 30,
) -> RetentionReport:
    """Apply (or with ``dry_run`` only compute) retention as of UTC date ``today``. Overrides win over settings.
    Raises :class:`ConfigError` for a negative age or count. Never raises for a partition it could not lock or a
    file it could not delete: those are listed in ``report.skipped`` and retried by the next run."""
    today = today or dt.datetime.now(dt.UTC).date()
    scores_days = settings.retention_scores_days if scores_days is None else scores_days
    events_days = settings.retention_events_days if events_days is None else events_days
    keep = settings.retention_keep_archived_models if keep_archived_models is None else keep_archived_models
    for name, value in (("scores_days", scores_days), ("events_days", events_days), ("keep_archived_models", keep)):
        if value < 0:
            raise ConfigError(f"retention {name} must be >= 0, got {value}")
    horizon = settings.label_horizon_days

    with engine.connect() as conn:
        served = _served_dates(conn)
        experiment_start = _unfinished_experiment_start(conn)
        monitoring_floor = _monitoring_floor(conn)
        champion_floor = _champion_window_start(conn, settings.lookback_days)
        scores_parts = _partitions(conn, "scoring.scores")
        events_parts = _partitions(conn, "raw.events")
        conn.rollback()

    horizon_floor = today - dt.timedelta(days=horizon + MONITORING_GRACE_DAYS)
    scores_limits = {"age": today - dt.timedelta(days=scores_days), "monitoring horizon": horizon_floor}
    if monitoring_floor is not None:
        scores_limits["outcomes not yet evaluated from"] = monitoring_floor
    if experiment_start is not None:
        scores_limits["unfinished experiment from"] = experiment_start
    scores_cutoff = min(scores_limits.values())

    events_limits = {
        "age": today - dt.timedelta(days=events_days),
        "next scoring lookback": today - dt.timedelta(days=settings.lookback_days + horizon),
        "monitoring horizon": horizon_floor,
    }
    if champion_floor is not None:
        events_limits["champion training window from"] = champion_floor
    if experiment_start is not None:
        events_limits["unfinished experiment from"] = experiment_start
    events_cutoff = min(events_limits.values())

    report = RetentionReport(today, dry_run, scores_cutoff, events_cutoff)
    report.protected = {
        "served score dates": sorted(str(d) for d in served),
        "scores cutoff by": {k: str(v) for k, v in scores_limits.items()},
        "events cutoff by": {k: str(v) for k, v in events_limits.items()},
    }

    for parts, cutoff, out, keep_days in (
        (scores_parts, scores_cutoff, report.scores, served),
        (events_parts, events_cutoff, report.events, set()),
    ):
        for table, day, size, rows in parts:
            if day >= cutoff or day in keep_days:
                continue
            if rows <= 0:  # never analyzed: count it (one sequential scan of a partition that is about to go)
                with engine.connect() as conn:
                    rows = conn.execute(sa.text(f"select count(*) from {table}")).scalar_one()
            companions = _rollup_partitions(day) if out is report.events else []
            if companions:  # the day's rollups go with its events (a re-ingested day then starts from nothing)
                with engine.connect() as conn:
                    size += sum(conn.execute(sa.text("select coalesce(pg_total_relation_size(to_regclass(:t)), 0)"),
                                             {"t": t}).scalar_one() for t in companions)
            if not dry_run:
                try:
                    with engine.begin() as conn:
                        for companion in companions:
                            _drop(conn, companion, lock_timeout_s)
                        _drop(conn, table, lock_timeout_s)
                except sa.exc.OperationalError as e:
                    report.skipped.append(f"{table}: {str(e.orig).strip().splitlines()[0]}")
                    continue
                log.info("retention: dropped %s (%s, %s)", table, day, _mb(size))
            out.append(Dropped(table, day, size, rows))

    report.models = _remove_archived_models(engine, settings, keep, dry_run, report.skipped)
    report.protected["models kept"] = keep
    for line in report.lines():
        log.info(line)
    return report


def _remove_archived_models(engine: Engine, settings: Any, keep: int, dry_run: bool, skipped: list[str]) -> list[RemovedModel]:
    with engine.connect() as conn:
        in_experiments = _experiment_models(conn)
        rows = conn.execute(
            sa.text(
                "select version, status, artifact_uri, report_uri, tuning from ml.model_versions "
                "where status = any(:archived) order by created_at desc, version desc"
            ),
            {"archived": list(ARCHIVED)},
        ).mappings().all()
    # the newest retired version is what rollback_champion returns to: its files stay whatever the count
    rollback_target = next((r["version"] for r in rows if r["status"] == "retired"), None)
    removed = []
    for row in rows[keep:]:
        if row["version"] in in_experiments or row["version"] == rollback_target:
            continue
        paths = [p for p in (row["artifact_uri"], row["report_uri"]) if p]
        size, present = 0, []
        for path in paths:
            try:
                fs, target = _fs(path)
                if fs.exists(target):
                    size += int(fs.du(target, total=True)) if fs.isdir(target) else int(fs.size(target))
                    present.append(path)
            except Exception as e:  # noqa: BLE001 - an unreachable store is reported and retried next run
                skipped.append(f"{row['version']}: {path}: {type(e).__name__}")
        studies = _study_names(row["tuning"])
        live_studies = _existing_studies(settings, studies)
        if not present and not live_studies:
            continue  # already cleaned by an earlier run
        if not dry_run:
            for path in present:
                fs, target = _fs(path)
                fs.rm(target, recursive=True)
            _delete_studies(settings, live_studies)
            log.info("retention: removed files and %d stud(ies) of archived model %s (%s)", len(live_studies),
                     row["version"], _mb(size))
        removed.append(RemovedModel(row["version"], row["status"], size, present, live_studies))
    return removed


def _fs(path: str) -> tuple[Any, str]:
    import fsspec

    fs, target = fsspec.core.url_to_fs(path.removeprefix("file://") if path.startswith("file://") else path)
    return fs, target


def _study_names(tuning: Any) -> list[str]:
    if isinstance(tuning, str):
        import json

        tuning = json.loads(tuning)
    names = []
    for value in (tuning or {}).values():
        if isinstance(value, dict):
            name = value.get("study_name") or value.get("study")
            if name:
                names.append(str(name))
    return names


def _existing_studies(settings: Any, names: list[str]) -> list[str]:
    if not names or not settings.postgres_url:
        return []
    from ml.tune import open_storage

    storage = open_storage(settings.postgres_url)
    known = {s.study_name for s in storage.get_all_studies()}
    return [n for n in names if n in known]


def _delete_studies(settings: Any, names: list[str]) -> None:
    if not names:
        return
    import optuna

    from ml.tune import open_storage

    storage = open_storage(settings.postgres_url)
    for name in names:
        optuna.delete_study(study_name=name, storage=storage)


def storage_footprint(engine: Engine) -> dict[str, float]:
    """Bytes on disk per stored row: per scored pair (all ``scoring.scores`` partitions, indexes included) and per
    raw event (``raw.events``), from ``pg_total_relation_size`` and exact row counts. 0 when a table is empty."""
    out: dict[str, float] = {}
    with engine.connect() as conn:
        for key, parent in (("bytes_per_scored_pair", "scoring.scores"), ("bytes_per_raw_event", "raw.events")):
            parts = _partitions(conn, parent)
            size = sum(p[2] for p in parts)
            rows = conn.execute(sa.text(f"select count(*) from {parent}")).scalar_one()
            out[key] = size / rows if rows else 0.0
            out[key.replace("bytes_per", "rows")] = float(rows)
            out[key.replace("bytes_per", "bytes_total")] = float(size)
        conn.rollback()
    return out
