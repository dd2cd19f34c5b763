"""Training snapshots: features and labels of every active pair at a few as_of dates, checked with Great
Expectations, persisted as Parquet and recorded in PostgreSQL.

* **Dates** (:func:`snapshot_dates`, :func:`weekly_as_of_dates`): aware UTC midnights on a weekly grid anchored on
  Monday 2000-01-03 (so they never move when data grows), each with a full active window before it and its whole
  label horizon covered by raw.events; at most ``settings.max_snapshots``, the most recent.
* **Build** (:func:`build_snapshot_frame`): the rows of :func:`ml.features.read_pair_features_arrow` with labels and
  negatives subsampled by ``settings.negative_sample_rate`` (kept negatives weigh ``1 / rate``), sorted by
  (user_id, product_id), columns of :class:`TrainingSet`.
* **Check** (:func:`check_snapshot`, suite ``feature_snapshot`` run by :class:`ml.quality.GxRunner`): columns and
  order, unique keys, NaN only in NULLABLE_FEATURES, values inside FEATURE_RANGES, label in {0, 1}, weight >= 1,
  and a row count within ``snapshot_row_tolerance`` of the previous snapshot's.
* **Persist and record** (:func:`build_training_snapshot`): Parquet under
  ``artifacts/snapshots/<feature_version>/<params_key>/as_of=...parquet`` (written under a temporary name, then
  moved), one row in ``quality.validation_runs`` and one in ``ml.feature_snapshots``, in one transaction.
* **Fingerprints** (:func:`frame_fingerprint`): sha256 of a frame's content, independent of row order and storage
  format; a :class:`TrainingSet`'s fingerprint combines the feature version and each snapshot's.

Every name here is also importable from :mod:`ml.features` (resolved lazily there, to keep the import one-way).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ml.dates import utc_datetime
from ml.errors import ConfigError, ValidationFailed
from ml.features import (
    FEATURE_COLUMNS,
    FEATURE_RANGES,
    KEY_COLUMNS,
    NULLABLE_FEATURES,
    feature_version,
    read_pair_features_arrow,
)
from ml.jsonutil import to_jsonable
from ml.observe import Progress
from ml.quality import GxRunner, record_validation
from ml.quality import gx as quality_gx
from ml.settings import Settings

log = logging.getLogger(__name__)

_INF = math.inf
SNAPSHOT_ANCHOR = dt.datetime(2000, 1, 3, tzinfo=dt.UTC)  # a Monday: snapshot dates never move when data grows
SNAPSHOT_SUITE = "feature_snapshot"


def weekly_as_of_dates(
    first_event: dt.datetime,
    last_event: dt.datetime,
    settings: Settings,
    end: dt.datetime | dt.date | str | None = None,
) -> list[dt.datetime]:
    """Snapshot as_of dates (ascending, aware UTC midnights) for data spanning ``first_event`` .. ``last_event``.

    The data is taken to cover whole UTC days: ``[midnight of first_event's day, midnight after last_event's day)``
    (daily files land whole), capped at ``end``. A date qualifies when its label horizon lies inside the coverage
    (``as_of + label_horizon_days <= coverage end``) and a full active window precedes it (``as_of -
    active_window_days >= coverage start``). Dates sit on a grid of ``snapshot_every_days`` anchored on Monday
    2000-01-03, so they stay put as data grows; the most recent ``max_snapshots`` are returned.
    """
    if settings.snapshot_every_days <= 0:
        raise ConfigError(f"snapshot_every_days must be positive, not {settings.snapshot_every_days}")
    day = dt.timedelta(days=1)
    start = utc_datetime(first_event).replace(hour=0, minute=0, second=0, microsecond=0)
    stop = utc_datetime(last_event).replace(hour=0, minute=0, second=0, microsecond=0) + day
    if end is not None:
        stop = min(stop, utc_datetime(end))
    latest = stop - dt.timedelta(days=settings.label_horizon_days)
    earliest = start + dt.timedelta(days=settings.active_window_days)
    step = dt.timedelta(days=settings.snapshot_every_days)
    n_last = (latest - SNAPSHOT_ANCHOR) // step  # floor: the last grid date <= latest
    dates: list[dt.datetime] = []
    current = SNAPSHOT_ANCHOR + n_last * step
    while current >= earliest and len(dates) < settings.max_snapshots:
        dates.append(current)
        current -= step
    return sorted(dates)


def event_time_range(engine: Engine) -> tuple[dt.datetime, dt.datetime] | None:
    """(first, last) event_time in raw.events, or None when it is empty.

    Reads only the first and last non-empty daily partitions (raw.events has no index on event_time alone), so it
    costs milliseconds on any history.
    """
    sql = sa.text(
        "select c.oid::regclass::text as part, pg_get_expr(c.relpartbound, c.oid) as bound "
        "from pg_inherits i join pg_class c on c.oid = i.inhrelid "
        "where i.inhparent = 'raw.events'::regclass"
    )
    with engine.connect() as conn:
        parts = conn.execute(sql).all()
        lower = re.compile(r"FROM \('([^']+)'\)")

        def key(row: Any) -> str:
            m = lower.search(row.bound or "")
            return m.group(1) if m else ""

        ordered = sorted(parts, key=key)

        def first_nonempty(rows: list[Any], agg: str) -> dt.datetime | None:
            for row in rows:
                # the partition name comes from the catalog (regclass text is already quoted)
                value = conn.execute(sa.text(f"select {agg}(event_time) from {row.part}")).scalar()
                if value is not None:
                    return utc_datetime(value)
            return None

        first = first_nonempty(ordered, "min")
        last = first_nonempty(list(reversed(ordered)), "max")
    return None if first is None or last is None else (first, last)


def snapshot_dates(
    engine: Engine, settings: Settings, end: dt.datetime | dt.date | str | None = None
) -> list[dt.datetime]:
    """Weekly as_of dates whose label horizon is fully covered by the events in raw.events (ascending, aware UTC;
    at most ``settings.max_snapshots``, the most recent). Empty when there is too little history.
    See :func:`weekly_as_of_dates` for the rule."""
    span = event_time_range(engine)
    if span is None:
        return []
    return weekly_as_of_dates(span[0], span[1], settings, end)


def frame_fingerprint(frame: pd.DataFrame, columns: list[str] | None = None) -> str:
    """sha256 (hex) of a frame's content, independent of row order and of the storage format.

    Rows are sorted by the key columns present (as_of, user_id, product_id), then each column's values are hashed
    with pandas' stable ``hash_pandas_object``; column names and dtypes are part of the digest.
    """
    columns = columns or list(frame.columns)
    keys = [c for c in ("as_of", "user_id", "product_id") if c in columns]
    ordered = frame[columns].sort_values(keys, kind="stable").reset_index(drop=True) if keys else frame[columns]
    digest = hashlib.sha256()
    for c in columns:
        digest.update(f"{c}:{ordered[c].dtype}\n".encode())
        digest.update(pd.util.hash_pandas_object(ordered[c], index=False).to_numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class SnapshotInfo:
    """One persisted, checked training snapshot."""

    as_of: dt.datetime
    rows: int
    positives: int
    uri: str
    fingerprint: str
    success: bool
    snapshot_id: int | None = None
    validation_id: int | None = None
    failed_rules: tuple[str, ...] = ()


@dataclass
class TrainingSet:
    """Labelled training rows over several as_of dates.

    ``frame`` columns: as_of (datetime64[us, UTC]), user_id, product_id (int64), FEATURE_COLUMNS (float64),
    label (int8, 0/1), weight (float64; 1 for positives, 1/negative_sample_rate for kept negatives).
    ``fingerprint`` (sha256 hex) identifies the content: the feature version plus each snapshot's content hash, in
    as_of order; the model registry records it.
    """

    frame: pd.DataFrame
    fingerprint: str
    feature_version: str
    snapshots: list[SnapshotInfo]

    @property
    def feature_names(self) -> list[str]:
        return list(FEATURE_COLUMNS)


def snapshot_params(settings: Settings) -> dict[str, Any]:
    """The settings that shape a training snapshot's rows (recorded with it; their hash is part of its path)."""
    return {
        "lookback_days": settings.lookback_days,
        "active_window_days": settings.active_window_days,
        "label_horizon_days": settings.label_horizon_days,
        "negative_sample_rate": settings.negative_sample_rate,
        "seed": settings.seed,
    }


def _params_key(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]


def _snapshot_columns() -> list[str]:
    return ["as_of", *KEY_COLUMNS, *FEATURE_COLUMNS, "label", "weight"]


def build_snapshot_frame(engine: Engine, as_of: dt.datetime | dt.date | str, settings: Settings) -> pd.DataFrame:
    """Features and labels of every pair active at ``as_of`` (negatives subsampled by
    ``settings.negative_sample_rate``), as one frame with the :class:`TrainingSet` columns, sorted by
    (user_id, product_id). Not checked, not persisted: see :func:`build_training_snapshot`."""
    t = utc_datetime(as_of)
    table = read_pair_features_arrow(
        engine, t, settings, with_labels=True, negative_rate=settings.negative_sample_rate
    )
    frame = table.to_pandas()
    frame.insert(0, "as_of", pd.Timestamp(t).as_unit("us"))
    frame["label"] = frame["label"].astype("int8")
    return frame.sort_values(KEY_COLUMNS, kind="stable").reset_index(drop=True)[_snapshot_columns()]


@dataclass(frozen=True)
class SnapshotCheck:
    """Great Expectations results of one snapshot: ``results`` holds one dict per expectation."""

    success: bool
    results: list[dict[str, Any]]
    failed_rules: list[str]
    statistics: dict[str, Any]


def build_snapshot_suite(previous_rows: int | None, settings: Settings) -> Any:
    """The GX suite of a training snapshot: columns and order, keys unique and present, no NaN outside
    NULLABLE_FEATURES, every feature inside FEATURE_RANGES, label in {0, 1}, weight >= 1, and a row count within
    ``snapshot_row_tolerance`` times the previous snapshot's (at least one row when there is none)."""
    import great_expectations.expectations as gxe

    gx = quality_gx()

    tol = settings.snapshot_row_tolerance
    exps: list[Any] = [
        gxe.ExpectTableColumnsToMatchOrderedList(column_list=_snapshot_columns()),
        gxe.ExpectTableRowCountToBeBetween(
            min_value=max(1, int(previous_rows / tol)) if previous_rows else 1,
            max_value=int(previous_rows * tol) + 1 if previous_rows else None,
        ),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=KEY_COLUMNS),
        gxe.ExpectColumnValuesToBeInSet(column="label", value_set=[0, 1]),
        gxe.ExpectColumnValuesToBeBetween(column="weight", min_value=1.0),
    ]
    for column in [*KEY_COLUMNS, "label", "weight"]:
        exps.append(gxe.ExpectColumnValuesToNotBeNull(column=column))
    for column in FEATURE_COLUMNS:
        if column not in NULLABLE_FEATURES:
            exps.append(gxe.ExpectColumnValuesToNotBeNull(column=column))
        lo, hi = FEATURE_RANGES[column]
        exps.append(
            gxe.ExpectColumnValuesToBeBetween(
                column=column, min_value=lo if lo > -_INF else None, max_value=hi if hi < _INF else None
            )
        )
    return gx.ExpectationSuite(name=SNAPSHOT_SUITE, expectations=exps)


def check_snapshot(frame: pd.DataFrame, settings: Settings, previous_rows: int | None = None) -> SnapshotCheck:
    """Validate one snapshot frame with Great Expectations (:func:`build_snapshot_suite`); never raises on a
    failed expectation (the caller decides), only on a GX error."""
    outcome = GxRunner().validate_frame(
        build_snapshot_suite(previous_rows, settings),
        frame,
        run_name=SNAPSHOT_SUITE,
        result_format={"result_format": "SUMMARY", "partial_unexpected_count": 5},
        datasource="snapshots",
        asset="snapshot",
    )
    results: list[dict[str, Any]] = []
    failed: list[str] = []
    for e in outcome.expectations:
        column = e.kwargs.get("column") or ",".join(e.kwargs.get("column_list", []) or [])
        rule = f"{e.expectation_type}:{column}" if column and len(column) < 60 else e.expectation_type
        res = e.result
        entry = {
            "rule": rule,
            "success": e.success,
            "unexpected_count": res.get("unexpected_count"),
            "unexpected_percent": res.get("unexpected_percent"),
            "observed_value": to_jsonable(res.get("observed_value")),
            "partial_unexpected_list": to_jsonable(res.get("partial_unexpected_list")),
            "exception": e.exception if not e.success else None,
        }
        results.append(entry)
        if not e.success:
            failed.append(rule)
    stats = {
        "rows": int(len(frame)),
        "positives": int(frame["label"].sum()) if "label" in frame else None,
        "evaluated_expectations": len(results),
        "nan_share": {c: float(frame[c].isna().mean()) for c in NULLABLE_FEATURES if c in frame},
    }
    return SnapshotCheck(success=not failed, results=results, failed_rules=failed, statistics=stats)


def write_snapshot_parquet(frame: pd.DataFrame, uri: str, metadata: dict[str, str]) -> str:
    """Write ``frame`` to Parquet at ``uri`` (local path or object-storage URL) via a temporary name then a move,
    so a reader never sees a partial file. Returns ``uri``."""
    import pyarrow as pa
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    extra = {k: v.encode() for k, v in metadata.items()}
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **extra})
    fs, path = pafs.FileSystem.from_uri(uri)
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    tmp = f"{path}.tmp"
    pq.write_table(table, tmp, filesystem=fs, compression="zstd")
    fs.move(tmp, path)
    return uri


def read_snapshot_parquet(uri: str) -> pd.DataFrame:
    """A persisted snapshot back as a frame (the columns of :class:`TrainingSet`)."""
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    fs, path = pafs.FileSystem.from_uri(uri)
    return pq.read_table(path, filesystem=fs).to_pandas()


def _snapshot_uri(settings: Settings, version: str, params_key: str, as_of: dt.datetime) -> str:
    base = settings.location("artifacts").rstrip("/")
    if "://" not in base:
        base = str(Path(base).absolute())
    return f"{base}/snapshots/{version}/{params_key}/as_of={as_of:%Y-%m-%dT%H%M}.parquet"


def _previous_rows(engine: Engine, version: str, params_key: str, as_of: dt.datetime) -> int | None:
    sql = sa.text(
        "select row_count from ml.feature_snapshots where feature_version = :v and params_key = :k "
        "and as_of < :t and success order by as_of desc, created_at desc limit 1"
    )
    with engine.connect() as conn:
        value = conn.execute(sql, {"v": version, "k": params_key, "t": as_of}).scalar()
    return None if value is None else int(value)


def build_training_snapshot(
    engine: Engine,
    as_of: dt.datetime | dt.date | str,
    settings: Settings,
    *,
    previous_rows: int | None = None,
    raise_on_failure: bool = True,
) -> tuple[pd.DataFrame, SnapshotInfo]:
    """Build, check, persist and record the training snapshot at ``as_of``.

    Steps: :func:`build_snapshot_frame` → :func:`check_snapshot` (row count against ``previous_rows``, or the
    latest recorded successful snapshot before ``as_of`` with the same feature version and parameters) → Parquet
    under ``artifacts/snapshots/<feature_version>/<params_key>/`` → one row in quality.validation_runs
    (suite_name 'feature_snapshot') and one in ml.feature_snapshots. A failed check still persists and records
    the snapshot (for inspection), then raises ValidationFailed naming the as_of and rules, unless
    ``raise_on_failure`` is False.
    """
    t = utc_datetime(as_of)
    version = feature_version()
    params = snapshot_params(settings)
    key = _params_key(params)
    frame = build_snapshot_frame(engine, t, settings)
    if previous_rows is None:
        previous_rows = _previous_rows(engine, version, key, t)
    check = check_snapshot(frame, settings, previous_rows)
    fingerprint = frame_fingerprint(frame)
    uri = _snapshot_uri(settings, version, key, t)
    write_snapshot_parquet(
        frame, uri, {"feature_version": version, "fingerprint": fingerprint, "params": json.dumps(params)}
    )
    positives = int(frame["label"].sum())
    with engine.begin() as conn:
        validation_id = record_validation(
            conn,
            suite_name=SNAPSHOT_SUITE,
            file_name=uri.rsplit("/", 1)[-1],
            file_uri=uri,
            checksum_sha256=fingerprint,
            success=check.success,
            row_count=len(frame),
            statistics={**check.statistics, "previous_rows": previous_rows},
            results=check.results,
            failed_rules=check.failed_rules,
        )
        snapshot_id = conn.execute(
            sa.text(
                "insert into ml.feature_snapshots (as_of, feature_version, params, params_key, row_count, positives, "
                "uri, fingerprint, validation_id, success) values (:t, :v, cast(:p as jsonb), :k, :rows, :pos, :uri, "
                ":fp, :vid, :ok) returning snapshot_id"
            ),
            {
                "t": t, "v": version, "p": json.dumps(params), "k": key, "rows": len(frame), "pos": positives,
                "uri": uri, "fp": fingerprint, "vid": validation_id, "ok": check.success,
            },
        ).scalar_one()
    info = SnapshotInfo(
        as_of=t, rows=len(frame), positives=positives, uri=uri, fingerprint=fingerprint, success=check.success,
        snapshot_id=int(snapshot_id), validation_id=int(validation_id), failed_rules=tuple(check.failed_rules),
    )
    log.info(
        "snapshot %s: %s rows, %s positives, checks %s (%s)", f"{t:%Y-%m-%d}", f"{len(frame):,}", f"{positives:,}",
        "passed" if check.success else "FAILED", uri,
    )
    if not check.success and raise_on_failure:
        raise ValidationFailed(
            f"training snapshot at {t:%Y-%m-%d %H:%M} UTC failed {len(check.failed_rules)} check(s): "
            + ", ".join(check.failed_rules[:10]) + f" (see {uri}, validation_id {validation_id})",
            failures=[f"snapshot {t:%Y-%m-%d}: {rule}" for rule in check.failed_rules],
        )
    return frame, info


def build_training_snapshots(
    engine: Engine,
    settings: Settings,
    as_of_dates: list[dt.datetime | dt.date | str] | None = None,
) -> TrainingSet:
    """Training rows over several as_of dates (default :func:`snapshot_dates`), each snapshot checked, persisted
    and recorded by :func:`build_training_snapshot` (which raises ValidationFailed on a failed check).

    Raises ConfigError when there is no as_of date (too little history for one label horizon).
    """
    if as_of_dates is not None:
        dates = sorted(utc_datetime(d) for d in as_of_dates)
    else:
        dates = snapshot_dates(engine, settings)
    if not dates:
        raise ConfigError(
            "no training snapshot date: raw.events must cover at least active_window_days + label_horizon_days "
            f"({settings.active_window_days} + {settings.label_horizon_days} days)"
        )
    version = feature_version()
    frames: list[pd.DataFrame] = []
    infos: list[SnapshotInfo] = []
    previous: int | None = None
    progress = Progress("training snapshots", total=len(dates), unit="snapshots", every_s=0.0)
    for t in dates:
        frame, info = build_training_snapshot(engine, t, settings, previous_rows=previous)
        frames.append(frame)
        infos.append(info)
        previous = info.rows
        progress.advance(1)
    progress.finish()
    digest = hashlib.sha256(version.encode())
    for info in infos:
        digest.update(f"{info.as_of.isoformat()}:{info.fingerprint}\n".encode())
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    return TrainingSet(frame=frame, fingerprint=digest.hexdigest(), feature_version=version, snapshots=infos)
