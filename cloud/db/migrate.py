"""Schema migrations: ordered ``NNNN_name.sql`` files in ``migrations/``, each applied once in its
own transaction and recorded in ``schema_migrations`` (version, name, checksum, applied_at).

Role names in the files are written ``{{app}}`` (a quoted identifier) or ``{{app_lit}}`` (a
string literal) and filled in from the configured prefix, because PostgreSQL roles are shared by
every database on a server. Migrations run as the database owner, who must be able to create roles
with BYPASSRLS (in practice: a superuser, as the TimescaleDB image's POSTGRES_USER is)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

import asyncpg

from pulse.cloud.settings import RoleNames

MIGRATIONS_PACKAGE = "pulse.cloud.db.migrations"
_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_LOCK_KEY = 0x70756C7365  # "pulse": one migrator at a time per database


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


async def migrate(dsn: str, roles: RoleNames, *, role_password: str | None = None) -> list[str]:
    """Apply pending migrations; returns the versions applied now. Safe to run concurrently."""
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
        for mig in load():
            if mig.version in history:
                if history[mig.version] != mig.checksum:
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


async def maintain_telemetry(dsn: str, *, ahead_days: int, retention_days: int) -> list[tuple[str, str]]:
    """Create telemetry partitions ahead, drop expired ones (or set TimescaleDB's retention)."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT action, target FROM pulse_telemetry_maintain($1, $2)", ahead_days, retention_days)
    finally:
        await conn.close()
    return [(r["action"], r["target"]) for r in rows]
