"""Fan-out: alert events in ``notify_outbox`` become queued deliveries.

Takes ``notify_outbox`` rows (filled by a trigger with every ``alert_events`` row whose ``notify`` is
true) with ``FOR UPDATE SKIP LOCKED``, routes the alert (routing.py), queues one delivery per channel
(``UNIQUE (channel_id, dedup)``) and deletes the outbox row, in one transaction. Opened alerts go to
the matching routes' channels (throttled per channel and fingerprint) and start the route's
escalation policy; acknowledgements and closes go to every channel that heard about the alert, and
stop its escalation.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from dataclasses import dataclass

import asyncpg

from pulse.cloud.notify import store
from pulse.cloud.notify.model import Notification, fingerprint
from pulse.cloud.notify.routing import Route, route, throttled

EVENTS = {"opened": "opened", "flapping_started": "opened", "acknowledged": "acknowledged", "closed": "closed"}
"""alert_events kinds that are notified, and the notification event each one is."""
BATCH = 200


@dataclass(frozen=True)
class Fanned:
    events: int = 0
    queued: int = 0


async def fan_out(conn: asyncpg.Connection, tenant: uuid.UUID, now: dt.datetime, *, console_url: str, budget: int) -> Fanned:
    """One batch of the tenant's outbox (in the caller's tenant transaction)."""
    rows = await store.take_outbox(conn, BATCH)
    if not rows:
        return Fanned()
    routes = await store.enabled_routes(conn)
    slug = await store.tenant_slug(conn, tenant)
    queued = 0
    for row in rows:
        event = EVENTS.get(row["kind"])
        if event is not None:
            queued += await _route_event(conn, row, event, routes, slug, now, console_url=console_url, budget=budget)
    await store.drop_outbox(conn, [r["event_id"] for r in rows])
    return Fanned(events=len(rows), queued=queued)


async def _route_event(
    conn: asyncpg.Connection,
    event_row: asyncpg.Record,
    event: str,
    routes: list[Route],
    slug: str,
    now: dt.datetime,
    *,
    console_url: str,
    budget: int,
) -> int:
    alert = await store.load_alert(conn, event_row["alert_id"])
    if alert is None:
        return 0
    n = notification(alert, event, event_row["at"], slug, await store.alert_site_name(conn, alert), console_url)
    dedup = f"event:{event_row['event_id']}"
    queued = 0
    if event == "opened":
        routing = route(routes, await store.alert_facts(conn, alert))
        channels = await store.enabled_channels(conn, list(routing.channels))
        for channel_id, kind in channels.items():
            if await _throttled(conn, channel_id, alert, routing.channels[str(channel_id)], now):
                continue
            if await store.enqueue(
                conn, channel_id=channel_id, kind=kind, event="opened", dedup=dedup, notification=n, alert_id=alert["id"], budget=budget
            ):
                queued += 1
        if routing.escalation_policy and alert["state"] == "open":
            await store.start_escalation(conn, alert["id"], uuid.UUID(routing.escalation_policy), now)
        return queued
    # acknowledged / closed: whoever heard about the alert hears this too; escalation stops.
    await store.stop_escalation(conn, alert["id"], event, only_running=True)
    for h in await store.channels_that_heard(conn, alert["id"]):
        if await store.enqueue(
            conn, channel_id=h["channel_id"], kind=h["kind"], event=event, dedup=dedup, notification=n, alert_id=alert["id"], budget=budget
        ):
            queued += 1
    return queued


async def _throttled(conn: asyncpg.Connection, channel_id: uuid.UUID, alert: asyncpg.Record, throttle_s: int, now: dt.datetime) -> bool:
    if throttle_s <= 0:
        return False
    fingerprint = f"{alert['device_id']}/{alert['rule_id']}"
    if throttled(await store.last_sent(conn, channel_id, fingerprint), throttle_s, now):
        return True
    await store.mark_sent(conn, channel_id, fingerprint, now)
    return False


def notification(
    alert: asyncpg.Record, event: str, at: dt.datetime, slug: str, site: str | None, console_url: str, prefix: str = ""
) -> Notification:
    """What every channel is told about ``alert`` (a row of ``alerts``); ``prefix`` leads the explanation."""
    explanation = json.loads(alert["explanation"])
    value = explanation.get("last")
    threshold = explanation.get("threshold")
    return Notification(
        alert_id=str(alert["id"]),
        fingerprint=fingerprint(alert["device_id"], alert["rule_id"], alert["id"]),
        event=event,  # type: ignore[arg-type]
        severity=alert["severity"],
        tenant=slug,
        device=alert["device_id"],
        site=site,
        metric=explanation.get("metric"),
        value=value if isinstance(value, (int, float, bool, str)) else None,
        threshold=float(threshold) if isinstance(threshold, (int, float)) and not isinstance(threshold, bool) else None,
        explanation=prefix + (explanation.get("text") or f"{alert['rule_id']} on {alert['device_id']}"),
        console_url=f"{console_url.rstrip('/')}/app/alerts/{alert['id']}",
        occurred_at=at,
    )
