"""Notify data in PostgreSQL: channels, routes, policies, schedules, the delivery queue. Adapter only.

Every function takes a connection in a tenant transaction (``db.tenant(tenant_id)``: row-level
security applies) unless it says otherwise. The API (cloud/api/notify.py), the workers
(worker.py) and the demo (``add_webhook``) all go through here.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import asyncpg
from pydantic import SecretStr

from pulse.cloud.db.pool import Database
from pulse.cloud.notify import senders
from pulse.cloud.notify.errors import ConfigError
from pulse.cloud.notify.escalation import Policy
from pulse.cloud.notify.model import Notification
from pulse.cloud.notify.oncall import Schedule
from pulse.cloud.notify.routing import Route
from pulse.protocol.errors import Code

REDACTED = "***"
MAX_ATTEMPTS = 5
SECRET_URL_KINDS = frozenset({"slack", "teams"})
"""Kinds whose webhook URL is itself the credential (whoever has a Slack or Teams webhook URL can post
to the channel): the API shows only its scheme and host."""


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
    if kind in SECRET_URL_KINDS and out.get("url"):
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
    if kind in SECRET_URL_KINDS and stored.get("url") and out.get("url") == _redacted_url(stored["url"]):
        out["url"] = stored["url"]
    return out


def validate_config(kind: str, raw: Mapping[str, Any]) -> dict[str, Any]:
    """Check with the channel's own validator (``notify.bad_config`` naming the field); store what was given."""
    for name in secret_fields(kind):
        if raw.get(name) == REDACTED:
            raise ConfigError(Code.NOTIFY_BAD_CONFIG, f"{kind} channel: {name}: give the secret itself, not {REDACTED}", kind=kind, fields=name)
    if kind in SECRET_URL_KINDS and str(raw.get("url", "")).endswith("/" + REDACTED):
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
