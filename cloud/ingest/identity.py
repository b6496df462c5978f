"""Device identity for ingest: a token resolves to (tenant, device) through an in-memory TTL cache,
so a device sending many messages costs one database look-up per TTL, not one per message."""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pulse.cloud.auth.credentials import parse_device_token, secrets_equal, sha256_hex
from pulse.cloud.db.pool import Database
from pulse.cloud.errors import AuthError, ForbiddenError
from pulse.protocol.errors import Code

ACCEPTING = frozenset({"provisioned", "active"})


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    tenant_id: uuid.UUID
    device: uuid.UUID  # devices.id
    device_id: str  # the wire id
    status: str
    credential_id: uuid.UUID


@dataclass(frozen=True, slots=True)
class CredentialRecord:
    tenant_id: uuid.UUID
    device: uuid.UUID
    device_id: str
    device_status: str
    secret_hash: str
    revoked: bool


Lookup = Callable[[uuid.UUID], Awaitable[CredentialRecord | None]]


def credential_lookup(db: Database) -> Lookup:
    """The look-up every device-token cache uses (HTTP ingest, the MQTT endpoint): one credential by id."""

    async def lookup(credential_id: uuid.UUID) -> CredentialRecord | None:
        async with db.identity() as conn:
            row = await conn.fetchrow("SELECT * FROM pulse_identity_device_credential($1)", credential_id)
        return None if row is None else CredentialRecord(**dict(row))

    return lookup


class DeviceTokenCache:
    """token -> identity (or "invalid") for ``ttl_s`` seconds; at most ``max_entries`` kept."""

    def __init__(self, lookup: Lookup, *, ttl_s: float, negative_ttl_s: float = 5.0, max_entries: int = 100_000) -> None:
        self._lookup = lookup
        self._ttl = ttl_s
        self._negative_ttl = min(negative_ttl_s, ttl_s)
        self._max = max_entries
        self._entries: OrderedDict[str, tuple[float, DeviceIdentity | None]] = OrderedDict()
        self.lookups = 0

    async def resolve(self, authorization: str | None, now: float | None = None) -> DeviceIdentity:
        if not authorization:
            raise AuthError(Code.AUTH_MISSING, "send Authorization: Bearer <device token>")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthError(Code.AUTH_MISSING, "send Authorization: Bearer <device token>")
        now = time.monotonic() if now is None else now
        key = sha256_hex(token)
        hit = self._entries.get(key)
        if hit is not None and hit[0] > now:
            identity = hit[1]
        else:
            identity = await self._resolve(token)
            self._entries[key] = (now + (self._ttl if identity else self._negative_ttl), identity)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
        if identity is None:
            raise AuthError(Code.AUTH_INVALID, "the device token is unknown, revoked or malformed")
        if identity.status not in ACCEPTING:
            raise ForbiddenError(Code.AUTH_DEVICE_DISABLED, f"device {identity.device_id} is {identity.status}")
        return identity

    async def _resolve(self, token: str) -> DeviceIdentity | None:
        parsed = parse_device_token(token)
        if parsed is None:
            return None
        self.lookups += 1
        record = await self._lookup(parsed.credential_id)
        if record is None or record.revoked or not secrets_equal(record.secret_hash, parsed.secret_hash):
            return None
        return DeviceIdentity(record.tenant_id, record.device, record.device_id, record.device_status, parsed.credential_id)

    def clear(self) -> None:
        """Forget everything (the cluster's invalidations may have been missed)."""
        self._entries.clear()

    def invalidate(self, *, credential_id: uuid.UUID | None = None, device: uuid.UUID | None = None) -> None:
        """Forget cached identities of a credential or a device (in this process; the database tells
        the other replicas, see ``cloud/replicas.py``)."""
        for key, (_, ident) in list(self._entries.items()):
            if ident is not None and (ident.credential_id == credential_id or ident.device == device):
                del self._entries[key]
