"""Connector sets: the polled devices (Modbus, SNMP) the cloud manages for a gateway.

A set is validated with the gateway's own rules (``pulse.protocol.connectors.parse_set``), stored
with a version one above the last, and queued for the gateway as a ``connectors`` downlink item in
the same transaction. Each device of the set is a device of the tenant like any other: one not
registered yet is registered to the gateway (within the subscription's device limit); one served by
another gateway is refused (``connector.device_elsewhere``). Devices taken out of a set stay
registered with their history; decommission them to free their place.

The gateway says what it did with the set in its periodic report (``record_report``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence

import asyncpg

from pulse.cloud.downlink import enqueue
from pulse.cloud.errors import ConflictError, InvalidError
from pulse.cloud.subscriptions.store import check_device_room
from pulse.protocol.connectors import ConnectorSet, parse_set
from pulse.protocol.errors import Code, ConnectorError
from pulse.protocol.sync import DownlinkKind


async def load(conn: asyncpg.Connection, gateway: uuid.UUID) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow("SELECT * FROM gateway_connectors WHERE gateway_id = $1", gateway)
    return row


async def push(
    conn: asyncpg.Connection,
    tenant_id: uuid.UUID,
    gateway: uuid.UUID,
    site: uuid.UUID | None,
    docs: Sequence[Mapping[str, object]],
    *,
    expected_version: int | None,
    actor: str,
) -> ConnectorSet:
    """Store a new set for ``gateway`` and queue it; in the caller's tenant transaction. Raises
    ``InvalidError`` (a definition the gateway would refuse) or ``ConflictError``."""
    current = await conn.fetchval("SELECT version FROM gateway_connectors WHERE gateway_id = $1 FOR UPDATE", gateway) or 0
    if expected_version is not None and expected_version != current:
        raise ConflictError(Code.CONNECTOR_VERSION_CONFLICT, f"the connector set is at version {current}, not {expected_version}",
                            current_version=current)
    try:
        new = parse_set({"version": current + 1, "devices": list(docs)})
    except ConnectorError as exc:
        raise InvalidError(exc.code, exc.message, **exc.context) from exc
    await _register(conn, tenant_id, gateway, site, [d.id for d in new.devices])
    await conn.execute(
        "INSERT INTO gateway_connectors (tenant_id, gateway_id, version, devices, updated_by) VALUES ($1, $2, $3, $4::jsonb, $5)"
        " ON CONFLICT (tenant_id, gateway_id) DO UPDATE SET version = excluded.version, devices = excluded.devices,"
        " updated_by = excluded.updated_by, updated_at = now()",
        tenant_id, gateway, new.version, json.dumps([dict(d) for d in new.docs]), actor,
    )
    await enqueue(conn, tenant_id, gateway, DownlinkKind.CONNECTORS, new.to_payload())
    return new


async def _register(conn: asyncpg.Connection, tenant_id: uuid.UUID, gateway: uuid.UUID, site: uuid.UUID | None, ids: list[str]) -> None:
    """Every device of the set is a device of the tenant served by ``gateway``."""
    if not ids:
        return
    rows = await conn.fetch("SELECT device_id, gateway_id, status FROM devices WHERE device_id = ANY($1::text[])", ids)
    elsewhere = sorted(r["device_id"] for r in rows if r["gateway_id"] not in (None, gateway) and r["status"] != "decommissioned")
    if elsewhere:
        raise ConflictError(Code.CONNECTOR_DEVICE_ELSEWHERE, f"served by another gateway of your tenant: {', '.join(elsewhere)}",
                            device_ids=", ".join(elsewhere))
    decommissioned = sorted(r["device_id"] for r in rows if r["status"] == "decommissioned")
    if decommissioned:
        raise ConflictError(Code.API_CONFLICT, f"decommissioned devices cannot be polled again: {', '.join(decommissioned)}",
                            device_ids=", ".join(decommissioned))
    known = {r["device_id"] for r in rows}
    new = [i for i in ids if i not in known]
    if new:
        await check_device_room(conn, tenant_id, len(new))
        await conn.executemany(
            "INSERT INTO devices (tenant_id, device_id, name, site_id, gateway_id, tags, status, attributes)"
            " VALUES ($1, $2, $2, $3, $4, '{connector}', 'active', '{}'::jsonb)",
            [(tenant_id, i, site, gateway) for i in new],
        )
    await conn.execute("UPDATE devices SET gateway_id = $1, updated_at = now() WHERE device_id = ANY($2::text[]) AND gateway_id IS NULL",
                       gateway, [i for i in ids if i in known])


async def record_report(conn: asyncpg.Connection, gateway: uuid.UUID, report: Mapping[str, object]) -> None:
    """What the gateway said about its pushed set; ignored for a gateway the cloud never sent one."""
    polled, local = report.get("polled") or [], report.get("defined_locally") or []
    await conn.execute(
        "UPDATE gateway_connectors SET applied_version = $2, applied_status = $3, polled = $4::text[], defined_locally = $5::text[],"
        " reported_at = now() WHERE gateway_id = $1",
        gateway,
        report.get("version"),
        report.get("status"),
        list(polled) if isinstance(polled, list) else [],
        list(local) if isinstance(local, list) else [],
    )
