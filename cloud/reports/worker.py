"""The daily SLA report: on a passed-in clock, each tenant gets one report of the previous UTC day,
recorded in the report history (requested by "schedule") and sent to the tenant's enabled
notification channels as a link to the console's Reports page. One per tenant and day, even with
several cloud processes (a unique index on the scheduled day)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import uuid
from collections.abc import Callable

from pulse.cloud.db.pool import Database
from pulse.cloud.notify import store as notify_store
from pulse.cloud.notify.model import Notification
from pulse.cloud.reports import sla

log = logging.getLogger("pulse.cloud.reports")


def _pct(v: float | None) -> str:
    return "no device state known" if v is None else f"{v:.2f} % online"


async def run_once(db: Database, now: dt.datetime, *, console_url: str = "") -> list[tuple[uuid.UUID, uuid.UUID]]:
    """Yesterday's report for every tenant that has none yet: [(tenant, run id)]."""
    day = now.date() - dt.timedelta(days=1)
    start = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
    end = start + dt.timedelta(days=1)
    made = []
    async with db.identity() as conn:
        tenants = [r[0] for r in await conn.fetch("SELECT pulse_alerting_tenants()")]
    for tenant in tenants:
        async with db.tenant(tenant) as conn:
            if await conn.fetchval(
                "SELECT 1 FROM report_runs WHERE requested_by = 'schedule' AND params ->> 'day' = $1", day.isoformat()
            ):
                continue
            summary = await sla.summary(conn, tenant, start, end)
            params = {"day": day.isoformat(), "from": start.isoformat(), "to": end.isoformat()}
            run = await conn.fetchval(
                "INSERT INTO report_runs (tenant_id, kind, params, status, requested_by, created_at, finished_at, result)"
                " VALUES ($1, 'sla', $2::jsonb, 'done', 'schedule', $3, $3, $4::jsonb)"
                " ON CONFLICT (tenant_id, (params ->> 'day')) WHERE requested_by = 'schedule' DO NOTHING RETURNING id",
                tenant, json.dumps(params), now, summary.model_dump_json(by_alias=True),
            )
            if run is None:  # another process made it a moment ago
                continue
            slug = await notify_store.tenant_slug(conn, tenant)
            link = f"{console_url.rstrip('/')}/app/reports?run={run}"
            n = Notification(
                alert_id=f"report-{run}",
                fingerprint=f"report/sla/{day.isoformat()}",
                event="notice",
                severity="info",
                tenant=slug,
                device="pulse-reports",
                explanation=(
                    f"SLA report for {day.isoformat()}: {_pct(summary.online_pct)}, {summary.alerts_opened} alerts opened, "
                    f"{summary.alerts_closed} closed. {link}"
                ),
                console_url=link,
                occurred_at=now,
            )
            for ch in await conn.fetch("SELECT id, kind FROM notify_channels WHERE enabled ORDER BY id"):
                await notify_store.enqueue(
                    conn, channel_id=ch["id"], kind=ch["kind"], event="notice", dedup=f"report:sla:{day.isoformat()}", notification=n
                )
        made.append((tenant, run))
    return made


async def run_forever(db: Database, *, interval_s: float, clock: Callable[[], dt.datetime], console_url: str = "") -> None:
    while True:
        try:
            made = await run_once(db, clock(), console_url=console_url)
            if made:
                log.info("daily SLA reports: %d tenants", len(made))
        except Exception:  # the next pass catches up: a day without its report is made then
            log.exception("daily SLA report pass failed; retrying in %ss", interval_s)
        await asyncio.sleep(interval_s)
