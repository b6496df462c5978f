"""Cloud fixtures: a migrated database per module (roles prefixed per module, dropped afterwards),
and a running app per test (lifespan entered, requests through httpx's ASGI transport)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from cloud_harness import Cloud, app_role_dsn, running_cloud
from cloud_roles import drop_roles

from pulse.cloud.settings import RoleNames, Settings


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
