"""Database plumbing: engines, URL forms, and the numbered-SQL migration runner.

Why a small runner rather than Alembic: our migrations are plain, numbered SQL files (readable by analysts, runnable
with psql), not Python revision graphs. The runner applies each pending file in its own transaction, records
version + sha256 in ``public.schema_migrations``, refuses a file that was edited after it was applied, and holds a
PostgreSQL advisory lock for the whole run so that concurrent appliers (two DAG runs, a CLI and a test) are safe.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from ml.errors import MigrationError

log = logging.getLogger(__name__)

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
MIGRATIONS_DIR = SQL_DIR / "migrations"
_MIGRATION_LOCK_KEY = 7_262_001  # arbitrary, constant: pg_advisory_lock key owned by the migration runner
_FILE_RE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def sqlalchemy_url(url: str) -> str:
    """Return ``url`` with an explicit psycopg2 driver, as SQLAlchemy wants it."""
    u = make_url(url)
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg2")
    return u.render_as_string(hide_password=False)


def libpq_url(url: str) -> str:
    """Return ``url`` as a plain libpq URI (no SQLAlchemy driver suffix), as psycopg 3 and psql want it."""
    u = make_url(url)
    return u.set(drivername="postgresql").render_as_string(hide_password=False)


def make_engine(url: str, **kwargs: object) -> Engine:
    """Create a SQLAlchemy engine (psycopg2 driver, pre-ping on) for ``url``."""
    return sa.create_engine(sqlalchemy_url(url), pool_pre_ping=True, future=True, **kwargs)  # type: ignore[arg-type]


def create_database(server_url: str, name: str, *, migrated: bool = True) -> str:
    """Create database ``name`` on the server of ``server_url`` (migrated to head unless ``migrated=False``) and
    return its URL. Used for scratch databases in tests and benchmarks. ``name`` must be a plain identifier."""
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
        raise ValueError(f"database name {name!r} is not a plain lower-case identifier")
    admin = make_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.execute(sa.text(f'create database "{name}"'))
    finally:
        admin.dispose()
    url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    if migrated:
        eng = make_engine(url)
        try:
            migrate(eng)
        finally:
            eng.dispose()
    return url


def drop_database(server_url: str, name: str) -> None:
    """Terminate the sessions of database ``name`` and drop it (no error when it is gone)."""
    admin = make_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.execute(
                sa.text(
                    "select pg_terminate_backend(pid) from pg_stat_activity"
                    " where datname = :d and pid <> pg_backend_pid()"
                ),
                {"d": name},
            )
            c.execute(sa.text(f'drop database if exists "{name}"'))
    finally:
        admin.dispose()


def read_sql(relative: str) -> str:
    """Read a SQL file under ``sql/`` (e.g. ``features/feat_pairs.sql``)."""
    return (SQL_DIR / relative).read_text()


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    path: Path

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def list_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migration files in version order. Raises :class:`MigrationError` on a bad name or duplicate version."""
    found: dict[str, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        m = _FILE_RE.match(path.name)
        if not m:
            raise MigrationError(f"{path}: migration files are named NNNN_snake_case.sql")
        if m.group(1) in found:
            raise MigrationError(f"{path}: version {m.group(1)} is also used by {found[m.group(1)].path.name}")
        found[m.group(1)] = Migration(m.group(1), path.stem, path)
    return [found[v] for v in sorted(found)]


def migrate(engine: Engine, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply pending migrations in order; return the names applied (empty when up to date).

    Safe to call concurrently: the whole run holds an advisory lock, so a second caller waits, then finds
    nothing to do. Raises :class:`MigrationError` if an applied file changed or a file fails (that file's
    transaction is rolled back; earlier files stay applied).
    """
    applied_now: list[str] = []
    with engine.connect() as conn:
        conn.execute(sa.text("select pg_advisory_lock(:k)"), {"k": _MIGRATION_LOCK_KEY})
        try:
            conn.execute(
                sa.text(
                    "create table if not exists public.schema_migrations ("
                    " version text primary key, name text not null, checksum text not null,"
                    " applied_at timestamptz not null default now())"
                )
            )
            conn.commit()
            done = {
                r.version: r.checksum
                for r in conn.execute(sa.text("select version, checksum from public.schema_migrations"))
            }
            for mig in list_migrations(directory):
                if mig.version in done:
                    if done[mig.version] != mig.checksum:
                        raise MigrationError(
                            f"{mig.path.name} was edited after it was applied (checksum differs); "
                            "add a new numbered migration instead"
                        )
                    continue
                log.info("applying migration %s", mig.path.name)
                try:
                    # DBAPI cursor: psycopg2 runs a multi-statement file as one batch, with no bind-param parsing
                    with conn.connection.cursor() as cur:
                        cur.execute(mig.path.read_text())
                    conn.execute(
                        sa.text("insert into public.schema_migrations (version, name, checksum) values (:v, :n, :c)"),
                        {"v": mig.version, "n": mig.name, "c": mig.checksum},
                    )
                    conn.commit()
                except sa.exc.DBAPIError as e:
                    conn.rollback()
                    raise MigrationError(f"{mig.path.name} failed: {e.orig}") from e
                applied_now.append(mig.name)
        finally:
            conn.rollback()
            conn.execute(sa.text("select pg_advisory_unlock(:k)"), {"k": _MIGRATION_LOCK_KEY})
            conn.commit()
    return applied_now
