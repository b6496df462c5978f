"""Device token cache: one look-up per TTL, short memory of bad tokens, invalidation on revoke."""

from __future__ import annotations

import uuid

import pytest

from pulse.cloud.auth.credentials import new_device_token, parse_device_token
from pulse.cloud.errors import AuthError, ForbiddenError
from pulse.cloud.ingest.identity import CredentialRecord, DeviceTokenCache

pytestmark = pytest.mark.unit


class Credentials:
    """A table of credentials the cache reads through (stands in for the database function)."""

    def __init__(self) -> None:
        self.rows: dict[uuid.UUID, CredentialRecord] = {}
        self.calls = 0

    async def lookup(self, credential_id: uuid.UUID) -> CredentialRecord | None:
        self.calls += 1
        return self.rows.get(credential_id)


def issue(table: Credentials, status: str = "active") -> str:
    token = new_device_token(uuid.uuid4())
    table.rows[token.credential_id] = CredentialRecord(uuid.uuid4(), uuid.uuid4(), "d1", status, token.secret_hash, False)
    return str(token)


def test_device_token_round_trip_and_malformed_tokens() -> None:
    token = new_device_token(uuid.uuid4())
    assert parse_device_token(str(token)) == token
    for bad in ("", "pdt_", str(token)[:-1], str(token) + "x", str(token).replace("pdt_", "prt_")):
        assert parse_device_token(bad) is None


async def test_one_lookup_per_ttl() -> None:
    table = Credentials()
    token = issue(table)
    cache = DeviceTokenCache(table.lookup, ttl_s=30)
    for t in (0.0, 10.0, 29.9):
        assert (await cache.resolve(f"Bearer {token}", now=t)).device_id == "d1"
    assert table.calls == 1
    await cache.resolve(f"Bearer {token}", now=30.1)
    assert table.calls == 2


async def test_bad_tokens_are_remembered_briefly() -> None:
    table = Credentials()
    cache = DeviceTokenCache(table.lookup, ttl_s=30, negative_ttl_s=5)
    unknown = str(new_device_token(uuid.uuid4()))
    for t in (0.0, 1.0):
        with pytest.raises(AuthError):
            await cache.resolve(f"Bearer {unknown}", now=t)
    assert table.calls == 1
    with pytest.raises(AuthError):
        await cache.resolve("Bearer not-a-token", now=0.0)
    assert table.calls == 1  # malformed tokens never reach the database


async def test_wrong_secret_revoked_disabled_and_invalidated() -> None:
    table = Credentials()
    token = issue(table)
    parsed = parse_device_token(token)
    assert parsed is not None
    cache = DeviceTokenCache(table.lookup, ttl_s=30)
    forged = str(new_device_token(parsed.credential_id))
    with pytest.raises(AuthError):
        await cache.resolve(f"Bearer {forged}", now=0.0)
    ident = await cache.resolve(f"Bearer {token}", now=0.0)
    rec = table.rows[parsed.credential_id]
    table.rows[parsed.credential_id] = CredentialRecord(
        rec.tenant_id, rec.device, rec.device_id, rec.device_status, rec.secret_hash, True
    )
    await cache.resolve(f"Bearer {token}", now=1.0)  # still cached
    cache.invalidate(credential_id=ident.credential_id)
    with pytest.raises(AuthError):
        await cache.resolve(f"Bearer {token}", now=1.0)
    disabled = issue(table, status="disabled")
    with pytest.raises(ForbiddenError):
        await cache.resolve(f"Bearer {disabled}", now=0.0)
