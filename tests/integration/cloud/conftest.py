"""Cloud fixtures: a migrated database per module (roles prefixed per module, dropped afterwards),
and a running app per test (lifespan entered, requests through httpx's ASGI transport)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import boto3
import pytest
from cloud_harness import Cloud, app_role_dsn, running_cloud
from cloud_roles import drop_roles

from pulse.cloud.settings import RoleNames, Settings
from pulse.common.ports import free_port


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


S3_KEYS = {"aws_access_key_id": "pulse-test", "aws_secret_access_key": "pulse-test-secret"}


@pytest.fixture
def s3_endpoint(tmp_path: Path) -> Iterator[str]:
    """moto's S3-compatible server, in its own process on a loopback port; buckets ``pulse-archive``
    and ``pulse-firmware`` made in it (keys: ``S3_KEYS``)."""
    port = free_port()
    log = (tmp_path / "moto.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "moto.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "moto's server did not start"
                time.sleep(0.1)
        url = f"http://127.0.0.1:{port}"
        boto3.client("s3", endpoint_url=url, region_name="us-east-1", **S3_KEYS).create_bucket(Bucket="pulse-archive")
        boto3.client("s3", endpoint_url=url, region_name="us-east-1", **S3_KEYS).create_bucket(Bucket="pulse-firmware")
        yield url
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
