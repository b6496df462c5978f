"""The report history: one row per SLA report or export (who, when, parameters, status, result)."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Mapping
from typing import Any

import asyncpg


async def start(
    conn: asyncpg.Connection, tenant: uuid.UUID, *, kind: str, params: Mapping[str, Any], actor: str, now: dt.datetime
) -> uuid.UUID:
    run: uuid.UUID = await conn.fetchval(
        "INSERT INTO report_runs (tenant_id, kind, params, status, requested_by, created_at)"
        " VALUES ($1, $2, $3::jsonb, 'running', $4, $5) RETURNING id",
        tenant, kind, json.dumps(dict(params), default=str), actor, now,
    )
    return run


async def finish(
    conn: asyncpg.Connection, run: uuid.UUID, *, now: dt.datetime, result: Mapping[str, Any] | None = None, error: str | None = None
) -> None:
    await conn.execute(
        "UPDATE report_runs SET status = $2, finished_at = $3, result = $4::jsonb, error = $5 WHERE id = $1",
        run, "failed" if error else "done", now, None if result is None else json.dumps(dict(result), default=str), error,
    )
