"""Escalation runner: alerts whose route named a policy advance level by level until acknowledged or
closed. ``escalation.next_step`` decides; on-call schedules resolve to the person on call and their
channel (oncall.py); this module loads, queues and records through the store."""

from __future__ import annotations

import datetime as dt
import json
import logging
import uuid

import asyncpg

from pulse.cloud.notify import store
from pulse.cloud.notify.errors import NotifyError
from pulse.cloud.notify.escalation import EscalationState, Notify, Policy, Stop, Wait, next_step
from pulse.cloud.notify.fanout import BATCH, notification
from pulse.cloud.notify.oncall import Schedule, on_call_at

log = logging.getLogger("pulse.cloud.notify")


async def escalate(conn: asyncpg.Connection, tenant: uuid.UUID, now: dt.datetime, *, console_url: str, budget: int) -> int:
    """Advance the tenant's due escalations (in the caller's tenant transaction); returns how many notified."""
    rows = await store.due_escalations(conn, now, BATCH)
    if not rows:
        return 0
    slug = await store.tenant_slug(conn, tenant)
    done = 0
    for row in rows:
        done += await _escalate_one(conn, row, now, slug, console_url=console_url, budget=budget)
    return done


async def _escalate_one(conn: asyncpg.Connection, row: asyncpg.Record, now: dt.datetime, slug: str, *, console_url: str, budget: int) -> int:
    alert_id = row["alert_id"]
    try:
        policy: Policy = store.pure_policy(row["policy_name"], json.loads(row["levels"]), row["repeat"])
    except NotifyError as exc:
        await store.stop_escalation(conn, alert_id, exc.message[:300])
        return 0
    state = EscalationState(level=row["level"], notified_at=row["notified_at"], cycle=row["cycle"])
    new, step = next_step(policy, row["state"], state, now)
    if isinstance(step, Stop):
        await store.stop_escalation(conn, alert_id, step.reason)
        return 0
    if isinstance(step, Wait):
        await store.postpone_escalation(conn, alert_id, step.until)
        return 0
    assert isinstance(step, Notify)
    channels, unstaffed = await _targets(conn, step, now)
    if step.level == 0 and step.cycle == 0:  # the route already paged these channels when the alert opened
        told = await store.channels_told_opened(conn, alert_id)
        channels = [c for c in channels if c not in told]
    alert = await store.load_alert(conn, alert_id)
    assert alert is not None  # alert_escalations references alerts
    prefix = f"Escalated to level {step.level + 1}" + (f" (round {step.cycle + 1})" if step.cycle else "") + ": "
    if unstaffed:
        prefix += f"[nobody on call in {', '.join(unstaffed)}] "
    n = notification(alert, "opened", now, slug, await store.alert_site_name(conn, alert), console_url, prefix)
    queued = 0
    for channel_id, kind in (await store.enabled_channels(conn, [str(c) for c in channels])).items():
        if await store.enqueue(
            conn,
            channel_id=channel_id,
            kind=kind,
            event="escalated",
            dedup=f"esc:{alert_id}:{step.cycle}:{step.level}",
            notification=n,
            alert_id=alert_id,
            level=step.level,
            budget=budget,
        ):
            queued += 1
    await store.advance_escalation(conn, alert_id, new, now + policy.levels[step.level].wait)
    if unstaffed:
        log.warning("notify: escalation of alert %s: nobody on call in schedule(s) %s", alert_id, ", ".join(unstaffed))
    return max(queued, 1)


async def _targets(conn: asyncpg.Connection, step: Notify, now: dt.datetime) -> tuple[list[uuid.UUID], list[str]]:
    """The step's channels (schedules resolved to whoever is on call now) and the schedules nobody staffs."""
    channels: list[uuid.UUID] = []
    unstaffed: list[str] = []
    for target in step.targets:
        if target.kind == "channel":
            channels.append(uuid.UUID(target.id))
            continue
        loaded = await store.load_schedule(conn, uuid.UUID(target.id))
        if loaded is None:
            unstaffed.append(target.id)
            continue
        row, overrides = loaded
        layers = json.loads(row["layers"])
        schedule: Schedule = store.schedule_of(row["name"], row["time_zone"], layers, overrides)
        who = on_call_at(schedule, now).who
        channel = store.member_channels(layers, overrides).get(who) if who else None
        if channel:
            channels.append(uuid.UUID(channel))
        else:
            unstaffed.append(row["name"] if who is None else f"{row['name']} ({who} has no channel)")
    return list(dict.fromkeys(channels)), unstaffed
