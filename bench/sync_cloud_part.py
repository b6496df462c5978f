"""The cloud's half of ``pulse bench sync`` (the gateway's uplink drives the other half).

- ``provision(dsn, roles, devices=N)``: migrates, then makes a tenant with N active devices and one
  gateway, and returns a one-time enrollment token for it (what an operator would get from
  ``POST /api/v1/gateways``), straight in the database so set-up is not part of the figures.
- ``serve_environment(...)``: the environment for ``pulse cloud serve`` with the sync listener on
  a given port and the CA in a given data directory.
- ``count_synced(dsn, tenant)``: rows gateways wrote for the tenant (to check 0 lost, 0 duplicated:
  compare with the distinct (device, device seq) pairs the gateway buffered).
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from pulse.cloud.auth.credentials import sha256_hex
from pulse.cloud.db.migrate import migrate
from pulse.cloud.settings import RoleNames
from pulse.cloud.sync.identity import new_enrollment_token


@dataclass(frozen=True, slots=True)
class Provisioned:
    tenant_id: uuid.UUID
    gateway_id: uuid.UUID
    device_ids: list[str]
    enrollment_token: str


async def provision(dsn: str, roles: RoleNames, *, devices: int, prefix: str = "bench") -> Provisioned:
    await migrate(dsn, roles)
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            tenant = await conn.fetchval(
                "INSERT INTO tenants (slug, name) VALUES ($1, 'bench sync') RETURNING id", f"{prefix}-{uuid.uuid4().hex[:8]}"
            )
            await conn.execute("SELECT set_config('app.tenant_id', $1, true)", str(tenant))
            device_ids = [f"{prefix}-{d:04d}" for d in range(devices)]
            await conn.executemany(
                "INSERT INTO devices (tenant_id, device_id, status) VALUES ($1, $2, 'active')", [(tenant, d) for d in device_ids]
            )
            gateway = await conn.fetchval("INSERT INTO gateways (tenant_id, name) VALUES ($1, $2) RETURNING id", tenant, f"{prefix}-gw")
            token = new_enrollment_token()
            await conn.execute(
                "INSERT INTO gateway_enrollment_tokens (tenant_id, gateway_id, token_hash, expires_at) VALUES ($1, $2, $3, $4)",
                tenant,
                gateway,
                sha256_hex(token),
                dt.datetime.now(dt.UTC) + dt.timedelta(hours=1),
            )
        await conn.execute("SELECT pulse_telemetry_maintain(7, 90)")
    finally:
        await conn.close()
    return Provisioned(tenant, gateway, device_ids, token)


def serve_environment(dsn: str, roles_prefix: str, *, port: int, sync_port: int, data_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PULSE_MODE": "development",
        "PULSE_DATABASE_URL": dsn,
        "PULSE_DB_ROLE_PREFIX": roles_prefix,
        "PULSE_HOST": "127.0.0.1",
        "PULSE_PORT": str(port),
        "PULSE_SYNC_PORT": str(sync_port),
        "PULSE_SYNC_NAMES": "127.0.0.1,localhost",
        "PULSE_DATA_DIR": str(data_dir),
    }


async def count_synced(dsn: str, tenant: uuid.UUID) -> tuple[int, int]:
    """(rows, distinct (device, device seq) pairs) that gateways wrote for ``tenant``."""
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT count(*) AS n, count(DISTINCT (device_id, seq)) AS d FROM telemetry WHERE tenant_id = $1 AND source = 'gateway'",
            tenant,
        )
    finally:
        await conn.close()
    return int(row["n"]), int(row["d"])
