"""Operator API: cross-tenant views through the audited bypass path. Every request writes an
audit row (``parts.db.operator``) before it reads anything; tenant accounts get 403."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

import asyncpg
from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from pulse.cloud.api import paging
from pulse.cloud.api.deps import Operator, OperatorAdmin, Parts
from pulse.cloud.auth.accounts import create_tenant

router = APIRouter(prefix="/api/v1/operator", tags=["operator"])


class TenantOut(BaseModel):
    id: uuid.UUID
    slug: str
    name: str
    created_at: datetime
    devices: int


class TenantIn(BaseModel):
    slug: str = Field(min_length=1, max_length=63)
    name: str = Field(min_length=1, max_length=200)


@router.get("/tenants", response_model=list[TenantOut], summary="All tenants with device counts (audited)")
async def list_tenants(p: Operator, parts: Parts) -> list[TenantOut]:
    async with parts.db.operator(actor=p.actor, action="tenants.list") as conn:
        rows = await conn.fetch(
            "SELECT t.id, t.slug, t.name, t.created_at, (SELECT count(*) FROM devices d WHERE d.tenant_id = t.id) AS devices"
            " FROM tenants t ORDER BY t.slug"
        )
    return [TenantOut(**dict(r)) for r in rows]


@router.post("/tenants", status_code=201, response_model=TenantOut, summary="Create a tenant (audited)")
async def new_tenant(body: TenantIn, p: OperatorAdmin, parts: Parts) -> TenantOut:
    tenant_id = await create_tenant(parts.db, slug=body.slug, name=body.name, actor=p.actor)
    async with parts.db.operator(actor=p.actor, action="tenant.read", target=str(tenant_id), tenant_id=tenant_id) as conn:
        row = await conn.fetchrow("SELECT id, slug, name, created_at, 0::bigint AS devices FROM tenants WHERE id = $1", tenant_id)
    return TenantOut(**dict(row))


# --- NOC, tenant health, cross-tenant devices and alerts (all audited) -------------------------

_SEVERITIES = ("critical", "major", "minor", "warning", "info")


class PoolUse(BaseModel):
    in_use: int
    size: int
    max: int


class Noc(BaseModel):
    tenants: int
    devices: int
    devices_by_state: dict[str, int] = Field(description="online, stale, offline, unreachable, unknown (never evaluated)")
    online_pct: float | None = Field(description="online devices of those with a known state, in percent; null if none")
    ingest_rows_per_s: float = Field(description="telemetry rows stored per second over the last minute")
    open_alerts: dict[str, int] = Field(description="open and acknowledged alerts by severity")
    gateways: dict[str, int] = Field(description="active gateways: online (heard within the offline limit) and offline")
    db_pools: dict[str, PoolUse]


@router.get("/noc", response_model=Noc, summary="Fleet-wide figures for the NOC view (audited)")
async def noc(p: Operator, parts: Parts) -> Noc:
    offline_after = float(parts.settings.gateway_offline_after_s)
    async with parts.db.operator(actor=p.actor, action="noc.read") as conn:
        row = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM tenants) AS tenants,"
            " (SELECT count(*) FROM devices WHERE status <> 'decommissioned') AS devices,"
            " (SELECT count(*) FROM telemetry WHERE time > now() - interval '1 day' AND received_at > now() - interval '60 seconds')"
            "   AS recent_rows,"
            " (SELECT count(*) FROM gateways WHERE status = 'active' AND last_seen_at > now() - make_interval(secs => $1)) AS gw_on,"
            " (SELECT count(*) FROM gateways WHERE status = 'active') AS gw_all",
            offline_after,
        )
        states = {
            r["status"]: r["n"] for r in await conn.fetch("SELECT status, count(*) AS n FROM device_states GROUP BY status")
        }
        alerts = {
            r["severity"]: r["n"]
            for r in await conn.fetch("SELECT severity, count(*) AS n FROM alerts WHERE state <> 'closed' GROUP BY severity")
        }
        pools = {  # sampled while this request holds its own operator connection
            name: PoolUse(in_use=pool.get_size() - pool.get_idle_size(), size=pool.get_size(), max=pool.get_max_size())
            for name, pool in parts.db.pools().items()
        }
    by_state = {s: int(states.get(s, 0)) for s in ("online", "stale", "offline", "unreachable")}
    known = sum(by_state.values())
    by_state["unknown"] = max(0, int(row["devices"]) - known)
    return Noc(
        tenants=row["tenants"],
        devices=row["devices"],
        devices_by_state=by_state,
        online_pct=round(100 * by_state["online"] / known, 1) if known else None,
        ingest_rows_per_s=round(row["recent_rows"] / 60, 2),
        open_alerts={s: int(alerts.get(s, 0)) for s in _SEVERITIES},
        gateways={"online": row["gw_on"], "offline": row["gw_all"] - row["gw_on"]},
        db_pools=pools,
    )


class TenantHealth(BaseModel):
    id: uuid.UUID
    slug: str
    name: str
    devices: int
    online: int
    offline: int = Field(description="offline or unreachable")
    open_alerts: int
    critical_alerts: int
    gateways: int
    gateways_offline: int
    last_ingest_at: datetime | None = Field(description="newest stored reading within the last day")


@router.get("/health", response_model=list[TenantHealth], summary="Every tenant's health in one row (audited)")
async def tenant_health(p: Operator, parts: Parts) -> list[TenantHealth]:
    async with parts.db.operator(actor=p.actor, action="tenants.health") as conn:
        rows = await conn.fetch(
            "SELECT t.id, t.slug, t.name,"
            " (SELECT count(*) FROM devices d WHERE d.tenant_id = t.id AND d.status <> 'decommissioned') AS devices,"
            " (SELECT count(*) FROM device_states s WHERE s.tenant_id = t.id AND s.status = 'online') AS online,"
            " (SELECT count(*) FROM device_states s WHERE s.tenant_id = t.id AND s.status IN ('offline', 'unreachable')) AS offline,"
            " (SELECT count(*) FROM alerts a WHERE a.tenant_id = t.id AND a.state <> 'closed') AS open_alerts,"
            " (SELECT count(*) FROM alerts a WHERE a.tenant_id = t.id AND a.state <> 'closed' AND a.severity = 'critical')"
            "   AS critical_alerts,"
            " (SELECT count(*) FROM gateways g WHERE g.tenant_id = t.id AND g.status = 'active') AS gateways,"
            " (SELECT count(*) FROM gateways g WHERE g.tenant_id = t.id AND g.status = 'active'"
            "   AND (g.last_seen_at IS NULL OR g.last_seen_at <= now() - make_interval(secs => $1))) AS gateways_offline,"
            " (SELECT max(x.time) FROM telemetry x WHERE x.tenant_id = t.id AND x.time > now() - interval '1 day') AS last_ingest_at"
            " FROM tenants t ORDER BY t.slug",
            float(parts.settings.gateway_offline_after_s),
        )
    return [TenantHealth(**dict(r)) for r in rows]


class OperatorDevice(BaseModel):
    id: uuid.UUID
    tenant_id: uuid.UUID
    tenant_slug: str
    device_id: str
    name: str
    status: str
    state: str | None = Field(description="online, stale, offline, unreachable; null if never evaluated")
    updated_at: datetime


OperatorDevicePage = paging.Page[OperatorDevice]


@router.get(
    "/devices", response_model=OperatorDevicePage, summary="Devices of every tenant, paged by (tenant, device id) (audited)"
)
async def all_devices(
    p: Operator,
    parts: Parts,
    tenant: Annotated[str | None, Query(max_length=63, description="a tenant slug")] = None,
    q: Annotated[str | None, Query(max_length=200, description="part of a device id or name")] = None,
    state: Annotated[str | None, Query(max_length=20)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: paging.CursorQuery = None,
) -> OperatorDevicePage:
    w = paging.Where()

    if tenant:
        w.add(f"t.slug = {w.arg(tenant)}")
    if q:
        pattern = paging.like(q)
        w.add(f"(d.device_id ILIKE {w.arg(pattern)} OR d.name ILIKE {w.arg(pattern)})")
    if state:
        w.add(f"s.status = {w.arg(state)}")
    if (after := paging.decode(cursor, str, str)) is not None:
        w.add(f"(t.slug, d.device_id) > ({w.arg(after[0])}, {w.arg(after[1])})")
    detail = {"tenant": tenant, "q": q, "state": state}
    async with parts.db.operator(actor=p.actor, action="devices.list", detail=detail) as conn:
        rows = await conn.fetch(
            "SELECT d.id, d.tenant_id, t.slug AS tenant_slug, d.device_id, d.name, d.status, s.status AS state, d.updated_at"
            " FROM devices d JOIN tenants t ON t.id = d.tenant_id"
            " LEFT JOIN device_states s ON s.tenant_id = d.tenant_id AND s.device_id = d.device_id"
            f" WHERE {w.sql} ORDER BY t.slug, d.device_id LIMIT {w.arg(limit + 1)}",
            *w.args,
        )
    return paging.page(rows, limit, lambda r: OperatorDevice(**dict(r)), lambda r: (r["tenant_slug"], r["device_id"]))


OperatorAlertPage = paging.Page[dict[str, Any]]


@router.get("/alerts", response_model=OperatorAlertPage, summary="Alerts of every tenant, newest first, paged (audited)")
async def all_alerts(
    p: Operator,
    parts: Parts,
    tenant: Annotated[str | None, Query(max_length=63, description="a tenant slug")] = None,
    state: Annotated[list[Literal["open", "acknowledged", "closed"]] | None, Query()] = None,
    severity: Annotated[list[str] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: paging.CursorQuery = None,
) -> OperatorAlertPage:
    w = paging.Where()

    if tenant:
        w.add(f"t.slug = {w.arg(tenant)}")
    if state:
        w.add(f"a.state = ANY({w.arg(list(state))})")
    if severity:
        w.add(f"a.severity = ANY({w.arg(severity)})")
    if (after := paging.decode(cursor, datetime, int)) is not None:
        w.add(f"(a.opened_at, a.id) < ({w.arg(after[0])}, {w.arg(after[1])})")
    detail = {"tenant": tenant, "state": state, "severity": severity}
    async with parts.db.operator(actor=p.actor, action="alerts.list", detail=detail) as conn:
        rows = await conn.fetch(
            "SELECT a.id, a.tenant_id, t.slug AS tenant_slug, a.device_id, a.rule_id, a.kind, a.severity, a.state,"
            " a.explanation, a.opened_at, a.updated_at FROM alerts a JOIN tenants t ON t.id = a.tenant_id"
            f" WHERE {w.sql} ORDER BY a.opened_at DESC, a.id DESC LIMIT {w.arg(limit + 1)}",
            *w.args,
        )
    return paging.page(rows, limit, _alert_out, lambda r: (r["opened_at"], r["id"]))


def _alert_out(r: asyncpg.Record) -> dict[str, Any]:
    return {
        **dict(r),
        "tenant_id": str(r["tenant_id"]),
        "explanation": json.loads(r["explanation"]),
        "opened_at": r["opened_at"].isoformat(),
        "updated_at": r["updated_at"].isoformat(),
    }
