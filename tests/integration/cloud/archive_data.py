"""Telemetry rows for the archive's tests, written straight into PostgreSQL as the owner (the way
they would sit there after ingest), and the archive's files read back with DuckDB."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path

import asyncpg
import duckdb

Row = tuple[dt.datetime, uuid.UUID, str, Mapping[str, float | bool], int]


def at(day: str, hour: int = 0, minute: int = 0, second: int = 0) -> dt.datetime:
    return dt.datetime.fromisoformat(day).replace(hour=hour, minute=minute, second=second, tzinfo=dt.UTC)


async def put_rows(dsn: str, rows: Iterable[Row], *, msg_type: str = "telemetry") -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.executemany(
            "INSERT INTO telemetry (time, tenant_id, device_id, msg_type, metrics, seq, source, received_at)"
            " VALUES ($1, $2, $3, $4, $5::jsonb, $6, 'test', $1)",
            [(t, tenant, device, msg_type, json.dumps(dict(metrics)), seq) for t, tenant, device, metrics, seq in rows],
        )
    finally:
        await conn.close()


def read(path: Path, query: str = "SELECT * FROM f") -> list[tuple[object, ...]]:
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.execute(f"CREATE VIEW f AS SELECT * FROM read_parquet('{path}')")
        return con.execute(query).fetchall()
    finally:
        con.close()
