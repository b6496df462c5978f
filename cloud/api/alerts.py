"""Rules, alerts, maintenance windows and device state: tenant-scoped API.

Rules are validated by ``pulse.protocol.rules.parse_rule``: a refused rule answers 422 with the
rule's error code (``rule.bad_threshold``, ...) and a sentence naming the field."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, Literal

import asyncpg
from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from pulse.cloud.alerts import actions, heartbeat
from pulse.cloud.alerts.runner import Reading, device_of
from pulse.cloud.api import paging
from pulse.cloud.api.deps import Parts, Reader, TenantCaller, Writer
from pulse.cloud.api.notify import DeliveryOut
from pulse.cloud.db.pool import audit
from pulse.cloud.downlink import push_rules
from pulse.cloud.errors import ConflictError, InvalidError, NotFoundError
from pulse.cloud.notify.store import alert_notify_view
from pulse.protocol.alerts import NO_HEARTBEAT, is_reserved_rule_id
from pulse.protocol.errors import Code, RuleError
from pulse.protocol.rules import Device, Rule, RuleState, UpdateDeviceState, applies_to, evaluate, parse_rule, rule_to_dict

rules_router = APIRouter(prefix="/api/v1/rules", tags=["rules"])
alerts_router = APIRouter(prefix="/api/v1/alerts", tags=["alerts"])
states_router = APIRouter(prefix="/api/v1", tags=["device state"])


# --- response models ---------------------------------------------------------------------------
# Times are ISO 8601 strings (``datetime.isoformat()``), as these answers always were.


class RuleOut(BaseModel):
    """The rule's own JSON (docs/alerts.md; its fields depend on the kind) and when it was stored."""

    model_config = ConfigDict(extra="allow")
    id: str
    version: int
    kind: str
    created_at: str
    updated_at: str


class PreviewAction(BaseModel):
    action: str
    device_id: str
    at_ms: int
    reading_ms: int
    text: str


class PreviewOut(BaseModel):
    rule: dict[str, Any]
    readings: int
    devices: int
    actions: list[PreviewAction]


class AlertOut(BaseModel):
    id: int
    device_id: str
    rule_id: str
    rule_version: int | None
    kind: str
    severity: str
    state: str
    flapping: bool
    condition_cleared: bool
    occurrences: int
    explanation: dict[str, Any]
    source: str
    gateway_id: str | None
    site_id: str | None
    opened_at: str
    updated_at: str
    acknowledged_at: str | None
    acknowledged_by: str | None
    closed_at: str | None
    closed_by: str | None
    silenced_until: str | None


class AlertCounts(BaseModel):
    critical: int
    major: int
    minor: int
    warning: int
    info: int


class AlertEventOut(BaseModel):
    at: str
    kind: str
    actor: str | None
    notify: bool
    detail: Any


class EscalationOut(BaseModel):
    policy: str
    level: int
    cycle: int
    next_at: str | None
    stopped: bool
    stop_reason: str | None


class AlertDetail(AlertOut):
    events: list[AlertEventOut]
    notifications: list[DeliveryOut]
    escalation: EscalationOut | None


class DeviceStateOut(BaseModel):
    device_id: str
    status: str
    reason: Any
    changed_at: str


class WindowOut(BaseModel):
    id: str
    device_id: str | None
    site_id: str | None
    starts_at: str
    ends_at: str
    reason: str
    created_by: str
    created_at: str


# --- rules -------------------------------------------------------------------------------------


def _validated(doc: object, caller: TenantCaller) -> Rule:
    rule = parse_rule(doc, tenant=str(caller.tenant_id))  # RuleError -> 422 with its code
    if is_reserved_rule_id(rule.id):
        raise RuleError(Code.RULE_RESERVED_ID, "rule ids GATEWAY_OFFLINE and pulse:* are Pulse's own", rule_id=rule.id)
    return rule


def _rule_out(row: asyncpg.Record) -> dict[str, Any]:
    return {
        **json.loads(row["definition"]),
        "created_at": row["created_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat(),
    }


_RULE_COLS = "definition, created_at, updated_at"


@rules_router.post("", status_code=201, summary="Create a rule (body: the rule JSON, see docs/alerts.md)", response_model=RuleOut)
async def create_rule(body: dict[str, Any], caller: Writer, parts: Parts) -> dict[str, Any]:
    rule = _validated(body, caller)
    async with parts.db.tenant(caller.tenant_id) as conn:
        try:
            row = await conn.fetchrow(
                f"INSERT INTO rules (tenant_id, id, version, kind, enabled, definition) "
                f"VALUES ($1, $2, $3, $4, $5, $6::jsonb) RETURNING {_RULE_COLS}",
                caller.tenant_id,
                rule.id,
                rule.version,
                str(rule.kind),
                rule.enabled,
                json.dumps(rule_to_dict(rule)),
            )
        except asyncpg.UniqueViolationError as exc:
            raise ConflictError(Code.API_CONFLICT, f"a rule {rule.id!r} exists; change it with PUT") from exc
        gateways = await push_rules(conn, caller.tenant_id)
    parts.sync.notifier.wake(gateways)
    return _rule_out(row)


@rules_router.get("", summary="List rules", response_model=list[RuleOut])
async def list_rules(caller: Reader, parts: Parts) -> list[dict[str, Any]]:
    async with parts.db.tenant(caller.tenant_id) as conn:
        rows = await conn.fetch(f"SELECT {_RULE_COLS} FROM rules ORDER BY id")
    return [_rule_out(r) for r in rows]


@rules_router.get("/{rule_id}", summary="One rule", response_model=RuleOut)
async def get_rule(rule_id: str, caller: Reader, parts: Parts) -> dict[str, Any]:
    async with parts.db.tenant(caller.tenant_id) as conn:
        row = await conn.fetchrow(f"SELECT {_RULE_COLS} FROM rules WHERE id = $1", rule_id)
    if row is None:
        raise NotFoundError("rule", rule_id=rule_id)
    return _rule_out(row)


@rules_router.put("/{rule_id}", summary="Replace a rule; its version goes up by one (or to the body's, if higher)", response_model=RuleOut)
async def replace_rule(rule_id: str, body: dict[str, Any], caller: Writer, parts: Parts) -> dict[str, Any]:
    if body.get("id", rule_id) != rule_id:
        raise InvalidError(Code.API_INVALID, "the body's id differs from the rule id in the path")
    async with parts.db.tenant(caller.tenant_id) as conn:
        current = await conn.fetchval("SELECT version FROM rules WHERE id = $1 FOR UPDATE", rule_id)
        if current is None:
            raise NotFoundError("rule", rule_id=rule_id)
        asked = body.get("version")
        version = asked if type(asked) is int and asked > current else current + 1
        rule = _validated({**body, "id": rule_id, "version": version}, caller)
        row = await conn.fetchrow(
            f"UPDATE rules SET version = $2, kind = $3, enabled = $4, definition = $5::jsonb, updated_at = now() "
            f"WHERE id = $1 RETURNING {_RULE_COLS}",
            rule_id,
            rule.version,
            str(rule.kind),
            rule.enabled,
            json.dumps(rule_to_dict(rule)),
        )
        gateways = await push_rules(conn, caller.tenant_id)
    parts.sync.notifier.wake(gateways)
    return _rule_out(row)


@rules_router.delete("/{rule_id}", status_code=204, summary="Delete a rule (its alerts stay, its state goes)")
async def delete_rule(rule_id: str, caller: Writer, parts: Parts) -> Response:
    async with parts.db.tenant(caller.tenant_id) as conn:
        if await conn.fetchval("DELETE FROM rules WHERE id = $1 RETURNING id", rule_id) is None:
            raise NotFoundError("rule", rule_id=rule_id)
        gateways = await push_rules(conn, caller.tenant_id)
    parts.sync.notifier.wake(gateways)
    return Response(status_code=204)


class PreviewIn(BaseModel):
    rule: dict[str, Any]
    hours: float = Field(default=24, gt=0, le=24 * 7)
    limit: int = Field(default=20_000, ge=1, le=100_000)


@rules_router.post("/preview", summary="What a rule would have done on recent telemetry (nothing is stored)", response_model=PreviewOut)
async def preview_rule(body: PreviewIn, caller: Reader, parts: Parts) -> dict[str, Any]:
    rule = _validated(body.rule, caller)
    since = datetime.now().astimezone() - timedelta(hours=body.hours)
    async with parts.db.tenant(caller.tenant_id) as conn:
        devices = {r["device_id"]: device_of(r) for r in await conn.fetch("SELECT device_id, tags, site_id FROM devices")}
        rows = await conn.fetch(
            "SELECT device_id, metrics, received_at, time FROM telemetry WHERE time >= $1 ORDER BY received_at, time LIMIT $2",
            since,
            body.limit,
        )
    states: dict[str, RuleState] = {}
    actions: list[dict[str, Any]] = []
    readings = 0
    for row in rows:
        device_id = row["device_id"]
        if not applies_to(rule, devices.get(device_id, Device(device_id))):
            continue
        readings += 1
        now = int(row["received_at"].timestamp() * 1000)
        states[device_id], done = evaluate(rule, states.get(device_id), Reading(device_id, json.loads(row["metrics"])), now)
        for action in done:
            if isinstance(action, UpdateDeviceState):
                continue
            actions.append(
                {
                    "action": type(action).__name__,
                    "device_id": device_id,
                    "at_ms": now,
                    "reading_ms": int(row["time"].timestamp() * 1000),  # the reading's own time, for charts
                    "text": action.explanation.text,
                }
            )
    return {"rule": rule_to_dict(rule), "readings": readings, "devices": len(states), "actions": actions[:1000]}


# --- alerts ------------------------------------------------------------------------------------

_ALERT_COLS = actions.ALERT_COLS


def _alert_out(row: asyncpg.Record) -> dict[str, Any]:
    out = dict(row)
    out["explanation"] = json.loads(out["explanation"])
    for k, v in out.items():
        if isinstance(v, datetime):
            out[k] = v.isoformat()
        elif isinstance(v, uuid.UUID):
            out[k] = str(v)
    return out


def _alert_filters(
    state: list[str], severity: list[str], device_id: str | None, rule_id: str | None, site_id: uuid.UUID | None
) -> tuple[list[str], list[object]]:
    where: list[str] = ["true"]
    args: list[object] = []
    for column, value in (("state", state), ("severity", severity)):
        if value:
            args.append(value)
            where.append(f"{column} = ANY(${len(args)})")
    for column, one in (("device_id", device_id), ("rule_id", rule_id), ("site_id", site_id)):
        if one is not None:
            args.append(one)
            where.append(f"{column} = ${len(args)}")
    return where, args


@alerts_router.get("", response_model=paging.Page[AlertOut], summary="List alerts (newest first), filtered; paged by cursor")
async def list_alerts(
    caller: Reader,
    parts: Parts,
    state: list[Literal["open", "acknowledged", "closed"]] = Query(default=[]),  # noqa: B008
    severity: list[str] = Query(default=[]),  # noqa: B008
    device_id: str | None = None,
    rule_id: str | None = None,
    site_id: uuid.UUID | None = None,
    limit: int = Query(default=100, ge=1, le=1000),
    cursor: paging.CursorQuery = None,
) -> paging.Page[dict[str, Any]]:
    where, args = _alert_filters(list(state), severity, device_id, rule_id, site_id)
    if (after := paging.decode(cursor, datetime, int)) is not None:
        args += list(after)
        where.append(f"(opened_at, id) < (${len(args) - 1}, ${len(args)})")
    args.append(limit + 1)
    async with parts.db.tenant(caller.tenant_id) as conn:
        rows = await conn.fetch(
            f"SELECT {_ALERT_COLS} FROM alerts WHERE {' AND '.join(where)} ORDER BY opened_at DESC, id DESC LIMIT ${len(args)}",
            *args,
        )
    return paging.page(rows, limit, _alert_out, lambda r: (r["opened_at"], r["id"]))


@alerts_router.get("/counts", summary="How many alerts per severity match the filters (for the inbox tabs)", response_model=AlertCounts)
async def alert_counts(
    caller: Reader,
    parts: Parts,
    state: list[Literal["open", "acknowledged", "closed"]] = Query(default=[]),  # noqa: B008
    device_id: str | None = None,
    rule_id: str | None = None,
    site_id: uuid.UUID | None = None,
) -> dict[str, int]:
    where, args = _alert_filters(list(state), [], device_id, rule_id, site_id)
    async with parts.db.tenant(caller.tenant_id) as conn:
        rows = await conn.fetch(
            f"SELECT severity, count(*) AS n FROM alerts WHERE {' AND '.join(where)} GROUP BY severity", *args
        )
    counts = {s: 0 for s in ("critical", "major", "minor", "warning", "info")}
    counts.update({r["severity"]: r["n"] for r in rows})
    return counts


@alerts_router.get("/{alert_id}", summary="One alert with its history", response_model=AlertDetail)
async def get_alert(alert_id: int, caller: Reader, parts: Parts) -> dict[str, Any]:
    async with parts.db.tenant(caller.tenant_id) as conn:
        row = await conn.fetchrow(f"SELECT {_ALERT_COLS} FROM alerts WHERE id = $1", alert_id)
        if row is None:
            raise NotFoundError("alert", alert_id=alert_id)
        events = await conn.fetch(
            "SELECT at, kind, actor, notify, detail FROM alert_events WHERE alert_id = $1 ORDER BY id", alert_id
        )
        notify = await alert_notify_view(conn, alert_id)
    out = _alert_out(row)
    out["events"] = [{**dict(e), "at": e["at"].isoformat(), "detail": json.loads(e["detail"])} for e in events]
    return out | notify


class BulkIn(BaseModel):
    ids: list[int] = Field(min_length=1, max_length=1000)
    action: Literal["ack", "close", "silence"]
    until: datetime | None = None
    note: str = Field(default="", max_length=1000)


class SilenceIn(BaseModel):
    until: datetime
    note: str = Field(default="", max_length=1000)


class NoteIn(BaseModel):
    note: str = Field(default="", max_length=1000)


def _actor(caller: TenantCaller) -> actions.Actor:
    return actions.Actor(caller.actor, caller.principal.roles)


async def _act(
    parts: Parts, caller: TenantCaller, ids: list[int], action: actions.Action, until: datetime | None, note: str
) -> list[dict[str, Any]]:
    async with parts.db.tenant(caller.tenant_id) as conn:
        rows, _ = await actions.act(conn, ids, action, _actor(caller), until=until, note=note)
    return [_alert_out(r) for r in rows]


@alerts_router.post("/bulk", summary="Acknowledge, close or silence many alerts at once (who may: GET /api/v1/permissions)", response_model=list[AlertOut])
async def bulk(body: BulkIn, caller: Reader, parts: Parts) -> list[dict[str, Any]]:
    return await _act(parts, caller, body.ids, body.action, body.until, body.note)


@alerts_router.post("/{alert_id}/ack", summary="Acknowledge an open alert (roles with the alerts.ack permission)", response_model=AlertOut)
async def ack(alert_id: int, caller: Reader, parts: Parts, body: NoteIn | None = None) -> dict[str, Any]:
    return (await _act(parts, caller, [alert_id], "ack", None, body.note if body else ""))[0]


@alerts_router.post("/{alert_id}/close", summary="Close an alert (roles with the alerts.close permission)", response_model=AlertOut)
async def close(alert_id: int, caller: Reader, parts: Parts, body: NoteIn | None = None) -> dict[str, Any]:
    return (await _act(parts, caller, [alert_id], "close", None, body.note if body else ""))[0]


@alerts_router.post("/{alert_id}/silence", summary="Silence an alert's notifications until a time (tenant admins)", response_model=AlertOut)
async def silence(alert_id: int, body: SilenceIn, caller: Reader, parts: Parts) -> dict[str, Any]:
    return (await _act(parts, caller, [alert_id], "silence", body.until, body.note))[0]


# --- device state, maintenance windows --------------------------------------------------------


@states_router.get("/device-states", summary="Device states: online, stale, offline, unreachable", response_model=list[DeviceStateOut])
async def device_states(
    caller: Reader,
    parts: Parts,
    device_id: str | None = None,
    recent: int | None = Query(default=None, ge=1, le=500, description="only the N most recent state changes, newest first"),
) -> list[dict[str, Any]]:
    order = "changed_at DESC, device_id" if recent else "device_id"
    async with parts.db.tenant(caller.tenant_id) as conn:
        rows = await conn.fetch(
            "SELECT device_id, status, reason, changed_at FROM device_states WHERE $1::text IS NULL OR device_id = $1"
            f" ORDER BY {order} LIMIT $2",
            device_id,
            recent,
        )
    return [{**dict(r), "reason": json.loads(r["reason"]), "changed_at": r["changed_at"].isoformat()} for r in rows]


class HeartbeatSettingsIn(BaseModel):
    """The built-in NO_HEARTBEAT (docs/alerts.md "Device state"): omitted fields keep their value."""

    model_config = ConfigDict(extra="forbid")
    alerts_enabled: bool | None = None
    interval_s: float | None = Field(default=None, ge=1, le=604_800)
    stale_after: float | None = Field(default=None, gt=1, le=1000)
    offline_after: float | None = Field(default=None, gt=1, le=1000)
    severity: Literal["critical", "major", "minor", "warning", "info"] | None = None


class HeartbeatSettingsOut(BaseModel):
    alerts_enabled: bool
    interval_s: float
    stale_after: float
    offline_after: float
    severity: str
    version: int


@states_router.get("/device-states/settings", summary="The built-in NO_HEARTBEAT: tenant default interval, thresholds, alerts on/off", response_model=HeartbeatSettingsOut)
async def heartbeat_settings(caller: Reader, parts: Parts) -> dict[str, Any]:
    async with parts.db.tenant(caller.tenant_id) as conn:
        return (await heartbeat.load_settings(conn)).to_dict()


@states_router.put("/device-states/settings", summary="Adjust or switch off NO_HEARTBEAT alerts (tenant admins; audited)", response_model=HeartbeatSettingsOut)
async def set_heartbeat_settings(body: HeartbeatSettingsIn, caller: Writer, parts: Parts) -> dict[str, Any]:
    async with parts.db.tenant(caller.tenant_id) as conn:
        before = await heartbeat.load_settings(conn)
        after = replace(before, **body.model_dump(exclude_none=True))
        if after.offline_after <= after.stale_after:
            raise InvalidError(
                Code.RULE_BAD_HEARTBEAT,
                f"offline_after ({after.offline_after:g}) must be more than stale_after ({after.stale_after:g})",
                field="offline_after",
            )
        if after != before:
            after = replace(after, version=before.version + 1)
            await conn.execute(
                "INSERT INTO heartbeat_settings (tenant_id, alerts_enabled, interval_s, stale_after, offline_after, severity, version, updated_by) "
                "VALUES (pulse_current_tenant(), $1, $2, $3, $4, $5, $6, $7) ON CONFLICT (tenant_id) DO UPDATE SET "
                "alerts_enabled = EXCLUDED.alerts_enabled, interval_s = EXCLUDED.interval_s, stale_after = EXCLUDED.stale_after, "
                "offline_after = EXCLUDED.offline_after, severity = EXCLUDED.severity, version = EXCLUDED.version, "
                "updated_by = EXCLUDED.updated_by, updated_at = now()",
                after.alerts_enabled, after.interval_s, after.stale_after, after.offline_after, after.severity, after.version, caller.actor,
            )  # fmt: skip
            await audit(
                conn, actor=caller.actor, action="heartbeat.settings", target=NO_HEARTBEAT, tenant_id=caller.tenant_id,
                detail={"before": before.to_dict(), "after": after.to_dict()},
            )  # fmt: skip
    return after.to_dict()


class WindowIn(BaseModel):
    device_id: str | None = Field(default=None, min_length=1, max_length=128)
    site_id: uuid.UUID | None = None
    starts_at: datetime
    ends_at: datetime
    reason: str = Field(default="", max_length=1000)


_WINDOW_COLS = "id, device_id, site_id, starts_at, ends_at, reason, created_by, created_at"


def _window_out(row: asyncpg.Record) -> dict[str, Any]:
    out = dict(row)
    return {k: (v.isoformat() if isinstance(v, datetime) else str(v) if isinstance(v, uuid.UUID) else v) for k, v in out.items()}


@states_router.post("/maintenance-windows", status_code=201, summary="A maintenance window for a device or a site", response_model=WindowOut)
async def create_window(body: WindowIn, caller: Writer, parts: Parts) -> dict[str, Any]:
    if (body.device_id is None) == (body.site_id is None):
        raise InvalidError(Code.API_INVALID, "a maintenance window is for one device_id or one site_id")
    if body.ends_at <= body.starts_at:
        raise InvalidError(Code.API_INVALID, "ends_at must be after starts_at")
    async with parts.db.tenant(caller.tenant_id) as conn:
        if body.site_id is not None and not await conn.fetchval("SELECT 1 FROM sites WHERE id = $1", body.site_id):
            raise NotFoundError("site", site_id=str(body.site_id))
        row = await conn.fetchrow(
            f"INSERT INTO maintenance_windows (tenant_id, device_id, site_id, starts_at, ends_at, reason, created_by) "
            f"VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {_WINDOW_COLS}",
            caller.tenant_id,
            body.device_id,
            body.site_id,
            body.starts_at,
            body.ends_at,
            body.reason,
            caller.actor,
        )
    return _window_out(row)


@states_router.get("/maintenance-windows", summary="Maintenance windows that have not ended", response_model=list[WindowOut])
async def list_windows(caller: Reader, parts: Parts) -> list[dict[str, Any]]:
    async with parts.db.tenant(caller.tenant_id) as conn:
        rows = await conn.fetch(f"SELECT {_WINDOW_COLS} FROM maintenance_windows WHERE ends_at > now() ORDER BY starts_at")
    return [_window_out(r) for r in rows]


@states_router.delete("/maintenance-windows/{window_id}", status_code=204, summary="End a maintenance window")
async def delete_window(window_id: uuid.UUID, caller: Writer, parts: Parts) -> Response:
    async with parts.db.tenant(caller.tenant_id) as conn:
        if await conn.fetchval("DELETE FROM maintenance_windows WHERE id = $1 RETURNING id", window_id) is None:
            raise NotFoundError("maintenance window", window_id=str(window_id))
    return Response(status_code=204)
