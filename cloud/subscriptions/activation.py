"""Activation codes: a tenant-admin makes a batch; an installer claims one device with one code,
from the device itself (``POST /ingest/v1/activate``) or from a gateway (``pulse gateway device
claim CODE``, over the gateway's mutual-TLS sync API). A claim checks the device limit, creates the
device (site, tags, profile from the code), issues its token (returned once) and consumes the code,
all in one transaction: a refused claim leaves the code usable."""

from __future__ import annotations

import datetime as dt
import json
import secrets
import uuid
from dataclasses import dataclass

import asyncpg

from pulse.cloud.auth.credentials import new_device_token
from pulse.cloud.db.pool import Database, audit
from pulse.cloud.downlink import push_credential
from pulse.cloud.errors import CloudError, ConflictError
from pulse.cloud.subscriptions.store import check_device_room
from pulse.protocol import activation
from pulse.protocol.errors import Code, ProtocolError
from pulse.protocol.sync import CredentialChange


class CodeInvalidError(CloudError):
    """404 activation.code_invalid: unknown, used and expired codes are never told apart."""

    status = 404

    def __init__(self) -> None:
        super().__init__(Code.ACTIVATION_CODE_INVALID, "the activation code is unknown, used already, or expired; ask for a new one")


@dataclass(frozen=True, slots=True)
class Claimed:
    id: uuid.UUID
    device_id: str
    token: str
    woken: list[uuid.UUID]


async def make_batch(
    conn: asyncpg.Connection,
    tenant_id: uuid.UUID,
    *,
    count: int,
    site_id: uuid.UUID | None,
    tags: list[str],
    profile: str | None,
    expires_at: dt.datetime,
    actor: str,
) -> tuple[uuid.UUID, list[str]]:
    batch = uuid.uuid4()
    codes = [activation.generate(secrets.choice) for _ in range(count)]
    await conn.executemany(
        "INSERT INTO activation_codes (tenant_id, batch, code_hash, site_id, tags, profile, expires_at, created_by)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        [(tenant_id, batch, activation.code_hash(c), site_id, tags, profile, expires_at, actor) for c in codes],
    )
    await audit(conn, actor=actor, action="activation.batch", target=str(batch), tenant_id=tenant_id,
                detail={"count": count, "site_id": site_id, "tags": tags, "profile": profile, "expires_at": expires_at})
    return batch, codes


async def revoke(
    conn: asyncpg.Connection, tenant_id: uuid.UUID, now: dt.datetime, *, actor: str, code_id: uuid.UUID | None = None,
    batch: uuid.UUID | None = None,
) -> int:
    """Unused, unexpired codes stop working at ``now`` (the claim checks the expiry). Audited."""
    rows = await conn.fetch(
        "UPDATE activation_codes SET revoked_at = $2, expires_at = $2"
        " WHERE tenant_id = $1 AND used_at IS NULL AND revoked_at IS NULL AND expires_at > $2"
        " AND ($3::uuid IS NULL OR id = $3) AND ($4::uuid IS NULL OR batch = $4) RETURNING id",
        tenant_id, now, code_id, batch,
    )
    await audit(conn, actor=actor, action="activation.revoke", target=str(code_id or batch), tenant_id=tenant_id,
                detail={"count": len(rows), "code": code_id, "batch": batch})
    return len(rows)


async def claim(
    db: Database, typed: str, device_id: str, name: str, now: dt.datetime, *, gateway: uuid.UUID | None = None,
    gateway_tenant: uuid.UUID | None = None, gateway_site: uuid.UUID | None = None, actor: str,
) -> Claimed:
    try:
        hashed = activation.code_hash(typed)
    except ProtocolError as exc:
        raise CodeInvalidError() from exc
    async with db.identity() as conn:
        found = await conn.fetchrow("SELECT * FROM pulse_activation_code($1, $2)", hashed, now)
    # a gateway claims only codes of its own tenant (another tenant's code answers as unknown)
    if found is None or (gateway is not None and found["tenant_id"] != gateway_tenant):
        raise CodeInvalidError()
    tenant_id: uuid.UUID = found["tenant_id"]
    async with db.tenant(tenant_id) as conn:
        code = await conn.fetchrow(
            "UPDATE activation_codes SET used_at = $2 WHERE id = $1 AND used_at IS NULL AND expires_at > $2"
            " RETURNING id, site_id, tags, profile",
            found["id"],
            now,
        )
        if code is None:  # claimed meanwhile
            raise CodeInvalidError()
        await check_device_room(conn, tenant_id, 1)
        site = code["site_id"] if code["site_id"] is not None else gateway_site
        attributes = json.dumps({"profile": code["profile"]} if code["profile"] else {})
        try:
            device = await conn.fetchval(
                "INSERT INTO devices (tenant_id, device_id, name, site_id, gateway_id, tags, attributes)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb) RETURNING id",
                tenant_id, device_id, name, site, gateway, code["tags"], attributes,
            )
        except asyncpg.UniqueViolationError as exc:
            raise ConflictError(Code.API_CONFLICT, f"a device {device_id!r} exists; claim with another device id", device_id=device_id) from exc
        await conn.execute("UPDATE activation_codes SET device = $2 WHERE id = $1", code["id"], device)
        credential_id = uuid.uuid4()
        token = new_device_token(credential_id)
        await conn.execute(
            "INSERT INTO device_credentials (id, tenant_id, device, secret_hash) VALUES ($1, $2, $3, $4)",
            credential_id, tenant_id, device, token.secret_hash,
        )
        woken = await push_credential(conn, tenant_id, device, CredentialChange(device_id, credential_id.hex, "set", token.secret_hash))
        await audit(conn, actor=actor, action="activation.claim", target=device_id, tenant_id=tenant_id,
                    detail={"code": str(code["id"]), "gateway": gateway, "credential": str(credential_id)})
    return Claimed(device, device_id, str(token), woken)
