"""The model registry: ``ml.model_versions`` rows, native-format artifacts, the champion, gate decisions,
manual promotion and rollback.

Statuses: ``candidate`` -> ``champion`` | ``rejected`` (the gate); a champion becomes ``retired`` when another version
is promoted, or ``rolled_back`` when a rollback restores the previous champion. At most one champion exists (a
partial unique index); every change of champion runs in one transaction under an advisory lock and writes a row to
``ml.gate_decisions`` with both metric sets.

Artifacts live under ``settings.location("artifacts")/models/<version>/``: one file per member in its library's
native format and ``manifest.json`` (see :meth:`ml.ensemble.Ensemble.save`). The location may be a local path or an
fsspec URL (``s3://...``); remote artifacts are staged through a local temporary folder.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import shutil
import tempfile
from dataclasses import dataclass, field, fields
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ml.ensemble import Ensemble
from ml.errors import ModelError
from ml.evaluate import GateDecision
from ml.jsonutil import dumps

log = logging.getLogger(__name__)

STATUSES = ("candidate", "champion", "rejected", "retired", "rolled_back")
_REGISTRY_LOCK_KEY = 7_262_031  # pg_advisory_xact_lock key: serialises changes of champion
_CHAMPION_SQL = sa.text("select version, metrics from ml.model_versions where status = 'champion'")


@dataclass
class ModelVersion:
    """One row of ``ml.model_versions``. Times are timezone-aware UTC. ``metrics`` holds the holdout metrics:
    ``{"ensemble": {...}, "members": {name: {...}}, "equal_weights": {...}}``."""

    version: str
    members: list[str]
    params: dict[str, Any]
    weights: dict[str, float]
    calibration: dict[str, float]
    features: list[str]
    training_window: dict[str, Any]
    data_fingerprint: str
    library_versions: dict[str, str]
    metrics: dict[str, Any]
    artifact_uri: str
    status: str = "candidate"
    threshold: float | None = None
    holdout_as_of: dt.datetime | None = None
    tuning: dict[str, Any] = field(default_factory=dict)
    report_uri: str | None = None
    dag_run_id: str | None = None
    created_at: dt.datetime | None = None
    promoted_at: dt.datetime | None = None
    retired_at: dt.datetime | None = None

    @property
    def ensemble_metrics(self) -> dict[str, Any]:
        return dict(self.metrics.get("ensemble", {}))


_JSON_COLUMNS = ("params", "weights", "calibration", "training_window", "library_versions", "metrics", "tuning")
_COLUMNS = [f.name for f in fields(ModelVersion)]


def new_version_id(now: dt.datetime | None = None) -> str:
    """A sortable, unique version id: ``YYYYMMDD-HHMMSS-<6 hex>`` (UTC creation time + random suffix)."""
    now = now or dt.datetime.now(dt.UTC)
    return f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def _row_to_version(row: Any) -> ModelVersion:
    data = dict(row._mapping)
    return ModelVersion(**{k: data[k] for k in _COLUMNS if k in data})


def register_version(engine: Engine, mv: ModelVersion) -> ModelVersion:
    """Insert ``mv`` as a ``candidate``; return the stored row. Raises :class:`ModelError` if the version exists."""
    values = {k: getattr(mv, k) for k in _COLUMNS if k not in ("created_at", "promoted_at", "retired_at")}
    values["status"] = "candidate"
    for k in _JSON_COLUMNS:
        values[k] = dumps(values[k])
    cols = ", ".join(values)
    binds = ", ".join(f"cast(:{k} as jsonb)" if k in _JSON_COLUMNS else f":{k}" for k in values)
    try:
        with engine.begin() as conn:
            row = conn.execute(
                # identifiers are this module's dataclass fields, values are bound parameters
                sa.text(f"insert into ml.model_versions ({cols}) values ({binds}) returning *"), values  # noqa: S608
            ).one()
    except sa.exc.IntegrityError as e:
        raise ModelError(f"model version {mv.version} could not be registered: {e.orig}") from e
    return _row_to_version(row)


def get_version(engine: Engine, version: str) -> ModelVersion:
    """The registry row of ``version``; raises :class:`ModelError` when there is none."""
    with engine.connect() as conn:
        row = conn.execute(sa.text("select * from ml.model_versions where version = :v"), {"v": version}).one_or_none()
    if row is None:
        raise ModelError(f"model version {version!r} is not in ml.model_versions")
    return _row_to_version(row)


def list_versions(engine: Engine, limit: int = 50) -> list[ModelVersion]:
    """The newest ``limit`` versions, newest first."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("select * from ml.model_versions order by created_at desc, version desc limit :n"), {"n": limit}
        ).all()
    return [_row_to_version(r) for r in rows]


def champion(engine: Engine) -> ModelVersion | None:
    """The current champion, or None when no version has been promoted."""
    with engine.connect() as conn:
        row = conn.execute(sa.text("select * from ml.model_versions where status = 'champion'")).one_or_none()
    return _row_to_version(row) if row is not None else None


def gate_decisions(engine: Engine, version: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """Recorded gate decisions (newest first), optionally only those about ``version``."""
    sql = "select * from ml.gate_decisions" + (" where version = :v" if version else "") + \
        " order by decided_at desc, decision_id desc limit :n"
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.text(sql), {"v": version, "n": limit})]


def set_report_uri(engine: Engine, version: str, uri: str) -> None:
    """Record where the HTML report of ``version`` lives."""
    with engine.begin() as conn:
        conn.execute(sa.text("update ml.model_versions set report_uri = :u where version = :v"),
                     {"u": uri, "v": version})


# --- champion changes ----------------------------------------------------------------------------------------------
def _record_decision(conn: sa.Connection, *, version: str, champion_version: str | None, action: str, reason: str,
                     manual: bool, challenger_metrics: dict[str, Any], champion_metrics: dict[str, Any] | None,
                     tolerances: dict[str, float] | None, decided_by: str | None) -> None:
    conn.execute(
        sa.text(
            "insert into ml.gate_decisions (version, champion_version, action, reason, manual, challenger_metrics,"
            " champion_metrics, tolerances, decided_by) values (:v, :c, :a, :r, :m, cast(:cm as jsonb),"
            " cast(:km as jsonb), cast(:t as jsonb), :by)"
        ),
        {
            "v": version, "c": champion_version, "a": action, "r": reason, "m": manual,
            "cm": dumps(challenger_metrics),
            "km": dumps(champion_metrics) if champion_metrics is not None else None,
            "t": dumps(tolerances or {}), "by": decided_by,
        },
    )


def _make_champion(conn: sa.Connection, version: str, old_status: str = "retired") -> str | None:
    """Inside a transaction holding the registry lock: demote the current champion to ``old_status`` and promote
    ``version``. Returns the previous champion's version (or None)."""
    prev = conn.execute(sa.text("select version from ml.model_versions where status = 'champion'")).scalar()
    if prev == version:
        return prev
    if prev is not None:
        conn.execute(sa.text("update ml.model_versions set status = :s, retired_at = now() where version = :v"),
                     {"s": old_status, "v": prev})
    conn.execute(sa.text("update ml.model_versions set status = 'champion', promoted_at = now(), retired_at = null"
                         " where version = :v"), {"v": version})
    return prev


def _lock(conn: sa.Connection) -> None:
    conn.execute(sa.text("select pg_advisory_xact_lock(:k)"), {"k": _REGISTRY_LOCK_KEY})


def apply_gate(engine: Engine, version: str, decision: GateDecision, decided_by: str | None = None) -> ModelVersion:
    """Record ``decision`` about candidate ``version`` and act on it: promote (the old champion is retired) or
    reject. A manual decision (``decision.manual``) is recorded with a reason starting with ``manual``. Returns the
    updated row. Raises :class:`ModelError` if the champion changed since the decision was computed."""
    with engine.begin() as conn:
        _lock(conn)
        current = conn.execute(sa.text("select version from ml.model_versions where status = 'champion'")).scalar()
        if current != decision.champion_version and not decision.manual:
            raise ModelError(
                f"the champion changed to {current} while {version} was evaluated against "
                f"{decision.champion_version}; re-run the gate"
            )
        _record_decision(
            conn, version=version, champion_version=current, action="promote" if decision.promote else "reject",
            reason=decision.reason, manual=decision.manual, challenger_metrics=decision.challenger_metrics,
            champion_metrics=decision.champion_metrics, tolerances=decision.tolerances, decided_by=decided_by,
        )
        if decision.promote:
            _make_champion(conn, version)
        else:
            conn.execute(sa.text("update ml.model_versions set status = 'rejected' where version = :v"
                                 " and status = 'candidate'"), {"v": version})
    log.info("gate: %s %s (%s)", version, "promoted" if decision.promote else "rejected", decision.reason)
    return get_version(engine, version)


def promote_version(engine: Engine, version: str, *, reason: str = "", decided_by: str | None = None) -> ModelVersion:
    """Manually make ``version`` the champion (any status), retiring the current one, and record a gate decision
    with reason ``manual: ...`` and both stored metric sets. Returns the updated row."""
    target = get_version(engine, version)
    with engine.begin() as conn:
        _lock(conn)
        cur = conn.execute(_CHAMPION_SQL).one_or_none()
        if cur is not None and cur.version == version:
            log.info("%s is already the champion", version)
            return target
        _record_decision(
            conn, version=version, champion_version=cur.version if cur else None, action="promote",
            reason=f"manual: {reason}" if reason else "manual", manual=True,
            challenger_metrics=target.ensemble_metrics,
            champion_metrics=dict(cur.metrics.get("ensemble", {})) if cur else None,
            tolerances=None, decided_by=decided_by,
        )
        _make_champion(conn, version)
    log.info("manually promoted %s (was %s)", version, cur.version if cur else None)
    return get_version(engine, version)


def rollback_champion(engine: Engine, *, reason: str = "", decided_by: str | None = None) -> ModelVersion:
    """Restore the previous champion: the current one becomes ``rolled_back`` and the most recently promoted
    ``retired`` version becomes champion again; a gate decision (action ``rollback``, reason ``manual: ...``) is
    recorded. Returns the new champion. Raises :class:`ModelError` if there is no champion or no earlier one."""
    with engine.begin() as conn:
        _lock(conn)
        cur = conn.execute(_CHAMPION_SQL).one_or_none()
        if cur is None:
            raise ModelError("rollback: there is no champion to roll back")
        prev = conn.execute(
            sa.text("select version, metrics from ml.model_versions where status = 'retired'"
                    " and promoted_at is not null order by promoted_at desc limit 1")
        ).one_or_none()
        if prev is None:
            raise ModelError(f"rollback: {cur.version} is the only version ever promoted; nothing to roll back to")
        _record_decision(
            conn, version=prev.version, champion_version=cur.version, action="rollback",
            reason=f"manual: rollback from {cur.version}" + (f": {reason}" if reason else ""), manual=True,
            challenger_metrics=dict(prev.metrics.get("ensemble", {})),
            champion_metrics=dict(cur.metrics.get("ensemble", {})), tolerances=None, decided_by=decided_by,
        )
        _make_champion(conn, prev.version, old_status="rolled_back")
    log.info("rolled back %s -> %s", cur.version, prev.version)
    return get_version(engine, prev.version)


# --- artifacts -----------------------------------------------------------------------------------------------------
def artifact_uri(settings: Any, version: str) -> str:
    """``<artifacts location>/models/<version>`` (local path or fsspec URL)."""
    base = settings.location("artifacts").rstrip("/")
    return f"{base}/models/{version}"


def save_artifacts(ensemble: Ensemble, uri: str) -> dict[str, Any]:
    """Save ``ensemble`` (native formats + manifest) to ``uri``; return the manifest. Remote URIs are uploaded with
    fsspec after a local save."""
    if "://" not in uri or uri.startswith("file://"):
        return ensemble.save(uri.removeprefix("file://"))
    import fsspec

    with tempfile.TemporaryDirectory() as tmp:
        manifest = ensemble.save(tmp)
        fs, path = fsspec.core.url_to_fs(uri)
        fs.put(tmp.rstrip("/") + "/", path, recursive=True)
    return manifest


def load_artifacts(uri: str, *, threads: int = 0) -> Ensemble:
    """Load an ensemble saved by :func:`save_artifacts` (checksums verified)."""
    if "://" not in uri or uri.startswith("file://"):
        return Ensemble.load(uri.removeprefix("file://"), threads=threads)
    import fsspec

    tmp = tempfile.mkdtemp(prefix="model-")
    try:
        fs, path = fsspec.core.url_to_fs(uri)
        fs.get(path.rstrip("/") + "/", tmp, recursive=True)
        return Ensemble.load(tmp, threads=threads)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_version(engine: Engine, settings: Any = None, version: str | None = None, *,
                 threads: int = 0) -> tuple[ModelVersion, Ensemble]:
    """The registry row and the loaded ensemble of ``version`` (default: the champion). Raises :class:`ModelError`
    when the version (or a champion) does not exist or its artifacts are missing or corrupted. ``settings`` is
    accepted for interface symmetry; the row's ``artifact_uri`` is authoritative."""
    mv = get_version(engine, version) if version else champion(engine)
    if mv is None:
        raise ModelError("no champion model: train one (propensity train) or promote a version")
    ens = load_artifacts(mv.artifact_uri, threads=threads)
    if list(ens.feature_names) != list(mv.features):
        raise ModelError(f"artifacts of {mv.version} list features that differ from the registry row")
    return mv, ens


def fmt_metric(v: Any) -> str:
    """A metric for tables: 4 decimals, '-' when missing."""
    return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)
