"""The SLA summary of one tenant over a period [start, end), computed in the tenant's transaction.

- online %: time each device spent ONLINE over the time its state was known in the period (from
  ``device_state_history``: the state a device was in at ``start`` counts from ``start``), and the
  fleet's figure over all devices' known time;
- MTTR: mean time from an alert opening to its closing, over the alerts closed in the period;
- alert counts by severity (alerts opened in the period), and the top alerting devices and rules."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import asyncpg
from pydantic import BaseModel, Field

MAX_PERIOD = dt.timedelta(days=366)
TOP = 10

_AVAILABILITY_SQL = """
WITH h AS (
    SELECT device_id, status, at, lead(at) OVER (PARTITION BY device_id ORDER BY at, id) AS next_at
    FROM device_state_history WHERE tenant_id = $1 AND at < $3
), seg AS (
    SELECT device_id, status, greatest(at, $2) AS a, least(coalesce(next_at, $3), $3) AS b
    FROM h WHERE coalesce(next_at, $3) > $2
)
SELECT device_id,
       coalesce(sum(extract(epoch FROM b - a)) FILTER (WHERE status = 'online'), 0)::float8 AS online_s,
       sum(extract(epoch FROM b - a))::float8 AS known_s
FROM seg WHERE b > a GROUP BY device_id ORDER BY device_id
"""

_ALERTS_SQL = """
SELECT
    (SELECT coalesce(jsonb_object_agg(severity, n), '{}') FROM (
        SELECT severity, count(*) AS n FROM alerts WHERE tenant_id = $1 AND opened_at >= $2 AND opened_at < $3 GROUP BY 1) s
    ) AS by_severity,
    (SELECT count(*) FROM alerts WHERE tenant_id = $1 AND opened_at >= $2 AND opened_at < $3) AS opened,
    (SELECT count(*) FROM alerts WHERE tenant_id = $1 AND closed_at >= $2 AND closed_at < $3) AS closed,
    (SELECT avg(extract(epoch FROM closed_at - opened_at))::float8 FROM alerts
        WHERE tenant_id = $1 AND closed_at >= $2 AND closed_at < $3) AS mttr_s
"""

_TOP_SQL = """
SELECT {column} AS name, count(*) AS alerts FROM alerts
WHERE tenant_id = $1 AND opened_at >= $2 AND opened_at < $3
GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT $4
"""


class DeviceAvailability(BaseModel):
    device_id: str
    online_pct: float = Field(description="time ONLINE over the time the device's state was known, in percent")
    online_s: float
    known_s: float


class Count(BaseModel):
    name: str
    alerts: int


class SlaSummary(BaseModel):
    start: dt.datetime = Field(serialization_alias="from")
    end: dt.datetime = Field(serialization_alias="to")
    devices: int = Field(description="devices whose state was known at some time in the period")
    online_pct: float | None = Field(description="the fleet's time ONLINE over its known time, in percent (null: no device state known)")
    mttr_s: float | None = Field(description="mean time to resolve, over the alerts closed in the period (null: none closed)")
    alerts_opened: int
    alerts_closed: int
    alerts_by_severity: dict[str, int]
    top_devices: list[Count]
    top_rules: list[Count]
    availability: list[DeviceAvailability] = Field(description="per device, lowest online % first")


def check_period(start: dt.datetime, end: dt.datetime, now: dt.datetime) -> str | None:
    """Why [start, end) is no period a report can cover, or None."""
    if start.tzinfo is None or end.tzinfo is None:
        return "`from` and `to` need a time zone (e.g. 2026-01-01T00:00:00Z)"
    if start >= end:
        return "`from` must be before `to`"
    if end - start > MAX_PERIOD:
        return f"a report covers at most {MAX_PERIOD.days} days"
    if start >= now:
        return "the period has not started yet"
    return None


async def summary(conn: asyncpg.Connection, tenant: uuid.UUID, start: dt.datetime, end: dt.datetime, *, top: int = TOP) -> SlaSummary:
    rows = await conn.fetch(_AVAILABILITY_SQL, tenant, start, end)
    availability = [
        DeviceAvailability(
            device_id=r["device_id"], online_pct=round(100 * r["online_s"] / r["known_s"], 3), online_s=r["online_s"], known_s=r["known_s"]
        )
        for r in rows
        if r["known_s"] > 0
    ]
    online = sum(a.online_s for a in availability)
    known = sum(a.known_s for a in availability)
    alerts = await conn.fetchrow(_ALERTS_SQL, tenant, start, end)
    devices = await conn.fetch(_TOP_SQL.format(column="device_id"), tenant, start, end, top)
    rules = await conn.fetch(_TOP_SQL.format(column="rule_id"), tenant, start, end, top)
    return SlaSummary(
        start=start,
        end=end,
        devices=len(availability),
        online_pct=round(100 * online / known, 3) if known else None,
        mttr_s=alerts["mttr_s"],
        alerts_opened=alerts["opened"],
        alerts_closed=alerts["closed"],
        alerts_by_severity=json.loads(alerts["by_severity"]),
        top_devices=[Count(name=r["name"], alerts=r["alerts"]) for r in devices],
        top_rules=[Count(name=r["name"], alerts=r["alerts"]) for r in rules],
        availability=sorted(availability, key=lambda a: (a.online_pct, a.device_id)),
    )
