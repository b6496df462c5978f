"""Fleet summary for the console's overview: counts within the caller's tenant."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from pulse.cloud.api.deps import Parts, Reader

router = APIRouter(prefix="/api/v1/fleet", tags=["fleet"])

STATUSES = ("provisioned", "active", "disabled", "decommissioned")


STATES = ("online", "stale", "offline", "unreachable", "never_seen")
SEVERITIES = ("critical", "major", "minor", "warning", "info")


class FleetSummary(BaseModel):
    devices: int
    devices_by_status: dict[str, int] = Field(description="every status is present, with 0 when no device has it")
    sites: int
    devices_by_state: dict[str, int] = Field(
        description="online, stale, offline, unreachable as the heartbeat (built in, or a tenant's rule) last judged them; "
        "never_seen: devices in service (provisioned or active) not heard from yet"
    )
    open_alerts: dict[str, int] = Field(description="open and acknowledged alerts by severity")
    gateways: dict[str, int] = Field(description="active gateways: online (heard within the offline limit) and offline; pending")


@router.get("/summary", response_model=FleetSummary, summary="Device counts by status and state, open alerts, gateways, sites")
async def summary(caller: Reader, parts: Parts) -> FleetSummary:
    async with parts.db.tenant(caller.tenant_id) as conn:
        rows = await conn.fetch("SELECT status, count(*) AS n FROM devices GROUP BY status")
        sites = await conn.fetchval("SELECT count(*) FROM sites")
        states = await conn.fetch(
            "SELECT status, count(*) AS n FROM device_states GROUP BY status UNION ALL "
            "SELECT 'never_seen', count(*) FROM devices d WHERE d.status IN ('provisioned', 'active') "
            "AND NOT EXISTS (SELECT 1 FROM device_states s WHERE s.tenant_id = d.tenant_id AND s.device_id = d.device_id)"
        )
        alerts = await conn.fetch("SELECT severity, count(*) AS n FROM alerts WHERE state <> 'closed' GROUP BY severity")
        gw = await conn.fetchrow(
            "SELECT count(*) FILTER (WHERE status = 'active' AND last_seen_at > now() - make_interval(secs => $1)) AS online,"
            " count(*) FILTER (WHERE status = 'active') AS active, count(*) FILTER (WHERE status = 'pending') AS pending FROM gateways",
            float(parts.settings.gateway_offline_after_s),
        )
    by_status = dict.fromkeys(STATUSES, 0) | {r["status"]: r["n"] for r in rows}
    return FleetSummary(
        devices=sum(by_status.values()),
        devices_by_status=by_status,
        sites=sites,
        devices_by_state=dict.fromkeys(STATES, 0) | {r["status"]: r["n"] for r in states},
        open_alerts=dict.fromkeys(SEVERITIES, 0) | {r["severity"]: r["n"] for r in alerts},
        gateways={"online": gw["online"], "offline": gw["active"] - gw["online"], "pending": gw["pending"]},
    )
