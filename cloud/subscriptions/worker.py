"""The subscription worker: moves every tenant's subscriptions on to "now" (a passed-in clock),
records each transition in the history and audit log, and queues renewal notices to the tenant's
enabled notification channels (the notify workers send them like any other delivery)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg

from pulse.cloud.db.pool import Database
from pulse.cloud.notify import store as notify_store
from pulse.cloud.notify.model import Notification
from pulse.cloud.subscriptions import store
from pulse.protocol import subscriptions as subs

log = logging.getLogger("pulse.cloud.subscriptions")


@dataclass
class Pass:
    transitions: int = 0
    notices: int = 0


async def run_once(db: Database, now: dt.datetime, *, console_url: str = "") -> Pass:
    done = Pass()
    async with db.identity() as conn:
        tenants = [r[0] for r in await conn.fetch("SELECT * FROM pulse_subscription_tenants()")]
    for tenant in tenants:
        async with db.tenant(tenant) as conn:
            current = await store.load(conn, tenant, lock=True)
            changed, transitions, notices = subs.step(current, now)
            for sub in changed:
                await store.save(conn, sub)
            for t in transitions:
                await store.record(conn, tenant, t.subscription, at=now, actor="clock", action="transition",
                                   before=t.before, after=t.after, detail={"reason": t.reason})
            for notice in notices:
                await _send_notice(conn, tenant, notice, now, console_url)
        done.transitions += len(transitions)
        done.notices += len(notices)
    return done


async def _send_notice(conn: asyncpg.Connection, tenant: uuid.UUID, notice: subs.Notice, now: dt.datetime, console_url: str) -> None:
    slug = await notify_store.tenant_slug(conn, tenant)
    n = Notification(
        alert_id=f"subscription-{notice.subscription}",
        fingerprint=f"subscription/{notice.subscription}/{notice.key}",
        event="notice",
        severity="warning" if notice.key in ("grace", "suspended") else "info",
        tenant=slug,
        device="pulse-subscription",
        explanation=notice.message,
        console_url=f"{console_url.rstrip('/')}/app/subscription",
        occurred_at=now,
    )
    channels = await conn.fetch("SELECT id, kind FROM notify_channels WHERE enabled ORDER BY id")
    for ch in channels:
        await notify_store.enqueue(
            conn, channel_id=ch["id"], kind=ch["kind"], event="notice",
            dedup=f"subscription:{notice.subscription}:{notice.key}:{now.date().isoformat()}", notification=n,
        )


async def run_forever(db: Database, *, interval_s: float, clock: Callable[[], dt.datetime], console_url: str = "") -> None:
    while True:
        try:
            done = await run_once(db, clock(), console_url=console_url)
            if done.transitions or done.notices:
                log.info("subscriptions: %d transitions, %d notices", done.transitions, done.notices)
        except Exception:  # keep going; the next pass catches up (the steps are idempotent)
            log.exception("subscription pass failed; retrying in %ss", interval_s)
        await asyncio.sleep(interval_s)
