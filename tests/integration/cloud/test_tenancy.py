"""Tenants never see each other: every endpoint answers 404 for another tenant's object and changes
nothing, and a direct SQL session as the app role sees and changes only its own tenant's rows."""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from timescale import storage_tables

from pulse.cloud.settings import Settings

Cloud = Any  # the `cloud` fixture (conftest.py)

pytestmark = pytest.mark.integration


@dataclass
class World:
    a_headers: dict[str, str]
    a_tenant: uuid.UUID
    b_headers: dict[str, str]
    b_tenant: uuid.UUID
    b_site: str
    b_site_name: str
    b_device: str
    b_device_id: str
    b_credential: str
    b_token: str


async def make_world(cloud: Cloud) -> World:
    a_tenant, a = await cloud.tenant_user()
    b_tenant, b = await cloud.tenant_user()
    site_name = "b-site-" + uuid.uuid4().hex[:6]
    r = await cloud.client.post("/api/v1/sites", json={"name": site_name}, headers=b)
    assert r.status_code == 201, r.text
    b_site = r.json()["id"]
    dev, device_id, token = await cloud.device_with_token(b)
    r = await cloud.client.patch(f"/api/v1/devices/{dev}", json={"site_id": b_site, "tags": ["secret"]}, headers=b)
    assert r.status_code == 200, r.text
    r = await cloud.client.get(f"/api/v1/devices/{dev}/credentials", headers=b)
    credential = r.json()[0]["id"]
    return World(a, a_tenant, b, b_tenant, b_site, site_name, dev, device_id, credential, token)


# (method, path template, json body) for every endpoint that names an object by id
BY_ID = [
    ("GET", "/api/v1/sites/{site}", None),
    ("PATCH", "/api/v1/sites/{site}", {"name": "taken-over"}),
    ("DELETE", "/api/v1/sites/{site}", None),
    ("GET", "/api/v1/devices/{device}", None),
    ("PATCH", "/api/v1/devices/{device}", {"name": "taken-over"}),
    ("POST", "/api/v1/devices/{device}/decommission", None),
    ("POST", "/api/v1/devices/{device}/credentials", None),
    ("GET", "/api/v1/devices/{device}/credentials", None),
    ("POST", "/api/v1/devices/{device}/credentials/{credential}/rotate", None),
    ("DELETE", "/api/v1/devices/{device}/credentials/{credential}", None),
]


@pytest.mark.parametrize(("method", "template", "body"), BY_ID, ids=[f"{m} {p}" for m, p, _ in BY_ID])
async def test_another_tenants_object_answers_404_and_is_unchanged(
    cloud: Cloud, method: str, template: str, body: object
) -> None:
    w = await make_world(cloud)
    path = template.format(site=w.b_site, device=w.b_device, credential=w.b_credential)
    r = await cloud.client.request(method, path, json=body, headers=w.a_headers)
    assert r.status_code == 404, r.text
    assert r.json()["code"] == "api.not_found"

    # B's objects are exactly as they were, and B's token still works
    site = (await cloud.client.get(f"/api/v1/sites/{w.b_site}", headers=w.b_headers)).json()
    assert site["name"] == w.b_site_name
    device = (await cloud.client.get(f"/api/v1/devices/{w.b_device}", headers=w.b_headers)).json()
    assert device["name"] == "" and device["status"] == "provisioned" and device["site_id"] == w.b_site
    creds = (await cloud.client.get(f"/api/v1/devices/{w.b_device}/credentials", headers=w.b_headers)).json()
    assert [c["id"] for c in creds] == [w.b_credential] and creds[0]["revoked_at"] is None and creds[0]["rotated_at"] is None
    r = await cloud.client.post(
        "/ingest/v1/telemetry", json={"v": 1, "metrics": {"t": 1}}, headers={"Authorization": f"Bearer {w.b_token}"}
    )
    assert r.status_code == 200, r.text


async def test_device_list_shows_only_own_tenant_under_every_filter(cloud: Cloud) -> None:
    w = await make_world(cloud)
    for params in ({}, {"q": w.b_device_id}, {"tag": "secret"}, {"site": w.b_site}, {"status": "provisioned"}):
        r = await cloud.client.get("/api/v1/devices", params=params, headers=w.a_headers)
        assert r.status_code == 200, r.text
        assert r.json()["items"] == [], params
    r = await cloud.client.get("/api/v1/devices", params={"q": w.b_device_id}, headers=w.b_headers)
    assert [d["id"] for d in r.json()["items"]] == [w.b_device]


async def test_site_list_shows_only_own_tenant(cloud: Cloud) -> None:
    w = await make_world(cloud)
    r = await cloud.client.get("/api/v1/sites", headers=w.a_headers)
    assert r.status_code == 200 and r.json() == []


async def test_create_device_cannot_attach_another_tenants_site(cloud: Cloud) -> None:
    w = await make_world(cloud)
    r = await cloud.client.post("/api/v1/devices", json={"device_id": "x1", "site_id": w.b_site}, headers=w.a_headers)
    assert r.status_code == 422 and r.json()["code"] == "api.invalid"
    r = await cloud.client.post("/api/v1/devices", json={"device_id": "x2"}, headers=w.a_headers)
    dev = r.json()["id"]
    r = await cloud.client.patch(f"/api/v1/devices/{dev}", json={"site_id": w.b_site}, headers=w.a_headers)
    assert r.status_code == 422 and r.json()["code"] == "api.invalid"


async def test_same_device_id_in_two_tenants_is_two_devices(cloud: Cloud) -> None:
    w = await make_world(cloud)
    r = await cloud.client.post("/api/v1/devices", json={"device_id": w.b_device_id}, headers=w.a_headers)
    assert r.status_code == 201, r.text
    assert r.json()["id"] != w.b_device


async def test_import_cannot_name_another_tenants_site(cloud: Cloud) -> None:
    w = await make_world(cloud)
    csv = f"device_id,site\nimp-1,{w.b_site_name}\n"
    r = await cloud.client.post("/api/v1/devices/import", content=csv, headers={**w.a_headers, "Content-Type": "text/csv"})
    assert r.status_code == 422
    assert r.json()["errors"][0]["row"] == 2
    assert (await cloud.client.get("/api/v1/devices", headers=w.a_headers)).json()["items"] == []


async def test_device_token_writes_only_into_its_own_tenant(cloud: Cloud, app_dsn: str) -> None:
    w = await make_world(cloud)
    _, a_device_id, _ = await cloud.device_with_token(w.a_headers)
    auth = {"Authorization": f"Bearer {w.b_token}"}
    r = await cloud.client.post("/ingest/v1/telemetry", json={"v": 1, "device": a_device_id, "metrics": {"t": 1}}, headers=auth)
    assert r.status_code == 422
    assert r.json()["results"][0]["code"] == "envelope.device_mismatch"
    conn = await asyncpg.connect(app_dsn)
    try:
        async with conn.transaction():
            await conn.execute("SELECT set_config('app.tenant_id', $1, true)", str(w.a_tenant))
            assert await conn.fetchval("SELECT count(*) FROM telemetry") == 0
            assert await conn.fetchval("SELECT count(*) FROM quarantine") == 0
        async with conn.transaction():
            await conn.execute("SELECT set_config('app.tenant_id', $1, true)", str(w.b_tenant))
            assert await conn.fetchval("SELECT count(*) FROM quarantine WHERE code = 'envelope.device_mismatch'") == 1
    finally:
        await conn.close()


async def test_operator_api_refuses_tenant_users(cloud: Cloud) -> None:
    w = await make_world(cloud)
    assert (await cloud.client.get("/api/v1/operator/tenants", headers=w.a_headers)).status_code == 403
    r = await cloud.client.post("/api/v1/operator/tenants", json={"slug": "x", "name": "x"}, headers=w.a_headers)
    assert r.status_code == 403 and r.json()["code"] == "auth.forbidden"


TENANT_TABLES = ["tenants", "users", "sites", "gateways", "devices", "device_credentials", "quarantine", "audit_log", "telemetry"]


async def test_sql_session_as_app_role_sees_and_changes_only_its_tenant(
    cloud: Cloud, app_dsn: str, cloud_settings: Settings
) -> None:
    w = await make_world(cloud)
    r = await cloud.client.post(
        "/ingest/v1/telemetry",
        json=[{"v": 1, "metrics": {"t": 1}}, {"v": 2}],
        headers={"Authorization": f"Bearer {w.b_token}"},
    )
    assert r.status_code == 200
    r = await cloud.client.post("/api/v1/devices", json={"device_id": "a-own"}, headers=w.a_headers)
    assert r.status_code == 201
    conn = await asyncpg.connect(app_dsn)
    try:
        # as B: B's rows exist (so the checks below are not vacuous)
        async with conn.transaction():
            await conn.execute("SELECT set_config('app.tenant_id', $1, true)", str(w.b_tenant))
            for table in ("tenants", "users", "sites", "devices", "device_credentials", "quarantine", "audit_log", "telemetry"):
                assert await conn.fetchval(f"SELECT count(*) FROM {table}") > 0, table
        # as A: none of B's rows, anywhere
        async with conn.transaction():
            await conn.execute("SELECT set_config('app.tenant_id', $1, true)", str(w.a_tenant))
            for table in TENANT_TABLES:
                column = "id" if table == "tenants" else "tenant_id"
                assert await conn.fetchval(f"SELECT count(*) FROM {table} WHERE {column} = $1", w.b_tenant) == 0, table
            assert await conn.execute("UPDATE devices SET name = 'x' WHERE id = $1", uuid.UUID(w.b_device)) == "UPDATE 0"
            assert await conn.execute("DELETE FROM sites WHERE id = $1", uuid.UUID(w.b_site)) == "DELETE 0"
            assert await conn.execute("UPDATE device_credentials SET revoked_at = now()") == "UPDATE 0"
        async with conn.transaction():
            await conn.execute("SELECT set_config('app.tenant_id', $1, true)", str(w.a_tenant))
            with pytest.raises(asyncpg.InsufficientPrivilegeError):  # WITH CHECK refuses rows for another tenant
                await conn.execute("INSERT INTO sites (tenant_id, name) VALUES ($1, 'planted')", w.b_tenant)
        async with conn.transaction():
            await conn.execute("SELECT set_config('app.tenant_id', $1, true)", str(w.a_tenant))
            with pytest.raises(asyncpg.InsufficientPrivilegeError):  # nor moving own rows to another tenant
                await conn.execute("UPDATE devices SET tenant_id = $1", w.b_tenant)
        # no tenant set: nothing at all
        for table in TENANT_TABLES:
            assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0, table
        # the app role cannot reach around its view: not the table, no partition or chunk under it,
        # no role switching, no writing telemetry
        owner = await asyncpg.connect(cloud_settings.database_url)
        try:
            underneath = await storage_tables(owner)
        finally:
            await owner.close()
        assert underneath  # telemetry_default, or the chunk B's rows went to
        for table in ["public.telemetry", *underneath]:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.fetchval(f"SELECT count(*) FROM {table}")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(f'SET ROLE "{cloud_settings.roles.operator}"')
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(
                "INSERT INTO telemetry (time, tenant_id, device_id, msg_type, source, received_at)"
                " VALUES (now(), $1, 'x', 'telemetry', 'sql', now())",
                w.a_tenant,
            )
        assert not await conn.fetchval("SELECT rolbypassrls FROM pg_roles WHERE rolname = current_user")
    finally:
        await conn.close()


async def test_operator_bypass_is_audited(cloud: Cloud, cloud_settings: Settings) -> None:
    await make_world(cloud)
    headers = await cloud.user("operator", tenant=None)
    r = await cloud.client.get("/api/v1/operator/tenants", headers=headers)
    assert r.status_code == 200 and len(r.json()) >= 2
    conn = await asyncpg.connect(cloud_settings.database_url)
    try:
        rows = await conn.fetch(
            "SELECT actor, action, bypass FROM audit_log WHERE action = 'tenants.list' ORDER BY id DESC LIMIT 1"
        )
    finally:
        await conn.close()
    assert rows and rows[0]["bypass"] and rows[0]["actor"].startswith("local:")


async def test_a_tenant_transaction_opened_in_one_trip_sees_only_its_tenant_and_rolls_back_on_error(cloud: Cloud) -> None:
    """``Database.tenant_now`` (the rules runner's drain) is ``tenant()`` in one round trip less."""
    a, ha = await cloud.tenant_user()
    b, hb = await cloud.tenant_user()
    for h, name in ((ha, "a-site"), (hb, "b-site")):
        assert (await cloud.client.post("/api/v1/sites", json={"name": name}, headers=h)).status_code == 201
    db = cloud.app.state.pulse.db
    async with db.tenant_now(a) as conn:
        assert [r["name"] for r in await conn.fetch("SELECT name FROM sites")] == ["a-site"]
        await conn.execute("INSERT INTO sites (tenant_id, name) VALUES ($1, 'kept')", a)

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        async with db.tenant_now(a) as conn:
            await conn.execute("INSERT INTO sites (tenant_id, name) VALUES ($1, 'rolled-back')", a)
            raise Boom
    async with db.tenant(a) as conn:
        assert sorted(r["name"] for r in await conn.fetch("SELECT name FROM sites")) == ["a-site", "kept"]
        assert not conn.is_closed()


async def test_a_connection_back_from_a_one_trip_transaction_carries_no_session_state(cloud: Cloud) -> None:
    """``tenant_now`` sends the pool's session reset with its COMMIT (the pool then skips its own):
    whatever the transaction set for the session (a tenant, a LISTEN, a setting) is gone from
    every connection the pool hands out next, after a commit and after a rollback alike."""
    a, _ = await cloud.tenant_user()
    db = cloud.app.state.pulse.db
    pool = db.app_pool
    session = "SELECT set_config('app.tenant_id', '{a}', false), set_config('application_name', 'leaked', false); LISTEN leaked"

    class Boom(Exception):
        pass

    for fail in (False, True):
        with contextlib.suppress(Boom):
            async with db.tenant_now(a) as conn:
                await conn.execute(session.format(a=a))
                if fail:
                    raise Boom
        held = [await pool.acquire() for _ in range(pool.get_max_size())]  # every connection the pool has
        try:
            for conn in held:
                assert await conn.fetchval("SELECT current_setting('app.tenant_id', true)") in (None, "")
                assert await conn.fetchval("SELECT current_setting('application_name')") != "leaked"
                assert await conn.fetchval("SELECT count(*) FROM pg_listening_channels()") == 0
                async with conn.transaction():  # and row-level security sees no tenant
                    assert await conn.fetchval("SELECT count(*) FROM sites") == 0
        finally:
            for conn in held:
                await pool.release(conn)
