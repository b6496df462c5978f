"""Notify data in PostgreSQL: channels, routes, policies, schedules, the delivery queue. Adapter only.

Every function takes a connection in a tenant transaction (``db.tenant(tenant_id)``: row-level
security applies) unless it says otherwise. The API (cloud/api/notify.py), the workers
(fanout.py, delivery.py, recovery.py, escalator.py) and the demo (``add_webhook``) all go through here.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import asyncpg
from pydantic import SecretStr

from pulse.cloud.db.pool import Database
from pulse.cloud.notify import senders
from pulse.cloud.notify.errors import ConfigError
from pulse.cloud.notify.escalation import EscalationState, Policy
from pulse.cloud.notify.model import Notification, fingerprint
from pulse.cloud.notify.oncall import Schedule
from pulse.cloud.notify.routing import AlertFacts, Route
from pulse.cloud.notify.senders import pagerduty
from pulse.protocol.errors import Code

REDACTED = "***"
MAX_ATTEMPTS = 5


def _redacted_url(url: object) -> str:
    parts = urlsplit(str(url))
    return f"{parts.scheme}://{parts.netloc}/{REDACTED}"


# --- channels ------------------------------------------------------------------------------------


def secret_fields(kind: str) -> frozenset[str]:
    """Config fields of this channel kind that hold secrets (shown back as ``***``)."""
    fields = senders.channel(kind).config.model_fields
    return frozenset(name for name, f in fields.items() if "SecretStr" in str(f.annotation) or f.annotation is SecretStr)


def redact(kind: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """The stored config as the API shows it: secrets and webhook header values as ``***``."""
    out = dict(config)
    for name in secret_fields(kind):
        if out.get(name) is not None:
            out[name] = REDACTED
    if kind == "webhook" and isinstance(out.get("headers"), dict):
        out["headers"] = {k: REDACTED for k in out["headers"]}
    if kind in senders.SECRET_URL_KINDS and out.get("url"):
        out["url"] = _redacted_url(out["url"])
    return out


def merge_secrets(kind: str, incoming: Mapping[str, Any], stored: Mapping[str, Any]) -> dict[str, Any]:
    """A replacement config where ``***`` means "keep what is stored" (the console sends back what it read)."""
    out = dict(incoming)
    for name in secret_fields(kind):
        if out.get(name) == REDACTED and name in stored:
            out[name] = stored[name]
    if kind == "webhook" and isinstance(out.get("headers"), dict):
        old = stored.get("headers") or {}
        out["headers"] = {k: (old.get(k, v) if v == REDACTED else v) for k, v in out["headers"].items()}
    if kind in senders.SECRET_URL_KINDS and stored.get("url") and out.get("url") == _redacted_url(stored["url"]):
        out["url"] = stored["url"]
    return out


def validate_config(kind: str, raw: Mapping[str, Any]) -> dict[str, Any]:
    """Check with the channel's own validator (``notify.bad_config`` naming the field); store what was given."""
    for name in secret_fields(kind):
        if raw.get(name) == REDACTED:
            raise ConfigError(Code.NOTIFY_BAD_CONFIG, f"{kind} channel: {name}: give the secret itself, not {REDACTED}", kind=kind, fields=name)
    if kind in senders.SECRET_URL_KINDS and str(raw.get("url", "")).endswith("/" + REDACTED):
        raise ConfigError(Code.NOTIFY_BAD_CONFIG, f"{kind} channel: url: give the whole webhook URL, not the redacted one", kind=kind, fields="url")
    senders.validate(kind, raw)
    return dict(raw)


async def create_channel(conn: asyncpg.Connection, *, name: str, kind: str, config: Mapping[str, Any], enabled: bool = True) -> asyncpg.Record:
    stored = validate_config(kind, config)
    row = await conn.fetchrow(
        "INSERT INTO notify_channels (tenant_id, name, kind, config, enabled) VALUES (pulse_current_tenant(), $1, $2, $3::jsonb, $4) "
        "RETURNING id, name, kind, config, enabled, created_at",
        name,
        kind,
        json.dumps(stored),
        enabled,
    )
    assert row is not None
    return row


async def create_route(
    conn: asyncpg.Connection,
    *,
    name: str,
    channels: Sequence[uuid.UUID],
    min_severity: str = "info",
    alert_types: Sequence[str] = (),
    sites: Sequence[str] = (),
    device_tags: Mapping[str, str] | None = None,
    escalation_policy: uuid.UUID | None = None,
    throttle_s: int = 0,
    enabled: bool = True,
) -> asyncpg.Record:
    row = await conn.fetchrow(
        "INSERT INTO notify_routes (tenant_id, name, enabled, min_severity, alert_types, sites, device_tags, channels, "
        "escalation_policy, throttle_s) VALUES (pulse_current_tenant(), $1, $2, $3, $4, $5, $6::jsonb, $7, $8, $9) RETURNING *",
        name,
        enabled,
        min_severity,
        list(alert_types),
        list(sites),
        json.dumps(dict(device_tags or {})),
        list(channels),
        escalation_policy,
        throttle_s,
    )
    assert row is not None
    return row


async def add_webhook(
    db: Database, tenant_id: uuid.UUID, url: str, *, name: str = "webhook inbox", min_severity: str = "info", secret: str | None = None
) -> tuple[uuid.UUID, uuid.UUID]:
    """A webhook channel to ``url`` and a route sending every alert of ``min_severity`` or worse to it.

    For the demo and scripts: ``await add_webhook(db, tenant_id, "http://127.0.0.1:9000/inbox")``
    returns (channel id, route id). A loopback URL needs PULSE_NOTIFY_ALLOW_NETWORKS=127.0.0.0/8.
    """
    config: dict[str, Any] = {"url": url} | ({"secret": secret} if secret else {})
    async with db.tenant(tenant_id) as conn:
        channel = await create_channel(conn, name=name, kind="webhook", config=config)
        route = await create_route(conn, name=f"all alerts to {name}", channels=[channel["id"]], min_severity=min_severity)
    return channel["id"], route["id"]


# --- routes, policies, schedules as the pure modules see them -----------------------------------


def route_of(row: asyncpg.Record | Mapping[str, Any]) -> Route:
    tags = row["device_tags"]
    return Route(
        id=str(row["id"]),
        name=row["name"],
        enabled=row["enabled"],
        min_severity=row["min_severity"],
        alert_types=tuple(row["alert_types"]),
        sites=tuple(row["sites"]),
        device_tags=json.loads(tags) if isinstance(tags, str) else dict(tags),
        channels=tuple(str(c) for c in row["channels"]),
        escalation_policy=str(row["escalation_policy"]) if row["escalation_policy"] else None,
        throttle_s=row["throttle_s"],
    )


def _aware(value: str | dt.datetime) -> dt.datetime:
    when = dt.datetime.fromisoformat(value) if isinstance(value, str) else value
    if when.tzinfo is None:
        raise ConfigError(Code.NOTIFY_BAD_SCHEDULE, f"on-call schedule: {value} needs a time zone (e.g. 2026-03-29T08:00:00+02:00)")
    return when


def schedule_of(name: str, time_zone: str, layers: Sequence[Mapping[str, Any]], overrides: Sequence[Mapping[str, Any]]) -> Schedule:
    """The API's schedule document as ``oncall.Schedule`` (members by name); ``notify.bad_schedule`` if it breaks a rule."""
    try:
        zone = ZoneInfo(time_zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(Code.NOTIFY_BAD_SCHEDULE, f"on-call schedule: time_zone: {time_zone!r} is not an IANA time zone (e.g. Europe/Berlin)") from None
    pure_layers: list[dict[str, Any]] = []
    for layer in layers:
        begins = _aware(layer["start"]).astimezone(zone).replace(tzinfo=None)
        start = begins.date()
        weekday = layer.get("handoff_weekday")
        if layer["rotation"] == "weekly" and weekday is not None:
            start += dt.timedelta(days=(weekday - start.weekday()) % 7)
        pure_layers.append(
            {
                "name": layer["name"],
                "members": [m["name"] for m in layer["members"]],
                "rotation": layer["rotation"],
                "start": start.isoformat(),
                "handoff": layer.get("handoff") or "09:00",
                "restrictions": layer.get("restrictions") or [],
                "begins": begins.isoformat(),
            }
        )
    pure_overrides = [{"start": _aware(o["start"]).isoformat(), "end": _aware(o["end"]).isoformat(), "who": o["member"]["name"]} for o in overrides]
    return Schedule.parse({"name": name, "time_zone": time_zone, "layers": pure_layers, "overrides": pure_overrides})


def member_channels(layers: Sequence[Mapping[str, Any]], overrides: Sequence[Mapping[str, Any]]) -> dict[str, str | None]:
    """Member name -> channel id (as text) to page them on; overrides win for the same name."""
    out: dict[str, str | None] = {}
    for layer in layers:
        for m in layer["members"]:
            out[m["name"]] = str(m["channel"]) if m.get("channel") else out.get(m["name"])
    for o in overrides:
        m = o["member"]
        out[m["name"]] = str(m["channel"]) if m.get("channel") else out.get(m["name"])
    return out


async def load_schedule(conn: asyncpg.Connection, schedule_id: uuid.UUID) -> tuple[asyncpg.Record, list[dict[str, Any]]] | None:
    row = await conn.fetchrow("SELECT id, name, time_zone, layers, created_at FROM oncall_schedules WHERE id = $1", schedule_id)
    if row is None:
        return None
    overrides = [
        {"id": str(o["id"]), "start": o["starts_at"].isoformat(), "end": o["ends_at"].isoformat(), "member": json.loads(o["member"])}
        for o in await conn.fetch(
            "SELECT id, starts_at, ends_at, member FROM oncall_overrides WHERE schedule_id = $1 ORDER BY position, starts_at", schedule_id
        )
    ]
    return row, overrides


def pure_policy(name: str, levels: list[dict[str, Any]], repeat: int) -> Policy:
    """The stored/API policy as ``escalation.Policy`` (``notify.bad_policy`` if it breaks a rule)."""
    return Policy.parse(
        {
            "name": name,
            "repeat": repeat,
            "levels": [
                {
                    "delay_s": lv["delay_s"],
                    "targets": [{"kind": "channel", "id": str(t["channel"])} if t.get("channel") else {"kind": "schedule", "id": str(t["schedule"])} for t in lv["targets"]],
                }
                for lv in levels
            ],
        }
    )


# --- the delivery queue -------------------------------------------------------------------------


async def enqueue(
    conn: asyncpg.Connection,
    *,
    channel_id: uuid.UUID,
    kind: str,
    event: str,
    dedup: str,
    notification: Notification,
    alert_id: int | None = None,
    level: int | None = None,
    budget: int = MAX_ATTEMPTS,
) -> uuid.UUID | None:
    """Queue one delivery; None when (channel, dedup) is already queued (a repeated fan-out)."""
    value: uuid.UUID | None = await conn.fetchval(
        "INSERT INTO notify_deliveries (tenant_id, alert_id, channel_id, kind, event, dedup, notification, next_attempt_at, "
        "escalation_level, budget) VALUES (pulse_current_tenant(), $1, $2, $3, $4, $5, $6::jsonb, clock_timestamp(), $7, $8) "
        "ON CONFLICT (channel_id, dedup) DO NOTHING RETURNING id",
        alert_id,
        channel_id,
        kind,
        event,
        dedup,
        notification.model_dump_json(),
        level,
        budget,
    )
    return value


@dataclass(frozen=True)
class Queued:
    """One delivery for ``enqueue_many`` (what ``enqueue`` takes, as data)."""

    channel_id: uuid.UUID
    kind: str
    event: str
    dedup: str
    notification: str
    """``Notification.model_dump_json()``: built once per event, shared by its channels."""
    alert_id: int | None = None
    level: int | None = None
    budget: int = MAX_ATTEMPTS


async def enqueue_many(conn: asyncpg.Connection, items: Sequence[Queued]) -> int:
    """Queue deliveries in one statement, in the given order; returns how many were new (the rest were
    already queued: same channel and dedup). ``created_at`` increases strictly along ``items`` (one
    microsecond apart at least), so ``claim_due`` sends one alert's deliveries to one channel in this order."""
    if not items:
        return 0
    rows = await conn.fetch(
        "INSERT INTO notify_deliveries (tenant_id, alert_id, channel_id, kind, event, dedup, notification, next_attempt_at, "
        "escalation_level, budget, created_at) "
        "SELECT pulse_current_tenant(), u.alert_id, u.channel_id, u.kind, u.event, u.dedup, u.notification::jsonb, clock_timestamp(), "
        "u.level, u.budget, clock_timestamp() + u.ord * interval '1 microsecond' "
        "FROM unnest($1::bigint[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int[], $8::int[]) "
        "WITH ORDINALITY AS u(alert_id, channel_id, kind, event, dedup, notification, level, budget, ord) ORDER BY u.ord "
        "ON CONFLICT (channel_id, dedup) DO NOTHING RETURNING id",
        [q.alert_id for q in items],
        [q.channel_id for q in items],
        [q.kind for q in items],
        [q.event for q in items],
        [q.dedup for q in items],
        [q.notification for q in items],
        [q.level for q in items],
        [q.budget for q in items],
    )
    return len(rows)


DELIVERY_COLS = (
    "d.id, d.alert_id, d.channel_id, c.name AS channel_name, d.kind, d.event, d.status, d.attempts, d.next_attempt_at, "
    "d.last_error, d.last_code, d.created_at, d.delivered_at, d.escalation_level"
)


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.astimezone(dt.UTC).isoformat()


def delivery_out(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "alert_id": row["alert_id"],
        "channel_id": str(row["channel_id"]),
        "channel_name": row["channel_name"],
        "kind": row["kind"],
        "event": row["event"],
        "status": row["status"],
        "attempts": row["attempts"],
        "next_attempt_at": _iso(row["next_attempt_at"]) if row["status"] == "pending" else None,
        "last_error": row["last_error"],
        "last_code": row["last_code"],
        "created": _iso(row["created_at"]),
        "delivered_at": _iso(row["delivered_at"]),
        "escalation_level": row["escalation_level"],
    }


async def alert_notify_view(conn: asyncpg.Connection, alert_id: int) -> dict[str, Any]:
    """What GET /api/v1/alerts/{id} adds: ``notifications`` (delivery summaries) and ``escalation``."""
    rows = await conn.fetch(
        f"SELECT {DELIVERY_COLS} FROM notify_deliveries d JOIN notify_channels c ON c.id = d.channel_id "
        "WHERE d.alert_id = $1 ORDER BY d.created_at, d.id",
        alert_id,
    )
    esc = await conn.fetchrow("SELECT policy_id, level, next_at, stopped, stop_reason, cycle FROM alert_escalations WHERE alert_id = $1", alert_id)
    escalation = None
    if esc is not None:
        escalation = {
            "policy": str(esc["policy_id"]),
            "level": esc["level"],
            "cycle": esc["cycle"],
            "next_at": None if esc["stopped"] else _iso(esc["next_at"]),
            "stopped": esc["stopped"],
            "stop_reason": esc["stop_reason"],
        }
    return {"notifications": [delivery_out(r) for r in rows], "escalation": escalation}


# --- the workers' queries (fan-out, recovery, escalation, delivery) ------------------------------


async def busy_tenants(conn: asyncpg.Connection, claim_timeout_s: float, due_at: dt.datetime) -> list[uuid.UUID]:
    """Tenants with notify work (identity connection: crosses tenants through a SECURITY DEFINER function)."""
    return [
        r[0]
        for r in await conn.fetch(
            "SELECT * FROM pulse_notify_busy_tenants(clock_timestamp() - make_interval(secs => $1), $2)", claim_timeout_s, due_at
        )
    ]


@dataclass(frozen=True)
class TenantWork:
    """Which notify work one tenant has (``notify_work``)."""

    tenant: uuid.UUID
    outbox: bool
    """Alert events to fan out."""
    due: bool
    """Deliveries due now."""
    stale: bool
    """Claims older than the claim timeout."""
    escalations: bool
    """Escalations due now."""


async def notify_work(conn: asyncpg.Connection, claim_timeout_s: float, due_at: dt.datetime) -> list[TenantWork]:
    """The tenants with notify work and which (identity connection: a SECURITY DEFINER function)."""
    return [
        TenantWork(r[0], r[1], r[2], r[3], r[4])
        for r in await conn.fetch(
            "SELECT * FROM pulse_notify_work(clock_timestamp() - make_interval(secs => $1), $2)", claim_timeout_s, due_at
        )
    ]


async def tenant_slug(conn: asyncpg.Connection, tenant: uuid.UUID) -> str:
    return await conn.fetchval("SELECT slug FROM tenants WHERE id = pulse_current_tenant()") or str(tenant)


async def alert_of_incident(conn: asyncpg.Connection, channel_id: uuid.UUID, key: str) -> int | None:
    """The alert of the current tenant that this PagerDuty channel paged with dedup_key ``key``."""
    slug = await conn.fetchval("SELECT slug FROM tenants WHERE id = pulse_current_tenant()")
    rows = await conn.fetch(
        "SELECT DISTINCT a.id, a.device_id, a.rule_id FROM notify_deliveries d JOIN alerts a ON a.id = d.alert_id "
        "WHERE d.channel_id = $1",
        channel_id,
    )
    for r in rows:
        if pagerduty.incident_key(slug, fingerprint(r["device_id"], r["rule_id"], r["id"])) == key:
            return int(r["id"])
    return None


async def take_outbox(conn: asyncpg.Connection, limit: int) -> list[asyncpg.Record]:
    """Outbox events (``event_id, alert_id, kind, at``), locked for this transaction (SKIP LOCKED)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT o.event_id, e.alert_id, e.kind, e.at FROM notify_outbox o JOIN alert_events e ON e.id = o.event_id "
        "ORDER BY o.event_id LIMIT $1 FOR UPDATE OF o SKIP LOCKED",
        limit,
    )
    return rows


async def drop_outbox(conn: asyncpg.Connection, event_ids: list[int]) -> None:
    await conn.execute("DELETE FROM notify_outbox WHERE event_id = ANY($1)", event_ids)


async def enabled_routes(conn: asyncpg.Connection) -> list[Route]:
    return [route_of(r) for r in await conn.fetch("SELECT * FROM notify_routes WHERE enabled ORDER BY created_at, id")]


async def load_alert(conn: asyncpg.Connection, alert_id: int) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow("SELECT * FROM alerts WHERE id = $1", alert_id)
    return row


async def alert_site_name(conn: asyncpg.Connection, alert: asyncpg.Record) -> str | None:
    """The name of the alert's site, or of its device's site."""
    if alert["site_id"] is not None:
        name: str | None = await conn.fetchval("SELECT name FROM sites WHERE id = $1", alert["site_id"])
        return name
    name = await conn.fetchval("SELECT s.name FROM devices d JOIN sites s ON s.id = d.site_id WHERE d.device_id = $1", alert["device_id"])
    return name


async def alert_facts(conn: asyncpg.Connection, alert: asyncpg.Record) -> AlertFacts:
    """What routing matches on: severity, types (alert kind, rule id, rule kind), site, device tags."""
    types = {alert["kind"], alert["rule_id"]}
    rule_kind = await conn.fetchval("SELECT kind FROM rules WHERE id = $1", alert["rule_id"])
    if rule_kind:
        types.add(rule_kind)
    device = await conn.fetchrow("SELECT tags, site_id FROM devices WHERE device_id = $1", alert["device_id"])
    tags = _tags(device)
    site = alert["site_id"] or (device["site_id"] if device else None)
    if site is None and str(alert["device_id"]).startswith("gateway:"):
        site = await conn.fetchval("SELECT site_id FROM gateways WHERE name = $1", str(alert["device_id"]).removeprefix("gateway:"))
    return AlertFacts(severity=alert["severity"], types=frozenset(types), site=None if site is None else str(site), device_tags=tags)


async def load_alerts(conn: asyncpg.Connection, alert_ids: Sequence[int]) -> dict[int, asyncpg.Record]:
    """``load_alert`` for many: id -> row (missing ids are absent)."""
    return {r["id"]: r for r in await conn.fetch("SELECT * FROM alerts WHERE id = ANY($1::bigint[])", list(alert_ids))}


async def alert_places(conn: asyncpg.Connection, alerts: Sequence[asyncpg.Record]) -> dict[int, tuple[str | None, AlertFacts]]:
    """Alert id -> (``alert_site_name``, ``alert_facts``) for many alerts, in four queries at most (fan-out
    batches): the same answers as the one-alert functions."""
    rule_ids = sorted({a["rule_id"] for a in alerts})
    device_ids = sorted({a["device_id"] for a in alerts})
    kinds = {r["id"]: r["kind"] for r in await conn.fetch("SELECT id, kind FROM rules WHERE id = ANY($1::text[])", rule_ids)}
    devices = {
        r["device_id"]: r for r in await conn.fetch("SELECT device_id, tags, site_id FROM devices WHERE device_id = ANY($1::text[])", device_ids)
    }
    gateway_names = sorted(
        {
            str(a["device_id"]).removeprefix("gateway:")
            for a in alerts
            if a["site_id"] is None
            and (devices.get(a["device_id"]) is None or devices[a["device_id"]]["site_id"] is None)
            and str(a["device_id"]).startswith("gateway:")
        }
    )
    gateway_sites: dict[str, uuid.UUID | None] = {}
    if gateway_names:
        gateway_sites = {r["name"]: r["site_id"] for r in await conn.fetch("SELECT name, site_id FROM gateways WHERE name = ANY($1::text[])", gateway_names)}
    site_ids = {a["site_id"] for a in alerts} | {d["site_id"] for d in devices.values()}
    site_ids.discard(None)
    names: dict[uuid.UUID, str] = {}
    if site_ids:
        names = {r["id"]: r["name"] for r in await conn.fetch("SELECT id, name FROM sites WHERE id = ANY($1::uuid[])", list(site_ids))}
    out: dict[int, tuple[str | None, AlertFacts]] = {}
    for alert in alerts:
        device = devices.get(alert["device_id"])
        device_site = device["site_id"] if device else None
        site_name = names.get(alert["site_id"]) if alert["site_id"] is not None else (names.get(device_site) if device_site else None)
        types = {alert["kind"], alert["rule_id"]}
        if kinds.get(alert["rule_id"]):
            types.add(kinds[alert["rule_id"]])
        site = alert["site_id"] or device_site
        if site is None and str(alert["device_id"]).startswith("gateway:"):
            site = gateway_sites.get(str(alert["device_id"]).removeprefix("gateway:"))
        facts = AlertFacts(
            severity=alert["severity"], types=frozenset(types), site=None if site is None else str(site), device_tags=_tags(device)
        )
        out[alert["id"]] = (site_name, facts)
    return out


def _tags(device: asyncpg.Record | None) -> dict[str, str]:
    tags: dict[str, str] = {}
    for tag in (device["tags"] if device else None) or ():
        name, _, value = str(tag).partition("=")
        tags[name] = value
    return tags


async def channels_that_heard_many(conn: asyncpg.Connection, alert_ids: Sequence[int]) -> dict[int, list[asyncpg.Record]]:
    """``channels_that_heard`` for many alerts: alert id -> its channels (``channel_id, kind``)."""
    out: dict[int, list[asyncpg.Record]] = {}
    if not alert_ids:
        return out
    for r in await conn.fetch(
        "SELECT DISTINCT d.alert_id, d.channel_id, c.kind FROM notify_deliveries d JOIN notify_channels c ON c.id = d.channel_id "
        "WHERE d.alert_id = ANY($1::bigint[]) AND d.event IN ('opened', 'escalated') AND c.enabled ORDER BY d.alert_id, d.channel_id",
        list(alert_ids),
    ):
        out.setdefault(r["alert_id"], []).append(r)
    return out


async def enabled_channels(conn: asyncpg.Connection, ids: list[str]) -> dict[uuid.UUID, str]:
    """id -> kind of the enabled channels among ``ids``, in their order."""
    if not ids:
        return {}
    rows = await conn.fetch("SELECT id, kind FROM notify_channels WHERE id = ANY($1::uuid[]) AND enabled", ids)
    kinds = {r["id"]: r["kind"] for r in rows}
    return {uuid.UUID(i): kinds[uuid.UUID(i)] for i in ids if uuid.UUID(i) in kinds}


async def channels_that_heard(conn: asyncpg.Connection, alert_id: int) -> list[asyncpg.Record]:
    """Enabled channels (``channel_id, kind``) that were told the alert opened or escalated."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT DISTINCT d.channel_id, c.kind FROM notify_deliveries d JOIN notify_channels c ON c.id = d.channel_id "
        "WHERE d.alert_id = $1 AND d.event IN ('opened', 'escalated') AND c.enabled",
        alert_id,
    )
    return rows


async def channels_told_opened(conn: asyncpg.Connection, alert_id: int) -> set[uuid.UUID]:
    return {r["channel_id"] for r in await conn.fetch("SELECT channel_id FROM notify_deliveries WHERE alert_id = $1 AND event = 'opened'", alert_id)}


async def last_sent(conn: asyncpg.Connection, channel_id: uuid.UUID, fingerprint: str) -> dt.datetime | None:
    """When this channel was last told about this fingerprint (row locked for the transaction)."""
    value: dt.datetime | None = await conn.fetchval(
        "SELECT last_sent_at FROM notify_throttle WHERE channel_id = $1 AND fingerprint = $2 FOR UPDATE", channel_id, fingerprint
    )
    return value


async def mark_sent(conn: asyncpg.Connection, channel_id: uuid.UUID, fingerprint: str, now: dt.datetime) -> None:
    await conn.execute(
        "INSERT INTO notify_throttle (tenant_id, channel_id, fingerprint, last_sent_at) VALUES (pulse_current_tenant(), $1, $2, $3) "
        "ON CONFLICT (channel_id, fingerprint) DO UPDATE SET last_sent_at = EXCLUDED.last_sent_at",
        channel_id,
        fingerprint,
        now,
    )


async def start_escalation(conn: asyncpg.Connection, alert_id: int, policy_id: uuid.UUID, now: dt.datetime) -> None:
    await conn.execute(
        "INSERT INTO alert_escalations (alert_id, tenant_id, policy_id, next_at) VALUES ($1, pulse_current_tenant(), $2, $3) "
        "ON CONFLICT (alert_id) DO NOTHING",
        alert_id,
        policy_id,
        now,
    )


async def stop_escalation(conn: asyncpg.Connection, alert_id: int, reason: str, *, only_running: bool = False) -> None:
    await conn.execute(
        "UPDATE alert_escalations SET stopped = true, stop_reason = $2, next_at = NULL WHERE alert_id = $1"
        + (" AND NOT stopped" if only_running else ""),
        alert_id,
        reason,
    )


async def start_escalations(conn: asyncpg.Connection, starts: Mapping[int, uuid.UUID], now: dt.datetime) -> None:
    """``start_escalation`` for many alerts (alert id -> policy id) in one statement."""
    if starts:
        await conn.execute(
            "INSERT INTO alert_escalations (alert_id, tenant_id, policy_id, next_at) "
            "SELECT u.alert_id, pulse_current_tenant(), u.policy_id, $3 FROM unnest($1::bigint[], $2::uuid[]) AS u(alert_id, policy_id) "
            "ORDER BY u.alert_id ON CONFLICT (alert_id) DO NOTHING",
            list(starts),
            list(starts.values()),
            now,
        )


async def stop_running_escalations(conn: asyncpg.Connection, stops: Mapping[int, str]) -> None:
    """``stop_escalation(..., only_running=True)`` for many alerts (alert id -> reason) in one statement."""
    if stops:
        await conn.execute(
            "UPDATE alert_escalations e SET stopped = true, stop_reason = u.reason, next_at = NULL "
            "FROM unnest($1::bigint[], $2::text[]) AS u(alert_id, reason) WHERE e.alert_id = u.alert_id AND NOT e.stopped",
            list(stops),
            list(stops.values()),
        )


async def due_escalations(conn: asyncpg.Connection, now: dt.datetime, limit: int) -> list[asyncpg.Record]:
    """Running escalations due at ``now``, with the alert's state and the policy (locked, SKIP LOCKED)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT e.*, a.state, p.name AS policy_name, p.levels, p.repeat FROM alert_escalations e "
        "JOIN alerts a ON a.id = e.alert_id JOIN escalation_policies p ON p.id = e.policy_id "
        "WHERE NOT e.stopped AND e.next_at <= $1 ORDER BY e.next_at LIMIT $2 FOR UPDATE OF e SKIP LOCKED",
        now,
        limit,
    )
    return rows


async def postpone_escalation(conn: asyncpg.Connection, alert_id: int, until: dt.datetime) -> None:
    await conn.execute("UPDATE alert_escalations SET next_at = $2 WHERE alert_id = $1", alert_id, until)


async def advance_escalation(conn: asyncpg.Connection, alert_id: int, state: EscalationState, next_at: dt.datetime) -> None:
    await conn.execute(
        "UPDATE alert_escalations SET level = $2, cycle = $3, notified_at = $4, next_at = $5 WHERE alert_id = $1",
        alert_id,
        state.level,
        state.cycle,
        state.notified_at,
        next_at,
    )


async def stale_claims(conn: asyncpg.Connection, claim_timeout_s: float) -> list[asyncpg.Record]:
    """Deliveries still ``sending`` ``claim_timeout_s`` after their claim (locked, SKIP LOCKED)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT id, kind, attempts, budget FROM notify_deliveries WHERE status = 'sending' "
        "AND claimed_at < clock_timestamp() - make_interval(secs => $1) FOR UPDATE SKIP LOCKED",
        claim_timeout_s,
    )
    return rows


async def release_claim(conn: asyncpg.Connection, delivery_id: uuid.UUID, status: str, error: str, code: Code) -> None:
    """A stale claim becomes ``pending`` (due now) or ``dead``."""
    await conn.execute(
        "UPDATE notify_deliveries SET status = $2, last_error = $3, last_code = $4, claim_token = NULL, "
        "next_attempt_at = CASE WHEN $2 = 'pending' THEN clock_timestamp() END WHERE id = $1",
        delivery_id,
        status,
        error,
        str(code),
    )


async def claim_due(conn: asyncpg.Connection, token: uuid.UUID, limit: int) -> list[asyncpg.Record]:
    """Claim up to ``limit`` due deliveries (``sending``, ``attempts + 1``), oldest first per alert and channel;
    returns them with their channel's config and whether it is enabled."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "UPDATE notify_deliveries d SET status = 'sending', claim_token = $1, claimed_at = clock_timestamp(), attempts = d.attempts + 1 "
        "FROM notify_channels c WHERE c.id = d.channel_id AND d.id = ANY(ARRAY("
        "  SELECT q.id FROM notify_deliveries q WHERE q.status = 'pending' AND q.next_attempt_at <= clock_timestamp() "
        "  AND NOT EXISTS (SELECT 1 FROM notify_deliveries p WHERE p.alert_id = q.alert_id AND p.channel_id = q.channel_id "
        "                  AND p.status IN ('pending', 'sending') AND p.created_at < q.created_at) "
        "  ORDER BY q.next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED)) "
        "RETURNING d.id, d.kind, d.notification, d.attempts, d.budget, c.config, c.enabled",
        token,
        limit,
    )
    return rows


@dataclass(frozen=True)
class Settlement:
    """What ``settle_many`` records for one attempt of one claimed delivery."""

    delivery_id: uuid.UUID
    token: uuid.UUID
    status: str
    next_at: dt.datetime | None
    code: Code | None
    error: str | None
    n: int
    """The attempt's number (the delivery's ``attempts`` after the claim)."""
    outcome: str
    status_code: int | None
    duration_ms: int | None


async def settle_many(conn: asyncpg.Connection, outcomes: Sequence[Settlement]) -> set[uuid.UUID]:
    """Record the outcomes of sends and add their attempt rows, in one statement: each only where its claim
    ``token`` is still the delivery's. Returns the ids recorded (the others were taken over meanwhile)."""
    rows = await conn.fetch(
        "WITH u AS (SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[], $5::text[], $6::text[], $7::int[], "
        "  $8::text[], $9::int[], $10::int[]) WITH ORDINALITY AS u(id, token, status, next_at, code, error, n, outcome, status_code, "
        "  duration_ms, ord)), "
        "s AS (UPDATE notify_deliveries d SET status = u.status, next_attempt_at = u.next_at, last_code = COALESCE(u.code, d.last_code), "
        "  last_error = COALESCE(u.error, d.last_error), delivered_at = CASE WHEN u.status = 'delivered' THEN clock_timestamp() END, "
        "  claim_token = NULL FROM u WHERE d.id = ANY($1::uuid[]) AND d.id = u.id AND d.claim_token = u.token RETURNING d.id) "
        "INSERT INTO notify_attempts (tenant_id, delivery_id, n, outcome, status_code, code, error, duration_ms) "
        "SELECT pulse_current_tenant(), u.id, u.n, u.outcome, u.status_code, u.code, u.error, u.duration_ms FROM u JOIN s ON s.id = u.id "
        "ORDER BY u.ord RETURNING delivery_id",
        [o.delivery_id for o in outcomes],
        [o.token for o in outcomes],
        [o.status for o in outcomes],
        [o.next_at for o in outcomes],
        [None if o.code is None else str(o.code) for o in outcomes],
        [o.error for o in outcomes],
        [o.n for o in outcomes],
        [o.outcome for o in outcomes],
        [o.status_code for o in outcomes],
        [o.duration_ms for o in outcomes],
    )
    return {r["delivery_id"] for r in rows}


async def add_attempt(
    conn: asyncpg.Connection,
    delivery_id: uuid.UUID,
    n: int,
    outcome: str,
    status_code: int | None,
    code: Code | None,
    error: str | None,
    duration_ms: int | None,
) -> None:
    await conn.execute(
        "INSERT INTO notify_attempts (tenant_id, delivery_id, n, outcome, status_code, code, error, duration_ms) "
        "VALUES (pulse_current_tenant(), $1, $2, $3, $4, $5, $6, $7)",
        delivery_id,
        n,
        outcome,
        status_code,
        None if code is None else str(code),
        error,
        duration_ms,
    )
