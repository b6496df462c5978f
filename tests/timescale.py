"""TimescaleDB for the test suite: where a PostgreSQL with the extension installed is, and which
tables hold telemetry underneath the table the app names (partitions or chunks).

TimescaleDB is not in Debian's archive, so a fresh machine has none and its tests are skipped with
the reason. PULSE_TEST_TIMESCALEDB_PG_BINDIR names the server binaries of a PostgreSQL that has it
(for instance a copy of the system's PostgreSQL with TimescaleDB built into it, docs/cloud.md);
without it, the system's own server binaries are checked."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import asyncpg

from pulse.cloud.db.embedded import EmbeddedPostgresError, find_bindir

PRELOAD = {"shared_preload_libraries": "timescaledb", "timescaledb.telemetry_level": "off"}


def timescaledb_bindir() -> tuple[Path | None, str]:
    """(server binaries of a PostgreSQL with TimescaleDB installed, or None; why not)."""
    try:
        bindir = Path(env) if (env := os.environ.get("PULSE_TEST_TIMESCALEDB_PG_BINDIR")) else find_bindir()
    except EmbeddedPostgresError as exc:
        return None, str(exc)
    pg_config = bindir / "pg_config" if (bindir / "pg_config").exists() else Path("pg_config")
    try:
        sharedir = subprocess.run([str(pg_config), "--sharedir"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"cannot ask {pg_config} where extensions live: {exc}"
    control = Path(sharedir) / "extension" / "timescaledb.control"
    if not control.exists():
        return None, (
            f"TimescaleDB is not installed for the PostgreSQL at {bindir} (no {control}); it is not in Debian's archive: "
            "build it for this PostgreSQL, or set PULSE_TEST_TIMESCALEDB_PG_BINDIR to one that has it"
        )
    return bindir, ""


async def storage_tables(conn: asyncpg.Connection) -> list[str]:
    """Every table that holds telemetry rows under public.telemetry: native partitions, or TimescaleDB
    chunks and compressed chunks (asked as the owner)."""
    if await conn.fetchval("SELECT relkind = 'p' FROM pg_class WHERE oid = 'public.telemetry'::regclass"):
        rows = await conn.fetch(
            "WITH RECURSIVE p(oid) AS (SELECT 'public.telemetry'::regclass::oid"
            " UNION ALL SELECT i.inhrelid FROM pg_inherits i JOIN p ON i.inhparent = p.oid)"
            " SELECT oid::regclass::text AS name FROM p WHERE oid <> 'public.telemetry'::regclass ORDER BY 1"
        )
    else:
        rows = await conn.fetch(
            "SELECT format('%I.%I', n.nspname, c.relname) AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = '_timescaledb_internal' AND c.relkind = 'r'"
            r" AND c.relname ~ '^(_hyper_\d+_\d+_chunk|compress_hyper_\d+_\d+_chunk|_compressed_hypertable_\d+)$' ORDER BY 1"
        )
    return [r["name"] for r in rows]
