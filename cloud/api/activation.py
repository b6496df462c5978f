"""Activation codes: tenant-admins make batches (codes shown once) and list them; a direct device
claims itself with ``POST /ingest/v1/activate`` (no account: the code is the credential, so every
attempt counts against a per-address rate limit). Gateways claim over the sync API (cloud/sync)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field, field_validator

from pulse.cloud.api import paging
from pulse.cloud.api.deps import Parts, Writer
from pulse.cloud.api.devices import _check_device_id, _check_tags
from pulse.cloud.api.sites import site_exists
from pulse.cloud.errors import NotFoundError, RateLimitedError
from pulse.cloud.subscriptions import activation as codes
from pulse.protocol.activation import ACTIVATE_PATH
from pulse.protocol.errors import Code

router = APIRouter(tags=["activation"])


class BatchIn(BaseModel):
    count: int = Field(ge=1, le=500)
    site_id: uuid.UUID | None = None
    tags: list[str] = Field(default_factory=list, max_length=64)
    profile: str | None = Field(default=None, min_length=1, max_length=100, description="stored as the device's attribute `profile`")
    expires_in_days: int = Field(default=14, ge=1, le=90)

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: list[str]) -> list[str]:
        return _check_tags(v)


class BatchOut(BaseModel):
    batch: uuid.UUID
    expires_at: dt.datetime
    codes: list[str] = Field(description="shown once; Pulse keeps only hashes")


class CodeOut(BaseModel):
    id: uuid.UUID
    batch: uuid.UUID
    site_id: uuid.UUID | None
    tags: list[str]
    profile: str | None
    expires_at: dt.datetime
    used_at: dt.datetime | None
    revoked_at: dt.datetime | None
    device: uuid.UUID | None
    created_by: str
    created_at: dt.datetime


CodePage = paging.Page[CodeOut]


class ActivateIn(BaseModel):
    code: str = Field(max_length=40)
    device_id: str
    name: str = Field(default="", max_length=200)

    @field_validator("device_id")
    @classmethod
    def _device_id(cls, v: str) -> str:
        return _check_device_id(v)


class Activated(BaseModel):
    id: uuid.UUID
    device_id: str
    token: str = Field(description="shown once; the device sends it as Authorization: Bearer <token>")


@router.post("/api/v1/activation-codes", status_code=201, response_model=BatchOut, summary="Make a batch of activation codes (tenant admins)")
async def make_batch(body: BatchIn, caller: Writer, parts: Parts) -> BatchOut:
    expires_at = parts.clock() + dt.timedelta(days=body.expires_in_days)
    async with parts.db.tenant(caller.tenant_id) as conn:
        await site_exists(conn, body.site_id)
        batch, made = await codes.make_batch(
            conn, caller.tenant_id, count=body.count, site_id=body.site_id, tags=body.tags, profile=body.profile,
            expires_at=expires_at, actor=caller.actor,
        )
    return BatchOut(batch=batch, expires_at=expires_at, codes=made)


@router.get("/api/v1/activation-codes", response_model=CodePage, summary="Activation codes (never the codes), newest first (tenant admins)")
async def list_codes(
    caller: Writer,
    parts: Parts,
    batch: Annotated[uuid.UUID | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: paging.CursorQuery = None,
) -> CodePage:
    w = paging.Where()
    if batch is not None:
        w.add(f"batch = {w.arg(batch)}")
    if (after := paging.decode(cursor, dt.datetime, str)) is not None:
        w.add(f"(created_at, id::text) < ({w.arg(after[0])}, {w.arg(after[1])})")
    async with parts.db.tenant(caller.tenant_id) as conn:
        rows = await conn.fetch(
            f"SELECT {', '.join(CodeOut.model_fields)} FROM activation_codes WHERE {w.sql}"
            f" ORDER BY created_at DESC, id::text DESC LIMIT {w.arg(limit + 1)}",
            *w.args,
        )
    return paging.page(rows, limit, lambda r: CodeOut(**dict(r)), lambda r: (r["created_at"], str(r["id"])))


class Revoked(BaseModel):
    revoked: int = Field(description="codes revoked now (used, expired or already revoked ones are left as they are)")


@router.delete("/api/v1/activation-codes/{code_id}", response_model=Revoked, summary="Revoke one unused activation code (tenant admins)")
async def revoke_code(code_id: uuid.UUID, caller: Writer, parts: Parts) -> Revoked:
    async with parts.db.tenant(caller.tenant_id) as conn:
        if not await conn.fetchval("SELECT true FROM activation_codes WHERE id = $1", code_id):
            raise NotFoundError("activation code")
        n = await codes.revoke(conn, caller.tenant_id, parts.clock(), actor=caller.actor, code_id=code_id)
    return Revoked(revoked=n)


@router.delete("/api/v1/activation-codes/batches/{batch}", response_model=Revoked, summary="Revoke a batch's unused activation codes (tenant admins)")
async def revoke_batch(batch: uuid.UUID, caller: Writer, parts: Parts) -> Revoked:
    async with parts.db.tenant(caller.tenant_id) as conn:
        if not await conn.fetchval("SELECT true FROM activation_codes WHERE batch = $1 LIMIT 1", batch):
            raise NotFoundError("activation code batch")
        n = await codes.revoke(conn, caller.tenant_id, parts.clock(), actor=caller.actor, batch=batch)
    return Revoked(revoked=n)


@router.post(
    ACTIVATE_PATH,
    status_code=201,
    response_model=Activated,
    summary="Claim a direct device with an activation code; returns its token once",
    responses={404: {"description": "activation.code_invalid"}, 409: {"description": "subscription.device_limit, api.conflict"},
               429: {"description": "activation.rate_limited"}},
)
async def activate(body: ActivateIn, request: Request, parts: Parts) -> Activated:
    if parts.activation_limiter is not None:
        source = request.client.host if request.client else "unknown"
        decision = parts.activation_limiter.take(source, 1, parts.monotonic())
        if not decision.allowed:
            raise RateLimitedError(
                f"too many activation attempts from {source}; retry in {decision.retry_after_s} s",
                retry_after_s=decision.retry_after_s,
                code=Code.ACTIVATION_RATE_LIMITED,
            )
    done = await codes.claim(parts.db, body.code, body.device_id, body.name, parts.clock(), actor=f"activation:{body.device_id}")
    parts.sync.notifier.wake(done.woken)
    return Activated(id=done.id, device_id=done.device_id, token=done.token)
