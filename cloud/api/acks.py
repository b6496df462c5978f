"""Who may act on alerts (``/api/v1/permissions``), and acting from where people are paged.

Inbound routes (no Pulse session: each request proves itself with the channel's secret):
``POST /hooks/v1/pagerduty/{channel_id}`` (PagerDuty webhook v3), ``POST /hooks/v1/slack/{channel_id}``
(Slack interactivity), ``GET|POST /hooks/v1/ack/{token}`` (the signed link in an email). A refused
request changes nothing and answers a coded error (``ack.*``, docs/protocol.md)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from pulse.cloud.alerts import actions
from pulse.cloud.api.deps import Parts, Reader, Writer
from pulse.cloud.db.pool import audit

permissions_router = APIRouter(prefix="/api/v1/permissions", tags=["permissions"])


class PermissionOut(BaseModel):
    permission: str
    roles: list[str] = Field(description="roles that hold it: customer, tenant-admin, external (a person PagerDuty or Slack names who is not a user here)")


class PermissionIn(BaseModel):
    roles: list[str] = Field(max_length=3, description="tenant-admin is always kept")


def _out(perms: dict[actions.Permission, frozenset[str]]) -> list[dict[str, Any]]:
    return [{"permission": p, "roles": sorted(perms[p])} for p in actions.PERMISSIONS]


@permissions_router.get("", summary="Who may acknowledge and close alerts in this tenant", response_model=list[PermissionOut])
async def list_permissions(caller: Reader, parts: Parts) -> list[dict[str, Any]]:
    async with parts.db.tenant(caller.tenant_id) as conn:
        return _out(await actions.permissions(conn))


@permissions_router.put("/{permission}", summary="Set which roles hold a permission (tenant admins)", response_model=PermissionOut)
async def set_permission(permission: actions.Permission, body: PermissionIn, caller: Writer, parts: Parts) -> dict[str, Any]:
    async with parts.db.tenant(caller.tenant_id) as conn:
        roles = await actions.set_permission(conn, permission, body.roles, by=caller.actor)
        await audit(conn, actor=caller.actor, action="permission.set", target=permission, tenant_id=caller.tenant_id, detail={"roles": sorted(roles)})
    return {"permission": permission, "roles": sorted(roles)}
