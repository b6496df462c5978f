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
from pulse.cloud.notify.routing import Routing, route, throttled

EVENTS = {"opened": "opened", "flapping_started": "opened", "acknowledged": "acknowledged", "closed": "closed"}
"""alert_events kinds that are notified, and the notification event each one is."""
BATCH = 200


@dataclass(frozen=True)
class Fanned:
    events: int = 0
    queued: int = 0


async def fan_out(conn: asyncpg.Connection, tenant: uuid.UUID, now: dt.datetime, *, console_url: str, budget: int) -> Fanned:
    """One batch of the tenant's outbox (in the caller's tenant transaction).

    The batch is read with a fixed number of queries (alerts, their sites, rules and devices, the
    channels) and its deliveries are queued in one statement, in event order: what one event at a
    time would queue, without a round trip per event."""
    rows = await store.take_outbox(conn, BATCH)
    if not rows:
        return Fanned()
    events = [(row, EVENTS[row["kind"]]) for row in rows if row["kind"] in EVENTS]
    queued = await _route_events(conn, events, tenant, now, console_url=console_url, budget=budget) if events else 0
    await store.drop_outbox(conn, [r["event_id"] for r in rows])
    return Fanned(events=len(rows), queued=queued)


async def _route_events(
    conn: asyncpg.Connection,
    events: list[tuple[asyncpg.Record, str]],
    tenant: uuid.UUID,
    now: dt.datetime,
    *,
    console_url: str,
    budget: int,
) -> int:
    routes = await store.enabled_routes(conn)
    slug = await store.tenant_slug(conn, tenant)
    alerts = await store.load_alerts(conn, sorted({row["alert_id"] for row, _ in events}))
    places = await store.alert_places(conn, list(alerts.values()))
    opened = {row["alert_id"] for row, event in events if event == "opened" and row["alert_id"] in alerts}
    routings: dict[int, Routing] = {a: route(routes, places[a][1]) for a in sorted(opened)}
    channels = await store.enabled_channels(conn, list(dict.fromkeys(c for r in routings.values() for c in r.channels)))
    heard = await store.channels_that_heard_many(conn, sorted({row["alert_id"] for row, event in events if event != "opened"} & alerts.keys()))
    told: dict[int, dict[uuid.UUID, str]] = {}
    """Channels told in this batch that an alert opened (not in ``heard``: queued at the end)."""
    items: list[store.Queued] = []
    starts: dict[int, uuid.UUID] = {}
    stops: dict[int, str] = {}
    for row, event in events:
        alert = alerts.get(row["alert_id"])
        if alert is None:
            continue
        alert_id = alert["id"]
        n = notification(alert, event, row["at"], slug, places[alert_id][0], console_url).model_dump_json()
        dedup = f"event:{row['event_id']}"
        if event == "opened":
            routing = routings[alert_id]
            for channel, throttle_s in routing.channels.items():
                channel_id = uuid.UUID(channel)
                kind = channels.get(channel_id)
                if kind is None or await _throttled(conn, channel_id, alert, throttle_s, now):
                    continue
                items.append(store.Queued(channel_id, kind, "opened", dedup, n, alert_id=alert_id, budget=budget))
                told.setdefault(alert_id, {})[channel_id] = kind
            if routing.escalation_policy and alert["state"] == "open":
                starts.setdefault(alert_id, uuid.UUID(routing.escalation_policy))
            continue
        # acknowledged / closed: whoever heard about the alert hears this too; escalation stops.
        stops.setdefault(alert_id, event)
        listeners = {h["channel_id"]: h["kind"] for h in heard.get(alert_id, ())} | told.get(alert_id, {})
        for channel_id, kind in listeners.items():
            items.append(store.Queued(channel_id, kind, event, dedup, n, alert_id=alert_id, budget=budget))
    await store.start_escalations(conn, starts, now)
    await store.stop_running_escalations(conn, stops)
    return await store.enqueue_many(conn, items)


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
