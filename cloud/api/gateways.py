"""Gateways: create (with a one-time enrollment token), list, get, change, new token, revoke
(audited); and ``POST /enroll/v1``, where a gateway exchanges its token and CSR for a certificate.
Everything inside the caller's tenant (RLS); another tenant's gateway answers 404."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

import asyncpg
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from pulse.cloud import connectors
from pulse.cloud.api.deps import Parts, Reader, TenantCaller, Writer
from pulse.cloud.api.sites import site_exists
from pulse.cloud.auth.credentials import sha256_hex
from pulse.cloud.db.pool import audit
from pulse.cloud.errors import ConflictError, InvalidError, NotFoundError, RateLimitedError
from pulse.cloud.sync.service import new_enrollment_token
from pulse.protocol.errors import Code
from pulse.protocol.sync import ENROLL_PATH

router = APIRouter(prefix="/api/v1/gateways", tags=["gateways"])
enroll_router = APIRouter(tags=["gateways"])


class GatewayIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    site_id: uuid.UUID | None = None


class GatewayPatch(BaseModel):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    site_id: uuid.UUID | None = None


class GatewayOut(BaseModel):
    id: uuid.UUID
    name: str
    site_id: uuid.UUID | None
    status: str = Field(description="pending (not enrolled yet), active, revoked")
    last_seen_at: datetime | None
    last_batch_at: datetime | None
    certificate_expires_at: datetime | None = Field(description="the latest live certificate's expiry")
    live_certificates: int = Field(
        description="certificates that still work (unrevoked, unexpired, not retired by a renewal): at most 2, the newest and, "
        "during the renewal overlap, the one it replaced"
    )
    backlog: dict[str, int] = Field(description="records waiting on the gateway, by stream (its last report)")
    dropped: dict[str, int] = Field(description="records the gateway's storage quota dropped, by stream")
    oldest_unsynced_at: datetime | None
    bytes_received: int
    batches_received: int
    clock_offset_ms: int | None = Field(description="cloud clock minus gateway clock at the last batch")
    clock_corrected_at: datetime | None = Field(description="last batch whose timestamps the cloud corrected")
    agent_version: str | None
    created_at: datetime


class EnrollmentToken(BaseModel):
    token: str = Field(description="shown once; the installer passes it to `pulse gateway enroll --token`")
    expires_at: datetime


class CreatedGateway(BaseModel):
    gateway: GatewayOut
    enrollment: EnrollmentToken


class EnrollRequest(BaseModel):
    token: str = Field(max_length=200)
    csr: str = Field(max_length=16_384)


class EnrollResponse(BaseModel):
    tenant_id: str
    gateway_id: str
    gateway_name: str
    certificate: str
    ca: str
    sync_url: str


_SELECT = (
    "SELECT g.id, g.name, g.site_id, g.status, g.last_seen_at, g.last_batch_at, g.backlog, g.dropped, g.oldest_unsynced_at,"
    " g.bytes_received, g.batches_received, g.clock_offset_ms, g.clock_corrected_at, g.agent_version, g.created_at,"
    " (SELECT max(c.not_after) FROM gateway_certificates c WHERE c.gateway_id = g.id AND {live}) AS certificate_expires_at,"
    " (SELECT count(*) FROM gateway_certificates c WHERE c.gateway_id = g.id AND {live}) AS live_certificates FROM gateways g"
).format(live="c.revoked_at IS NULL AND c.not_after > now() AND (c.retires_at IS NULL OR c.retires_at > now())")


def _out(row: asyncpg.Record) -> GatewayOut:
    d = dict(row)
    d["backlog"] = json.loads(d["backlog"])
    d["dropped"] = json.loads(d["dropped"])
    return GatewayOut(**d)


async def _get(conn: asyncpg.Connection, gateway: uuid.UUID) -> GatewayOut:
    row = await conn.fetchrow(f"{_SELECT} WHERE g.id = $1", gateway)
    if row is None:
        raise NotFoundError("gateway", gateway=str(gateway))
    return _out(row)


async def _new_token(conn: asyncpg.Connection, caller: TenantCaller, gateway: uuid.UUID, ttl_s: int) -> EnrollmentToken:
    """A new one-time token; earlier unused tokens of the gateway stop working."""
    await conn.execute(
        "UPDATE gateway_enrollment_tokens SET expires_at = least(expires_at, now()) WHERE gateway_id = $1 AND used_at IS NULL",
        gateway,
    )
    token = new_enrollment_token()
    expires = await conn.fetchval(
        "INSERT INTO gateway_enrollment_tokens (tenant_id, gateway_id, token_hash, expires_at)"
        " VALUES ($1, $2, $3, now() + make_interval(secs => $4)) RETURNING expires_at",
        caller.tenant_id,
        gateway,
        sha256_hex(token),
        float(ttl_s),
    )
    return EnrollmentToken(token=token, expires_at=expires)


@router.post("", status_code=201, response_model=CreatedGateway, summary="Create a gateway; returns its enrollment token (shown once)")
async def create_gateway(body: GatewayIn, caller: Writer, parts: Parts) -> CreatedGateway:
    async with parts.db.tenant(caller.tenant_id) as conn:
        await site_exists(conn, body.site_id)
        try:
            gateway = await conn.fetchval(
                "INSERT INTO gateways (tenant_id, name, site_id) VALUES ($1, $2, $3) RETURNING id", caller.tenant_id, body.name, body.site_id
            )
        except asyncpg.UniqueViolationError as exc:
            raise ConflictError(Code.API_CONFLICT, f"a gateway named {body.name!r} exists") from exc
        token = await _new_token(conn, caller, gateway, parts.sync.config.enrollment_token_ttl_s)
        await audit(conn, actor=caller.actor, action="gateway.create", target=body.name, tenant_id=caller.tenant_id, detail={"gateway": str(gateway)})
        return CreatedGateway(gateway=await _get(conn, gateway), enrollment=token)


@router.get("", response_model=list[GatewayOut], summary="List gateways with status, last seen, backlog, certificate expiry")
async def list_gateways(caller: Reader, parts: Parts) -> list[GatewayOut]:
    async with parts.db.tenant(caller.tenant_id) as conn:
        rows = await conn.fetch(f"{_SELECT} ORDER BY g.name")
    return [_out(r) for r in rows]


@router.get("/{gateway}", response_model=GatewayOut, summary="One gateway")
async def get_gateway(gateway: uuid.UUID, caller: Reader, parts: Parts) -> GatewayOut:
    async with parts.db.tenant(caller.tenant_id) as conn:
        return await _get(conn, gateway)


@router.patch("/{gateway}", response_model=GatewayOut, summary="Rename a gateway or move it to another site")
async def update_gateway(gateway: uuid.UUID, body: GatewayPatch, caller: Writer, parts: Parts) -> GatewayOut:
    changes = body.model_dump(exclude_unset=True)
    if "name" in changes and changes["name"] is None:
        raise InvalidError(Code.API_INVALID, "name cannot be null")
    async with parts.db.tenant(caller.tenant_id) as conn:
        await _get(conn, gateway)
        if "site_id" in changes:
            await site_exists(conn, changes["site_id"])
        if changes:
            sets = ", ".join(f"{k} = ${i}" for i, k in enumerate(changes, start=2))
            try:
                await conn.execute(f"UPDATE gateways SET {sets} WHERE id = $1", gateway, *changes.values())
            except asyncpg.UniqueViolationError as exc:
                raise ConflictError(Code.API_CONFLICT, f"a gateway named {changes.get('name')!r} exists") from exc
            await audit(conn, actor=caller.actor, action="gateway.update", target=str(gateway), tenant_id=caller.tenant_id, detail=changes)
        return await _get(conn, gateway)


@router.post(
    "/{gateway}/enrollment-token",
    status_code=201,
    response_model=EnrollmentToken,
    summary="A new one-time enrollment token (shown once); earlier unused tokens stop working",
)
async def new_token(gateway: uuid.UUID, caller: Writer, parts: Parts) -> EnrollmentToken:
    async with parts.db.tenant(caller.tenant_id) as conn:
        current = await _get(conn, gateway)
        token = await _new_token(conn, caller, gateway, parts.sync.config.enrollment_token_ttl_s)
        await audit(conn, actor=caller.actor, action="gateway.enrollment_token", target=current.name, tenant_id=caller.tenant_id)
    return token


@router.post(
    "/{gateway}/revoke",
    response_model=GatewayOut,
    summary="Revoke a gateway: its certificates and unused tokens stop working at the next request (audited)",
)
async def revoke_gateway(gateway: uuid.UUID, caller: Writer, parts: Parts) -> GatewayOut:
    async with parts.db.tenant(caller.tenant_id) as conn:
        current = await _get(conn, gateway)
        await conn.execute("UPDATE gateways SET status = 'revoked' WHERE id = $1", gateway)
        revoked = await conn.fetchval(
            "WITH r AS (UPDATE gateway_certificates SET revoked_at = now() WHERE gateway_id = $1 AND revoked_at IS NULL RETURNING 1)"
            " SELECT count(*) FROM r",
            gateway,
        )
        await conn.execute(
            "UPDATE gateway_enrollment_tokens SET expires_at = least(expires_at, now()) WHERE gateway_id = $1 AND used_at IS NULL",
            gateway,
        )
        await audit(
            conn,
            actor=caller.actor,
            action="gateway.revoke",
            target=current.name,
            tenant_id=caller.tenant_id,
            detail={"gateway": str(gateway), "certificates_revoked": revoked},
        )
        return await _get(conn, gateway)


class ConnectorSetIn(BaseModel):
    devices: list[dict[str, Any]] = Field(
        max_length=500, description="device definitions, as gateway.toml's [[connectors.devices]] tables (docs/protocol.md, Connectors)"
    )
    expected_version: int | None = Field(default=None, ge=0, description="refuse (409 connector.version_conflict) unless the set is at this version")


class ConnectorGatewayState(BaseModel):
    version: int | None = Field(description="the version the gateway holds (its last report)")
    status: str | None = Field(description="applied, applied with devices kept from gateway.toml, or refused: code: reason")
    polled: list[str] = Field(description="every device the gateway polls, gateway.toml's included")
    defined_locally: list[str] = Field(description="pushed devices left out because gateway.toml defines the same id")
    reported_at: datetime | None


class ConnectorSetOut(BaseModel):
    version: int = Field(description="0: nothing was ever pushed")
    devices: list[dict[str, Any]]
    updated_by: str | None
    updated_at: datetime | None
    gateway: ConnectorGatewayState


def _connector_out(row: asyncpg.Record | None) -> ConnectorSetOut:
    if row is None:
        return ConnectorSetOut(version=0, devices=[], updated_by=None, updated_at=None,
                               gateway=ConnectorGatewayState(version=None, status=None, polled=[], defined_locally=[], reported_at=None))
    return ConnectorSetOut(
        version=row["version"], devices=json.loads(row["devices"]), updated_by=row["updated_by"], updated_at=row["updated_at"],
        gateway=ConnectorGatewayState(version=row["applied_version"], status=row["applied_status"], polled=list(row["polled"]),
                                      defined_locally=list(row["defined_locally"]), reported_at=row["reported_at"]),
    )


@router.get("/{gateway}/connectors", response_model=ConnectorSetOut,
            summary="The polled devices (Modbus, SNMP) the cloud manages for this gateway, and what the gateway reported about them")
async def get_connectors(gateway: uuid.UUID, caller: Reader, parts: Parts) -> ConnectorSetOut:
    async with parts.db.tenant(caller.tenant_id) as conn:
        await _get(conn, gateway)
        return _connector_out(await connectors.load(conn, gateway))


@router.put("/{gateway}/connectors", response_model=ConnectorSetOut,
            summary="Replace the gateway's polled devices; the set reaches it over the downlink (registers new devices; audited)")
async def put_connectors(gateway: uuid.UUID, body: ConnectorSetIn, caller: Writer, parts: Parts) -> ConnectorSetOut:
    async with parts.db.tenant(caller.tenant_id) as conn:
        current = await _get(conn, gateway)
        if current.status == "revoked":
            raise ConflictError(Code.API_CONFLICT, "this gateway is revoked")
        new = await connectors.push(conn, caller.tenant_id, gateway, current.site_id, body.devices,
                                    expected_version=body.expected_version, actor=caller.actor)
        await audit(conn, actor=caller.actor, action="gateway.connectors", target=current.name, tenant_id=caller.tenant_id,
                    detail={"gateway": str(gateway), "version": new.version, "devices": [d.id for d in new.devices]})
        row = await connectors.load(conn, gateway)
    parts.sync.notifier.wake([gateway])
    return _connector_out(row)


@enroll_router.post(
    ENROLL_PATH,
    status_code=201,
    response_model=EnrollResponse,
    summary="Enroll a gateway: a one-time token and a CSR in, a certificate naming tenant and gateway out",
)
async def enroll(body: EnrollRequest, request: Request, parts: Parts) -> EnrollResponse:
    # per source address (the socket's peer, or what a PULSE_TRUSTED_PROXIES proxy says): a flood
    # of requests is refused before the database is asked about the token
    if parts.enroll_limiter is not None:
        source = request.client.host if request.client else "unknown"
        decision = parts.enroll_limiter.take(source, 1, parts.monotonic())
        if not decision.allowed:
            raise RateLimitedError(
                f"too many enrollment requests from {source}; retry in {decision.retry_after_s} s",
                retry_after_s=decision.retry_after_s,
                code=Code.ENROLL_RATE_LIMITED,
            )
    return EnrollResponse(**await parts.sync.enroll(body.token, body.csr))  # type: ignore[arg-type]

