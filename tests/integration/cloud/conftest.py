"""Cloud fixtures: a migrated database per module (roles prefixed per module, dropped afterwards),
and a running app per test (lifespan entered, requests through httpx's ASGI transport)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
from cloud_roles import drop_roles
from fastapi import FastAPI

from pulse.cloud.app import create_app
from pulse.cloud.auth.accounts import create_tenant, create_user
from pulse.cloud.db.pool import role_dsn
from pulse.cloud.settings import RoleNames, Settings

PASSWORD = "correct horse battery staple"


@pytest.fixture
def fresh_database(pg_admin_dsn: str) -> Iterator[tuple[str, str]]:
    """An empty database (not migrated) and a role prefix of its own: (dsn, prefix)."""
    name = "t_fresh_" + uuid.uuid4().hex[:10]
    prefix = "f" + uuid.uuid4().hex[:12]

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(pg_admin_dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    dsn = urlunsplit(urlsplit(pg_admin_dsn)._replace(path=f"/{name}"))
    try:
        yield dsn, prefix
    finally:
        asyncio.run(drop_roles(dsn, pg_admin_dsn, RoleNames.from_prefix(prefix)))
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


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


@pytest.fixture
async def cloud(cloud_settings: Settings) -> AsyncIterator[Cloud]:
    async with running_cloud(cloud_settings) as c:
        yield c


@pytest.fixture
def start_cloud() -> Callable[[Settings], AbstractAsyncContextManager[Cloud]]:
    """Start another app with other settings: ``async with start_cloud(settings) as cloud: ...``
    (``sync_listener=True`` also serves the gateway sync listener; its port is
    ``cloud.app.state.sync_listener.port``)."""
    return running_cloud


@pytest.fixture
def app_dsn(cloud_settings: Settings) -> str:
    """DSN of the app role (subject to row-level security) on this module's database."""
    return app_role_dsn(cloud_settings)
