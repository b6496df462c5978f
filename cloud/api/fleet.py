"""Fleet summary for the console's overview: counts within the caller's tenant."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from pulse.cloud.api.deps import Parts, Reader

router = APIRouter(prefix="/api/v1/fleet", tags=["fleet"])

STATUSES = ("provisioned", "active", "disabled", "decommissioned")


class FleetSummary(BaseModel):
    devices: int
    devices_by_status: dict[str, int] = Field(description="every status is present, with 0 when no device has it")
    sites: int


@router.get("/summary", response_model=FleetSummary, summary="Device counts by status and the number of sites")
async def summary(caller: Reader, parts: Parts) -> FleetSummary:
    async with parts.db.tenant(caller.tenant_id) as conn:
        rows = await conn.fetch("SELECT status, count(*) AS n FROM devices GROUP BY status")
        sites = await conn.fetchval("SELECT count(*) FROM sites")
    by_status = dict.fromkeys(STATUSES, 0) | {r["status"]: r["n"] for r in rows}
    return FleetSummary(devices=sum(by_status.values()), devices_by_status=by_status, sites=sites)
