"""Which storage engine telemetry gets: a TimescaleDB hypertable or native partitioning.

Decided once, before the migration that creates the telemetry table (0004), from what the server
offers and what ``PULSE_STORAGE_ENGINE`` asks for:

- ``probe(conn)`` reads ``pg_available_extensions`` and ``SHOW shared_preload_libraries``. It never runs ``CREATE EXTENSION`` on a server that has not
  preloaded the library: that ends the connection with FATAL, which no exception block catches.
- ``choose(requested, server)`` is the pure decision: the engine and, when Pulse falls back to native
  partitioning although TimescaleDB is installed, a notice saying why and what to change. When
  TimescaleDB is asked for explicitly and cannot be used, it raises ``StorageEngineError``
  (code ``storage.timescaledb_unavailable``) instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import asyncpg

from pulse.protocol.errors import Code, PulseError

Engine = Literal["timescaledb", "native"]
Requested = Literal["auto", "timescaledb", "native"]


class StorageEngineError(PulseError):
    """The storage engine asked for cannot be used on this server; nothing was changed."""


@dataclass(frozen=True, slots=True)
class ServerOffer:
    """What the server offers for TimescaleDB."""

    available: bool  # the extension's files are installed (pg_available_extensions)
    preloaded: bool  # 'timescaledb' is in shared_preload_libraries


@dataclass(frozen=True, slots=True)
class Choice:
    engine: Engine
    notice: str | None = None  # said in Pulse's log and in `pulse cloud migrate` output


def preload_list(setting: str) -> list[str]:
    """``shared_preload_libraries`` as names (it may quote them and name them with a path or suffix)."""
    names = []
    for item in setting.split(","):
        name = item.strip().strip('"').strip()
        name = name.rsplit("/", 1)[-1].removesuffix(".so")
        if name:
            names.append(name)
    return names


def choose(requested: Requested, server: ServerOffer) -> Choice:
    if requested == "native":
        return Choice("native")
    usable = server.available and server.preloaded
    if usable:
        return Choice("timescaledb")
    if server.available:
        why = (
            "the TimescaleDB extension is installed on the PostgreSQL server but not preloaded "
            "(shared_preload_libraries does not name timescaledb)"
        )
        fix = "add timescaledb to shared_preload_libraries in postgresql.conf and restart PostgreSQL"
    else:
        why = "the TimescaleDB extension is not installed on the PostgreSQL server"
        fix = "install TimescaleDB for this PostgreSQL version (or use the timescale/timescaledb image)"
    if requested == "timescaledb":
        raise StorageEngineError(
            Code.STORAGE_TIMESCALEDB_UNAVAILABLE,
            f"PULSE_STORAGE_ENGINE=timescaledb, but {why}; {fix}, or set PULSE_STORAGE_ENGINE=auto or native",
        )
    if not server.available:
        return Choice("native")  # the ordinary case without TimescaleDB: nothing to tell
    return Choice(
        "native",
        notice=f"telemetry uses native partitioning: {why}. To use TimescaleDB, {fix} before the first migration.",
    )


async def probe(conn: asyncpg.Connection) -> ServerOffer:
    available = await conn.fetchval("SELECT count(*) > 0 FROM pg_available_extensions WHERE name = 'timescaledb'")
    preload = await conn.fetchval("SHOW shared_preload_libraries")
    return ServerOffer(available=bool(available), preloaded="timescaledb" in preload_list(str(preload)))


async def table_engine(conn: asyncpg.Connection) -> Engine | None:
    """The engine the telemetry table already has in this database (None: no table yet)."""
    kind = await conn.fetchval("SELECT relkind::text FROM pg_class WHERE oid = to_regclass('public.telemetry')")
    if kind is None:
        return None
    return "native" if kind == "p" else "timescaledb"
