"""What the cloud tests share beyond fixtures: the in-process app with its client (``Cloud``,
``running_cloud``) and the app role's DSN. A module of its own, so tests import it by a name no
other folder's conftest.py shares."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from fastapi import FastAPI

from pulse.cloud.app import create_app
from pulse.cloud.auth.accounts import create_tenant, create_user
from pulse.cloud.db.pool import role_dsn
from pulse.cloud.settings import Settings
from pulse.edge.identity import IdentityFiles, make_key_and_csr, store_certificate

PASSWORD = "correct horse battery staple"


def app_role_dsn(settings: Settings) -> str:
    return role_dsn(settings.database_url, settings.roles.app, None)


@dataclass
class Cloud:
    app: FastAPI
    client: httpx.AsyncClient
    settings: Settings

    async def tenant_user(self, role: str = "tenant-admin", slug: str | None = None) -> tuple[uuid.UUID, dict[str, str]]:
        """A new tenant and a logged-in user in it: (tenant id, auth headers)."""
        slug = slug or "t-" + uuid.uuid4().hex[:10]
        db = self.app.state.pulse.db
        tenant_id = await create_tenant(db, slug=slug, name=slug, actor="test")
        return tenant_id, await self.user(role, tenant=slug)

    async def user(self, role: str, tenant: str | None) -> dict[str, str]:
        email = f"{uuid.uuid4().hex[:10]}@example.com"
        await create_user(self.app.state.pulse.db, email=email, password=PASSWORD, roles=[role], tenant=tenant, actor="test")
        r = await self.client.post("/auth/login", json={"email": email, "password": PASSWORD})
        assert r.status_code == 200, r.text
        return {"Authorization": f"Bearer {r.json()['access_token']}"}

    async def device_with_token(self, headers: dict[str, str], device_id: str | None = None) -> tuple[str, str, str]:
        """(device uuid, device_id, device token)"""
        device_id = device_id or "dev-" + uuid.uuid4().hex[:8]
        r = await self.client.post("/api/v1/devices", json={"device_id": device_id}, headers=headers)
        assert r.status_code == 201, r.text
        dev = r.json()["id"]
        r = await self.client.post(f"/api/v1/devices/{dev}/credentials", headers=headers)
        assert r.status_code == 201, r.text
        return dev, device_id, r.json()["token"]


@asynccontextmanager
async def running_cloud(settings: Settings, *, sync_listener: bool = False) -> AsyncIterator[Cloud]:
    app = create_app(settings, sync_listener=sync_listener)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://pulse.test") as client:
            yield Cloud(app=app, client=client, settings=settings)


async def enrolled_gateway(client: httpx.AsyncClient, headers: dict[str, str], directory: Path, url: str = "") -> tuple[str, IdentityFiles]:
    """A gateway created through the API (``client``, at ``url``) and enrolled as `pulse gateway enroll` does:
    (gateway id, its identity files)."""
    name = "gw-" + uuid.uuid4().hex[:8]
    r = await client.post(url + "/api/v1/gateways", json={"name": name}, headers=headers)
    assert r.status_code == 201, r.text
    files = IdentityFiles(directory / name)
    r = await client.post(url + "/enroll/v1", json={"token": r.json()["enrollment"]["token"], "csr": make_key_and_csr(files, name).decode()})
    assert r.status_code == 201, r.text
    store_certificate(files, r.json()["certificate"].encode(), r.json()["ca"].encode())
    return r.json()["gateway_id"], files
