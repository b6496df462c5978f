"""Real `pulse cloud serve` processes on a test module's database, for the replica and stream tests:
start one (``start``, with ``stream_env`` for the stream tests), ask its /health (``health``,
``holds``), wait for a condition (``until``), stop it
(``stop``: SIGTERM, then SIGKILL). A module of its own, so tests import it by a name no other
folder's conftest.py shares."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from pulse.cloud.auth.accounts import create_tenant, create_user
from pulse.cloud.db.pool import Database
from pulse.cloud.settings import Settings
from pulse.common.ports import free_port

PASSWORD = "correct horse battery staple"


@dataclass
class Replica:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def start(settings: Settings, tmp: Path, name: str, **extra: str) -> Replica:
    port = free_port()
    env = {
        **os.environ,
        "PULSE_MODE": "development",
        "PULSE_DATABASE_URL": settings.database_url,
        "PULSE_DB_ROLE_PREFIX": settings.db_role_prefix,
        "PULSE_JWT_SECRET": settings.jwt_secret.get_secret_value(),
        "PULSE_SYNC_PORT": str(free_port()),
        "PULSE_DATA_DIR": str(tmp),  # one CA for both, as replicas share theirs
        "PULSE_CLUSTER_POLL_S": "0.2",
        "PULSE_CLUSTER_LEASE_S": "2",
        "PULSE_DEVICE_TOKEN_CACHE_S": "3600",  # only an invalidation can make B forget a token in time
        "PULSE_WRITER_FLUSH_MS": "5",
        **extra,
    }
    log = tmp / f"{name}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pulse.cli.main", "cloud", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Replica(proc, f"http://127.0.0.1:{port}", log)


async def health(client: httpx.AsyncClient, replica: Replica) -> dict[str, Any] | None:
    assert replica.proc.poll() is None, replica.tail()
    try:
        r = await client.get(replica.url + "/health", timeout=2)
    except httpx.HTTPError:
        return None
    return r.json() if r.status_code == 200 else None  # type: ignore[no-any-return]


def stream_env(nats_url: str, names: dict[str, str], partitions: int, **extra: str) -> dict[str, str]:
    """The settings of replicas sharing one ingest stream: the stream, its partitions, no platform
    sampling (its queries would only add noise to a crash test), and ``extra``."""
    return {
        "PULSE_PLATFORM_SAMPLE_INTERVAL_S": "0",
        "PULSE_STREAM_URL": nats_url,
        "PULSE_STREAM_NAME": names["stream_name"],
        "PULSE_STREAM_SUBJECT": names["stream_subject"],
        "PULSE_STREAM_PARTITIONS": str(partitions),
        **extra,
    }


async def holds(client: httpx.AsyncClient, replica: Replica, partitions: set[str]) -> bool:
    """True when ``replica`` answers /health and runs the writer of every partition in ``partitions``."""
    h = await health(client, replica)
    return h is not None and partitions <= set(h["cluster_jobs"])


async def until(check: Any, what: str, limit_s: float = 60) -> Any:
    deadline = time.monotonic() + limit_s
    while True:
        got = await check()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def stop(replica: Replica) -> None:
    if replica.proc.poll() is None:
        replica.proc.send_signal(signal.SIGTERM)
        try:
            replica.proc.wait(30)
        except subprocess.TimeoutExpired:
            replica.proc.kill()
            replica.proc.wait(10)


async def login(client: httpx.AsyncClient, url: str, email: str) -> dict[str, str]:
    r = await client.post(url + "/auth/login", json={"email": email, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


async def tenant_admin(
    settings: Settings, client: httpx.AsyncClient, url: str, *, role: str = "tenant-admin"
) -> tuple[uuid.UUID, dict[str, str]]:
    """A new tenant and a logged-in user in it (or, with ``role="operator-admin"``, an operator)."""
    db = Database(settings.database_url, settings.roles)
    await db.open()
    try:
        slug = "r-" + uuid.uuid4().hex[:10]
        tenant = await create_tenant(db, slug=slug, name=slug, actor="test")
        email = f"{uuid.uuid4().hex[:10]}@example.com"
        operator = role.startswith("operator")
        await create_user(db, email=email, password=PASSWORD, roles=[role], tenant=None if operator else slug, actor="test")
    finally:
        await db.close()
    return tenant, await login(client, url, email)


async def tenant_devices(
    settings: Settings, client: httpx.AsyncClient, url: str, *, prefix: str, count: int
) -> tuple[uuid.UUID, list[tuple[str, str]]]:
    """A new tenant with ``count`` devices (``<prefix>-<i>``) and a token each, made through ``url``'s API."""
    tenant, admin = await tenant_admin(settings, client, url)
    out = []
    for i in range(count):
        r = await client.post(url + "/api/v1/devices", json={"device_id": f"{prefix}-{i}"}, headers=admin)
        assert r.status_code == 201, r.text
        r = await client.post(url + f"/api/v1/devices/{r.json()['id']}/credentials", headers=admin)
        out.append((f"{prefix}-{i}", r.json()["token"]))
    return tenant, out
