"""Sites: CRUD within the caller's tenant."""

from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg
from fastapi import APIRouter, Response
from pydantic import BaseModel, Field

from pulse.cloud.api.deps import Parts, Reader, Writer
from pulse.cloud.errors import ConflictError, InvalidError, NotFoundError
from pulse.protocol.errors import Code

router = APIRouter(prefix="/api/v1/sites", tags=["sites"])


class SiteIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    address: str = Field(default="", max_length=500)
    latitude: float | None = Field(default=None, ge=-90, le=90)
    longitude: float | None = Field(default=None, ge=-180, le=180)


class SitePatch(BaseModel):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    address: str | None = Field(default=None, max_length=500)
    latitude: float | None = Field(default=None, ge=-90, le=90)
    longitude: float | None = Field(default=None, ge=-180, le=180)


class SiteOut(BaseModel):
    id: uuid.UUID
    name: str
    address: str
    latitude: float | None
    longitude: float | None
    created_at: datetime
    updated_at: datetime


_COLS = "id, name, address, latitude, longitude, created_at, updated_at"


async def site_exists(conn: asyncpg.Connection, site_id: uuid.UUID | None) -> None:
    """Refuse a site id that names no site in the caller's tenant (RLS: other tenants' sites do not exist)."""
    if site_id is not None and not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM sites WHERE id = $1)", site_id):
        raise InvalidError(Code.API_INVALID, "site_id names no site in your tenant", site_id=str(site_id))


def _out(row: asyncpg.Record) -> SiteOut:
    return SiteOut(**dict(row))


@router.post("", status_code=201, response_model=SiteOut, summary="Create a site")
async def create_site(body: SiteIn, caller: Writer, parts: Parts) -> SiteOut:
    async with parts.db.tenant(caller.tenant_id) as conn:
        try:
            row = await conn.fetchrow(
                f"INSERT INTO sites (tenant_id, name, address, latitude, longitude) VALUES ($1, $2, $3, $4, $5) RETURNING {_COLS}",
                caller.tenant_id,
                body.name,
                body.address,
                body.latitude,
                body.longitude,
            )
        except asyncpg.UniqueViolationError as exc:
            raise ConflictError(Code.API_CONFLICT, f"a site named {body.name!r} exists") from exc
    return _out(row)


@router.get("", response_model=list[SiteOut], summary="List sites")
async def list_sites(caller: Reader, parts: Parts) -> list[SiteOut]:
    async with parts.db.tenant(caller.tenant_id) as conn:
        rows = await conn.fetch(f"SELECT {_COLS} FROM sites ORDER BY name")
    return [_out(r) for r in rows]


@router.get("/{site_id}", response_model=SiteOut, summary="One site")
async def get_site(site_id: uuid.UUID, caller: Reader, parts: Parts) -> SiteOut:
    async with parts.db.tenant(caller.tenant_id) as conn:
        row = await conn.fetchrow(f"SELECT {_COLS} FROM sites WHERE id = $1", site_id)
    if row is None:
        raise NotFoundError("site", site_id=str(site_id))
    return _out(row)


@router.patch("/{site_id}", response_model=SiteOut, summary="Change a site")
async def update_site(site_id: uuid.UUID, body: SitePatch, caller: Writer, parts: Parts) -> SiteOut:
    changes = body.model_dump(exclude_unset=True)
    sets = ", ".join(f"{k} = ${i}" for i, k in enumerate(changes, start=2))
    async with parts.db.tenant(caller.tenant_id) as conn:
        try:
            row = await conn.fetchrow(
                f"UPDATE sites SET {sets + ', ' if sets else ''}updated_at = now() WHERE id = $1 RETURNING {_COLS}",
                site_id,
                *changes.values(),
            )
        except asyncpg.UniqueViolationError as exc:
            raise ConflictError(Code.API_CONFLICT, f"a site named {body.name!r} exists") from exc
    if row is None:
        raise NotFoundError("site", site_id=str(site_id))
    return _out(row)


@router.delete("/{site_id}", status_code=204, summary="Delete a site (its devices keep existing, without a site)")
async def delete_site(site_id: uuid.UUID, caller: Writer, parts: Parts) -> Response:
    async with parts.db.tenant(caller.tenant_id) as conn:
        deleted = await conn.fetchval("DELETE FROM sites WHERE id = $1 RETURNING id", site_id)
    if deleted is None:
        raise NotFoundError("site", site_id=str(site_id))
    return Response(status_code=204)
