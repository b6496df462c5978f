"""Device twin and commands: tenant-scoped API (docs/cloud.md, "Device twin and commands").

``{device}`` is the device id string (as devices send it). A device of another tenant does not exist
here (404). Users write only ``desired``; the device writes ``reported`` (through its gateway or HTTP
ingest). Every accepted change is a row of the twin's history: who, when, and the diff
(``TwinChange``); user changes and new commands are also in the tenant's audit log."""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

import asyncpg
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from pulse.cloud import twins
from pulse.cloud.api import paging
from pulse.cloud.api.deps import Parts, Reader, Writer
from pulse.cloud.db.pool import audit
from pulse.cloud.errors import ConflictError, NotFoundError
from pulse.cloud.live import LiveHub
from pulse.protocol import commands
from pulse.protocol.errors import Code, TwinError
from pulse.protocol.twin import TwinLimits, update_from_obj

router = APIRouter(prefix="/api/v1/devices", tags=["twin and commands"])

MAX_EXPIRES_IN_S = 7 * 24 * 3600
CommandStateName = Literal["queued", "delivered", "sent", "succeeded", "failed", "expired"]


def _live(request: Request) -> LiveHub:
    return request.app.state.live  # type: ignore[no-any-return]


def _limits(parts: Parts) -> TwinLimits:
    return TwinLimits(max_state_bytes=parts.settings.twin_max_state_bytes)


# --- response models ---------------------------------------------------------------------------


class TwinStateOut(BaseModel):
    desired: dict[str, Any]
    reported: dict[str, Any]
    delta: dict[str, Any] = Field(description="desired keys whose value differs from or is missing in reported")


class TwinMetadata(BaseModel):
    desired: dict[str, Any] = Field(description="per-leaf {timestamp} (ms) of the last change")
    reported: dict[str, Any]


class TwinOut(BaseModel):
    version: int
    timestamp: int = Field(description="when the twin was read (ms)")
    state: TwinStateOut
    metadata: TwinMetadata


class TwinChangeOut(BaseModel):
    version: int
    at: str
    actor: str | None
    source: str
    change: dict[str, Any]


class CommandStep(BaseModel):
    state: str
    at: str


class CommandOut(BaseModel):
    id: str
    device: str
    name: str
    params: dict[str, Any]
    state: str
    created: str
    expires: str
    updated: str
    result: dict[str, Any] | None
    error: str | None
    history: list[CommandStep]


async def _device(conn: asyncpg.Connection, tenant: uuid.UUID, device_id: str) -> uuid.UUID:
    row = await conn.fetchval("SELECT id FROM devices WHERE tenant_id = $1 AND device_id = $2", tenant, device_id)
    if row is None:
        raise NotFoundError("device", device_id=device_id)
    return row  # type: ignore[no-any-return]


# --- twin --------------------------------------------------------------------------------------


@router.get("/{device}/twin", summary="A device's twin: desired, reported, delta, metadata, version", response_model=TwinOut)
async def get_twin(device: str, caller: Reader, parts: Parts) -> dict[str, Any]:
    async with parts.db.tenant(caller.tenant_id) as conn:
        await _device(conn, caller.tenant_id, device)
        doc = await twins.load(conn, caller.tenant_id, device)
    return twins.document_out(doc, int(time.time() * 1000))


@router.patch(
    "/{device}/twin",
    summary="Change desired state: body {state: {desired: {...} | null}, version?}; 409 twin.version_conflict on a stale version",
    response_model=TwinOut,
)
async def patch_twin(device: str, body: dict[str, Any], caller: Writer, parts: Parts, request: Request) -> dict[str, Any]:
    update = update_from_obj(body)  # TwinError -> 422 with its code
    if update.reported is not None or update.clear_reported:
        raise TwinError(Code.TWIN_BAD_UPDATE, "users write desired only; reported is what the device says it runs")
    now_ms = int(time.time() * 1000)
    try:
        async with parts.db.tenant(caller.tenant_id) as conn:
            device_uuid = await _device(conn, caller.tenant_id, device)
            doc, change, gateways = await twins.update_desired(
                conn, caller.tenant_id, device_uuid, device, update, actor=caller.actor, now_ms=now_ms, limits=_limits(parts)
            )
            await audit(
                conn,
                actor=caller.actor,
                action="twin.update",
                target=device,
                tenant_id=caller.tenant_id,
                detail={"change": change.to_json()},
            )
    except TwinError as exc:
        if exc.code is Code.TWIN_VERSION_CONFLICT:
            raise ConflictError(exc.code, exc.message, current_version=exc.context.get("current")) from exc
        raise
    parts.sync.notifier.wake(gateways)
    _live(request).notify(caller.tenant_id, device, "twin", {"version": doc.version})
    return twins.document_out(doc, now_ms)


@router.get("/{device}/twin/history", summary="Every accepted change of a device's twin, newest first (paged)", response_model=paging.Page[TwinChangeOut])
async def twin_history(
    device: str,
    caller: Reader,
    parts: Parts,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: paging.CursorQuery = None,
) -> paging.Page[dict[str, Any]]:
    before = paging.decode(cursor, int)
    async with parts.db.tenant(caller.tenant_id) as conn:
        await _device(conn, caller.tenant_id, device)
        rows = await twins.history_rows(conn, caller.tenant_id, device, limit=limit + 1, before=None if before is None else int(before[0]))
    return paging.page(rows, limit, twins.history_out, lambda r: (r["id"],))


# --- commands ----------------------------------------------------------------------------------


class CommandIn(BaseModel):
    name: str = Field(description="1-64 letters, digits, '_', '.', '-' starting with a letter")
    params: dict[str, Any] = Field(default_factory=dict, description="a JSON object, at most 4096 bytes")
    expires_in_s: int = Field(default=3600, ge=1, le=MAX_EXPIRES_IN_S, description="seconds until the command expires")


@router.post("/{device}/commands", status_code=201, summary="Send a command to a device (through its gateway)", response_model=CommandOut)
async def create_command(device: str, body: CommandIn, caller: Writer, parts: Parts, request: Request) -> dict[str, Any]:
    now_ms = int(time.time() * 1000)
    cmd = commands.new_command(  # CommandError -> 422 command.bad
        id=uuid.uuid4().hex,
        device_id=device,
        name=body.name,
        params=body.params,
        now_ms=now_ms,
        expires_at_ms=now_ms + body.expires_in_s * 1000,
    )
    async with parts.db.tenant(caller.tenant_id) as conn:
        device_uuid = await _device(conn, caller.tenant_id, device)
        gateways = await twins.create_command(conn, caller.tenant_id, device_uuid, cmd, actor=caller.actor)
        await audit(
            conn,
            actor=caller.actor,
            action="command.create",
            target=device,
            tenant_id=caller.tenant_id,
            detail={"id": cmd.id, "name": cmd.name, "params": cmd.params, "expires_in_s": body.expires_in_s},
        )
    parts.sync.notifier.wake(gateways)
    _live(request).notify(caller.tenant_id, device, "command", {"id": cmd.id, "state": cmd.state.value})
    return twins.command_out(cmd)


@router.get("/{device}/commands", summary="A device's commands, newest first (paged)", response_model=paging.Page[CommandOut])
async def list_commands(
    device: str,
    caller: Reader,
    parts: Parts,
    state: CommandStateName | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: paging.CursorQuery = None,
) -> paging.Page[dict[str, Any]]:
    after = paging.decode(cursor, int)
    before = None if after is None else int(after[0])
    async with parts.db.tenant(caller.tenant_id) as conn:
        await _device(conn, caller.tenant_id, device)
        rows = await conn.fetch(
            "SELECT n, document FROM commands WHERE tenant_id = $1 AND device_id = $2"
            " AND ($3::text IS NULL OR state = $3) AND ($4::bigint IS NULL OR n < $4) ORDER BY n DESC LIMIT $5",
            caller.tenant_id,
            device,
            state,
            before,
            limit + 1,
        )
    return paging.page(rows, limit, lambda r: twins.command_out(commands.from_json(r["document"])), lambda r: (r["n"],))


@router.get("/{device}/commands/{command_id}", summary="One command, with its state history", response_model=CommandOut)
async def get_command(device: str, command_id: str, caller: Reader, parts: Parts) -> dict[str, Any]:
    async with parts.db.tenant(caller.tenant_id) as conn:
        await _device(conn, caller.tenant_id, device)
        cmd = await twins.load_command(conn, caller.tenant_id, command_id)
    if cmd is None or cmd.device_id != device:
        raise NotFoundError("command", command_id=command_id)
    return twins.command_out(cmd)
