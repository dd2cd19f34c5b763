"""The end-to-end demo: embedded services -> generated REES46 events -> a real local Airflow scheduler running
ingest_events -> (Asset events) train_ensemble -> (Asset model) score_active_pairs (which publishes to Redis) ->
one lookup through the HTTP API -> a printed summary.

Only the first DAG is triggered by hand; the rest follow from Assets, exactly as in production. The generated data
ends yesterday (UTC), so "tonight's" scoring run scores today's active pairs.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import sqlalchemy as sa

from ml.settings import Settings

log = logging.getLogger(__name__)

DAG_IDS = ["ingest_events", "train_ensemble", "score_active_pairs", "monitor_outcomes"]


@dataclass
class DemoSummary:
    """What the demo did, for printing."""

    lines: list[str] = field(default_factory=list)

    def add(self, line: str = "") -> None:
        self.lines.append(line)

    def text(self) -> str:
        return "\n".join(self.lines)


def _say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def _utc_today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def prepare_landing(settings: Settings, *, days: int, users: int, products: int, seed: int) -> list[Path]:
    """Write the demo dataset (ending yesterday) plus one deliberately corrupt file into the landing folder."""
    from ml.dev.generate import GeneratorConfig, corrupt_file, generate_events, write_daily_files

    landing = Path(settings.location("landing"))
    landing.mkdir(parents=True, exist_ok=True)
    start = _utc_today() - dt.timedelta(days=days)
    from ml.dev.demo_ab import uplift_config

    # the A/B knob: the demo experiment's challenger arm gets a real uplift (ml.dev.demo_ab)
    cfg = GeneratorConfig(start=start, days=days, n_users=users, n_products=products, seed=seed,
                          **uplift_config(_utc_today()))
    _say(f"generating {days} days of events for {users:,} users x {products:,} products from {start} ...")
    t0 = time.perf_counter()
    events = generate_events(cfg)
    files = write_daily_files(events, landing, formats=("csv",))
    _say(f"wrote {len(files)} daily files, {len(events):,} events in {time.perf_counter() - t0:.1f}s -> {landing}")
    bad = corrupt_file(files[-1], landing / "events_corrupt_sample.csv", "negative_price", seed=seed)
    _say(f"also dropped a corrupt file to show quarantine: {bad.name}")
    return [*files, bad]


def _api_lookup(settings: Settings, redis_url: str, pg_url: str, port: int) -> list[str]:
    """Start the lookup API briefly, make one authenticated lookup of a top user, return printable lines."""
    import redis

    from ml.db import make_engine
    from ml.publish import current_version, version_meta

    client = redis.Redis.from_url(redis_url)
    version = current_version(client, settings)
    info = version_meta(client, settings, version) if version is not None else {}
    client.close()
    engine = make_engine(pg_url)
    with engine.connect() as c:
        user_id = c.execute(
            sa.text("select user_id from bi.latest_scores order by probability desc, user_id limit 1")
        ).scalar()
    engine.dispose()
    if version is None or user_id is None:
        return ["  (nothing published: no lookup made)"]
    key = secrets.token_urlsafe(24)
    env = {
        **os.environ,
        "PROPENSITY_REDIS_URL": redis_url,
        "PROPENSITY_POSTGRES_URL": pg_url,
        "PROPENSITY_REDIS_PREFIX": settings.redis_prefix,
        "PROPENSITY_API_KEY_HASHES": f'["{hashlib.sha256(key.encode()).hexdigest()}"]',
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "ml", "api", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}/v1/users/{user_id}/recommendations?limit=3"
        for _ in range(100):
            try:
                r = httpx.get(url, headers={"Authorization": f"Bearer {key}"}, timeout=5)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            return ["  (the API did not start)"]
        lines = [f"  GET {url}  -> {r.status_code}", "  " + r.text[:600]]
        m = httpx.get(f"http://127.0.0.1:{port}/v1/model", headers={"Authorization": f"Bearer {key}"}, timeout=5)
        lines.append(f"  GET http://127.0.0.1:{port}/v1/model  -> {m.status_code}")
        if m.status_code == 200:
            body = m.json()
            holdout = body.get("holdout_metrics") or {}
            top = ", ".join(f["feature"] for f in (body.get("top_features") or [])[:3])
            lines.append(f"  served: Redis version {info.get('version', version)}, score date {body.get('score_date')}, "
                         f"model {body.get('model_version')} (holdout PR-AUC {holdout.get('pr_auc', float('nan')):.4f}, "
                         f"ROC-AUC {holdout.get('roc_auc', float('nan')):.4f}); top features by mean |SHAP|: {top}")
        return lines
    finally:
        proc.terminate()
        proc.wait(10)


def summarize(engine: sa.Engine, settings: Settings) -> list[str]:
    """Counts and pointers from Postgres for the closing summary."""
    out: list[str] = []
    with engine.connect() as conn:
        q = lambda sql: conn.execute(sa.text(sql))  # noqa: E731 - every query on the one connection
        ev, files = q("select (select count(*) from raw.events), (select count(*) from raw.ingested_files)").one()
        bad = q("select file_name, failed_rules, quarantine_uri from quality.validation_runs where not success").all()
        out.append(f"events loaded: {ev:,} from {files} files; files quarantined: {len(bad)}")
        for b in bad:
            out.append(f"  quarantined {b.file_name}: rules {', '.join(b.failed_rules)} -> {b.quarantine_uri}")
        champ = q(
            "select version, metrics, report_uri from ml.model_versions where status = 'champion' "
            "order by created_at desc limit 1"
        ).first()
        if champ:
            # metrics = {"ensemble": holdout metrics, "members": {...}, "equal_weights": ..., "validation": ...}
            m = (champ.metrics or {}).get("ensemble", {}) if isinstance(champ.metrics, dict) else {}
            keys = ("roc_auc", "pr_auc", "log_loss", "brier", "ece", "hit_rate_at_10")
            shown = ", ".join(f"{k}={m[k]:.4f}" for k in keys if isinstance(m.get(k), (int, float)))
            out.append(f"champion model: {champ.version}  holdout {shown}")
            out.append(f"  model report: {champ.report_uri}")
        run = q(
            "select run_id, score_date, scored_pairs, timings, model_version,"
            " extract(epoch from finished_at - started_at) as wall from scoring.runs"
            " where status = 'succeeded' order by finished_at desc limit 1"
        ).first()
        if run:
            wall = float(run.wall or 0)
            rate = f" in {wall:.0f}s wall from plan to swap ({run.scored_pairs / wall:,.0f} pairs/s)" if wall > 0 else ""
            out.append(f"pairs scored: {run.scored_pairs:,} for {run.score_date} by {run.model_version}{rate}")
            stages = {k: v for k, v in (run.timings or {}).items() if isinstance(v, (int, float)) and k != "total"}
            if stages:
                out.append("  task seconds summed over buckets: " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()))
        pub = q("select * from scoring.publications order by published_at desc limit 1").mappings().first()
        if pub:
            out.append(
                f"hot pairs published to Redis: {pub.get('pairs', pub.get('hot_pairs', '?')):,} for "
                f"{pub.get('users', '?'):,} users as version {pub.get('version')}"
            )
    return out


def monitor_lines(engine: sa.Engine, day: dt.date) -> list[str]:
    """Expected (holdout) vs realized metrics of one evaluated score date, for the summary (issue 13)."""
    from ml.monitor import expected_vs_realized

    rows = [r for seg in ("all", "published") for r in expected_vs_realized(engine, day, seg)]
    if not rows:
        return [f"  no realized metrics for {day} (label horizon not matured?)"]
    out = []
    for r in rows:
        def pair(m: str, r: dict = r) -> str:
            real, exp = r[f"realized_{m}"], r[f"expected_{m}"]
            return f"{m} {'n/a' if real is None else f'{real:.4f}'} (expected {'n/a' if exp is None else f'{exp:.4f}'})"

        arm = "" if r["arm"] == "(all)" else f" (arm {r['arm']}, {r['model_version']})"
        out.append(f"  {r['segment']:>9} pairs{arm}: {r['pairs']:,} pairs, {r['positives']:,} bought; "
                   + ", ".join(pair(m) for m in ("roc_auc", "pr_auc", "brier", "ece")))
    return out


def run_demo(
    settings: Settings,
    *,
    days: int = 63,
    users: int = 3000,
    products: int = 1500,
    seed: int = 7,
    port: int = 8080,
    api_port: int = 8000,
    keep_ui: bool = False,
    timeout_s: float = 3600,
    trials: int = 4,
) -> DemoSummary:
    """Run the whole pipeline through a local Airflow scheduler on the embedded (or configured) services."""
    from ml.db import make_engine, migrate
    from ml.dev.local_airflow import local_airflow
    from ml.dev.services import ensure_port_free, resolve_services

    # both ports before minutes of work: a second demo at the same time would otherwise talk to the first one's
    ensure_port_free(port, "Airflow api-server (the demo's UI)", "a demo or Airflow may be running (`propensity "
                     "airflow down` stops a kept demo UI): stop it or pass --port")
    ensure_port_free(api_port, "lookup API (the demo's sample lookup)", "stop what listens there or pass --api-port")
    summary = DemoSummary()
    svc = resolve_services(settings)
    _say(f"postgres: {svc.postgres_url}{' (embedded)' if svc.embedded_postgres else ''}")
    _say(f"redis:    {svc.redis_url}{' (embedded)' if svc.embedded_redis else ''}")
    engine = make_engine(svc.postgres_url)
    applied = migrate(engine)
    _say(f"migrations applied: {len(applied)}")
    landing = Path(settings.location("landing"))
    if not any(landing.glob("events_*")):
        prepare_landing(settings, days=days, users=users, products=products, seed=seed)
    else:
        _say(f"landing already has files ({landing}); not generating")

    af = local_airflow(settings, port=port)
    # the chain flows by Assets only: no cron runs start when the DAGs are unpaused
    af.extra_env.update({"PROPENSITY_TRAIN_ON_NEW_EVENTS": "true", "PROPENSITY_TIME_SCHEDULES": "false",
                         # a demo-sized tuning budget (the weekly run's default is settings.n_trials)
                         "PROPENSITY_N_TRIALS": str(trials),
                         # Data Docs pages for the files that fail (the quarantined one), not for each of 63 good ones
                         "PROPENSITY_DATA_DOCS_PASSED_FILES": "false",
                         # the demo's backlog (63 small files) in one mapped task: on a 2-core machine one process
                         # ingests them in ~11 s, while 4 concurrent tasks of 16 took ~22 s and 2 of 32 ~18 s
                         # (each process pays its imports and its validation child; measured with `propensity
                         # ingest`). Production keeps settings.ingest_group_max_files (16) to spread over workers.
                         "PROPENSITY_INGEST_GROUP_MAX_FILES": "64"})
    _say(f"training budget: {trials} Optuna trials per member (--trials; the weekly default is {settings.n_trials})")
    _say("migrating Airflow's metadata database ...")
    af.migrate()
    _say(f"starting Airflow (scheduler, dag-processor, api-server on {af.base_url}) ...")
    af.start()
    try:
        af.wait_for_dags(DAG_IDS)
        af.ensure_pool(settings.score_db_pool, 2, "scoring COPY writers")
        for d in DAG_IDS:
            af.unpause(d)
        started = dt.datetime.now(dt.UTC).isoformat()
        run_id = af.trigger("ingest_events")
        _say(f"triggered ingest_events ({run_id}); train_ensemble and score_active_pairs follow by Assets")
        t0 = time.perf_counter()
        ingest = af.wait_for_run("ingest_events", run_id=run_id, timeout=timeout_s, allow_failed=True)
        note = " (expected: the corrupt file was quarantined; the good files loaded)" if ingest["state"] == "failed" else ""
        _say(f"ingest_events finished: {ingest['state']}{note} ({time.perf_counter() - t0:.0f}s)")
        train = af.wait_for_run("train_ensemble", after=started, timeout=timeout_s)
        _say(f"train_ensemble finished: {train['state']} ({time.perf_counter() - t0:.0f}s)")
        score = af.wait_for_run("score_active_pairs", after=started, timeout=timeout_s)
        _say(f"score_active_pairs finished: {score['state']} ({time.perf_counter() - t0:.0f}s)")
        # a matured date (its label horizon ended before the data does), scored as a backfill (Postgres only:
        # the storefront keeps the newest date), then evaluated by the monitor_outcomes DAG
        from ml.score import run_scoring

        matured = _utc_today() - dt.timedelta(days=settings.label_horizon_days + 1)
        _say(f"scoring the matured date {matured} (backfill, not published) ...")
        run_scoring(engine, settings.model_copy(update={"postgres_url": svc.postgres_url}), matured)
        mon_id = af.trigger("monitor_outcomes", conf={"score_dates": [matured.isoformat()], "force": True})
        mon = af.wait_for_run("monitor_outcomes", run_id=mon_id, timeout=timeout_s)
        _say(f"monitor_outcomes finished: {mon['state']} ({time.perf_counter() - t0:.0f}s)")

        summary.add("=" * 78)
        summary.add("Demo summary")
        summary.add("=" * 78)
        for line in summarize(engine, settings):
            summary.add(line)
        summary.add(f"expected (holdout) vs realized for the matured score date {matured}:")
        for line in monitor_lines(engine, matured):
            summary.add(line)
        summary.add("one lookup through the HTTP API:")
        for line in _api_lookup(settings, svc.redis_url, svc.postgres_url, api_port):
            summary.add(line)
        if score["state"] == "success":  # issue 14: champion vs challenger on the same data
            from ml.dev.demo_ab import run_ab_demo

            for line in run_ab_demo(engine, settings, svc.redis_url):
                summary.add(line)
        reports = Path(settings.location("reports"))
        summary.add(f"Airflow UI: {af.base_url}  ({'running' if keep_ui else 'stopped at exit; --keep-ui keeps it'})")
        summary.add(f"Data Docs:  {reports / 'data_docs'}")
        summary.add(f"Reports:    {reports}")
        summary.add(f"SQL to try: psql '{svc.postgres_url}' -c 'select * from bi.latest_scores limit 10'")
    finally:
        if not keep_ui:
            af.stop(grace_s=5)  # the demo's runs are over: an idle component gets 5 s, then SIGKILL
    return summary
