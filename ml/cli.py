"""The ``propensity`` command line (also ``python -m ml``). Every command calls the same ``ml`` function that the
DAG task and the tests call; this module only parses arguments, resolves services and prints results.

Dates are coerced here, once, at the boundary: ``--score-date``, ``--start`` and ``--drift-from`` become a UTC
``datetime.date`` and ``--as-of`` / ``--end`` an aware UTC ``datetime`` (:mod:`ml.dates`); a malformed value is a
usage error naming the option. Services that are not configured are the embedded ones of :mod:`ml.dev.services`.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated

import typer

from ml.dates import utc_date, utc_datetime
from ml.errors import ConfigError
from ml.jsonutil import dumps
from ml.observe import setup_logging
from ml.settings import Settings, get_settings

app = typer.Typer(
    help="Purchase-propensity batch scoring pipeline: services, data, training, scoring and publishing.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
services_app = typer.Typer(help="Start, stop and inspect the embedded PostgreSQL and Redis.", no_args_is_help=True)
app.add_typer(services_app, name="services")


@app.callback()
def _root(
    log_level: Annotated[str, typer.Option("--log-level", help="Logging level for progress lines.")] = "INFO",
    debug: Annotated[bool, typer.Option("--debug", help="On an error, also print the Python traceback.")] = False,
) -> None:
    setup_logging(log_level)


def settings() -> Settings:
    """The settings for this invocation (environment + .env); their secrets are registered with the log filter."""
    from ml.redact import register_secrets

    s = get_settings()
    register_secrets(s)
    return s


def _date_option(value: str, option: str) -> dt.date:
    """``value`` of ``option`` as a UTC date (:func:`ml.dates.utc_date`); a bad value is a usage error."""
    try:
        return utc_date(value, what=option)
    except ConfigError as e:
        raise typer.BadParameter(str(e), param_hint=option) from e


def _time_option(value: str, option: str) -> dt.datetime:
    """``value`` of ``option`` as an aware UTC datetime (:func:`ml.dates.utc_datetime`); a bad value is a usage
    error."""
    try:
        return utc_datetime(value, what=option)
    except ConfigError as e:
        raise typer.BadParameter(str(e), param_hint=option) from e


def pg_engine(s: Settings | None = None):  # noqa: ANN201 - sqlalchemy Engine, imported lazily
    """Resolve services (starting embedded ones if needed) and return a SQLAlchemy engine on the pipeline DB."""
    from ml.db import make_engine
    from ml.dev.services import resolve_services

    return make_engine(resolve_services(s or settings()).postgres_url)


# --- services -------------------------------------------------------------------------------------------------------
@services_app.command("up")
def services_up() -> None:
    """Start (or reuse) the embedded PostgreSQL and Redis; configured URLs are used as they are."""
    from ml.dev.services import resolve_services

    from ml.redact import mask_url

    svc = resolve_services(settings())
    typer.echo(f"postgres: {mask_url(svc.postgres_url)}{' (embedded)' if svc.embedded_postgres else ''}")
    typer.echo(f"redis:    {mask_url(svc.redis_url)}{' (embedded)' if svc.embedded_redis else ''}")
    if svc.airflow_db_url:
        typer.echo(f"airflow metadata db: {mask_url(svc.airflow_db_url)}")


@services_app.command("down")
def services_down() -> None:
    """Stop the embedded services (data stays under the state directory)."""
    from ml.dev.services import stop_services

    for name, stopped in stop_services(settings()).items():
        typer.echo(f"{name}: {'stopped' if stopped else 'was not running'}")


@services_app.command("status")
def services_status() -> None:
    """Show where each service is and whether it runs."""
    from ml.dev.services import service_status

    for name, line in service_status(settings()).items():
        typer.echo(f"{name}: {line}")


@services_app.command("env")
def services_env() -> None:
    """Print `export` lines with the resolved URLs (for a shell or a local Airflow). This one prints credentials
    (that is its purpose): redirect it into a file only you can read, never into a shared log."""
    from ml.dev.services import resolve_services

    svc = resolve_services(settings())
    typer.echo(f"export PROPENSITY_POSTGRES_URL='{svc.postgres_url}'")
    typer.echo(f"export PROPENSITY_REDIS_URL='{svc.redis_url}'")


# --- database -------------------------------------------------------------------------------------------------------
@app.command()
def migrate() -> None:
    """Apply pending SQL migrations (sql/migrations/NNNN_*.sql) in order; a no-op when up to date."""
    from ml.db import migrate as run_migrations

    applied = run_migrations(pg_engine())
    typer.echo(f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied) if applied else " (up to date)"))


@app.command()
def warmup() -> None:
    """Compile the scoring path's numba kernels into numba's on-disk cache (once per release: ``make venv`` and the
    Docker image run it), so the first night's bucket tasks do not each compile them at the same time."""
    from ml.score.warmup import tiny_ensemble, warm_kernels

    s = settings()
    seconds = warm_kernels(tiny_ensemble(), s)
    typer.echo(f"scoring kernels ready in {seconds:.1f}s")


@app.command("settings")
def show_settings() -> None:
    """Print the effective settings as JSON; passwords, tokens, keys and webhook paths are masked (``***``)."""
    from ml.redact import masked_settings

    typer.echo(json.dumps(masked_settings(settings()), indent=2))


@app.command()
def generate(
    days: Annotated[int, typer.Option(help="Number of days to generate.")] = 84,  # GeneratorConfig's demo defaults
    users: Annotated[int, typer.Option(help="Number of users.")] = 3_500,
    products: Annotated[int, typer.Option(help="Number of products (at least one per leaf category).")] = 2_000,
    start: Annotated[str, typer.Option(help="First day, YYYY-MM-DD (UTC).")] = "2019-10-01",
    seed: Annotated[int, typer.Option(help="Random seed: the same seed writes the same bytes.")] = 42,
    out: Annotated[str | None, typer.Option(help="Output directory or URL (default: the landing location).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="File format: csv, parquet or both.")] = "csv",
    drift_from: Annotated[
        str | None,
        typer.Option(help="YYYY-MM-DD: from this day prices rise, the category mix shifts, conversion drops."),
    ] = None,
) -> None:
    """Generate synthetic REES46 events (seeded) and write one file per UTC day (events_YYYY-MM-DD.csv/.parquet)."""
    from ml.dev.generate import GeneratorConfig, generate_events, write_daily_files

    formats = {"csv": ("csv",), "parquet": ("parquet",), "both": ("csv", "parquet")}.get(fmt)
    if formats is None:
        raise typer.BadParameter(f"--format must be csv, parquet or both, not {fmt!r}")
    try:
        config = GeneratorConfig(
            start=_date_option(start, "--start"), days=days, n_users=users, n_products=products, seed=seed,
            drift_from=_date_option(drift_from, "--drift-from") if drift_from else None,
        )
    except ValueError as e:
        raise typer.BadParameter(str(e)) from e
    df = generate_events(config)
    per_day = df["event_time"].dt.date.value_counts()
    paths = write_daily_files(df, out or settings().location("landing"), formats=formats)
    for p in paths:
        day = dt.date.fromisoformat(str(p).rsplit("events_", 1)[1][:10])
        typer.echo(f"{p}\t{int(per_day[day]):,} rows")
    by_type = ", ".join(f"{k} {v:,}" for k, v in df["event_type"].value_counts().items())
    typer.echo(f"wrote {len(paths)} file(s), {len(df):,} events ({by_type})")


# --- demo and local Airflow ---------------------------------------------------------------------------------------
airflow_app = typer.Typer(help="Run a local Airflow (scheduler, dag-processor, api-server) on the embedded services.",
                          no_args_is_help=True)
app.add_typer(airflow_app, name="airflow")


@app.command()
def demo(
    days: Annotated[int, typer.Option(help="Days of generated history (ending yesterday, UTC).")] = 63,
    users: Annotated[int, typer.Option(help="Generated users.")] = 3000,
    products: Annotated[int, typer.Option(help="Generated products.")] = 1500,
    seed: Annotated[int, typer.Option(help="Generator seed.")] = 7,
    port: Annotated[int, typer.Option(min=1, max=65535, help="Airflow api-server (UI) port.")] = 8080,
    api_port: Annotated[
        int, typer.Option(min=1, max=65535, help="Port of the lookup API started for the sample lookup.")
    ] = 8000,
    keep_ui: Annotated[bool, typer.Option("--keep-ui", help="Leave Airflow running after the demo.")] = False,
    trials: Annotated[int, typer.Option(min=0, help="Optuna trials per ensemble member in the demo's training run "
                                               "(the weekly default is settings.n_trials, 12).")] = 4,
) -> None:
    """Run the whole pipeline end to end through a real local Airflow scheduler and print a summary."""
    from ml.dev.demo import run_demo

    if port == api_port:
        raise typer.BadParameter(f"--port and --api-port are both {port}: the UI and the lookup API need two ports",
                                 param_hint="'--api-port'")

    summary = run_demo(
        settings(), days=days, users=users, products=products, seed=seed, port=port, api_port=api_port,
        keep_ui=keep_ui, trials=trials,
    )
    typer.echo(summary.text())


@airflow_app.command("up")
def airflow_up(port: Annotated[int, typer.Option(min=1, max=65535, help="api-server (UI) port.")] = 8080) -> None:
    """Migrate Airflow's metadata DB and start scheduler, dag-processor and api-server in the background."""
    from ml.dev.local_airflow import ensure_api_port_free, local_airflow

    ensure_api_port_free(port)  # before embedded services are started for nothing
    af = local_airflow(settings(), port=port)
    af.migrate()
    af.start()
    typer.echo(f"Airflow UI: {af.base_url} (logs: {af.home / 'logs'}); stop with `propensity airflow down`")


@airflow_app.command("down")
def airflow_down() -> None:
    """Stop the local Airflow started by `airflow up` or `demo --keep-ui`."""
    from ml.dev.local_airflow import local_airflow

    local_airflow(settings()).stop()
    typer.echo("Airflow stopped")


@airflow_app.command("env")
def airflow_env() -> None:
    """Print `export` lines to run `airflow ...` commands against the local installation (e.g. backfills)."""
    from ml.dev.local_airflow import local_airflow

    env = local_airflow(settings()).env()
    for k in sorted(env):
        if k.startswith(("AIRFLOW", "PROPENSITY_")):
            typer.echo(f"export {k}='{env[k]}'")


# --- training and the model registry (ml.train, ml.registry) -----------------------------------------------------
@app.command()
def train(
    n_trials: Annotated[
        int | None, typer.Option(min=0, help="Optuna trials per member (default: settings.n_trials).")
    ] = None,
    timeout: Annotated[int | None, typer.Option(min=1, help="Tuning time budget per member, seconds.")] = None,
    as_of: Annotated[str | None, typer.Option(help="Use snapshots labelled before this date, YYYY-MM-DD (UTC).")] = None,
    members: Annotated[
        str | None, typer.Option(help="Comma-separated members (catboost,xgboost,lightgbm,random_forest).")
    ] = None,
    force_promote: Annotated[bool, typer.Option("--force-promote", help="Promote even if the gate refuses.")] = False,
    no_report: Annotated[bool, typer.Option("--no-report", help="Skip the HTML model report.")] = False,
) -> None:
    """Train, evaluate and register a new ensemble version, apply the champion/challenger gate, write the report."""
    from ml.train import run_training

    s = settings()
    engine = pg_engine(s)
    run = run_training(
        engine, s, _time_option(as_of, "--as-of") if as_of else None, n_trials=n_trials, timeout=timeout,
        members=[m.strip() for m in members.split(",") if m.strip()] if members else None,
        force_promote=force_promote, write_report=not no_report,
    )
    m = run.metrics["ensemble"]
    typer.echo(f"version {run.version}: {run.status} ({run.decision.reason})")
    typer.echo("holdout: " + ", ".join(f"{k}={m[k]:.4f}" for k in ("roc_auc", "pr_auc", "log_loss", "brier", "ece")
                                       if isinstance(m.get(k), float)))
    typer.echo(f"artifacts: {run.artifact_uri}")
    if run.report_uri:
        typer.echo(f"report: {run.report_uri}")


@app.command()
def promote(
    version: Annotated[str | None, typer.Argument(help="Version to make champion.")] = None,
    previous: Annotated[bool, typer.Option("--previous", help="Roll back to the previous champion instead.")] = False,
    reason: Annotated[str, typer.Option(help="Why (stored in ml.gate_decisions).")] = "",
) -> None:
    """Manually promote VERSION to champion (or --previous: roll back); recorded as a manual gate decision."""
    import getpass

    from ml.registry import promote_version, rollback_champion

    if previous == (version is not None):
        raise typer.BadParameter("give either VERSION or --previous")
    who = f"cli:{getpass.getuser()}"
    engine = pg_engine()
    mv = (rollback_champion(engine, reason=reason, decided_by=who) if previous
          else promote_version(engine, version, reason=reason, decided_by=who))
    typer.echo(f"champion: {mv.version}")


@app.command("rollback-model")
def rollback_model(reason: Annotated[str, typer.Option(help="Why (stored in ml.gate_decisions).")] = "") -> None:
    """Restore the previous champion (same as `promote --previous`)."""
    promote(version=None, previous=True, reason=reason)


@app.command()
def models(
    limit: Annotated[int, typer.Option(min=1, help="How many versions to list, newest first.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List registered model versions with status and holdout metrics."""
    from ml.registry import list_versions

    rows = list_versions(pg_engine(), limit=limit)
    if as_json:
        typer.echo(dumps([{"version": r.version, "status": r.status, "created_at": r.created_at,
                           "metrics": r.ensemble_metrics, "weights": r.weights, "artifact_uri": r.artifact_uri,
                           "report_uri": r.report_uri} for r in rows], indent=2))
        return
    keys = ("roc_auc", "pr_auc", "log_loss", "ece")
    typer.echo(f"{'version':24} {'status':11} {'created (UTC)':17} " + " ".join(f"{k:>8}" for k in keys))
    for r in rows:
        m = r.ensemble_metrics
        vals = " ".join(f"{m[k]:8.4f}" if isinstance(m.get(k), (int, float)) else f"{'-':>8}" for k in keys)
        created = r.created_at.strftime("%Y-%m-%d %H:%M") if r.created_at else "-"
        typer.echo(f"{r.version:24} {r.status:11} {created:17} {vals}")


# --- publish to Redis, rollback, the lookup API (ml.publish, ml.api) ------------------------------------------------
api_key_app = typer.Typer(help="API keys of the lookup API (only their sha256 digests go into the config).",
                          no_args_is_help=True)
app.add_typer(api_key_app, name="api-key")


@app.command()
def publish(
    score_date: Annotated[str, typer.Option("--score-date", help="Score date to publish, YYYY-MM-DD (UTC).")],
    top_n: Annotated[
        int | None, typer.Option(min=1, help="Hot products per user (default: settings.publish_top_n).")
    ] = None,
    min_probability: Annotated[
        float | None,
        typer.Option(min=0.0, max=1.0, help="Probability floor (default: settings.publish_min_probability)."),
    ] = None,
    allow_older: Annotated[
        bool, typer.Option("--allow-older", help="Serve a score date older than the served one (recorded).")
    ] = False,
) -> None:
    """Publish a score date's top-N products per user to Redis as a new version, then flip the pointer to it.
    A date older than the served one is refused unless --allow-older (rollback-scores goes back one version)."""
    from ml.db import make_engine
    from ml.dev.services import resolve_services
    from ml.errors import PipelineError
    from ml.publish import connect_redis, publish_version

    day = _date_option(score_date, "--score-date")
    s = settings()
    svc = resolve_services(s)
    client = connect_redis(s, svc.redis_url)
    try:
        result = publish_version(make_engine(svc.postgres_url), client, s, day, top_n=top_n,
                                 min_probability=min_probability, allow_older=allow_older)
    except PipelineError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from e
    typer.echo(json.dumps(result.as_dict(), indent=2))


@app.command("rollback-scores")
def rollback_scores(
    to_version: Annotated[
        int | None, typer.Option(min=1, help="Version id to serve (default: the one served before the current one).")
    ] = None,
) -> None:
    """Flip the Redis pointer back to the previously served version (one SET; readers never see a mix)."""
    from ml.db import make_engine
    from ml.dev.services import resolve_services
    from ml.errors import PipelineError
    from ml.publish import connect_redis, rollback_version

    s = settings()
    svc = resolve_services(s)
    try:
        result = rollback_version(connect_redis(s, svc.redis_url), s, to_version=to_version,
                                  engine=make_engine(svc.postgres_url))
    except PipelineError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from e
    typer.echo(json.dumps(result.as_dict(), indent=2))


@app.command("cleanup-scores")
def cleanup_scores() -> None:
    """Delete Redis versions beyond publish_keep_versions and leftovers of failed publishes (never the served one
    or its predecessor). Publish runs this by itself; use it after changing publish_keep_versions."""
    from ml.dev.services import start_redis
    from ml.errors import PipelineError
    from ml.publish import cleanup_versions, connect_redis, current_version, stored_versions

    s = settings()
    client = connect_redis(s, s.redis_url or start_redis(s.state_dir))
    try:
        deleted = cleanup_versions(client, s, engine=pg_engine(s))
    except PipelineError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from e
    typer.echo(json.dumps({"deleted": deleted, "stored": stored_versions(client, s),
                           "served": current_version(client, s)}))


@app.command()
def api(
    host: Annotated[str, typer.Option(help="Interface to bind (0.0.0.0 in a container).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
    workers: Annotated[
        int, typer.Option(min=1, help="uvicorn worker processes (metrics are aggregated across them).")
    ] = 1,
    access_log: Annotated[bool, typer.Option(help="Log one line per request (costs throughput).")] = True,
) -> None:
    """Run the lookup API (FastAPI under uvicorn). It reads Redis only: the embedded Redis unless
    PROPENSITY_REDIS_URL is set."""
    import os
    import shutil

    import uvicorn

    from ml.dev.services import start_redis

    s = settings()
    os.environ["PROPENSITY_REDIS_URL"] = s.redis_url or start_redis(s.state_dir)  # workers read the environment
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        mp = s.state_dir / "prometheus-multiproc"
        shutil.rmtree(mp, ignore_errors=True)
        mp.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(mp)
    uvicorn.run("ml.api:app_from_env", factory=True, host=host, port=port, workers=workers, access_log=access_log)


@api_key_app.command("create")
def api_key_create() -> None:
    """Print a new API key (hand it to one client, once) and the sha256 digest to configure."""
    from ml.api_auth import new_api_key

    key, digest = new_api_key()
    typer.echo(f"key:    {key}")
    typer.echo(f"sha256: {digest}")
    typer.echo(f"config: PROPENSITY_API_KEY_HASHES='[\"{digest}\"]'  (append to the list to keep older keys valid)")


# --- ingest (ml.ingest) ---------------------------------------------------------------------------------------------
@app.command()
def ingest(
    paths: Annotated[
        list[str] | None,
        typer.Argument(help="Files or folders (local paths or fsspec URLs). None: the landing location."),
    ] = None,
    date: Annotated[str | None, typer.Option(help="Only files whose name holds this date (YYYY-MM-DD).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON result per file.")] = False,
    replace: Annotated[
        bool, typer.Option("--replace", help="A file whose events or name are already loaded replaces that file's "
                           "rows atomically (otherwise it is quarantined as a duplicate delivery).")
    ] = False,
) -> None:
    """Validate event files (Great Expectations) and load the good ones into raw.events exactly once; bad files go
    to quarantine with a report. Exits 1 if any file was quarantined or failed. Same function as the DAG."""
    from ml.db import migrate as run_migrations
    from ml.ingest import discover_files, ingest_files

    day = _date_option(date, "--date") if date else None
    s = settings()
    engine = pg_engine(s)
    run_migrations(engine)
    found: list[str] = []
    for p in paths or [s.location("landing")]:
        found += discover_files(s, p, date=day, limit=10**9)
    results = ingest_files(found, s, engine, replace=replace)
    for r in results:
        if as_json:
            typer.echo(dumps(r.as_dict()))
        else:
            typer.echo(f"{r.status:12s} {r.message.splitlines()[0] if r.message else r.file_name}")
            for line in r.failures:
                typer.echo(f"    - {line}")
    if not results:
        where = ", ".join(paths) if paths else f"the landing location {s.location('landing')}"
        typer.echo(f"no files to ingest in {where}: looked for .csv, .csv.gz and .parquet files"
                   + (f" whose name holds {day.isoformat()}" if day else "")
                   + " (names starting with '.' or '_' are skipped as uploads in progress)")
    if any(r.status in ("quarantined", "error") for r in results):
        raise typer.Exit(1)


@app.command()
def requeue(
    names: Annotated[list[str], typer.Argument(help="Quarantined file names (or full paths/URLs).")],
) -> None:
    """Move quarantined files back to the landing location, to be validated again on the next ingest."""
    from ml.ingest import requeue as requeue_file

    s = settings()
    for name in names:
        typer.echo(f"requeued {name} -> {requeue_file(name, s)}")


@app.command()
def score(
    score_date: Annotated[str, typer.Option(help="Score date YYYY-MM-DD (UTC): features use events before it.")],
    model_version: Annotated[
        str | None, typer.Option(help="Model version (ml.model_versions); default: the champion.")
    ] = None,
    buckets: Annotated[int | None, typer.Option(help="user_id hash buckets (default: settings.score_buckets, fewer for a night under score_bucket_min_pairs per bucket).")] = None,
    drift: Annotated[bool, typer.Option(help="Record score/feature PSI vs the previous date afterwards.")] = True,
    publish: Annotated[bool, typer.Option(help="Publish the date's hot scores to Redis afterwards.")] = False,
    allow_older: Annotated[
        bool, typer.Option("--allow-older", help="With --publish: serve it even if older than the served date.")
    ] = False,
    allow_empty: Annotated[
        bool, typer.Option("--allow-empty", help="Accept a score date with no active pairs (an empty partition).")
    ] = False,
    allow_shrink: Annotated[
        bool, typer.Option("--allow-shrink", help="Accept a partition much smaller than the previous date's "
                           "(settings.score_max_shrink_fraction).")
    ] = False,
) -> None:
    """Score every active pair of a date (features -> probability -> exact SHAP -> insights), check the output and
    swap the date's partition of scoring.scores atomically; the same steps as the score_active_pairs DAG."""
    from ml.db import migrate as run_migrations
    from ml.score import run_scoring

    day = _date_option(score_date, "--score-date")
    s = settings()
    engine = pg_engine(s)
    run_migrations(engine)
    summary = run_scoring(engine, s, day, model_version=model_version, n_buckets=buckets, allow_empty=allow_empty,
                          allow_shrink=allow_shrink)
    for line in summary.lines():
        typer.echo(line)
    if drift:
        from ml.drift import record_drift

        for m in record_drift(engine, s, summary.score_date):
            if m.kind != "feature_psi":
                typer.echo(f"drift {m.kind} {m.name}: {m.value if m.value is None else round(m.value, 4)}")
    if publish:
        from ml.dev.services import resolve_services
        from ml.publish import connect_redis, publish_version

        client = connect_redis(s, resolve_services(s).redis_url)  # a Redis Cluster too, as `propensity publish`
        try:
            typer.echo(dumps(publish_version(engine, client, s, summary.score_date,
                                             allow_older=allow_older).as_dict()))
        finally:
            client.close()


# --- features and training snapshots (ml.features) ------------------------------------------------------------------
@app.command("features")
def features_cmd(
    as_of: Annotated[str, typer.Option("--as-of", help="UTC date or time; features use only events before it.")],
    bucket: Annotated[int | None, typer.Option("--bucket", help="Hash bucket k of user_id (with --buckets).")] = None,
    buckets: Annotated[int | None, typer.Option("--buckets", help="Number of hash buckets K.")] = None,
    labels: Annotated[bool, typer.Option("--labels", help="Add label (and weight) columns.")] = False,
    out: Annotated[str | None, typer.Option("--out", help="Write the rows to this Parquet file.")] = None,
) -> None:
    """Compute the point-in-time features of the pairs active at --as-of (optionally one bucket); print counts,
    timing and NaN shares, or write Parquet with --out."""
    import time

    from ml import features as F

    if (bucket is None) != (buckets is None):
        raise typer.BadParameter("give --bucket and --buckets together (bucket k of K)", param_hint="--bucket")
    if buckets is not None and bucket is not None and not (buckets >= 1 and 0 <= bucket < buckets):
        raise typer.BadParameter(f"--bucket must be in 0..{buckets - 1} and --buckets at least 1, not "
                                 f"{bucket} of {buckets}", param_hint="--bucket")
    s = settings()
    t = time.perf_counter()
    at = _time_option(as_of, "--as-of")
    table = F.read_pair_features_arrow(pg_engine(s), at, s, bucket, buckets, with_labels=labels)
    typer.echo(json.dumps(F.summarize_features(table, time.perf_counter() - t), indent=2))
    if out:
        import pyarrow.parquet as pq

        pq.write_table(table if labels else table.drop_columns(["label", "weight"]), out, compression="zstd")
        typer.echo(f"wrote {table.num_rows:,} rows to {out}")


@app.command("snapshots")
def snapshots_cmd(
    as_of: Annotated[list[str] | None, typer.Option("--as-of", help="Snapshot date (repeat); default: weekly.")] = None,
    end: Annotated[str | None, typer.Option("--end", help="Only dates whose label horizon ends by then.")] = None,
    list_only: Annotated[bool, typer.Option("--list", help="Only print the snapshot dates.")] = False,
) -> None:
    """Build training snapshots (features + labels) at weekly as_of dates: each checked with Great Expectations,
    written as Parquet under artifacts/snapshots/ and recorded in ml.feature_snapshots."""
    from ml import snapshots as S
    from ml.db import migrate as run_migrations

    s = settings()
    engine = pg_engine(s)
    run_migrations(engine)
    if as_of:
        dates = [_time_option(d, "--as-of") for d in as_of]
    else:
        dates = S.snapshot_dates(engine, s, end=_time_option(end, "--end") if end else None)
    if list_only:
        typer.echo("\n".join(f"{d:%Y-%m-%d %H:%M}" for d in dates) or "no snapshot date: too little history")
        return
    ts = S.build_training_snapshots(engine, s, dates)
    for info in ts.snapshots:
        typer.echo(f"{info.as_of:%Y-%m-%d}  rows {info.rows:>10,}  positives {info.positives:>8,}  {info.uri}")
    typer.echo(f"fingerprint {ts.fingerprint} (feature version {ts.feature_version})")


# --- issue 16: retention --------------------------------------------------------------------------------------------
@app.command("retention")
def retention_cmd(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only report what would be dropped and removed.")] = False,
    today: Annotated[str | None, typer.Option("--today", help="As-of UTC date YYYY-MM-DD (default: today).")] = None,
    scores_days: Annotated[
        int | None, typer.Option(min=0, help="Keep score dates this recent (default: settings.retention_scores_days).")
    ] = None,
    events_days: Annotated[
        int | None, typer.Option(min=0, help="Keep event days this recent (default: settings.retention_events_days).")
    ] = None,
    keep_models: Annotated[
        int | None, typer.Option(min=0, help="Archived models whose files are kept (default: settings value).")
    ] = None,
    footprint: Annotated[bool, typer.Option("--footprint", help="Also print bytes per scored pair / raw event.")] = False,
) -> None:
    """Drop old scoring.scores and raw.events partitions and the files/Optuna studies of archived models (never the
    served score date, the champion's training window, an unfinished experiment or the monitoring horizon), and
    print what was freed. The weekly `maintenance` DAG runs the same function."""
    from ml.retention import apply_retention, storage_footprint

    s = settings()
    engine = pg_engine(s)
    report = apply_retention(
        engine, s, today=_date_option(today, "--today") if today else None, dry_run=dry_run,
        scores_days=scores_days, events_days=events_days, keep_archived_models=keep_models,
    )
    typer.echo("\n".join(report.lines()))
    for d in report.scores + report.events:
        typer.echo(f"  {'would drop' if dry_run else 'dropped'} {d.table} ({d.day}, {d.bytes:,} bytes)")
    for m in report.models:
        typer.echo(f"  {'would remove' if dry_run else 'removed'} model {m.version} ({m.status}): {m.bytes:,} bytes, "
                   f"{len(m.paths)} path(s), {len(m.studies)} stud(ies)")
    if footprint:
        for key, value in storage_footprint(engine).items():
            typer.echo(f"{key}: {value:,.1f}")


@app.command("backfill-fingerprints")
def backfill_fingerprints_cmd(
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many files (default: all).")] = None,
) -> None:
    """Compute the content fingerprint of every loaded file that has none (loaded before migration 0141) from its
    rows in raw.events, so a re-delivery of it with other bytes is caught as a duplicate delivery; report files
    loaded twice. The weekly `maintenance` DAG runs the same function."""
    from ml.fingerprints import backfill_fingerprints

    s = settings()
    out = backfill_fingerprints(pg_engine(s), limit=limit)
    for o in out:
        typer.echo(o.line())
    counts = {st: sum(o.status == st for o in out) for st in ("filled", "incomplete", "duplicate")}
    typer.echo("content fingerprints: " + ", ".join(f"{n} {st}" for st, n in counts.items()))


# --- monitoring: realized performance, drift vs reference, freshness, alerts (issue 13) -----------------------------
monitor_app = typer.Typer(help="Realized performance, drift against the training reference, freshness and alerts.",
                          no_args_is_help=True)
app.add_typer(monitor_app, name="monitor")


@monitor_app.command("run")
def monitor_run(
    score_date: Annotated[list[str] | None, typer.Option(
        "--score-date", help="Score date YYYY-MM-DD to evaluate (repeat); default: every matured date.")] = None,
    force: Annotated[bool, typer.Option(help="Re-evaluate even when the labels did not change.")] = False,
) -> None:
    """Evaluate matured score dates against the purchases that followed (the monitor_outcomes DAG's task) and
    print expected (holdout) vs realized metrics."""
    from ml.db import migrate as run_migrations
    from ml.monitor import expected_vs_realized, run_monitor

    s = settings()
    engine = pg_engine(s)
    run_migrations(engine)
    days = [_date_option(d, "--score-date") for d in score_date] if score_date else None
    done = run_monitor(engine, s, score_dates=days, force=force)
    if not done:
        typer.echo("nothing (re-)evaluated: no matured score date is new or has changed labels")
    for ev in done:
        for r in expected_vs_realized(engine, ev.score_date, "all") + expected_vs_realized(engine, ev.score_date,
                                                                                           "published"):
            arm = "" if r["arm"] == "(all)" else f" arm {r['arm']}"
            typer.echo(f"{r['score_date']} {r['model_version']}{arm} [{r['segment']}] pairs {r['pairs']:,} "
                       f"positives {r['positives']:,}  " + "  ".join(
                           f"{m} {_fmt(r['realized_' + m])} (expected {_fmt(r['expected_' + m])})"
                           for m in ("roc_auc", "pr_auc", "brier", "ece")))


@monitor_app.command("drift")
def monitor_drift(
    score_date: Annotated[str, typer.Option(help="Score date YYYY-MM-DD (UTC).")],
) -> None:
    """PSI of every feature and of the score against the model's training reference, null rates, unseen share;
    recorded in monitoring.metrics, alerts over the thresholds."""
    from ml.drift import record_reference_drift

    s = settings()
    for m in record_reference_drift(pg_engine(s), s, _date_option(score_date, "--score-date")):
        typer.echo(f"{m.kind:<18} {m.name:<32} {_fmt(m.value)}")


@monitor_app.command("freshness")
def monitor_freshness(
    score_date: Annotated[str, typer.Option(help="Score date YYYY-MM-DD (UTC): checks the day before it.")],
) -> None:
    """The scoring freshness gate: have the events of the day before the score date landed? Exit 1 when not."""
    from ml.freshness import check_freshness

    s = settings()
    f = check_freshness(pg_engine(s), s, _date_option(score_date, "--score-date"))
    typer.echo(("open: " if f.fresh else "shut: ") + f.reason)
    if not f.fresh:
        raise typer.Exit(1)


@monitor_app.command("alerts")
def monitor_alerts(
    limit: Annotated[int, typer.Option(min=1, help="Most alerts to show.")] = 50,
) -> None:
    """The open alerts (monitoring.alerts), newest first."""
    from ml.alerts import open_alerts

    rows = open_alerts(pg_engine(settings()), limit)
    for a in rows:
        typer.echo(f"{a['raised_at']:%Y-%m-%d %H:%M} {a['severity']:<8} {a['kind']:<18} {a['subject']}: "
                   f"{a['message']} (seen {a['occurrences']}x)")
    if not rows:
        typer.echo("no open alert")


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


# --- A/B experiments between model versions (issue 14; ml.experiments, docs/experiments.md) -------------------------
experiment_app = typer.Typer(help="A/B experiments between model versions: create, start, stop, list, results.",
                             no_args_is_help=True)
app.add_typer(experiment_app, name="experiment")


def _experiment_call(fn, *args, **kwargs):  # noqa: ANN001, ANN202 - any ml.experiments action
    """Run an ml.experiments action; a configuration or lifecycle error is one line and exit code 2."""
    from ml.errors import ExperimentError

    try:
        return fn(*args, **kwargs)
    except ExperimentError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


def _experiment_lines(exp) -> list[str]:  # noqa: ANN001 - ml.experiments.Experiment
    arms = ", ".join(f"{a.name}{'*' if a.is_control else ''}={a.model_version} ({a.share:.0%}, buckets "
                     f"{a.bucket_from}-{a.bucket_to - 1})" for a in exp.arms)
    head = (f"{exp.experiment_id}: {exp.status}; {exp.start_date} .. {exp.end_date}, traffic "
            f"{exp.traffic_percent:g}%, metric {exp.primary_metric}, mde {exp.mde:g}, horizon {exp.horizon_days}d")
    return [head, f"  arms (* = control): {arms}"]


@experiment_app.command("create")
def experiment_create(
    experiment_id: Annotated[str, typer.Argument(help="Experiment id: lower-case letters, digits, - and _.")],
    arms: Annotated[str, typer.Option(help="NAME=MODEL_VERSION,... (first arm is the control unless --control).")],
    start: Annotated[str, typer.Option(help="First score date (UTC, YYYY-MM-DD) scored per arm.")],
    end: Annotated[str, typer.Option(help="Last score date (UTC, YYYY-MM-DD) scored per arm.")],
    split: Annotated[str | None, typer.Option(help="Shares per arm, e.g. 50,50 or 0.5,0.5 (default: equal).")] = None,
    control: Annotated[str | None, typer.Option(help="Control arm name (must serve the champion).")] = None,
    description: Annotated[str, typer.Option(help="What the experiment tests.")] = "",
    traffic: Annotated[float, typer.Option(help="Percent of users enrolled (the rest get the champion).")] = 100.0,
    metric: Annotated[str, typer.Option(help="Primary metric: conversion or purchases_per_exposed.")] = "conversion",
    mde: Annotated[float, typer.Option(help="Minimum detectable effect: absolute conversion difference.")] = 0.01,
    alpha: Annotated[float, typer.Option(help="Two-sided significance level.")] = 0.05,
    power: Annotated[float, typer.Option(help="Power for the sample-size estimate.")] = 0.8,
    horizon_days: Annotated[int, typer.Option(help="Days after a score date in which a purchase converts.")] = 7,
    allow_past: Annotated[bool, typer.Option(help="Allow a start date in the past (replays of history).")] = False,
) -> None:
    """Create an experiment in status draft (validated: split sums to 1, known non-archived versions, control is
    the champion, dates)."""
    from ml.db import migrate as run_migrations
    from ml.experiments import create_experiment

    start_day, end_day = _date_option(start, "--start"), _date_option(end, "--end")
    engine = pg_engine()
    run_migrations(engine)
    exp = _experiment_call(create_experiment, engine, experiment_id, arms, split=split, start_date=start_day,
                           end_date=end_day, description=description, control=control, traffic_percent=traffic,
                           primary_metric=metric, mde=mde, alpha=alpha, power=power, horizon_days=horizon_days,
                           allow_past=allow_past)
    for line in _experiment_lines(exp):
        typer.echo(line)


@experiment_app.command("start")
def experiment_start(experiment_id: Annotated[str, typer.Argument(help="Experiment id.")]) -> None:
    """Start a draft experiment: from the next scoring run, each enrolled user is scored by the arm's model."""
    from ml.experiments import start_experiment

    for line in _experiment_lines(_experiment_call(start_experiment, pg_engine(), experiment_id)):
        typer.echo(line)


@experiment_app.command("stop")
def experiment_stop(
    experiment_id: Annotated[str, typer.Argument(help="Experiment id.")],
    reason: Annotated[str, typer.Option(help="Why (stored in experiments.experiments.stop_reason).")] = "",
) -> None:
    """Stop an experiment: from the next scoring run everyone gets the champion again."""
    from ml.experiments import stop_experiment

    for line in _experiment_lines(_experiment_call(stop_experiment, pg_engine(), experiment_id, reason=reason)):
        typer.echo(line)


@experiment_app.command("list")
def experiment_list(
    status: Annotated[str | None, typer.Option(help="Only draft, running or stopped experiments.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of lines.")] = False,
) -> None:
    """List experiments, newest first."""
    from ml.db import migrate as run_migrations
    from ml.experiments import list_experiments

    engine = pg_engine()
    run_migrations(engine)
    found = list_experiments(engine, status)
    if as_json:
        typer.echo(dumps([e.as_dict() for e in found], indent=2))
        return
    if not found:
        typer.echo("no experiment")
    for exp in found:
        for line in _experiment_lines(exp):
            typer.echo(line)

@experiment_app.command("results")
def experiment_results_cmd(
    experiment_id: Annotated[str, typer.Argument(help="Experiment id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of the table.")] = False,
    record: Annotated[bool, typer.Option(help="Store the results in experiments.results (bi.experiment_results).")]
    = True,
    move_exposures: Annotated[bool, typer.Option(help="First move today's Redis exposure counters to Postgres.")]
    = False,
) -> None:
    """Per arm: assigned and exposed users, conversion, purchases per exposed user, lift vs control with 95% CIs,
    p-value, sample-ratio-mismatch check and the sample size needed for the MDE; the fixed-horizon decision."""
    from ml import experiments as X

    s = settings()
    engine = pg_engine(s)
    if move_exposures:
        from ml.dev.services import resolve_services
        from ml.publish import connect_redis

        client = connect_redis(s, resolve_services(s).redis_url)
        try:
            X.move_exposures(engine, client, s, dt.datetime.now(dt.UTC).date())
        finally:
            client.close()
    res = _experiment_call(X.experiment_results, engine, experiment_id,
                           srm_p_threshold=s.experiment_srm_p_threshold, record=record, top_n=s.publish_top_n,
                           min_probability=s.publish_min_probability)
    if as_json:
        typer.echo(dumps(res.as_dict(), indent=2))
    else:
        for line in res.lines():
            typer.echo(line)
    if res.srm_flag:
        raise typer.Exit(3)  # loud: scripts and CI notice a sample-ratio mismatch


def _one_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return " | ".join(line.strip() for line in text.splitlines() if line.strip())


def main(argv: list[str] | None = None) -> None:
    """The ``propensity`` entry point: every failure is ONE line on stderr and a non-zero exit (2: bad usage,
    1: the pipeline refused or failed); ``--debug`` (anywhere on the line) or PROPENSITY_DEBUG=1 also prints the
    traceback."""
    import os
    import sys
    import traceback

    from ml.errors import PipelineError

    from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError  # typer vendors click

    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("PROPENSITY_DEBUG", "") not in ("", "0")
    args = [a for a in args if a != "--debug"]
    command = typer.main.get_command(app)
    try:
        rv = command.main(args=args, prog_name="propensity", standalone_mode=False)
    except NoArgsIsHelpError as e:
        typer.echo(e.ctx.get_help() if e.ctx else str(e))
        sys.exit(0)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        typer.echo("error: aborted", err=True)
        sys.exit(130)
    except ClickException as e:  # usage errors: unknown option, bad value, missing argument
        if debug:
            traceback.print_exc()
        ctx = getattr(e, "ctx", None)
        hint = f" (see: {ctx.command_path} --help)" if isinstance(e, UsageError) and ctx is not None else ""
        typer.echo(f"error: {_one_line(e.format_message() if hasattr(e, 'format_message') else e)}{hint}",
                   err=True)
        sys.exit(e.exit_code or 2)
    except KeyboardInterrupt:
        typer.echo("error: interrupted", err=True)
        sys.exit(130)
    except PipelineError as e:
        if debug:
            traceback.print_exc()
        failures = getattr(e, "failures", None) or []
        typer.echo(f"error: {_one_line(e)}", err=True)
        for line in failures:
            typer.echo(f"    - {line}", err=True)
        sys.exit(1)
    except Exception as e:  # noqa: BLE001 - unexpected: still one line; --debug shows where
        if debug:
            traceback.print_exc()
        typer.echo(f"error: {type(e).__name__}: {_one_line(e)[:500]} (run with --debug for the traceback)", err=True)
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
