"""Devices: create, list (filters + keyset paging), get, update, decommission; credentials
(issue, list, rotate, revoke); bulk CSV import. Everything inside the caller's tenant (RLS)."""

from __future__ import annotations

import csv
import io
import json
import re
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

import asyncpg
from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, Field, field_validator

from pulse.cloud import twins
from pulse.cloud.api import paging
from pulse.cloud.api.deps import Parts, Reader, TenantCaller, Writer
from pulse.cloud.api.sites import site_exists
from pulse.cloud.auth.credentials import new_device_token
from pulse.cloud.db.pool import audit
from pulse.cloud.downlink import gateways_serving, push_credential, push_rules
from pulse.cloud.errors import ConflictError, InvalidError, NotFoundError, TooLargeError
from pulse.cloud.subscriptions.store import check_device_room
from pulse.protocol.errors import Code
from pulse.protocol.sync import CredentialChange
from pulse.protocol.topics import valid_device_id

router = APIRouter(prefix="/api/v1/devices", tags=["devices"])

Status = Literal["provisioned", "active", "disabled"]
_TAG_RE = re.compile(r"[A-Za-z0-9_.:=/-]{1,64}")
MAX_IMPORT_BYTES = 5 * 1024 * 1024
MAX_IMPORT_ROWS = 10_000


def _check_tags(tags: list[str]) -> list[str]:
    for tag in tags:
        if not _TAG_RE.fullmatch(tag):
            raise ValueError(f"tag {tag[:70]!r}: tags are 1-64 letters, digits or _ . : = / -")
    return sorted(set(tags))


def _check_device_id(value: str) -> str:
    if not valid_device_id(value):
        raise ValueError("device ids are 1-128 letters, digits, '_', '-', '.', ':'")
    return value


class DeviceIn(BaseModel):
    device_id: str = Field(description="the id the device sends as (envelope `device`, MQTT topic)")
    name: str = Field(default="", max_length=200)
    site_id: uuid.UUID | None = None
    tags: list[str] = Field(default_factory=list, max_length=64)
    status: Status = "provisioned"
    attributes: dict[str, str | int | float | bool | None] = Field(default_factory=dict)

    @field_validator("device_id")
    @classmethod
    def _device_id(cls, v: str) -> str:
        return _check_device_id(v)

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: list[str]) -> list[str]:
        return _check_tags(v)


class DevicePatch(BaseModel):
    name: str | None = Field(default=None, max_length=200)
    site_id: uuid.UUID | None = None
    gateway_id: uuid.UUID | None = Field(default=None, description="the gateway whose broker the device connects to")
    tags: list[str] | None = Field(default=None, max_length=64)
    status: Status | None = None
    attributes: dict[str, str | int | float | bool | None] | None = None

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else _check_tags(v)


class DeviceOut(BaseModel):
    id: uuid.UUID
    device_id: str
    name: str
    site_id: uuid.UUID | None
    gateway_id: uuid.UUID | None
    tags: list[str]
    status: str
    attributes: dict[str, object]
    created_at: datetime
    updated_at: datetime
    decommissioned_at: datetime | None
    state: str | None = Field(
        default=None, description="online | stale | offline | unreachable | never_seen (docs/alerts.md); null in answers to a create or change"
    )
    last_seen_at: datetime | None = Field(default=None, description="when the cloud last heard from it (the built-in heartbeat)")


DevicePage = paging.Page[DeviceOut]


class CredentialOut(BaseModel):
    id: uuid.UUID
    created_at: datetime
    rotated_at: datetime | None
    revoked_at: datetime | None


class IssuedCredential(BaseModel):
    id: uuid.UUID
    device_id: str
    token: str = Field(description="shown once; Pulse keeps only a hash. Devices send it as Authorization: Bearer <token>")


class ImportRowError(BaseModel):
    row: int = Field(description="line number in the file (the header is line 1)")
    device_id: str | None
    code: str
    message: str


class ImportReport(BaseModel):
    imported: int
    errors: list[ImportRowError]


_COLS = "id, device_id, name, site_id, gateway_id, tags, status, attributes, created_at, updated_at, decommissioned_at"
# the registry row with its connectivity state and last seen time (Unix ms; 0: never)
_STATED = (
    "(SELECT d.*, COALESCE(s.status, 'never_seen') AS state, COALESCE((r.state->>'last_seen_ms')::bigint, 0) AS last_seen_ms, "
    "CASE COALESCE(s.status, 'never_seen') WHEN 'offline' THEN 0 WHEN 'unreachable' THEN 1 WHEN 'stale' THEN 2 "
    "WHEN 'online' THEN 3 ELSE 4 END AS state_rank FROM devices d "
    "LEFT JOIN device_states s ON s.tenant_id = d.tenant_id AND s.device_id = d.device_id "
    "LEFT JOIN rule_state r ON r.tenant_id = d.tenant_id AND r.device_id = d.device_id AND r.rule_id = 'NO_HEARTBEAT') AS x"
)
STATES = ("online", "stale", "offline", "unreachable", "never_seen")
# sort -> (key column, descending)
_SORTS: dict[str, tuple[str, bool]] = {"last_seen": ("last_seen_ms", False), "-last_seen": ("last_seen_ms", True), "state": ("state_rank", False)}


def _out(row: asyncpg.Record) -> DeviceOut:
    d = dict(row)
    d["attributes"] = json.loads(d["attributes"])
    seen = d.pop("last_seen_ms", None)
    d.pop("state_rank", None)
    d.pop("tenant_id", None)
    if seen:
        d["last_seen_at"] = datetime.fromtimestamp(seen / 1000, UTC)
    return DeviceOut(**d)


@router.post("", status_code=201, response_model=DeviceOut, summary="Register a device")
async def create_device(body: DeviceIn, caller: Writer, parts: Parts) -> DeviceOut:
    async with parts.db.tenant(caller.tenant_id) as conn:
        await site_exists(conn, body.site_id)
        await check_device_room(conn, caller.tenant_id, 1)
        try:
            row = await conn.fetchrow(
                f"INSERT INTO devices (tenant_id, device_id, name, site_id, tags, status, attributes)"
                f" VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb) RETURNING {_COLS}",
                caller.tenant_id,
                body.device_id,
                body.name,
                body.site_id,
                body.tags,
                body.status,
                json.dumps(body.attributes),
            )
        except asyncpg.UniqueViolationError as exc:
            raise ConflictError(Code.API_CONFLICT, f"a device {body.device_id!r} exists", device_id=body.device_id) from exc
    return _out(row)


@router.get("", response_model=DevicePage, summary="List devices (filters combine with AND; paged by device_id)")
async def list_devices(
    caller: Reader,
    parts: Parts,
    site: Annotated[uuid.UUID | None, Query(description="site id")] = None,
    tag: Annotated[list[str] | None, Query(description="device has this tag (repeat for all of several)")] = None,
    status: Annotated[Literal["provisioned", "active", "disabled", "decommissioned"] | None, Query()] = None,
    q: Annotated[str | None, Query(max_length=200, description="text in device_id or name (case-insensitive)")] = None,
    state: Annotated[Literal["online", "stale", "offline", "unreachable", "never_seen"] | None, Query(description="connectivity state")] = None,
    sort: Annotated[
        Literal["device_id", "last_seen", "-last_seen", "state"],
        Query(description="device_id; last_seen (longest silent first, never seen first); -last_seen (most recent first); state (offline first)"),
    ] = "device_id",
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: paging.CursorQuery = None,
) -> DevicePage:
    w = paging.Where()
    if state is not None:
        w.add(f"state = {w.arg(state)}")
    if site is not None:
        w.add(f"site_id = {w.arg(site)}")
    if tag:
        w.add(f"tags @> {w.arg(list(tag))}::text[]")
    if status is not None:
        w.add(f"status = {w.arg(status)}")
    if q:
        pattern = paging.like(q)
        w.add(f"(device_id ILIKE {w.arg(pattern)} OR name ILIKE {w.arg(pattern)})")
    if sort == "device_id":
        if (after := paging.decode(cursor, str)) is not None:
            w.add(f"device_id > {w.arg(after[0])}")
        order = "device_id"
    else:
        column, desc = _SORTS[sort]
        if (keys := paging.decode(cursor, int, str)) is not None:
            k, d = w.arg(keys[0]), w.arg(keys[1])
            w.add(f"({column} {'<' if desc else '>'} {k} OR ({column} = {k} AND device_id > {d}))")
        order = f"{column} {'DESC' if desc else 'ASC'}, device_id"
    sql = f"SELECT {_COLS}, state, last_seen_ms, state_rank FROM {_STATED} WHERE {w.sql} ORDER BY {order} LIMIT {w.arg(limit + 1)}"
    async with parts.db.tenant(caller.tenant_id) as conn:
        rows = await conn.fetch(sql, *w.args)
    if sort == "device_id":
        return paging.page(rows, limit, _out, lambda r: (r["device_id"],))
    column = _SORTS[sort][0]
    return paging.page(rows, limit, _out, lambda r: (r[column], r["device_id"]))


async def _get(conn: asyncpg.Connection, device: uuid.UUID) -> asyncpg.Record:
    row = await conn.fetchrow(f"SELECT {_COLS} FROM devices WHERE id = $1", device)
    if row is None:
        raise NotFoundError("device", device=str(device))
    return row


@router.get("/{device}", response_model=DeviceOut, summary="One device, with its connectivity state and last seen time")
async def get_device(device: uuid.UUID, caller: Reader, parts: Parts) -> DeviceOut:
    async with parts.db.tenant(caller.tenant_id) as conn:
        row = await conn.fetchrow(f"SELECT {_COLS}, state, last_seen_ms, state_rank FROM {_STATED} WHERE id = $1", device)
    if row is None:
        raise NotFoundError("device", device=str(device))
    return _out(row)


class UptimeSegment(BaseModel):
    status: str = Field(description="online | stale | offline | unreachable | unknown (before its first state)")
    start: datetime
    end: datetime


class UptimeOut(BaseModel):
    device_id: str
    window: str
    start: datetime
    end: datetime
    seconds: dict[str, float] = Field(description="time spent in each status within the window")
    online_ratio: float | None = Field(description="online time / time with a known state (null: no state in the window)")
    segments: list[UptimeSegment]


_WINDOWS = {"24h": 86_400, "7d": 7 * 86_400}


@router.get("/{device}/uptime", response_model=UptimeOut, summary="Online/offline over the last 24 h or 7 d (from its state history)")
async def uptime(device: uuid.UUID, caller: Reader, parts: Parts, window: Literal["24h", "7d"] = "24h") -> UptimeOut:
    end = parts.clock()
    start = end - timedelta(seconds=_WINDOWS[window])
    async with parts.db.tenant(caller.tenant_id) as conn:
        device_id = await conn.fetchval("SELECT device_id FROM devices WHERE id = $1", device)
        if device_id is None:
            raise NotFoundError("device", device=str(device))
        before = await conn.fetchrow(
            "SELECT status, at FROM device_state_history WHERE device_id = $1 AND at <= $2 ORDER BY at DESC, id DESC LIMIT 1",
            device_id,
            start,
        )
        changes = await conn.fetch(
            "SELECT status, at FROM device_state_history WHERE device_id = $1 AND at > $2 AND at <= $3 ORDER BY at, id",
            device_id,
            start,
            end,
        )
    points = [(start, before["status"] if before else "unknown"), *((c["at"], c["status"]) for c in changes)]
    segments: list[UptimeSegment] = []
    for (at, status), nxt in zip(points, [*points[1:], (end, "")], strict=True):
        if nxt[0] <= at:
            continue
        if segments and segments[-1].status == status:
            segments[-1].end = nxt[0]
        else:
            segments.append(UptimeSegment(status=status, start=at, end=nxt[0]))
    seconds: dict[str, float] = {}
    for seg in segments:
        seconds[seg.status] = seconds.get(seg.status, 0.0) + (seg.end - seg.start).total_seconds()
    known = sum(v for k, v in seconds.items() if k != "unknown")
    ratio = seconds.get("online", 0.0) / known if known else None
    return UptimeOut(device_id=device_id, window=window, start=start, end=end, seconds=seconds, online_ratio=ratio, segments=segments)


@router.patch("/{device}", response_model=DeviceOut, summary="Change a device")
async def update_device(device: uuid.UUID, body: DevicePatch, caller: Writer, parts: Parts) -> DeviceOut:
    changes = body.model_dump(exclude_unset=True)
    for key in ("name", "tags", "status", "attributes"):
        if key in changes and changes[key] is None:
            raise InvalidError(Code.API_INVALID, f"{key} cannot be null")
    async with parts.db.tenant(caller.tenant_id) as conn:
        current = await _get(conn, device)
        if current["status"] == "decommissioned":
            raise ConflictError(Code.API_CONFLICT, "a decommissioned device cannot be changed")
        if "site_id" in changes:
            await site_exists(conn, changes["site_id"])
        if "gateway_id" in changes and changes["gateway_id"] is not None:
            if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM gateways WHERE id = $1)", changes["gateway_id"]):
                raise InvalidError(Code.API_INVALID, "gateway_id names no gateway in your tenant", gateway_id=str(changes["gateway_id"]))
        before = set(await gateways_serving(conn, device))
        if "attributes" in changes:
            changes["attributes"] = json.dumps(changes["attributes"])
        sets = [f"{k} = ${i}{'::jsonb' if k == 'attributes' else ''}" for i, k in enumerate(changes, start=2)]
        row = await conn.fetchrow(
            f"UPDATE devices SET {', '.join([*sets, 'updated_at = now()'])} WHERE id = $1 RETURNING {_COLS}",
            device,
            *changes.values(),
        )
        woken = await _hand_over_credentials(conn, caller, device, row["device_id"], before)
        if woken:  # the gateways that now serve the device also get its twin and waiting commands
            arrived = sorted(set(await gateways_serving(conn, device)) - before)
            await twins.hand_over(conn, caller.tenant_id, row["device_id"], arrived, now_ms=int(time.time() * 1000))
        if {"tags", "site_id", "gateway_id", "status"} & set(changes) and await conn.fetchval("SELECT EXISTS (SELECT 1 FROM rules)"):
            # the gateways' rule sets carry the tags and sites of the devices they serve (rule scopes)
            woken = sorted(set(woken) | set(await push_rules(conn, caller.tenant_id)))
    parts.sync.notifier.wake(woken)
    if "status" in changes:
        parts.device_tokens.invalidate(device=device)
    return _out(row)


async def _hand_over_credentials(
    conn: asyncpg.Connection, caller: TenantCaller, device: uuid.UUID, device_id: str, before: set[uuid.UUID]
) -> list[uuid.UUID]:
    """When a device moves to other gateways (its gateway or site changed), the gateways that now
    serve it receive its active credentials and those that no longer do are told to drop them."""
    after = set(await gateways_serving(conn, device))
    if after == before:
        return []
    creds = await conn.fetch("SELECT id, secret_hash FROM device_credentials WHERE device = $1 AND revoked_at IS NULL", device)
    for cred in creds:
        await push_credential(conn, caller.tenant_id, device, CredentialChange(device_id, cred["id"].hex, "set", cred["secret_hash"]), sorted(after - before))
        await push_credential(conn, caller.tenant_id, device, CredentialChange(device_id, cred["id"].hex, "revoke", None), sorted(before - after))
    return sorted(after ^ before)


@router.post(
    "/{device}/decommission", response_model=DeviceOut, summary="Decommission: revoke credentials, stop ingest (audited)"
)
async def decommission_device(device: uuid.UUID, caller: Writer, parts: Parts) -> DeviceOut:
    async with parts.db.tenant(caller.tenant_id) as conn:
        current = await _get(conn, device)
        row = await conn.fetchrow(
            f"UPDATE devices SET status = 'decommissioned', decommissioned_at = coalesce(decommissioned_at, now()),"
            f" updated_at = now() WHERE id = $1 RETURNING {_COLS}",
            device,
        )
        revoked = await conn.fetchval(
            "WITH r AS (UPDATE device_credentials SET revoked_at = now() WHERE device = $1 AND revoked_at IS NULL RETURNING 1)"
            " SELECT count(*) FROM r",
            device,
        )
        creds = await conn.fetch("SELECT id FROM device_credentials WHERE device = $1", device)
        woken: set[uuid.UUID] = set()
        for cred in creds:
            change = CredentialChange(current["device_id"], cred["id"].hex, "revoke", None)
            woken.update(await push_credential(conn, caller.tenant_id, device, change))
        await _audit(conn, caller, "device.decommission", current["device_id"], {"credentials_revoked": revoked})
    parts.sync.notifier.wake(woken)
    parts.device_tokens.invalidate(device=device)
    return _out(row)


async def _audit(conn: asyncpg.Connection, caller: TenantCaller, action: str, target: str, detail: dict[str, object]) -> None:
    await audit(conn, actor=caller.actor, action=action, target=target, tenant_id=caller.tenant_id, detail=detail)


# --- credentials -------------------------------------------------------------------------------


@router.post(
    "/{device}/credentials", status_code=201, response_model=IssuedCredential, summary="Issue a device token (shown once)"
)
async def issue_credential(device: uuid.UUID, caller: Writer, parts: Parts) -> IssuedCredential:
    credential_id = uuid.uuid4()
    token = new_device_token(credential_id)
    async with parts.db.tenant(caller.tenant_id) as conn:
        current = await _get(conn, device)
        if current["status"] == "decommissioned":
            raise ConflictError(Code.API_CONFLICT, "a decommissioned device gets no credentials")
        await conn.execute(
            "INSERT INTO device_credentials (id, tenant_id, device, secret_hash) VALUES ($1, $2, $3, $4)",
            credential_id,
            caller.tenant_id,
            device,
            token.secret_hash,
        )
        woken = await push_credential(
            conn, caller.tenant_id, device, CredentialChange(current["device_id"], credential_id.hex, "set", token.secret_hash)
        )
        await _audit(conn, caller, "credential.issue", current["device_id"], {"credential": str(credential_id)})
    parts.sync.notifier.wake(woken)
    return IssuedCredential(id=credential_id, device_id=current["device_id"], token=str(token))


@router.get("/{device}/credentials", response_model=list[CredentialOut], summary="A device's credentials (never the secrets)")
async def list_credentials(device: uuid.UUID, caller: Reader, parts: Parts) -> list[CredentialOut]:
    async with parts.db.tenant(caller.tenant_id) as conn:
        await _get(conn, device)
        rows = await conn.fetch(
            "SELECT id, created_at, rotated_at, revoked_at FROM device_credentials WHERE device = $1 ORDER BY created_at", device
        )
    return [CredentialOut(**dict(r)) for r in rows]


@router.post(
    "/{device}/credentials/{credential}/rotate",
    response_model=IssuedCredential,
    summary="New secret for a credential; the old token stops working",
)
async def rotate_credential(device: uuid.UUID, credential: uuid.UUID, caller: Writer, parts: Parts) -> IssuedCredential:
    token = new_device_token(credential)
    async with parts.db.tenant(caller.tenant_id) as conn:
        current = await _get(conn, device)
        updated = await conn.fetchval(
            "UPDATE device_credentials SET secret_hash = $3, rotated_at = now()"
            " WHERE id = $1 AND device = $2 AND revoked_at IS NULL RETURNING id",
            credential,
            device,
            token.secret_hash,
        )
        if updated is None:
            raise NotFoundError("active credential", credential=str(credential))
        woken = await push_credential(
            conn, caller.tenant_id, device, CredentialChange(current["device_id"], credential.hex, "set", token.secret_hash)
        )
        await _audit(conn, caller, "credential.rotate", current["device_id"], {"credential": str(credential)})
    parts.sync.notifier.wake(woken)
    parts.device_tokens.invalidate(credential_id=credential)
    return IssuedCredential(id=credential, device_id=current["device_id"], token=str(token))


@router.delete("/{device}/credentials/{credential}", status_code=204, summary="Revoke a credential")
async def revoke_credential(device: uuid.UUID, credential: uuid.UUID, caller: Writer, parts: Parts) -> Response:
    async with parts.db.tenant(caller.tenant_id) as conn:
        current = await _get(conn, device)
        updated = await conn.fetchval(
            "UPDATE device_credentials SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1 AND device = $2 RETURNING id",
            credential,
            device,
        )
        if updated is None:
            raise NotFoundError("credential", credential=str(credential))
        woken = await push_credential(
            conn, caller.tenant_id, device, CredentialChange(current["device_id"], credential.hex, "revoke", None)
        )
        await _audit(conn, caller, "credential.revoke", current["device_id"], {"credential": str(credential)})
    parts.sync.notifier.wake(woken)
    parts.device_tokens.invalidate(credential_id=credential)
    return Response(status_code=204)


# --- bulk import -------------------------------------------------------------------------------

IMPORT_COLUMNS = ("device_id", "name", "site", "tags", "status")


@router.post(
    "/import",
    status_code=201,
    response_model=ImportReport,
    summary="Import devices from CSV, all or nothing",
    description=(
        "Body: text/csv with a header line. Columns: device_id (required), name, site (a site name), "
        "tags (separated by ';'), status (provisioned|active|disabled). Every row is checked first; if any row "
        "has an error, nothing is imported and the answer (422, code api.import_rejected) lists every bad row."
    ),
    openapi_extra={"requestBody": {"required": True, "content": {"text/csv": {"schema": {"type": "string"}}}}},
    responses={422: {"description": "nothing imported; per-row errors"}},
)
async def import_devices(request: Request, caller: Writer, parts: Parts) -> Response:
    body = await request.body()
    if len(body) > MAX_IMPORT_BYTES:
        raise TooLargeError(Code.INGEST_TOO_LARGE, f"imports are at most {MAX_IMPORT_BYTES} bytes; split the file")
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidError(Code.API_INVALID, "the file is not UTF-8 text") from exc
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in (reader.fieldnames or [])]
    if "device_id" not in header:
        raise InvalidError(
            Code.API_INVALID, f"the first line names the columns and includes device_id (known: {', '.join(IMPORT_COLUMNS)})"
        )
    unknown = [h for h in header if h not in IMPORT_COLUMNS]
    if unknown:
        raise InvalidError(Code.API_INVALID, f"unknown columns {unknown}; known: {', '.join(IMPORT_COLUMNS)}")
    reader.fieldnames = header
    errors: list[ImportRowError] = []
    rows: list[tuple[int, dict[str, str]]] = [
        (reader.line_num, {k: (v or "").strip() for k, v in r.items() if k}) for r in reader
    ]
    if len(rows) > MAX_IMPORT_ROWS:
        raise TooLargeError(Code.INGEST_TOO_LARGE, f"imports are at most {MAX_IMPORT_ROWS} rows; split the file")
    if not rows:
        raise InvalidError(Code.API_INVALID, "the file has a header but no devices")

    def bad(line: int, device_id: str | None, message: str, code: Code = Code.API_INVALID) -> None:
        errors.append(ImportRowError(row=line, device_id=device_id, code=str(code), message=message))

    async with parts.db.tenant(caller.tenant_id) as conn:
        sites = {r["name"]: r["id"] for r in await conn.fetch("SELECT id, name FROM sites")}
        wanted = [r.get("device_id", "") for _, r in rows]
        existing = {r["device_id"] for r in await conn.fetch("SELECT device_id FROM devices WHERE device_id = ANY($1)", wanted)}
        seen: dict[str, int] = {}
        records = []
        for line, r in rows:
            device_id = r.get("device_id", "")
            if not valid_device_id(device_id):
                bad(line, device_id or None, "device_id is 1-128 letters, digits, '_', '-', '.', ':'")
                continue
            if device_id in seen:
                bad(line, device_id, f"device_id repeats line {seen[device_id]}", Code.API_CONFLICT)
                continue
            seen[device_id] = line
            if device_id in existing:
                bad(line, device_id, "a device with this device_id exists", Code.API_CONFLICT)
            site_name = r.get("site", "")
            if site_name and site_name not in sites:
                bad(line, device_id, f"no site named {site_name!r}")
            status = r.get("status", "") or "provisioned"
            if status not in ("provisioned", "active", "disabled"):
                bad(line, device_id, "status is provisioned, active or disabled")
            try:
                tags = _check_tags([t.strip() for t in r.get("tags", "").split(";") if t.strip()])
            except ValueError as exc:
                bad(line, device_id, str(exc))
                continue
            name = r.get("name", "")
            if len(name) > 200:
                bad(line, device_id, "name is at most 200 characters")
            records.append((caller.tenant_id, device_id, name, sites.get(site_name), tags, status))
        if errors:
            report = ImportReport(imported=0, errors=errors)
            payload = {
                "code": str(Code.API_IMPORT_REJECTED),
                "message": f"{len(errors)} rows have errors; nothing was imported",
                **report.model_dump(),
            }
            return Response(json.dumps(payload), status_code=422, media_type="application/json")
        await check_device_room(conn, caller.tenant_id, len(records))
        try:
            await conn.executemany(
                "INSERT INTO devices (tenant_id, device_id, name, site_id, tags, status) VALUES ($1, $2, $3, $4, $5, $6)", records
            )
        except asyncpg.UniqueViolationError as exc:
            raise ConflictError(Code.API_CONFLICT, "a device in the file was created meanwhile; nothing was imported") from exc
        await _audit(conn, caller, "device.import", f"{len(records)} devices", {"count": len(records)})
    return Response(
        ImportReport(imported=len(records), errors=[]).model_dump_json(), status_code=201, media_type="application/json"
    )
