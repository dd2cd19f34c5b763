"""A/B experiments between model versions: configuration, lifecycle, assignment, exposure and results.

An experiment (``experiments.experiments`` + ``experiments.arms``) splits users between arms; each arm is a model
version, the control arm is the champion. While it runs (``start_date`` .. ``end_date``, UTC score dates) the nightly
scoring run scores each user's pairs with the model of the user's arm (:mod:`ml.score`), publishing carries the
arm to Redis, the lookup API returns it and counts exposures in Redis, a daily task moves those counts here, and
:func:`experiment_results` compares the arms. Lifecycle: ``draft`` -> ``running`` -> ``stopped``; every action is
a row of ``experiments.lifecycle``.

Assignment (identical in SQL, ``experiments.assignment_bucket``, and here, :func:`assignment_bucket`; a storefront
can compute it too)::

    bucket = int.from_bytes(md5(f"{experiment_id}:{user_id}".encode()).digest()[:4], "big") % 10000

The arms take consecutive slices of the buckets in declaration order: arm i owns
``[round(T * c_i), round(T * c_{i+1}))`` with ``T = traffic_percent * 100`` and ``c_i`` the cumulative share of the
arms before i. Buckets at or above ``T`` are not enrolled (they get the champion and ``variant: null``). Keyed by
the experiment id, so the arms of two experiments are independent; never Python's salted ``hash()``.

Results (fixed-horizon decision rule, see docs/experiments.md): per arm, assigned users (distinct users the
experiment scored), exposed users (API HyperLogLog), converters (assigned users who bought a product published to
them within ``horizon_days`` of the score date), purchases per exposed user; for each treatment vs control the
absolute lift with a 95% Wald CI, the relative lift with a delta-method CI on the log ratio, a pooled two-proportion
z-test p-value, a sample-ratio-mismatch chi-square test over the arms, and the users per arm needed to detect
``mde`` (absolute) at ``alpha`` (two-sided) and ``power``.
"""

from __future__ import annotations

import datetime as dt
import getpass
import hashlib
import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ml.dates import utc_date
from ml.errors import ConfigError, ExperimentError
from ml.jsonutil import dumps

log = logging.getLogger(__name__)

N_BUCKETS = 10_000
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,47}$")
_ARM_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
ARCHIVED_STATUSES = ("retired", "rolled_back")
METRICS = ("conversion", "purchases_per_exposed")
SRM_P_THRESHOLD = 0.001  # a sample-ratio mismatch is flagged below this chi-square p-value


# --- assignment ----------------------------------------------------------------------------------------------------
def assignment_bucket(experiment_id: str, user_id: int) -> int:
    """The user's bucket in 0..9999: the first 4 bytes of ``md5("<experiment_id>:<user_id>")`` as a big-endian
    unsigned integer, mod 10000 (the SQL function ``experiments.assignment_bucket`` computes the same)."""
    digest = hashlib.md5(f"{experiment_id}:{int(user_id)}".encode(), usedforsecurity=False).digest()
    return int.from_bytes(digest[:4], "big") % N_BUCKETS


def assignment_buckets(experiment_id: str, user_ids: Iterable[int]) -> np.ndarray:
    """:func:`assignment_bucket` of many users (int32 array)."""
    prefix = f"{experiment_id}:".encode()
    out = [int.from_bytes(hashlib.md5(prefix + str(int(u)).encode(), usedforsecurity=False).digest()[:4], "big")
           for u in user_ids]
    return np.asarray(out, dtype=np.int64) % N_BUCKETS


@dataclass(frozen=True)
class Arm:
    """One arm: its name, model version, share of the enrolled users and its bucket slice [bucket_from, bucket_to)."""

    name: str
    model_version: str
    share: float
    bucket_from: int = 0
    bucket_to: int = 0
    is_control: bool = False


def slice_buckets(arms: Sequence[Arm], traffic_percent: float) -> list[Arm]:
    """The arms with their bucket slices (consecutive, in order, covering ``[0, traffic_percent * 100)``)."""
    total = traffic_percent * N_BUCKETS / 100.0
    out, cum = [], 0.0
    for arm in arms:
        lo, hi = round(total * cum), round(total * (cum + arm.share))
        cum += arm.share
        out.append(Arm(arm.name, arm.model_version, arm.share, lo, hi, arm.is_control))
    return out


def arm_of_bucket(arms: Sequence[Arm], bucket: int) -> str | None:
    for arm in arms:
        if arm.bucket_from <= bucket < arm.bucket_to:
            return arm.name
    return None


def assign_arms(experiment: Experiment, user_ids: Sequence[int] | np.ndarray) -> np.ndarray:
    """Arm index per user (``-1``: not enrolled), in ``experiment.arms`` order."""
    buckets = assignment_buckets(experiment.experiment_id, user_ids)
    out = np.full(len(buckets), -1, dtype=np.int64)
    for i, arm in enumerate(experiment.arms):
        out[(buckets >= arm.bucket_from) & (buckets < arm.bucket_to)] = i
    return out


# --- configuration -------------------------------------------------------------------------------------------------
@dataclass
class Experiment:
    """An experiment as stored: ``arms`` in declaration order, dates are UTC score dates (inclusive)."""

    experiment_id: str
    arms: list[Arm]
    start_date: dt.date
    end_date: dt.date
    description: str = ""
    traffic_percent: float = 100.0
    primary_metric: str = "conversion"
    mde: float = 0.01
    alpha: float = 0.05
    power: float = 0.8
    horizon_days: int = 7
    status: str = "draft"
    created_by: str | None = None
    created_at: dt.datetime | None = None
    started_by: str | None = None
    started_at: dt.datetime | None = None
    stopped_by: str | None = None
    stopped_at: dt.datetime | None = None
    stop_reason: str | None = None

    @property
    def control(self) -> Arm:
        return next(a for a in self.arms if a.is_control)

    def arm(self, name: str) -> Arm:
        for a in self.arms:
            if a.name == name:
                return a
        raise ExperimentError(f"experiment {self.experiment_id}: no arm {name!r}")

    def covers(self, day: dt.date) -> bool:
        return self.start_date <= day <= self.end_date

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["control_arm"] = self.control.name
        return d


def parse_arms(spec: str | Sequence[str] | Mapping[str, Any]) -> list[tuple[str, str]]:
    """``name=model_version`` pairs (a comma-separated string, a list of them, or a mapping name -> version)."""
    if isinstance(spec, Mapping):
        return [(str(k), str(v)) for k, v in spec.items()]
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out = []
    for item in items:
        name, sep, version = str(item).strip().partition("=")
        if not sep or not name.strip() or not version.strip():
            raise ExperimentError(f"arms: {item!r} is not NAME=MODEL_VERSION (e.g. control=20191110-020512-3fa2c1)")
        out.append((name.strip(), version.strip()))
    return out


def parse_split(spec: str | Sequence[float] | None, n_arms: int) -> list[float]:
    """Arm shares: ``"50,50"`` / ``"0.5,0.5"`` / a list; percentages (sum 100) are read as fractions. None: equal."""
    if spec is None or spec == "":
        return [1.0 / n_arms] * n_arms
    raw = spec.split(",") if isinstance(spec, str) else list(spec)
    try:
        values = [float(x) for x in raw]
    except (TypeError, ValueError) as e:
        raise ExperimentError(f"split: {spec!r} is not a comma-separated list of numbers") from e
    if len(values) != n_arms:
        raise ExperimentError(f"split: {len(values)} share(s) for {n_arms} arm(s); give one share per arm")
    if any(not math.isfinite(v) or v <= 0 for v in values):
        raise ExperimentError(f"split: every share must be > 0, got {values}")
    total = sum(values)
    if abs(total - 100.0) < 1e-6:
        values = [v / 100.0 for v in values]
    elif abs(total - 1.0) > 1e-6:
        raise ExperimentError(f"split: shares must sum to 1 (or 100), got {total:g} from {values}")
    return values


def validate_config(
    engine: Engine,
    experiment_id: str,
    arms: Sequence[tuple[str, str]],
    split: Sequence[float],
    start_date: dt.date,
    end_date: dt.date,
    *,
    control: str | None = None,
    traffic_percent: float = 100.0,
    primary_metric: str = "conversion",
    mde: float = 0.01,
    alpha: float = 0.05,
    power: float = 0.8,
    horizon_days: int = 7,
    today: dt.date | None = None,
    allow_past: bool = False,
) -> list[Arm]:
    """Check a new experiment; return its arms with bucket slices. Raises ExperimentError naming the field and
    the rule: id format and uniqueness, at least two arms, arm names, one share per arm summing to 1, known and not
    archived (retired / rolled back) model versions, distinct versions per arm, the control arm is the champion,
    identical feature lists across arms, dates not in the past (unless ``allow_past``: replays on historical data)
    and ``end_date >= start_date``, metric, mde, alpha, power, horizon and traffic ranges."""
    what = f"experiment {experiment_id!r}"
    if not _ID_RE.match(experiment_id or ""):
        raise ExperimentError(f"{what}: id must match {_ID_RE.pattern} (lower-case letters, digits, - and _)")
    if len(arms) < 2:
        raise ExperimentError(f"{what}: arms: at least two arms (control and a challenger), got {len(arms)}")
    names = [a for a, _ in arms]
    for name in names:
        if not _ARM_RE.match(name):
            raise ExperimentError(f"{what}: arm name {name!r} must match {_ARM_RE.pattern}")
    if len(set(names)) != len(names):
        raise ExperimentError(f"{what}: arm names must be distinct, got {names}")
    if len(split) != len(arms):
        raise ExperimentError(f"{what}: split has {len(split)} share(s) for {len(arms)} arms")
    if abs(sum(split) - 1.0) > 1e-6 or any(s <= 0 for s in split):
        raise ExperimentError(f"{what}: split shares must be > 0 and sum to 1, got {list(split)} (sum {sum(split):g})")
    control = control or names[0]
    if control not in names:
        raise ExperimentError(f"{what}: control arm {control!r} is not one of the arms {names}")
    if not 0 < traffic_percent <= 100:
        raise ExperimentError(f"{what}: traffic_percent must be in (0, 100], got {traffic_percent}")
    if primary_metric not in METRICS:
        raise ExperimentError(f"{what}: primary_metric must be one of {METRICS}, got {primary_metric!r}")
    for field_name, value, lo, hi in (("mde", mde, 0, 1), ("alpha", alpha, 0, 0.5), ("power", power, 0.5, 1)):
        if not lo < value < hi:
            raise ExperimentError(f"{what}: {field_name} must be in ({lo}, {hi}), got {value}")
    if not 1 <= horizon_days <= 90:
        raise ExperimentError(f"{what}: horizon_days must be in 1..90, got {horizon_days}")
    if end_date < start_date:
        raise ExperimentError(f"{what}: end_date {end_date} is before start_date {start_date}")
    today = today or dt.datetime.now(dt.UTC).date()
    if not allow_past and start_date < today:
        raise ExperimentError(f"{what}: start_date {start_date} is in the past (today is {today} UTC); pick a date "
                              "from today on, or pass --allow-past to replay historical data")
    versions = [v for _, v in arms]
    if len(set(versions)) != len(versions):
        raise ExperimentError(f"{what}: each arm needs its own model version, got {versions}")
    with engine.connect() as conn:
        if conn.execute(sa.text("select 1 from experiments.experiments where experiment_id = :e"),
                        {"e": experiment_id}).first():
            raise ExperimentError(f"{what} already exists; pick another id")
        rows = {r.version: r for r in conn.execute(
            sa.text("select version, status, features from ml.model_versions where version = any(:v)"),
            {"v": versions})}
    for name, version in arms:
        row = rows.get(version)
        if row is None:
            raise ExperimentError(f"{what}: arm {name!r}: unknown model version {version!r} (see propensity models)")
        if row.status in ARCHIVED_STATUSES:
            raise ExperimentError(f"{what}: arm {name!r}: model version {version} is archived ({row.status}); "
                                  "only champion, candidate or rejected versions can serve an arm")
    control_version = dict(arms)[control]
    if rows[control_version].status != "champion":
        raise ExperimentError(f"{what}: control arm {control!r} must be the champion; {control_version} is "
                              f"{rows[control_version].status}")
    first = list(rows[versions[0]].features)
    for name, version in arms:
        if list(rows[version].features) != first:
            raise ExperimentError(f"{what}: arm {name!r}: model {version} has a different feature list than "
                                  f"{versions[0]}; arms must share the feature list (contributions are stored in "
                                  "the run's feature order)")
    base = [Arm(n, v, float(s), is_control=(n == control)) for (n, v), s in zip(arms, split, strict=True)]
    sliced = slice_buckets(base, traffic_percent)
    for arm in sliced:
        if arm.bucket_to <= arm.bucket_from:
            raise ExperimentError(f"{what}: arm {arm.name!r} gets no assignment bucket (share {arm.share:g} of "
                                  f"{traffic_percent:g}% traffic is below 1/{N_BUCKETS})")
    return sliced


def _actor(actor: str | None) -> str:
    if actor:
        return actor
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        return "unknown"


def create_experiment(
    engine: Engine,
    experiment_id: str,
    arms: str | Sequence[str] | Mapping[str, Any],
    *,
    split: str | Sequence[float] | None = None,
    start_date: dt.date | str,
    end_date: dt.date | str,
    description: str = "",
    control: str | None = None,
    traffic_percent: float = 100.0,
    primary_metric: str = "conversion",
    mde: float = 0.01,
    alpha: float = 0.05,
    power: float = 0.8,
    horizon_days: int = 7,
    actor: str | None = None,
    today: dt.date | None = None,
    allow_past: bool = False,
) -> Experiment:
    """Validate (:func:`validate_config`) and store a new experiment in status ``draft``. Returns it."""
    pairs = parse_arms(arms)
    shares = parse_split(split, len(pairs))
    try:
        start, end = utc_date(start_date, what="start_date"), utc_date(end_date, what="end_date")
    except ConfigError as e:
        raise ExperimentError(f"experiment {experiment_id!r}: {e}") from e
    sliced = validate_config(engine, experiment_id, pairs, shares, start, end, control=control,
                             traffic_percent=traffic_percent, primary_metric=primary_metric, mde=mde, alpha=alpha,
                             power=power, horizon_days=horizon_days, today=today, allow_past=allow_past)
    who = _actor(actor)
    ctrl = next(a.name for a in sliced if a.is_control)
    with engine.begin() as conn:
        conn.execute(sa.text(
            "insert into experiments.experiments (experiment_id, description, control_arm, traffic_percent, start_date,"
            " end_date, primary_metric, mde, alpha, power, horizon_days, created_by) values (:e, :d, :c, :t, :s, :en,"
            " :m, :mde, :a, :p, :h, :by)"),
            {"e": experiment_id, "d": description, "c": ctrl, "t": traffic_percent, "s": start, "en": end,
             "m": primary_metric, "mde": mde, "a": alpha, "p": power, "h": horizon_days, "by": who})
        conn.execute(sa.text(
            "insert into experiments.arms (experiment_id, arm, position, model_version, share, bucket_from, bucket_to,"
            " is_control) values (:e, :arm, :pos, :mv, :share, :lo, :hi, :ctl)"),
            [{"e": experiment_id, "arm": a.name, "pos": i, "mv": a.model_version, "share": a.share,
              "lo": a.bucket_from, "hi": a.bucket_to, "ctl": a.is_control} for i, a in enumerate(sliced)])
        _record(conn, experiment_id, "create", who, {"arms": [asdict(a) for a in sliced]})
    log.info("created experiment %s (draft): %s", experiment_id,
             ", ".join(f"{a.name}={a.model_version} {a.share:.0%}" for a in sliced))
    return get_experiment(engine, experiment_id)


def _record(conn: sa.Connection, experiment_id: str, action: str, actor: str, details: dict[str, Any]) -> None:
    conn.execute(sa.text("insert into experiments.lifecycle (experiment_id, action, actor, details)"
                         " values (:e, :a, :by, cast(:d as jsonb))"),
                 {"e": experiment_id, "a": action, "by": actor, "d": dumps(details)})


def _experiment_from_rows(row: Any, arms: Sequence[Any]) -> Experiment:
    return Experiment(
        experiment_id=row.experiment_id,
        arms=[Arm(a.arm, a.model_version, float(a.share), int(a.bucket_from), int(a.bucket_to), bool(a.is_control))
              for a in arms],
        start_date=row.start_date, end_date=row.end_date, description=row.description,
        traffic_percent=float(row.traffic_percent), primary_metric=row.primary_metric, mde=float(row.mde),
        alpha=float(row.alpha), power=float(row.power), horizon_days=int(row.horizon_days), status=row.status,
        created_by=row.created_by, created_at=row.created_at, started_by=row.started_by, started_at=row.started_at,
        stopped_by=row.stopped_by, stopped_at=row.stopped_at, stop_reason=row.stop_reason,
    )


def _load(conn: sa.Connection, where: str, params: dict[str, Any]) -> list[Experiment]:
    rows = conn.execute(sa.text(f"select * from experiments.experiments where {where} order by created_at desc,"
                                " experiment_id"), params).all()  # ``where`` is one of this module's literals
    if not rows:
        return []
    arms: dict[str, list[Any]] = {}
    for a in conn.execute(sa.text("select * from experiments.arms where experiment_id = any(:ids)"
                                  " order by experiment_id, position"), {"ids": [r.experiment_id for r in rows]}):
        arms.setdefault(a.experiment_id, []).append(a)
    return [_experiment_from_rows(r, arms.get(r.experiment_id, [])) for r in rows]


def get_experiment(engine: Engine, experiment_id: str) -> Experiment:
    """The stored experiment; raises ExperimentError when there is none."""
    with engine.connect() as conn:
        found = _load(conn, "experiment_id = :e", {"e": experiment_id})
    if not found:
        raise ExperimentError(f"experiment {experiment_id!r} does not exist (see propensity experiment list)")
    return found[0]


def list_experiments(engine: Engine, status: str | None = None) -> list[Experiment]:
    """Every experiment (newest first), optionally of one status."""
    with engine.connect() as conn:
        if status:
            return _load(conn, "status = :s", {"s": status})
        return _load(conn, "true", {})


def running_experiment(engine: Engine, day: dt.date | None = None) -> Experiment | None:
    """The running experiment (there is at most one); with ``day``, only if the experiment covers that score date."""
    with engine.connect() as conn:
        found = _load(conn, "status = 'running'", {})
    if not found:
        return None
    exp = found[0]
    return exp if day is None or exp.covers(utc_date(day, what="score_date")) else None


def start_experiment(engine: Engine, experiment_id: str, *, actor: str | None = None) -> Experiment:
    """draft -> running. Refused when another experiment runs (same traffic), when the control arm is no longer the
    champion, or an arm's model version was archived since creation."""
    exp = get_experiment(engine, experiment_id)
    what = f"experiment {experiment_id!r}"
    if exp.status != "draft":
        raise ExperimentError(f"{what} is {exp.status}; only a draft can start")
    who = _actor(actor)
    with engine.begin() as conn:
        conn.execute(sa.text("lock table experiments.experiments in share row exclusive mode"))
        other = conn.execute(sa.text("select experiment_id from experiments.experiments where status = 'running'"))
        other_id = other.scalar()
        if other_id:
            raise ExperimentError(f"{what}: experiment {other_id!r} is already running on the same traffic (every "
                                  "user); stop it first (propensity experiment stop)")
        rows = {r.version: r.status for r in conn.execute(
            sa.text("select version, status from ml.model_versions where version = any(:v)"),
            {"v": [a.model_version for a in exp.arms]})}
        for arm in exp.arms:
            if rows.get(arm.model_version) in ARCHIVED_STATUSES:
                raise ExperimentError(f"{what}: arm {arm.name!r}: model version {arm.model_version} is archived "
                                      f"({rows[arm.model_version]})")
        if rows.get(exp.control.model_version) != "champion":
            raise ExperimentError(f"{what}: control arm {exp.control.name!r} ({exp.control.model_version}) is no "
                                  "longer the champion; create a new experiment against the current champion")
        conn.execute(sa.text("update experiments.experiments set status = 'running', started_at = now(),"
                             " started_by = :by where experiment_id = :e"), {"e": experiment_id, "by": who})
        _record(conn, experiment_id, "start", who, {})
    log.info("started experiment %s", experiment_id)
    return get_experiment(engine, experiment_id)


def stop_experiment(engine: Engine, experiment_id: str, *, reason: str = "", actor: str | None = None) -> Experiment:
    """running (or draft) -> stopped; scoring returns to the champion for everyone from the next run."""
    exp = get_experiment(engine, experiment_id)
    if exp.status == "stopped":
        raise ExperimentError(f"experiment {experiment_id!r} is already stopped")
    who = _actor(actor)
    with engine.begin() as conn:
        conn.execute(sa.text("update experiments.experiments set status = 'stopped', stopped_at = now(),"
                             " stopped_by = :by, stop_reason = :r where experiment_id = :e"),
                     {"e": experiment_id, "by": who, "r": reason or None})
        _record(conn, experiment_id, "stop", who, {"reason": reason, "was": exp.status})
    log.info("stopped experiment %s", experiment_id)
    return get_experiment(engine, experiment_id)


def sql_assignment(engine: Engine, experiment_id: str, user_ids: Sequence[int]) -> dict[int, str | None]:
    """The arm of each user per the SQL function ``experiments.assign_arm`` (for tests and storefront checks)."""
    with engine.connect() as conn:
        rows = conn.execute(sa.text("select u, experiments.assign_arm(:e, u) from unnest(cast(:u as bigint[])) as u"),
                            {"e": experiment_id, "u": [int(u) for u in user_ids]}).all()
    return {int(u): arm for u, arm in rows}


__all__ = [
    "ARCHIVED_STATUSES",
    "N_BUCKETS",
    "Arm",
    "Experiment",
    "ExperimentError",
    "arm_of_bucket",
    "assign_arms",
    "assignment_bucket",
    "assignment_buckets",
    "create_experiment",
    "get_experiment",
    "list_experiments",
    "parse_arms",
    "parse_split",
    "running_experiment",
    "slice_buckets",
    "sql_assignment",
    "start_experiment",
    "stop_experiment",
    "validate_config",
]
