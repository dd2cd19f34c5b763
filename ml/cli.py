"""The ``propensity`` command line (also ``python -m ml``). Every command calls the same ``ml`` function that the
DAG task and the tests call; this module only parses arguments, resolves services and prints results."""

from __future__ import annotations

import json
from typing import Annotated

import typer

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
) -> None:
    setup_logging(log_level)


def settings() -> Settings:
    """The settings for this invocation (environment + .env)."""
    return get_settings()


def pg_engine(s: Settings | None = None):  # noqa: ANN201 - sqlalchemy Engine, imported lazily
    """Resolve services (starting embedded ones if needed) and return a SQLAlchemy engine on the pipeline DB."""
    from ml.db import make_engine
    from ml.services import resolve_services

    return make_engine(resolve_services(s or settings()).postgres_url)


# --- services -------------------------------------------------------------------------------------------------------
@services_app.command("up")
def services_up() -> None:
    """Start (or reuse) the embedded PostgreSQL and Redis; configured URLs are used as they are."""
    from ml.services import resolve_services

    svc = resolve_services(settings())
    typer.echo(f"postgres: {svc.postgres_url}{' (embedded)' if svc.embedded_postgres else ''}")
    typer.echo(f"redis:    {svc.redis_url}{' (embedded)' if svc.embedded_redis else ''}")
    if svc.airflow_db_url:
        typer.echo(f"airflow metadata db: {svc.airflow_db_url}")


@services_app.command("down")
def services_down() -> None:
    """Stop the embedded services (data stays under the state directory)."""
    from ml.services import stop_services

    for name, stopped in stop_services(settings()).items():
        typer.echo(f"{name}: {'stopped' if stopped else 'was not running'}")


@services_app.command("status")
def services_status() -> None:
    """Show where each service is and whether it runs."""
    from ml.services import service_status

    for name, line in service_status(settings()).items():
        typer.echo(f"{name}: {line}")


@services_app.command("env")
def services_env() -> None:
    """Print `export` lines with the resolved URLs (for a shell or a local Airflow)."""
    from ml.services import resolve_services

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


@app.command("settings")
def show_settings() -> None:
    """Print the effective settings as JSON (secrets are hashes only)."""
    typer.echo(json.dumps(settings().model_dump(mode="json"), indent=2))


@app.command()
def generate(
    days: Annotated[int, typer.Option(help="Number of days to generate.")] = 70,
    users: Annotated[int, typer.Option(help="Number of users.")] = 4_000,
    products: Annotated[int, typer.Option(help="Number of products (at least one per leaf category).")] = 2_000,
    start: Annotated[str, typer.Option(help="First day, YYYY-MM-DD (UTC).")] = "2019-10-01",
    seed: Annotated[int, typer.Option(help="Random seed: the same seed writes the same bytes.")] = 42,
    out: Annotated[str | None, typer.Option(help="Output directory or URL (default: the landing location).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="File format: csv, parquet or both.")] = "csv",
    drift_from: Annotated[
        str | None, typer.Option(help="YYYY-MM-DD: from this day prices rise, the category mix shifts, conversion drops.")
    ] = None,
) -> None:
    """Generate synthetic REES46 events (seeded) and write one file per UTC day (events_YYYY-MM-DD.csv/.parquet)."""
    import datetime as _dt

    from ml.generate import GeneratorConfig, generate_events, write_daily_files

    formats = {"csv": ("csv",), "parquet": ("parquet",), "both": ("csv", "parquet")}.get(fmt)
    if formats is None:
        raise typer.BadParameter(f"--format must be csv, parquet or both, not {fmt!r}")
    config = GeneratorConfig(
        start=_dt.date.fromisoformat(start), days=days, n_users=users, n_products=products, seed=seed,
        drift_from=_dt.date.fromisoformat(drift_from) if drift_from else None,
    )
    df = generate_events(config)
    counts = df["event_time"].dt.floor("D").value_counts().sort_index()
    paths = write_daily_files(df, out or settings().location("landing"), formats=formats)
    for p in paths:
        day = _dt.date.fromisoformat(str(p).rsplit("events_", 1)[1][:10])
        typer.echo(f"{p}\t{int(counts[counts.index.date == day].iloc[0]):,} rows")
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
    port: Annotated[int, typer.Option(help="Airflow api-server (UI) port.")] = 8080,
    api_port: Annotated[int, typer.Option(help="Port of the lookup API started for the sample lookup.")] = 8000,
    keep_ui: Annotated[bool, typer.Option("--keep-ui", help="Leave Airflow running after the demo.")] = False,
) -> None:
    """Run the whole pipeline end to end through a real local Airflow scheduler and print a summary."""
    from ml.demo import run_demo

    summary = run_demo(
        settings(), days=days, users=users, products=products, seed=seed, port=port, api_port=api_port,
        keep_ui=keep_ui,
    )
    typer.echo(summary.text())


@airflow_app.command("up")
def airflow_up(port: Annotated[int, typer.Option(help="api-server (UI) port.")] = 8080) -> None:
    """Migrate Airflow's metadata DB and start scheduler, dag-processor and api-server in the background."""
    from ml.local_airflow import local_airflow

    af = local_airflow(settings(), port=port)
    af.migrate()
    af.start()
    typer.echo(f"Airflow UI: {af.base_url} (logs: {af.home / 'logs'}); stop with `propensity airflow down`")


@airflow_app.command("down")
def airflow_down() -> None:
    """Stop the local Airflow started by `airflow up` or `demo --keep-ui`."""
    from ml.local_airflow import local_airflow

    local_airflow(settings()).stop()
    typer.echo("Airflow stopped")


@airflow_app.command("env")
def airflow_env() -> None:
    """Print `export` lines to run `airflow ...` commands against the local installation (e.g. backfills)."""
    from ml.local_airflow import local_airflow

    env = local_airflow(settings()).env()
    for k in sorted(env):
        if k.startswith(("AIRFLOW", "PROPENSITY_")):
            typer.echo(f"export {k}='{env[k]}'")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
