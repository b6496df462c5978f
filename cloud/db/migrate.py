"""Schema migrations: ordered ``NNNN_name.sql`` files in ``migrations/``, each applied once in its
own transaction and recorded in ``schema_migrations`` (version, name, checksum, applied_at).

Role names in the files are written ``{{app}}`` (a quoted identifier) or ``{{app_lit}}`` (a
string literal) and filled in from the configured prefix, because PostgreSQL roles are shared by
every database on a server. Migrations run as the database owner, who must be able to create roles
with BYPASSRLS (in practice: a superuser, as the TimescaleDB image's POSTGRES_USER is).

Before the migration that creates the telemetry table, the storage engine is chosen
(``engine.choose``: TimescaleDB only when it is installed and preloaded, or as
``PULSE_STORAGE_ENGINE`` says); a fallback worth knowing about is told through ``on_notice`` and
the log, an impossible explicit request raises ``StorageEngineError`` before anything changes."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources

import asyncpg

from pulse.cloud.db.engine import Requested, StorageEngineError, choose, probe, table_engine
from pulse.cloud.settings import RoleNames
from pulse.protocol.errors import Code

MIGRATIONS_PACKAGE = "pulse.cloud.db.migrations"
_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_LOCK_KEY = 0x70756C7365  # "pulse": one migrator at a time per database
_TELEMETRY_VERSION = "0004"  # creates the telemetry table: the storage engine is chosen before it

# Checksums of earlier texts of a migration that are still accepted as applied. Only for a change
# whose effect on every database that could have applied the earlier text is the same:
# - 0004: the earlier text ran CREATE EXTENSION itself and enabled compression before row-level
#   security. That failed on TimescaleDB (so no database applied it there); on native partitioning
#   it did exactly what the current text does.
EARLIER_CHECKSUMS: dict[str, frozenset[str]] = {
    "0004": frozenset({"cc11916bee720a2a98c8ae26f5dc3958b7b1e44ff70a6e1ddd808387d854e058"}),
}

log = logging.getLogger("pulse.cloud.db")


@dataclass(frozen=True, slots=True)
class Migration:
    version: str
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


class MigrationError(RuntimeError):
    """A migration failed or the recorded history does not match the files."""


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def render(sql: str, roles: RoleNames) -> str:
    for key in ("app", "operator", "writer", "identity"):
        name = getattr(roles, key)
        sql = sql.replace("{{" + key + "_lit}}", quote_literal(name)).replace("{{" + key + "}}", quote_ident(name))
    if "{{" in sql:
        raise MigrationError(f"unknown placeholder in migration: {sql[sql.index('{{') :][:40]}")
    return sql


def load() -> list[Migration]:
    found = []
    for entry in resources.files(MIGRATIONS_PACKAGE).iterdir():
        if m := _FILE_RE.match(entry.name):
            found.append(Migration(version=m.group(1), name=m.group(2), sql=entry.read_text()))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a version: {versions}")
    return found


async def applied(conn: asyncpg.Connection) -> dict[str, str]:
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return {}
    return {r["version"]: r["checksum"] for r in await conn.fetch("SELECT version, checksum FROM schema_migrations")}


async def migrate(
    dsn: str,
    roles: RoleNames,
    *,
    role_password: str | None = None,
    engine: Requested = "auto",
    on_notice: Callable[[str], None] | None = None,
) -> list[str]:
    """Apply pending migrations; returns the versions applied now. Safe to run concurrently.
    ``engine`` is PULSE_STORAGE_ENGINE; ``on_notice`` hears what Pulse decided that an operator
    should know (without it, that goes to the log as a warning)."""
    conn = await asyncpg.connect(dsn)
    done: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version text PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        history = await applied(conn)
        migrations = load()
        if any(m.version == _TELEMETRY_VERSION and m.version not in history for m in migrations):
            await _prepare_engine(conn, engine, on_notice)
        else:
            await _check_engine(conn, engine)
        for mig in migrations:
            if mig.version in history:
                if history[mig.version] != mig.checksum and history[mig.version] not in EARLIER_CHECKSUMS.get(mig.version, ()):
                    raise MigrationError(
                        f"migration {mig.version}_{mig.name} was changed after it was applied; "
                        "add a new migration instead of editing an applied one"
                    )
                continue
            try:
                async with conn.transaction():
                    await conn.execute(render(mig.sql, roles))
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                        mig.version,
                        mig.name,
                        mig.checksum,
                    )
            except asyncpg.PostgresError as exc:
                raise MigrationError(f"migration {mig.version}_{mig.name} failed: {exc}") from exc
            done.append(mig.version)
        if role_password is not None:
            for name in (roles.app, roles.operator, roles.writer):
                stmt = await conn.fetchval("SELECT format('ALTER ROLE %I PASSWORD %L', $1::text, $2::text)", name, role_password)
                await conn.execute(stmt)
    finally:
        await conn.close()
    return done


async def _prepare_engine(conn: asyncpg.Connection, requested: Requested, on_notice: Callable[[str], None] | None) -> None:
    """Choose the engine for the telemetry table, create the extension when it is TimescaleDB, and
    hand the choice to 0004 in the session setting pulse.storage_engine."""
    choice = choose(requested, await probe(conn))
    if choice.notice:
        (on_notice or log.warning)(choice.notice)
    if choice.engine == "timescaledb":
        await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    await conn.execute("SELECT set_config('pulse.storage_engine', $1, false)", choice.engine)


async def _check_engine(conn: asyncpg.Connection, requested: Requested) -> None:
    """The telemetry table exists: an explicit request for TimescaleDB must match it."""
    if requested == "timescaledb" and await table_engine(conn) == "native":
        raise StorageEngineError(
            Code.STORAGE_TIMESCALEDB_UNAVAILABLE,
            "PULSE_STORAGE_ENGINE=timescaledb, but this database's telemetry table was created with native "
            "partitioning and Pulse does not convert it; set PULSE_STORAGE_ENGINE=auto, or migrate into a new database",
        )


async def maintain_telemetry(
    dsn: str, *, ahead_days: int, retention_days: int, at: dt.datetime | None = None
) -> list[tuple[str, str]]:
    """Create telemetry partitions ahead, drop expired ones (or set TimescaleDB's retention).
    ``at``: the time to take as now (default: the database's clock)."""
    conn = await asyncpg.connect(dsn)
    try:
        if at is None:
            rows = await conn.fetch("SELECT action, target FROM pulse_telemetry_maintain($1, $2)", ahead_days, retention_days)
        else:
            rows = await conn.fetch(
                "SELECT action, target FROM pulse_telemetry_maintain($1, $2, $3)", ahead_days, retention_days, at
            )
    finally:
        await conn.close()
    return [(r["action"], r["target"]) for r in rows]


async def maintain_system_metrics(dsn: str, *, ahead_days: int, retention_days: int) -> list[tuple[str, str]]:
    """The same for ``system_metrics`` (migration 0015): partitions ahead and expired, or TimescaleDB's retention."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT action, target FROM pulse_system_metrics_maintain($1, $2)", ahead_days, retention_days)
    finally:
        await conn.close()
    return [(r["action"], r["target"]) for r in rows]
