"""Notification channels, routes, deliveries, escalation policies and on-call schedules: tenant API.

Shapes are those of /work/shared API contract (docs/notifications.md, "API"). Channel settings are
checked by the channel's own validator (422 ``notify.bad_config`` naming the field); secrets are
shown back as ``***`` and a ``***`` sent back in a PUT keeps the stored secret. Lists are paged:
``{"items": [...], "next_cursor": str|null}`` with ``?limit=&cursor=``. Another tenant's ids answer 404.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from enum import StrEnum
from typing import Any, Literal

import asyncpg
from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pulse.cloud.api import paging
from pulse.cloud.api.deps import Parts, Reader, Writer
from pulse.cloud.errors import ConflictError, InvalidError, NotFoundError
from pulse.cloud.notify import store
from pulse.cloud.notify.errors import ConfigError
from pulse.cloud.notify.model import Severity, channel_test_notification
from pulse.cloud.notify.oncall import TIMELINE_DAYS, on_call_at, timeline
from pulse.cloud.notify.senders import KINDS
from pulse.cloud.notify.settings import NotifySettings
from pulse.protocol.errors import Code

router = APIRouter(prefix="/api/v1/notify", tags=["notifications"])
escalation_router = APIRouter(prefix="/api/v1/escalation-policies", tags=["notifications"])
oncall_router = APIRouter(prefix="/api/v1/oncall/schedules", tags=["notifications"])

ChannelKind = StrEnum("ChannelKind", {k: k for k in KINDS})
"""The channel kinds, from the one table ``senders.CHANNELS`` (an enum in the OpenAPI document)."""


def _settings(request: Request) -> NotifySettings:
    settings: NotifySettings = request.app.state.notify_settings
    return settings


def _wake(request: Request) -> None:
    workers = getattr(request.app.state, "notify_workers", None)
    if workers is not None:
        workers.wake()


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.astimezone(dt.UTC).isoformat()


async def _list(conn: asyncpg.Connection, table: str, cols: str, cursor: str | None, limit: int, out: Any) -> paging.Page[Any]:
    """A page of ``table`` in creation order, keyed by (created_at, id)."""
    after = paging.decode(cursor, dt.datetime, str)
    if after is None:
        rows = await conn.fetch(f"SELECT {cols} FROM {table} ORDER BY created_at, id LIMIT $1", limit + 1)
    else:
        rows = await conn.fetch(
            f"SELECT {cols} FROM {table} WHERE (created_at, id::text) > ($1, $2) ORDER BY created_at, id LIMIT $3",
            after[0],
            after[1],
            limit + 1,
        )
    return paging.page(rows, limit, out, _created_key)


def _created_key(row: asyncpg.Record) -> tuple[dt.datetime, str]:
    return row["created_at"], str(row["id"])


# --- response models ---------------------------------------------------------------------------
# Times are ISO 8601 strings as the store writes them (``_iso``: UTC, ``+00:00``).


class ChannelOut(BaseModel):
    id: str
    name: str
    kind: str
    config: dict[str, Any] = Field(description="the channel's settings; secrets shown as ***")
    enabled: bool
    created: str | None


class QueuedOut(BaseModel):
    delivery_id: str


class RouteOut(BaseModel):
    id: str
    name: str
    enabled: bool
    min_severity: str
    alert_types: list[str]
    sites: list[str]
    device_tags: dict[str, str]
    channels: list[str]
    escalation_policy: str | None
    throttle_s: int
    created: str | None


class AttemptOut(BaseModel):
    n: int
    at: str | None
    outcome: str
    status_code: int | None
    code: str | None
    error: str | None
    duration_ms: int | None


class DeliveryOut(BaseModel):
    id: str
    alert_id: int | None
    channel_id: str
    channel_name: str
    kind: str
    event: str
    status: str
    attempts: int
    next_attempt_at: str | None
    last_error: str | None
    last_code: str | None
    created: str | None
    delivered_at: str | None
    escalation_level: int | None


class DeliveryDetail(DeliveryOut):
    attempt_log: list[AttemptOut]


class PolicyOut(BaseModel):
    id: str
    name: str
    levels: list[dict[str, Any]] = Field(description='[{"delay_s", "targets": [{"channel"} | {"schedule"}]}]')
    repeat: int
    created: str | None


class ScheduleOut(BaseModel):
    id: str
    name: str
    time_zone: str
    layers: list[dict[str, Any]]
    overrides: list[dict[str, Any]]
    created: str | None


class MemberOut(BaseModel):
    name: str
    channel: str | None
    user_id: str | None = None
    reached_by: dict[str, Any] | None = Field(
        default=None, description="how paging reaches them: the channel's name, kind and whether it is enabled (null: no channel)"
    )


class OnCallNow(BaseModel):
    member: MemberOut | None
    layer: str | None = Field(description="the layer's name, or override")
    until: str | None


class Segment(BaseModel):
    start: str | None
    end: str | None
    member: MemberOut | None
    layer: str | None
    override: bool | None = Field(default=None, description="present on segments outside every layer: an override or nobody")


class Timeline(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    from_: str | None = Field(alias="from")
    to: str | None
    segments: list[Segment]

Limit = Query(default=50, ge=1, le=500)


# --- channels ----------------------------------------------------------------------------------

_CHANNEL_COLS = "id, name, kind, config, enabled, created_at"


def _channel_out(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "name": row["name"],
        "kind": row["kind"],
        "config": store.redact(row["kind"], json.loads(row["config"])),
        "enabled": row["enabled"],
        "created": _iso(row["created_at"]),
    }


class ChannelIn(BaseModel):
    model_config = ConfigDict(extra="forbid", use_enum_values=True)
    name: str = Field(min_length=1, max_length=100)
    kind: ChannelKind
    config: dict[str, Any]
    enabled: bool = True


async def _unique(coro: Any, what: str, name: str) -> Any:
    try:
        return await coro
    except asyncpg.UniqueViolationError as exc:
        raise ConflictError(Code.API_CONFLICT, f"a {what} named {name!r} exists") from exc


@router.get("/channels", summary="Notification channels (secrets shown as ***)", response_model=paging.Page[ChannelOut])
async def list_channels(caller: Reader, parts: Parts, limit: int = Limit, cursor: paging.CursorQuery = None) -> dict[str, Any]:
    async with parts.db.tenant(caller.tenant_id) as conn:
        return await _list(conn, "notify_channels", _CHANNEL_COLS, cursor, limit, _channel_out)


@router.post("/channels", status_code=201, summary="Create a channel; its config is checked by the channel's validator", response_model=ChannelOut)
async def create_channel(body: ChannelIn, caller: Writer, parts: Parts) -> dict[str, Any]:
    async with parts.db.tenant(caller.tenant_id) as conn:
        row = await _unique(store.create_channel(conn, name=body.name, kind=body.kind, config=body.config, enabled=body.enabled), "channel", body.name)
    return _channel_out(row)


async def _channel_row(conn: asyncpg.Connection, channel_id: uuid.UUID) -> asyncpg.Record:
    row = await conn.fetchrow(f"SELECT {_CHANNEL_COLS} FROM notify_channels WHERE id = $1", channel_id)
    if row is None:
        raise NotFoundError("channel", channel_id=str(channel_id))
    return row


@router.get("/channels/{channel_id}", summary="One channel", response_model=ChannelOut)
async def get_channel(channel_id: uuid.UUID, caller: Reader, parts: Parts) -> dict[str, Any]:
    async with parts.db.tenant(caller.tenant_id) as conn:
        return _channel_out(await _channel_row(conn, channel_id))


@router.put("/channels/{channel_id}", summary="Replace a channel (a secret sent back as *** keeps the stored one)", response_model=ChannelOut)
async def replace_channel(channel_id: uuid.UUID, body: ChannelIn, caller: Writer, parts: Parts) -> dict[str, Any]:
    async with parts.db.tenant(caller.tenant_id) as conn:
        current = await _channel_row(conn, channel_id)
        stored = json.loads(current["config"]) if current["kind"] == body.kind else {}
        config = store.validate_config(body.kind, store.merge_secrets(body.kind, body.config, stored))
        row = await _unique(
            conn.fetchrow(
                f"UPDATE notify_channels SET name = $2, kind = $3, config = $4::jsonb, enabled = $5, updated_at = now() "
                f"WHERE id = $1 RETURNING {_CHANNEL_COLS}",
                channel_id,
                body.name,
                body.kind,
                json.dumps(config),
                body.enabled,
            ),
            "channel",
            body.name,
        )
    return _channel_out(row)


@router.delete("/channels/{channel_id}", status_code=204, summary="Delete a channel (routes stop naming it; its deliveries go)")
async def delete_channel(channel_id: uuid.UUID, caller: Writer, parts: Parts) -> Response:
    async with parts.db.tenant(caller.tenant_id) as conn:
        if await conn.fetchval("DELETE FROM notify_channels WHERE id = $1 RETURNING id", channel_id) is None:
            raise NotFoundError("channel", channel_id=str(channel_id))
        await conn.execute("UPDATE notify_routes SET channels = array_remove(channels, $1) WHERE $1 = ANY(channels)", channel_id)
    return Response(status_code=204)


@router.post("/channels/{channel_id}/test", status_code=202, summary="Queue a real delivery of a test notification", response_model=QueuedOut)
async def test_channel(channel_id: uuid.UUID, caller: Writer, parts: Parts, request: Request) -> dict[str, Any]:
    settings = _settings(request)
    async with parts.db.tenant(caller.tenant_id) as conn:
        row = await _channel_row(conn, channel_id)
        slug = await conn.fetchval("SELECT slug FROM tenants WHERE id = pulse_current_tenant()")
        n = channel_test_notification(
            tenant=slug or str(caller.tenant_id), console_url=settings.console_url.rstrip("/") + "/app/", now=dt.datetime.now(dt.UTC), channel=row["name"]
        )
        delivery = await store.enqueue(
            conn, channel_id=channel_id, kind=row["kind"], event="test", dedup=f"test:{uuid.uuid4()}", notification=n, budget=settings.max_attempts
        )
    _wake(request)
    return {"delivery_id": str(delivery)}


# --- routes ------------------------------------------------------------------------------------


class RouteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=100)
    enabled: bool = True
    min_severity: Severity = "info"
    alert_types: list[str] = Field(default_factory=list, max_length=50)
    sites: list[str] = Field(default_factory=list, max_length=200)
    device_tags: dict[str, str] = Field(default_factory=dict, max_length=20)
    channels: list[uuid.UUID] = Field(default_factory=list, max_length=20)
    escalation_policy: uuid.UUID | None = None
    throttle_s: int = Field(default=0, ge=0, le=86400)


def _route_out(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "name": row["name"],
        "enabled": row["enabled"],
        "min_severity": row["min_severity"],
        "alert_types": list(row["alert_types"]),
        "sites": list(row["sites"]),
        "device_tags": json.loads(row["device_tags"]),
        "channels": [str(c) for c in row["channels"]],
        "escalation_policy": str(row["escalation_policy"]) if row["escalation_policy"] else None,
        "throttle_s": row["throttle_s"],
        "created": _iso(row["created_at"]),
    }


async def _check_route(conn: asyncpg.Connection, body: RouteIn) -> None:
    found = {r["id"] for r in await conn.fetch("SELECT id FROM notify_channels WHERE id = ANY($1)", body.channels)}
    if missing := [str(c) for c in body.channels if c not in found]:
        raise InvalidError(Code.NOTIFY_BAD_ROUTE, f"route: no such channel in your tenant: {', '.join(missing)}", channels=",".join(missing))
    if body.escalation_policy and not await conn.fetchval("SELECT 1 FROM escalation_policies WHERE id = $1", body.escalation_policy):
        raise InvalidError(Code.NOTIFY_BAD_ROUTE, f"route: no such escalation policy in your tenant: {body.escalation_policy}")


@router.get("/routes", summary="Routing rules", response_model=paging.Page[RouteOut])
async def list_routes(caller: Reader, parts: Parts, limit: int = Limit, cursor: paging.CursorQuery = None) -> dict[str, Any]:
    async with parts.db.tenant(caller.tenant_id) as conn:
        return await _list(conn, "notify_routes", "*", cursor, limit, _route_out)


@router.post("/routes", status_code=201, summary="Create a routing rule", response_model=RouteOut)
async def create_route(body: RouteIn, caller: Writer, parts: Parts) -> dict[str, Any]:
    async with parts.db.tenant(caller.tenant_id) as conn:
        await _check_route(conn, body)
        row = await store.create_route(conn, **body.model_dump())
    return _route_out(row)


@router.get("/routes/{route_id}", summary="One routing rule", response_model=RouteOut)
async def get_route(route_id: uuid.UUID, caller: Reader, parts: Parts) -> dict[str, Any]:
    async with parts.db.tenant(caller.tenant_id) as conn:
        row = await conn.fetchrow("SELECT * FROM notify_routes WHERE id = $1", route_id)
    if row is None:
        raise NotFoundError("route", route_id=str(route_id))
    return _route_out(row)


@router.put("/routes/{route_id}", summary="Replace a routing rule", response_model=RouteOut)
async def replace_route(route_id: uuid.UUID, body: RouteIn, caller: Writer, parts: Parts) -> dict[str, Any]:
    async with parts.db.tenant(caller.tenant_id) as conn:
        if not await conn.fetchval("SELECT 1 FROM notify_routes WHERE id = $1 FOR UPDATE", route_id):
            raise NotFoundError("route", route_id=str(route_id))
        await _check_route(conn, body)
        row = await conn.fetchrow(
            "UPDATE notify_routes SET name = $2, enabled = $3, min_severity = $4, alert_types = $5, sites = $6, device_tags = $7::jsonb, "
            "channels = $8, escalation_policy = $9, throttle_s = $10, updated_at = now() WHERE id = $1 RETURNING *",
            route_id,
            body.name,
            body.enabled,
            body.min_severity,
            body.alert_types,
            body.sites,
            json.dumps(body.device_tags),
            body.channels,
            body.escalation_policy,
            body.throttle_s,
        )
    return _route_out(row)


@router.delete("/routes/{route_id}", status_code=204, summary="Delete a routing rule")
async def delete_route(route_id: uuid.UUID, caller: Writer, parts: Parts) -> Response:
    async with parts.db.tenant(caller.tenant_id) as conn:
        if await conn.fetchval("DELETE FROM notify_routes WHERE id = $1 RETURNING id", route_id) is None:
            raise NotFoundError("route", route_id=str(route_id))
    return Response(status_code=204)


# --- deliveries --------------------------------------------------------------------------------

DeliveryStatus = Literal["pending", "sending", "delivered", "failed", "dead"]
_DELIVERIES = "notify_deliveries d JOIN notify_channels c ON c.id = d.channel_id"


@router.get("/deliveries", summary="Deliveries, newest first (status=dead: the dead letters)", response_model=paging.Page[DeliveryOut])
async def list_deliveries(
    caller: Reader,
    parts: Parts,
    status: DeliveryStatus | None = None,
    alert_id: int | None = None,
    channel_id: uuid.UUID | None = None,
    limit: int = Limit,
    cursor: paging.CursorQuery = None,
) -> dict[str, Any]:
    where: list[str] = ["true"]
    args: list[object] = []
    for column, value in (("d.status", status), ("d.alert_id", alert_id), ("d.channel_id", channel_id)):
        if value is not None:
            args.append(value)
            where.append(f"{column} = ${len(args)}")
    if (after := paging.decode(cursor, dt.datetime, str)) is not None:
        args += [after[0], after[1]]
        where.append(f"(d.created_at, d.id::text) < (${len(args) - 1}, ${len(args)})")
    args.append(limit + 1)
    async with parts.db.tenant(caller.tenant_id) as conn:
        rows = await conn.fetch(
            f"SELECT {store.DELIVERY_COLS} FROM {_DELIVERIES} WHERE {' AND '.join(where)} "
            f"ORDER BY d.created_at DESC, d.id::text DESC LIMIT ${len(args)}",
            *args,
        )
    return paging.page(rows, limit, store.delivery_out, _created_key)


async def _delivery(conn: asyncpg.Connection, delivery_id: uuid.UUID) -> dict[str, Any]:
    row = await conn.fetchrow(f"SELECT {store.DELIVERY_COLS} FROM {_DELIVERIES} WHERE d.id = $1", delivery_id)
    if row is None:
        raise NotFoundError("delivery", delivery_id=str(delivery_id))
    attempts = await conn.fetch(
        "SELECT n, at, outcome, status_code, code, error, duration_ms FROM notify_attempts WHERE delivery_id = $1 ORDER BY id", delivery_id
    )
    out = store.delivery_out(row)
    out["attempt_log"] = [{**dict(a), "at": _iso(a["at"])} for a in attempts]
    return out


@router.get("/deliveries/{delivery_id}", summary="One delivery with its attempt log", response_model=DeliveryDetail)
async def get_delivery(delivery_id: uuid.UUID, caller: Reader, parts: Parts) -> dict[str, Any]:
    async with parts.db.tenant(caller.tenant_id) as conn:
        return await _delivery(conn, delivery_id)


@router.post("/deliveries/{delivery_id}/retry", status_code=202, summary="Send a dead-lettered (or failed) delivery again", response_model=DeliveryDetail)
async def retry_delivery(delivery_id: uuid.UUID, caller: Writer, parts: Parts, request: Request) -> dict[str, Any]:
    async with parts.db.tenant(caller.tenant_id) as conn:
        status = await conn.fetchval("SELECT status FROM notify_deliveries WHERE id = $1 FOR UPDATE", delivery_id)
        if status is None:
            raise NotFoundError("delivery", delivery_id=str(delivery_id))
        if status not in ("dead", "failed"):
            raise ConflictError(Code.NOTIFY_NOT_RETRYABLE, f"this delivery is {status}; only dead or failed deliveries are retried by hand", status=status)
        await conn.execute(
            "UPDATE notify_deliveries SET status = 'pending', next_attempt_at = clock_timestamp(), budget = attempts + $2, "
            "claim_token = NULL, claimed_at = NULL WHERE id = $1",
            delivery_id,
            _settings(request).max_attempts,
        )
        out = await _delivery(conn, delivery_id)
    _wake(request)
    return out


# --- escalation policies -----------------------------------------------------------------------


class TargetIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    channel: uuid.UUID | None = None
    schedule: uuid.UUID | None = None

    @model_validator(mode="after")
    def _one(self) -> TargetIn:
        if (self.channel is None) == (self.schedule is None):
            raise ValueError('a target is {"channel": id} or {"schedule": id}')
        return self


class LevelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    delay_s: int = Field(default=900, ge=1, le=86400)
    targets: list[TargetIn] = Field(min_length=1, max_length=10)


class PolicyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=100)
    levels: list[LevelIn]
    repeat: int = 0


def _policy_out(row: asyncpg.Record) -> dict[str, Any]:
    return {"id": str(row["id"]), "name": row["name"], "levels": json.loads(row["levels"]), "repeat": row["repeat"], "created": _iso(row["created_at"])}


async def _checked_levels(conn: asyncpg.Connection, body: PolicyIn) -> str:
    levels = [{"delay_s": lv.delay_s, "targets": [t.model_dump(mode="json", exclude_none=True) for t in lv.targets]} for lv in body.levels]
    store.pure_policy(body.name, levels, body.repeat)
    channels = {t.channel for lv in body.levels for t in lv.targets if t.channel}
    schedules = {t.schedule for lv in body.levels for t in lv.targets if t.schedule}
    found_c = {r["id"] for r in await conn.fetch("SELECT id FROM notify_channels WHERE id = ANY($1)", list(channels))}
    found_s = {r["id"] for r in await conn.fetch("SELECT id FROM oncall_schedules WHERE id = ANY($1)", list(schedules))}
    if missing := sorted(map(str, (channels - found_c) | (schedules - found_s))):
        raise ConfigError(Code.NOTIFY_BAD_POLICY, f"escalation policy: no such channel or schedule in your tenant: {', '.join(missing)}")
    return json.dumps(levels)


@escalation_router.get("", summary="Escalation policies", response_model=paging.Page[PolicyOut])
async def list_policies(caller: Reader, parts: Parts, limit: int = Limit, cursor: paging.CursorQuery = None) -> dict[str, Any]:
    async with parts.db.tenant(caller.tenant_id) as conn:
        return await _list(conn, "escalation_policies", "id, name, levels, repeat, created_at", cursor, limit, _policy_out)


@escalation_router.post("", status_code=201, summary="Create an escalation policy (1-5 levels)", response_model=PolicyOut)
async def create_policy(body: PolicyIn, caller: Writer, parts: Parts) -> dict[str, Any]:
    async with parts.db.tenant(caller.tenant_id) as conn:
        levels = await _checked_levels(conn, body)
        row = await conn.fetchrow(
            "INSERT INTO escalation_policies (tenant_id, name, levels, repeat) VALUES (pulse_current_tenant(), $1, $2::jsonb, $3) "
            "RETURNING id, name, levels, repeat, created_at",
            body.name,
            levels,
            body.repeat,
        )
    return _policy_out(row)


@escalation_router.get("/{policy_id}", summary="One escalation policy", response_model=PolicyOut)
async def get_policy(policy_id: uuid.UUID, caller: Reader, parts: Parts) -> dict[str, Any]:
    async with parts.db.tenant(caller.tenant_id) as conn:
        row = await conn.fetchrow("SELECT id, name, levels, repeat, created_at FROM escalation_policies WHERE id = $1", policy_id)
    if row is None:
        raise NotFoundError("escalation policy", policy_id=str(policy_id))
    return _policy_out(row)


@escalation_router.put("/{policy_id}", summary="Replace an escalation policy (running escalations continue under it)", response_model=PolicyOut)
async def replace_policy(policy_id: uuid.UUID, body: PolicyIn, caller: Writer, parts: Parts) -> dict[str, Any]:
    async with parts.db.tenant(caller.tenant_id) as conn:
        if not await conn.fetchval("SELECT 1 FROM escalation_policies WHERE id = $1 FOR UPDATE", policy_id):
            raise NotFoundError("escalation policy", policy_id=str(policy_id))
        levels = await _checked_levels(conn, body)
        row = await conn.fetchrow(
            "UPDATE escalation_policies SET name = $2, levels = $3::jsonb, repeat = $4, updated_at = now() WHERE id = $1 "
            "RETURNING id, name, levels, repeat, created_at",
            policy_id,
            body.name,
            levels,
            body.repeat,
        )
    return _policy_out(row)


@escalation_router.delete("/{policy_id}", status_code=204, summary="Delete an escalation policy (routes stop escalating)")
async def delete_policy(policy_id: uuid.UUID, caller: Writer, parts: Parts) -> Response:
    async with parts.db.tenant(caller.tenant_id) as conn:
        if await conn.fetchval("DELETE FROM escalation_policies WHERE id = $1 RETURNING id", policy_id) is None:
            raise NotFoundError("escalation policy", policy_id=str(policy_id))
    return Response(status_code=204)


# --- on-call schedules -------------------------------------------------------------------------


class MemberIn(BaseModel):
    """A user of the tenant (``user_id``; ``name`` defaults to theirs) or a named contact (``name``),
    with the channel that pages them: required, and it must be enabled (``oncall.member_unreachable``)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(default="", max_length=200)
    user_id: uuid.UUID | None = None
    channel: uuid.UUID | None = None


class LayerIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64)
    rotation: Literal["daily", "weekly"]
    handoff: str = Field(default="09:00", pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    handoff_weekday: int | None = Field(default=None, ge=0, le=6)
    start: dt.datetime
    members: list[MemberIn] = Field(min_length=1, max_length=100)
    restrictions: list[dict[str, Any]] = Field(default_factory=list, max_length=14)
    """Optional windows (``{"days": [0-6], "start": "HH:MM", "end": "HH:MM"}``); outside them the layer has nobody."""


class OverrideIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: uuid.UUID | None = None
    start: dt.datetime
    end: dt.datetime
    member: MemberIn


class ScheduleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=100)
    time_zone: str
    layers: list[LayerIn] = Field(min_length=1, max_length=10)
    overrides: list[OverrideIn] = Field(default_factory=list, max_length=200)


def _member_json(m: MemberIn) -> dict[str, Any]:
    """As stored: ``user_id`` only when the member is a user (a named contact keeps the old shape)."""
    return m.model_dump(mode="json", exclude_none=True) | {"channel": None if m.channel is None else str(m.channel)}


def _layers_json(body: ScheduleIn) -> list[dict[str, Any]]:
    return [layer.model_dump(mode="json") | {"members": [_member_json(m) for m in layer.members]} for layer in body.layers]


def _overrides_json(body: ScheduleIn) -> list[dict[str, Any]]:
    return [o.model_dump(mode="json") for o in body.overrides]


async def _check_members(conn: asyncpg.Connection, body: ScheduleIn) -> None:
    """Every member is a user of the tenant or a named contact (a user's name fills an empty ``name``);
    ``_check_reachable``: and can be reached: its channel exists in the tenant and is enabled."""
    members = [m for layer in body.layers for m in layer.members] + [o.member for o in body.overrides]
    users = {m.user_id for m in members if m.user_id}
    known = {
        r["id"]: r
        for r in await conn.fetch("SELECT id, email, display_name, disabled FROM users WHERE id = ANY($1::uuid[])", list(users))
    }
    for m in members:
        if m.user_id is not None:
            user = known.get(m.user_id)
            if user is None or user["disabled"]:
                why = "is not a user of your tenant" if user is None else "is disabled"
                raise InvalidError(Code.ONCALL_UNKNOWN_USER, f"on-call member: user {m.user_id} {why}", user_id=str(m.user_id))
            m.name = m.name or user["display_name"] or user["email"]
        if not m.name.strip():
            raise InvalidError(Code.API_INVALID, "an on-call member needs a name or a user_id", field="name")


async def _check_reachable(conn: asyncpg.Connection, body: ScheduleIn) -> None:
    members = [m for layer in body.layers for m in layer.members] + [o.member for o in body.overrides]
    channels = {m.channel for m in members if m.channel}
    found = {r["id"]: r for r in await conn.fetch("SELECT id, enabled FROM notify_channels WHERE id = ANY($1)", list(channels))}
    if missing := sorted(map(str, channels - set(found))):
        raise ConfigError(Code.NOTIFY_BAD_SCHEDULE, f"on-call schedule: no such channel in your tenant: {', '.join(missing)}")
    for m in members:
        if m.channel is None or not found[m.channel]["enabled"]:
            why = "has no channel" if m.channel is None else f"has a disabled channel ({m.channel})"
            raise InvalidError(
                Code.ONCALL_MEMBER_UNREACHABLE, f"on-call member {m.name} {why}: paging them would reach nobody", member=m.name
            )


async def _check_schedule(conn: asyncpg.Connection, body: ScheduleIn) -> None:
    await _check_members(conn, body)
    store.schedule_of(body.name, body.time_zone, _layers_json(body), _overrides_json(body))
    await _check_reachable(conn, body)


async def _save_overrides(conn: asyncpg.Connection, schedule_id: uuid.UUID, body: ScheduleIn) -> None:
    await conn.execute("DELETE FROM oncall_overrides WHERE schedule_id = $1", schedule_id)
    await conn.executemany(
        "INSERT INTO oncall_overrides (id, tenant_id, schedule_id, starts_at, ends_at, member, position) "
        "VALUES ($1, pulse_current_tenant(), $2, $3, $4, $5::jsonb, $6)",
        [(o.id or uuid.uuid4(), schedule_id, o.start, o.end, json.dumps(_member_json(o.member)), i) for i, o in enumerate(body.overrides)],
    )


async def _schedule_out(conn: asyncpg.Connection, schedule_id: uuid.UUID) -> dict[str, Any]:
    loaded = await store.load_schedule(conn, schedule_id)
    if loaded is None:
        raise NotFoundError("on-call schedule", schedule_id=str(schedule_id))
    row, overrides = loaded
    return {
        "id": str(row["id"]),
        "name": row["name"],
        "time_zone": row["time_zone"],
        "layers": json.loads(row["layers"]),
        "overrides": overrides,
        "created": _iso(row["created_at"]),
    }


@oncall_router.get("", summary="On-call schedules", response_model=paging.Page[ScheduleOut])
async def list_schedules(caller: Reader, parts: Parts, limit: int = Limit, cursor: paging.CursorQuery = None) -> dict[str, Any]:
    async with parts.db.tenant(caller.tenant_id) as conn:
        page = await _list(conn, "oncall_schedules", "id, created_at", cursor, limit, lambda r: r["id"])
        return paging.Page(items=[await _schedule_out(conn, i) for i in page.items], next_cursor=page.next_cursor)


@oncall_router.post("", status_code=201, summary="Create an on-call schedule", response_model=ScheduleOut)
async def create_schedule(body: ScheduleIn, caller: Writer, parts: Parts) -> dict[str, Any]:
    async with parts.db.tenant(caller.tenant_id) as conn:
        await _check_schedule(conn, body)
        schedule_id = await conn.fetchval(
            "INSERT INTO oncall_schedules (tenant_id, name, time_zone, layers) VALUES (pulse_current_tenant(), $1, $2, $3::jsonb) RETURNING id",
            body.name,
            body.time_zone,
            json.dumps(_layers_json(body)),
        )
        await _save_overrides(conn, schedule_id, body)
        return await _schedule_out(conn, schedule_id)


@oncall_router.get("/{schedule_id}", summary="One on-call schedule", response_model=ScheduleOut)
async def get_schedule(schedule_id: uuid.UUID, caller: Reader, parts: Parts) -> dict[str, Any]:
    async with parts.db.tenant(caller.tenant_id) as conn:
        return await _schedule_out(conn, schedule_id)


@oncall_router.put("/{schedule_id}", summary="Replace an on-call schedule (overrides included)", response_model=ScheduleOut)
async def replace_schedule(schedule_id: uuid.UUID, body: ScheduleIn, caller: Writer, parts: Parts) -> dict[str, Any]:
    async with parts.db.tenant(caller.tenant_id) as conn:
        if not await conn.fetchval("SELECT 1 FROM oncall_schedules WHERE id = $1 FOR UPDATE", schedule_id):
            raise NotFoundError("on-call schedule", schedule_id=str(schedule_id))
        await _check_schedule(conn, body)
        await conn.execute(
            "UPDATE oncall_schedules SET name = $2, time_zone = $3, layers = $4::jsonb, updated_at = now() WHERE id = $1",
            schedule_id,
            body.name,
            body.time_zone,
            json.dumps(_layers_json(body)),
        )
        await _save_overrides(conn, schedule_id, body)
        return await _schedule_out(conn, schedule_id)


@oncall_router.delete("/{schedule_id}", status_code=204, summary="Delete an on-call schedule")
async def delete_schedule(schedule_id: uuid.UUID, caller: Writer, parts: Parts) -> Response:
    async with parts.db.tenant(caller.tenant_id) as conn:
        if await conn.fetchval("DELETE FROM oncall_schedules WHERE id = $1 RETURNING id", schedule_id) is None:
            raise NotFoundError("on-call schedule", schedule_id=str(schedule_id))
    return Response(status_code=204)


async def _pure_schedule(parts: Parts, caller: Reader, schedule_id: uuid.UUID) -> tuple[Any, dict[str, str | None]]:
    async with parts.db.tenant(caller.tenant_id) as conn:
        loaded = await store.load_schedule(conn, schedule_id)
    if loaded is None:
        raise NotFoundError("on-call schedule", schedule_id=str(schedule_id))
    row, overrides = loaded
    layers = json.loads(row["layers"])
    return store.schedule_of(row["name"], row["time_zone"], layers, overrides), store.member_channels(layers, overrides)


def _member(name: str | None, channels: dict[str, str | None]) -> dict[str, Any] | None:
    return None if name is None else {"name": name, "channel": channels.get(name)}


def _source(source: str) -> dict[str, Any]:
    return {"layer": source.removeprefix("layer:")} if source.startswith("layer:") else {"layer": None, "override": source == "override"}


@oncall_router.get("/{schedule_id}/now", summary="Who is on call now, in which layer, until when", response_model=OnCallNow)
async def on_call_now(schedule_id: uuid.UUID, caller: Reader, parts: Parts, at: dt.datetime | None = None) -> dict[str, Any]:
    schedule, channels = await _pure_schedule(parts, caller, schedule_id)
    when = at or parts.clock()
    if when.tzinfo is None:
        raise InvalidError(Code.API_INVALID, "at needs a time zone")
    who = on_call_at(schedule, when)
    shifts = timeline(schedule, when, days=TIMELINE_DAYS)
    until = shifts[0].end if shifts and len(shifts) > 1 else None
    layer = who.source.removeprefix("layer:") if who.source.startswith("layer:") else ("override" if who.source == "override" else None)
    member = _member(who.who, channels)
    if member is not None:
        async with parts.db.tenant(caller.tenant_id) as conn:
            member |= await _reach(conn, schedule_id, member)
    return {"member": member, "layer": layer, "until": _iso(until)}


async def _reach(conn: asyncpg.Connection, schedule_id: uuid.UUID, member: dict[str, Any]) -> dict[str, Any]:
    """Who the member is (their user, if one) and how paging reaches them (their channel)."""
    loaded = await store.load_schedule(conn, schedule_id)
    user_id = None
    if loaded is not None:
        row, overrides = loaded
        every = [m for layer in json.loads(row["layers"]) for m in layer["members"]] + [o["member"] for o in overrides]
        user_id = next((m.get("user_id") for m in every if m.get("name") == member["name"] and m.get("user_id")), None)
    reached_by = None
    if member["channel"]:
        ch = await conn.fetchrow("SELECT name, kind, enabled FROM notify_channels WHERE id = $1", uuid.UUID(member["channel"]))
        reached_by = None if ch is None else {"channel": member["channel"], "name": ch["name"], "kind": ch["kind"], "enabled": ch["enabled"]}
    return {"user_id": user_id, "reached_by": reached_by}


@oncall_router.get("/{schedule_id}/timeline", summary="The shifts for the next days (default 14)", response_model=Timeline, response_model_exclude_unset=True)
async def on_call_timeline(
    schedule_id: uuid.UUID, caller: Reader, parts: Parts, days: int = Query(default=TIMELINE_DAYS, ge=1, le=90), start: dt.datetime | None = None
) -> dict[str, Any]:
    schedule, channels = await _pure_schedule(parts, caller, schedule_id)
    begin = start or parts.clock()
    if begin.tzinfo is None:
        raise InvalidError(Code.API_INVALID, "start needs a time zone")
    shifts = timeline(schedule, begin, days=days)
    return {
        "from": _iso(begin),
        "to": _iso(begin + dt.timedelta(days=days)),
        "segments": [
            {"start": _iso(s.start), "end": _iso(s.end), "member": _member(s.who, channels), **_source(s.source)} for s in shifts
        ],
    }
