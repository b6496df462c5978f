"""``GET /api/v1/audit``: the tenant's audit log, newest first, paged by cursor.

Row-level security keeps it to the caller's tenant; rows written by operators' RLS-bypassing path
about this tenant (``bypass: true``) are included, so a tenant sees when an operator looked at its
data. Tenant admins only: the log names people and what they changed."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from pulse.cloud.api import paging
from pulse.cloud.api.deps import Parts, Writer

router = APIRouter(prefix="/api/v1/audit", tags=["audit"])


class AuditEntry(BaseModel):
    id: int
    at: str
    actor: str
    action: str
    target: str
    detail: dict[str, Any]
    bypass: bool = Field(description="written by an operator's cross-tenant (audited) access")


AuditPage = paging.Page[AuditEntry]


@router.get("", response_model=AuditPage, summary="The tenant's audit log, newest first (tenant admins)")
async def list_audit(
    caller: Writer,
    parts: Parts,
    action: Annotated[str | None, Query(max_length=100, description="an action, or a prefix ending in '.' (gateway.)")] = None,
    actor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: paging.CursorQuery = None,
) -> AuditPage:
    where: list[str] = ["true"]
    args: list[object] = []
    if action:
        args.append(action.replace("%", r"\%").replace("_", r"\_") + "%" if action.endswith(".") else action)
        where.append(f"action {'LIKE' if action.endswith('.') else '='} ${len(args)}")
    if actor:
        args.append(actor)
        where.append(f"actor = ${len(args)}")
    if (after := paging.decode(cursor, datetime, int)) is not None:
        args += list(after)
        where.append(f"(at, id) < (${len(args) - 1}, ${len(args)})")
    args.append(limit + 1)
    async with parts.db.tenant(caller.tenant_id) as conn:
        rows = await conn.fetch(
            f"SELECT id, at, actor, action, target, detail, bypass FROM audit_log WHERE {' AND '.join(where)}"
            f" ORDER BY at DESC, id DESC LIMIT ${len(args)}",
            *args,
        )
    return paging.page(
        rows, limit, lambda r: AuditEntry(**{**dict(r), "at": r["at"].isoformat(), "detail": json.loads(r["detail"])}), lambda r: (r["at"], r["id"])
    )
