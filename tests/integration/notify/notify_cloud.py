"""A cloud app for the notify tests: migrated database per module, an app per test with NotifySettings
that let loopback through (the receivers live there) and retry fast; tenants and users made via the API."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import FastAPI

from pulse.cloud.app import create_app
from pulse.cloud.auth.accounts import create_tenant, create_user
from pulse.cloud.notify.settings import NotifySettings
from pulse.cloud.settings import Settings

PASSWORD = "correct horse battery staple"
PD_KEY = "R0UT1NGKEY0123456789abcdefABCDEF"
HOT = {"id": "hot", "severity": "major", "metric": "temp_c", "operator": "GT", "threshold": 30, "clear_threshold": 28}
ACCEPTED = (202, {"content-type": "application/json"}, b'{"status":"success","message":"Event processed","dedup_key":"k"}')


async def setup_tenant(c: NotifyCloud, *channels: dict[str, Any], route: dict[str, Any] | None = None) -> tuple[uuid.UUID, dict[str, str], list[str]]:
    tenant, h = await c.tenant_user()
    ids = []
    for body in channels:
        r = await c.client.post("/api/v1/notify/channels", json={"name": uuid.uuid4().hex[:8]} | body, headers=h)
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    r = await c.client.post("/api/v1/notify/routes", json={"name": "all", "min_severity": "major", "channels": ids} | (route or {}), headers=h)
    assert r.status_code == 201, r.text
    r = await c.client.post("/api/v1/rules", json=HOT, headers=h)
    assert r.status_code == 201, r.text
    return tenant, h, ids


async def device(c: NotifyCloud, h: dict[str, str]) -> dict[str, str]:
    device_id = "pump-" + uuid.uuid4().hex[:6]
    r = await c.client.post("/api/v1/devices", json={"device_id": device_id}, headers=h)
    assert r.status_code == 201, r.text
    r = await c.client.post(f"/api/v1/devices/{r.json()['id']}/credentials", headers=h)
    return {"Authorization": f"Bearer {r.json()['token']}"}


async def reading(c: NotifyCloud, dev: dict[str, str], value: float) -> None:
    env = {"v": 1, "ts": int(dt.datetime.now(dt.UTC).timestamp() * 1000), "metrics": {"temp_c": value}}
    r = await c.client.post("/ingest/v1/telemetry", json=env, headers=dev)
    assert r.status_code in (200, 202), r.text


async def open_alert(c: NotifyCloud, h: dict[str, str]) -> int:
    dev = await device(c, h)
    await reading(c, dev, 25)
    await reading(c, dev, 31.5)

    async def opened() -> Any:
        r = await c.client.get("/api/v1/alerts", params={"state": "open"}, headers=h)
        return r.json()["items"]

    return int((await c.wait_for(opened, what="the alert"))[0]["id"])




def fast_notify(**changes: Any) -> NotifySettings:
    """Loopback allowed, short backoff and poll: what these tests run the workers with."""
    base: dict[str, Any] = {
        "allow_networks": "127.0.0.0/8,::1/128",
        "timeout_s": 5,
        "backoff_s": 0.05,
        "poll_interval_s": 0.05,
        "claim_timeout_s": 30,
        "console_url": "https://pulse.example.com",
    }
    return NotifySettings(**(base | changes))


@dataclass
class NotifyCloud:
    app: FastAPI
    client: httpx.AsyncClient

    @property
    def db(self) -> Any:
        return self.app.state.pulse.db

    async def tenant_user(self, role: str = "tenant-admin") -> tuple[uuid.UUID, dict[str, str]]:
        slug = "t-" + uuid.uuid4().hex[:10]
        tenant_id = await create_tenant(self.db, slug=slug, name=slug, actor="test")
        email = f"{uuid.uuid4().hex[:10]}@example.com"
        await create_user(self.db, email=email, password=PASSWORD, roles=[role], tenant=slug, actor="test")
        r = await self.client.post("/auth/login", json={"email": email, "password": PASSWORD})
        assert r.status_code == 200, r.text
        return tenant_id, {"Authorization": f"Bearer {r.json()['access_token']}"}

    async def db_scalar(self, tenant: uuid.UUID, sql: str, *args: Any) -> Any:
        async with self.db.tenant(tenant) as conn:
            return await conn.fetchval(sql, *args)

    async def slug(self, tenant: uuid.UUID) -> str:
        async with self.db.tenant(tenant) as conn:
            return str(await conn.fetchval("SELECT slug FROM tenants WHERE id = $1", tenant))

    async def user(self, role: str, slug: str, email: str | None = None) -> dict[str, str]:
        """Another logged-in user of the tenant ``slug``: auth headers."""
        email = email or f"{uuid.uuid4().hex[:10]}@example.com"
        await create_user(self.db, email=email, password=PASSWORD, roles=[role], tenant=slug, actor="test")
        r = await self.client.post("/auth/login", json={"email": email, "password": PASSWORD})
        assert r.status_code == 200, r.text
        return {"Authorization": f"Bearer {r.json()['access_token']}"}

    async def wait_for(self, check: Any, *, timeout_s: float = 20.0, what: str = "condition") -> Any:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            value = await check()
            if value:
                return value
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.02)


@asynccontextmanager
async def notify_cloud(
    settings: Settings, notify: NotifySettings, clock: Callable[[], dt.datetime] | None = None
) -> AsyncIterator[NotifyCloud]:
    app = create_app(settings, notify=notify, clock=clock)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://pulse.test") as client:
            yield NotifyCloud(app, client)


async def soon(value: Any) -> Any:
    return value
