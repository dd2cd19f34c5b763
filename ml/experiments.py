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


# --- publishing and exposure --------------------------------------------------------------------------------------
def published_arms_meta(engine: Engine, run_id: str | None) -> dict[str, str]:
    """The fields a published Redis version's meta gets from an experiment run (empty outside experiments):
    ``experiment_id``, ``arms`` (JSON ``{"arm": "model_version"}``) and ``model_version``, the control's (the
    partition holds several versions; users outside the experiment get the control's, the champion)."""
    if not run_id:
        return {}
    with engine.connect() as conn:
        exp = conn.execute(sa.text("select params -> 'experiment' from scoring.runs where run_id = :r"),
                           {"r": run_id}).scalar()
    if not exp:
        return {}
    control = next(a["model_version"] for a in exp["arms"] if a["is_control"])
    return {"experiment_id": exp["experiment_id"], "model_version": control,  # users outside: the champion
            "arms": dumps({a["arm"]: a["model_version"] for a in exp["arms"]}, separators=(",", ":"))}


def move_exposures(engine: Engine, redis_client: Any, settings: Any, day: dt.date | str | None = None) -> list[dict]:
    """Copy the API's exposure counts of UTC ``day`` (default: yesterday) from Redis into experiments.exposures,
    for every running experiment and every experiment stopped within the last two days. Re-runnable: a day's row
    is replaced. ``users_to_date`` is a PFCOUNT over every day key from the experiment's creation (or start date,
    the earlier) to ``day``. Returns the rows written."""
    from ml.keyspace import KeySpace

    day = utc_date(day, what="day") if day is not None else dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    ks = KeySpace(settings.redis_prefix)
    with engine.connect() as conn:
        found = _load(conn, "status = 'running' or (status = 'stopped' and stopped_at >= :since)",
                      {"since": dt.datetime.combine(day - dt.timedelta(days=2), dt.time(), dt.UTC)})
    rows = []
    for exp in found:
        first = min(exp.start_date, (exp.created_at or dt.datetime.now(dt.UTC)).date())
        if day < first:
            continue
        days = [(first + dt.timedelta(days=i)).strftime("%Y%m%d") for i in range((day - first).days + 1)]
        stamp = day.strftime("%Y%m%d")
        for arm in exp.arms:
            pipe = redis_client.pipeline(transaction=False)
            pipe.get(ks.exposure_requests(exp.experiment_id, arm.name, stamp))
            pipe.pfcount(ks.exposure_users(exp.experiment_id, arm.name, stamp))
            pipe.pfcount(*[ks.exposure_users(exp.experiment_id, arm.name, d) for d in days])
            requests, users, to_date = pipe.execute()
            rows.append({"e": exp.experiment_id, "arm": arm.name, "d": day, "req": int(requests or 0),
                         "users": int(users), "to_date": int(to_date)})
    if rows:
        with engine.begin() as conn:
            conn.execute(sa.text(
                "insert into experiments.exposures (experiment_id, arm, exposure_date, requests, users, users_to_date)"
                " values (:e, :arm, :d, :req, :users, :to_date) on conflict (experiment_id, arm, exposure_date) do"
                " update set requests = excluded.requests, users = excluded.users, users_to_date ="
                " excluded.users_to_date, moved_at = now()"), rows)
    for r in rows:
        log.info("exposure %s %s/%s: %s requests, %s users (%s to date)", day, r["e"], r["arm"], f"{r['req']:,}",
                 f"{r['users']:,}", f"{r['to_date']:,}")
    return rows


# --- results -------------------------------------------------------------------------------------------------------
def _norm_ppf(q: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(q))


def two_proportion_test(x_t: int, n_t: int, x_c: int, n_c: int, alpha: float = 0.05) -> dict[str, float | None]:
    """Treatment (x_t of n_t) vs control (x_c of n_c): absolute lift with a Wald CI (unpooled standard error),
    relative lift with a delta-method CI on log(p_t / p_c), and the pooled two-sided z-test p-value. Values that
    are undefined (an empty arm, no conversion in the control) are None."""
    from scipy.stats import norm

    out: dict[str, float | None] = dict.fromkeys(
        ("abs_lift", "abs_lift_ci_low", "abs_lift_ci_high", "rel_lift", "rel_lift_ci_low", "rel_lift_ci_high",
         "z", "p_value"))
    if n_t <= 0 or n_c <= 0:
        return out
    z_crit = _norm_ppf(1 - alpha / 2)
    p_t, p_c = x_t / n_t, x_c / n_c
    d = p_t - p_c
    se = math.sqrt(p_t * (1 - p_t) / n_t + p_c * (1 - p_c) / n_c)
    out.update(abs_lift=d, abs_lift_ci_low=d - z_crit * se, abs_lift_ci_high=d + z_crit * se)
    if p_c > 0:
        out["rel_lift"] = p_t / p_c - 1
        if p_t > 0:
            se_log = math.sqrt((1 - p_t) / x_t + (1 - p_c) / x_c)
            log_r = math.log(p_t / p_c)
            out.update(rel_lift_ci_low=math.exp(log_r - z_crit * se_log) - 1,
                       rel_lift_ci_high=math.exp(log_r + z_crit * se_log) - 1)
    pooled = (x_t + x_c) / (n_t + n_c)
    se_pooled = math.sqrt(pooled * (1 - pooled) * (1 / n_t + 1 / n_c))
    if se_pooled > 0:
        z = d / se_pooled
        out.update(z=z, p_value=float(2 * norm.sf(abs(z))))
    else:
        out.update(z=0.0, p_value=1.0)
    return out


def srm_check(assigned: Sequence[int], shares: Sequence[float]) -> tuple[float, float]:
    """Sample-ratio mismatch: chi-square goodness of fit of the assigned users per arm against the configured
    shares (normalised over the arms). Returns (chi2, p-value); p = 1 when nobody is assigned."""
    from scipy.stats import chisquare

    total = sum(assigned)
    if total == 0:
        return 0.0, 1.0
    weights = np.asarray(shares, dtype=np.float64) / sum(shares)
    res = chisquare(np.asarray(assigned, dtype=np.float64), weights * total)
    return float(res.statistic), float(res.pvalue)


def required_sample_size(p_control: float, mde: float, alpha: float = 0.05, power: float = 0.8) -> int | None:
    """Users per arm for a two-sided two-proportion test to detect an absolute difference ``mde`` from a baseline
    conversion ``p_control`` at ``alpha`` with ``power`` (normal approximation):
    n = (z_{1-a/2} sqrt(2 p(1-p)) + z_{power} sqrt(p1(1-p1) + p2(1-p2)))^2 / mde^2, p = (p1 + p2) / 2.
    None when p_control + mde leaves [0, 1]."""
    p1, p2 = p_control, p_control + mde
    if not 0 <= p1 <= 1 or not 0 < p2 < 1:
        return None
    pbar = (p1 + p2) / 2
    n = (_norm_ppf(1 - alpha / 2) * math.sqrt(2 * pbar * (1 - pbar))
         + _norm_ppf(power) * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))) ** 2 / mde**2
    return math.ceil(n)


@dataclass
class ArmResult:
    """One arm's line of an experiment's results (the columns of experiments.results)."""

    arm: str
    is_control: bool
    model_version: str
    expected_share: float
    assigned_users: int
    exposed_users: int | None
    converters: int
    purchases: int
    conversion: float | None
    purchases_per_exposed: float | None
    abs_lift: float | None = None
    abs_lift_ci_low: float | None = None
    abs_lift_ci_high: float | None = None
    rel_lift: float | None = None
    rel_lift_ci_low: float | None = None
    rel_lift_ci_high: float | None = None
    p_value: float | None = None
    significant: bool | None = None
    srm_chi2: float = 0.0
    srm_p_value: float = 1.0
    srm_flag: bool = False
    required_per_arm: int | None = None
    horizon_matured: bool = False
    decision: str = ""


@dataclass
class ExperimentResults:
    experiment: Experiment
    arms: list[ArmResult]
    computed_at: dt.datetime

    @property
    def srm_flag(self) -> bool:
        return any(a.srm_flag for a in self.arms)

    def as_dict(self) -> dict[str, Any]:
        return {"experiment_id": self.experiment.experiment_id, "status": self.experiment.status,
                "computed_at": self.computed_at, "srm_flag": self.srm_flag, "arms": [asdict(a) for a in self.arms]}

    def lines(self) -> list[str]:
        """A printable table: one line per arm, the SRM verdict, the decision rule."""
        exp = self.experiment
        head = (f"experiment {exp.experiment_id} ({exp.status}; {exp.start_date} .. {exp.end_date}, horizon "
                f"{exp.horizon_days}d, metric {exp.primary_metric}, mde {exp.mde:g}, alpha {exp.alpha:g})")
        cols = (f"{'arm':12} {'model':24} {'share':>6} {'assigned':>9} {'exposed':>8} {'conv':>8} {'conv.rate':>9} "
                f"{'purch/exp':>9} {'abs lift [95% CI]':>28} {'rel lift [95% CI]':>26} {'p-value':>8} {'need/arm':>9}")
        out = [head, cols]

        def pct(v: float | None) -> str:
            return "-" if v is None else f"{v:+.2%}"

        for a in self.arms:
            rate = "-" if a.conversion is None else f"{a.conversion:.2%}"
            ppe = "-" if a.purchases_per_exposed is None else f"{a.purchases_per_exposed:.3f}"
            absl = "control" if a.is_control else f"{pct(a.abs_lift)} [{pct(a.abs_lift_ci_low)}, {pct(a.abs_lift_ci_high)}]"
            rel = "" if a.is_control else f"{pct(a.rel_lift)} [{pct(a.rel_lift_ci_low)}, {pct(a.rel_lift_ci_high)}]"
            pv = "" if a.p_value is None else f"{a.p_value:.4f}"
            need = "-" if a.required_per_arm is None else f"{a.required_per_arm:,}"
            exposed = "-" if a.exposed_users is None else f"{a.exposed_users:,}"
            out.append(f"{a.arm:12} {a.model_version[:24]:24} {a.expected_share:6.0%} {a.assigned_users:9,} "
                       f"{exposed:>8} {a.converters:8,} {rate:>9} {ppe:>9} {absl:>28} {rel:>26} {pv:>8} {need:>9}")
        a0 = self.arms[0] if self.arms else None
        if a0 is not None:
            if self.srm_flag:
                out.append(f"!!! SAMPLE RATIO MISMATCH: chi2 {a0.srm_chi2:.2f}, p {a0.srm_p_value:.2g} -- the split "
                           "of assigned users does not match the configuration; do NOT trust these results")
            else:
                out.append(f"sample ratio: ok (chi2 {a0.srm_chi2:.2f}, p {a0.srm_p_value:.3f})")
        for a in self.arms:
            if not a.is_control:
                out.append(f"decision for {a.arm}: {a.decision}")
        return out


def _decide(exp: Experiment, arm: ArmResult, control: ArmResult) -> str:
    """The fixed-horizon decision rule (docs/experiments.md)."""
    if arm.srm_flag:
        return "invalid: sample ratio mismatch; find the cause before reading any lift"
    if not arm.horizon_matured:
        return (f"wait: fixed horizon not reached (last score date {exp.end_date} + {exp.horizon_days} days); "
                "interim numbers are for monitoring only")
    need = arm.required_per_arm
    if need is not None and min(arm.assigned_users, control.assigned_users) < need:
        return f"inconclusive: underpowered ({min(arm.assigned_users, control.assigned_users):,} < {need:,} per arm)"
    if arm.p_value is not None and arm.p_value < exp.alpha:
        return "ship the challenger" if (arm.abs_lift or 0) > 0 else "keep the control (challenger is worse)"
    return "keep the control (no significant difference)"


def experiment_results(
    engine: Engine,
    experiment_id: str,
    *,
    srm_p_threshold: float = SRM_P_THRESHOLD,
    today: dt.date | None = None,
    record: bool = True,
    top_n: int = 20,
    min_probability: float = 0.0,
) -> ExperimentResults:
    """Compute the per-arm results of an experiment (see the module docstring) and, with ``record``, store them in
    experiments.results (read by bi.experiment_results).

    Only score dates whose horizon has matured by ``today`` (UTC, default: now) count. ``top_n`` /
    ``min_probability``: what counts as published on a score date that was never published (replays; normally
    ``settings.publish_top_n`` / ``publish_min_probability``)."""
    from ml.db import read_sql

    exp = get_experiment(engine, experiment_id)
    today = today or dt.datetime.now(dt.UTC).date()
    with engine.connect() as conn:
        outcome = {r.arm: r for r in conn.execute(sa.text(read_sql("experiments/arm_outcomes.sql")), {
            "experiment_id": experiment_id, "start_date": exp.start_date, "end_date": exp.end_date,
            "mature_until": today - dt.timedelta(days=exp.horizon_days), "horizon_days": exp.horizon_days,
            "default_top_n": top_n, "default_min_probability": min_probability})}
        exposed = {r.arm: int(r.users) for r in conn.execute(sa.text(
            "select distinct on (arm) arm, users_to_date as users from experiments.exposures"
            " where experiment_id = :e order by arm, exposure_date desc"), {"e": experiment_id})}
    matured = today >= exp.end_date + dt.timedelta(days=exp.horizon_days)
    arms = []
    for a in exp.arms:
        o = outcome.get(a.name)
        n, x, k = (int(o.assigned_users), int(o.converters), int(o.purchases)) if o else (0, 0, 0)
        e = exposed.get(a.name)
        arms.append(ArmResult(a.name, a.is_control, a.model_version, a.share, n, e, x, k, x / n if n else None,
                              k / e if e else None, horizon_matured=matured))
    chi2, p_srm = srm_check([r.assigned_users for r in arms], [r.expected_share for r in arms])
    control = next(r for r in arms if r.is_control)
    need = (required_sample_size(control.conversion, exp.mde, exp.alpha, exp.power)
            if control.conversion is not None else None)
    for r in arms:
        r.srm_chi2, r.srm_p_value, r.srm_flag = chi2, p_srm, p_srm < srm_p_threshold
        r.required_per_arm = need
        if not r.is_control:
            t = two_proportion_test(r.converters, r.assigned_users, control.converters, control.assigned_users,
                                    exp.alpha)
            for key in ("abs_lift", "abs_lift_ci_low", "abs_lift_ci_high", "rel_lift", "rel_lift_ci_low",
                        "rel_lift_ci_high", "p_value"):
                setattr(r, key, t[key])
            r.significant = None if r.p_value is None else r.p_value < exp.alpha
            r.decision = _decide(exp, r, control)
        else:
            r.decision = "control"
    if p_srm < srm_p_threshold:
        log.error("experiment %s: SAMPLE RATIO MISMATCH (chi2 %.2f, p %.3g): assigned %s vs split %s",
                  experiment_id, chi2, p_srm, [r.assigned_users for r in arms], [r.expected_share for r in arms])
    computed_at = dt.datetime.now(dt.UTC)
    results = ExperimentResults(exp, arms, computed_at)
    if record:
        with engine.begin() as conn:
            conn.execute(sa.text(
                "insert into experiments.results (experiment_id, computed_at, " + ", ".join(_RESULT_COLUMNS)
                + ") values (:experiment_id, :computed_at, " + ", ".join(f":{c}" for c in _RESULT_COLUMNS) + ")"),
                [{"experiment_id": experiment_id, "computed_at": computed_at, **asdict(r)} for r in arms])
    return results


_RESULT_COLUMNS = tuple(ArmResult.__dataclass_fields__)


def results_html(rows: Sequence[Mapping[str, Any]]) -> str:
    """The Propensity UI page's A/B section: rows of bi.experiment_results as an HTML table; a sample-ratio
    mismatch is a red banner."""
    import html

    if not rows:
        return '<p class="empty">no experiment results yet (propensity experiment results EXPERIMENT_ID)</p>'
    e = html.escape

    def pct(v: Any) -> str:
        return "" if v is None else f"{v:+.2%}"

    banners = sorted({r["experiment_id"] for r in rows if r["srm_flag"]})
    out = [f'<p style="color:#fff;background:#c00;padding:4px"><b>SAMPLE RATIO MISMATCH</b> in {e(x)}: do not trust '
           "its results</p>" for x in banners]
    head = ["experiment", "status", "arm", "model", "assigned", "exposed", "conversion", "abs lift [95% CI]",
            "rel lift", "p-value", "need/arm", "decision", "computed"]
    out.append("<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>")
    for r in rows:
        cells = [r["experiment_id"], r["status"], r["arm"] + (" (control)" if r["is_control"] else ""),
                 r["model_version"], f"{r['assigned_users']:,}",
                 "" if r["exposed_users"] is None else f"{r['exposed_users']:,}",
                 "" if r["conversion"] is None else f"{r['conversion']:.2%}",
                 "" if r["is_control"] else f"{pct(r['abs_lift'])} [{pct(r['abs_lift_ci_low'])}, "
                 f"{pct(r['abs_lift_ci_high'])}]",
                 pct(r["rel_lift"]), "" if r["p_value"] is None else f"{r['p_value']:.4f}",
                 "" if r["required_per_arm"] is None else f"{r['required_per_arm']:,}", r["decision"],
                 f"{r['computed_at']:%Y-%m-%d %H:%M}"]
        out.append("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in cells) + "</tr>")
    return "".join(out) + "</table>"



__all__ = [
    "ARCHIVED_STATUSES",
    "N_BUCKETS",
    "Arm",
    "ArmResult",
    "Experiment",
    "ExperimentError",
    "ExperimentResults",
    "arm_of_bucket",
    "assign_arms",
    "assignment_bucket",
    "assignment_buckets",
    "create_experiment",
    "experiment_results",
    "get_experiment",
    "list_experiments",
    "move_exposures",
    "parse_arms",
    "parse_split",
    "published_arms_meta",
    "required_sample_size",
    "results_html",
    "running_experiment",
    "slice_buckets",
    "sql_assignment",
    "srm_check",
    "start_experiment",
    "stop_experiment",
    "two_proportion_test",
    "validate_config",
]
