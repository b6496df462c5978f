"""Operator API: cross-tenant views through the audited bypass path."""

from __future__ import annotations

import uuid
from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel, Field

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
