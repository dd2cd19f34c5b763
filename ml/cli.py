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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
