"""A real `pulse cloud serve` killed with SIGKILL after a breaching reading was committed (HTTP 200)
but before the rules evaluated it: after a restart the breach raises exactly one alert, once (one
"opened" event, the source of its notifications), and a further kill and restart adds nothing.

Deterministic: the test holds the (rule, device) state row locked, so the server's evaluation of
the committed reading cannot finish before the kill (evaluation locks that row before it writes
anything). Also: what a crash leaves for two tenants, one entry unreadable, is caught up exactly once."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from pulse.cloud.alerts.runner import RuleRunner
from pulse.cloud.db.embedded import free_port
from pulse.cloud.db.pool import Database, PoolSizes, role_dsn
from pulse.cloud.db.rows import TelemetryRow
from pulse.cloud.ingest.writer import write_rows
from pulse.cloud.settings import Settings

pytestmark = pytest.mark.integration
Cloud = Any  # the `cloud` fixture (conftest.py)

HOT = {"id": "hot", "severity": "major", "metric": "temp_c", "operator": "GT", "threshold": 30, "clear_threshold": 28}


class Server:
    """`pulse cloud serve` in its own process, on this module's database."""

    def __init__(self, settings: Settings, tmp: Path) -> None:
        self.settings, self.tmp, self.log = settings, tmp, tmp / "cloud.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    async def start(self) -> None:
        port = free_port()
        self.proc = self._spawn(port)
        self.url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient() as client:
            await until(lambda: self._healthy(client), "pulse cloud serve to answer /health")

    def _spawn(self, port: int) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            "PULSE_MODE": "development",
            "PULSE_DATABASE_URL": self.settings.database_url,
            "PULSE_DB_ROLE_PREFIX": self.settings.db_role_prefix,
            "PULSE_JWT_SECRET": self.settings.jwt_secret.get_secret_value(),
            "PULSE_SYNC_PORT": str(free_port()),
            "PULSE_DATA_DIR": str(self.tmp),
            "PULSE_NOTIFY_WORKERS": "0",
        }
        with self.log.open("ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "pulse.cli.main", "cloud", "serve", "--host", "127.0.0.1", "--port", str(port)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    async def _healthy(self, client: httpx.AsyncClient) -> bool:
        assert self.proc is not None and self.proc.poll() is None, self.log.read_text(errors="replace")[-3000:]
        try:
            return (await client.get(self.url + "/health", timeout=1)).status_code == 200
        except httpx.HTTPError:
            return False

    async def stop(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            await asyncio.to_thread(self.proc.wait, 30)
        self.proc = None


async def until(check: Callable[[], Awaitable[bool]], what: str, limit_s: float = 60) -> None:
    deadline = time.monotonic() + limit_s
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_a_breach_committed_but_not_evaluated_before_sigkill_raises_one_alert_after_restart(
    cloud: Cloud, cloud_settings: Settings, tmp_path: Path
) -> None:
    tenant, headers = await cloud.tenant_user()
    assert (await cloud.client.post("/api/v1/rules", json=HOT, headers=headers)).status_code == 201
    _, device_id, token = await cloud.device_with_token(headers)
    owner = await asyncpg.connect(cloud_settings.database_url)
    server = Server(cloud_settings, tmp_path)

    async def tenant_fetch(sql: str) -> list[asyncpg.Record]:
        async with owner.transaction():
            await owner.execute("SELECT set_config('app.tenant_id', $1, true)", str(tenant))
            return list(await owner.fetch(sql, device_id))

    async def send(value: float) -> None:
        env = {"v": 1, "ts": int(datetime.now(UTC).timestamp() * 1000), "metrics": {"temp_c": value}}
        async with httpx.AsyncClient(base_url=server.url) as client:
            r = await client.post("/ingest/v1/telemetry", json=env, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200 and r.json()["accepted"] == 1, r.text  # 200: the row is committed

    async def evaluated_first_reading() -> bool:
        return bool(await tenant_fetch("SELECT 1 FROM rule_state WHERE rule_id = 'hot' AND device_id = $1"))

    alerts_sql = "SELECT id, state, occurrences FROM alerts WHERE device_id = $1"
    opened_sql = "SELECT e.id FROM alert_events e JOIN alerts a ON a.id = e.alert_id WHERE a.device_id = $1 AND e.kind = 'opened'"
    try:
        await server.start()
        await send(20)
        await until(evaluated_first_reading, "the first reading's evaluation")
        blocker = owner.transaction()
        await blocker.start()
        try:
            await owner.execute("SELECT set_config('app.tenant_id', $1, true)", str(tenant))
            await owner.execute("SELECT 1 FROM rule_state WHERE rule_id = 'hot' AND device_id = $1 FOR UPDATE", device_id)
            await send(35)  # committed; its evaluation waits for the state row lock
            await server.stop(signal.SIGKILL)
        finally:
            await blocker.rollback()
        assert await tenant_fetch(alerts_sql) == []  # nothing was evaluated before the kill

        await server.start()

        async def alert_opened() -> bool:
            return bool(await tenant_fetch(alerts_sql))

        await until(alert_opened, "the missed breach to raise its alert after the restart")
        [alert] = await tenant_fetch(alerts_sql)
        assert (alert["state"], alert["occurrences"]) == ("open", 1)
        assert len(await tenant_fetch(opened_sql)) == 1

        # once: the evaluated position is durable; another kill and restart evaluates nothing again
        await server.stop(signal.SIGKILL)
        await server.start()
        await send(36)  # still above: the open alert stays as it is

        async def outbox_empty() -> bool:
            async with owner.transaction():
                await owner.execute("SELECT set_config('app.tenant_id', $1, true)", str(tenant))
                return bool(await owner.fetchval("SELECT count(*) FROM rule_outbox") == 0)

        await until(outbox_empty, "the last reading's evaluation")
        assert [(a["id"], a["state"], a["occurrences"]) for a in await tenant_fetch(alerts_sql)] == [(alert["id"], "open", 1)]
        assert len(await tenant_fetch(opened_sql)) == 1
    finally:
        await server.stop(signal.SIGTERM)
        await owner.close()



async def test_outbox_entries_are_evaluated_once_per_tenant_and_a_broken_one_is_set_aside(cloud: Cloud, cloud_settings: Settings) -> None:
    """What a crash leaves (entries of two tenants, one of them unreadable) is evaluated by a new
    runner's catch-up: each breach opens one alert, the broken entry is logged and removed instead
    of blocking the tenant, and a second catch-up finds nothing to do."""
    (a, ha), (b, hb) = await cloud.tenant_user(), await cloud.tenant_user()
    for headers in (ha, hb):
        assert (await cloud.client.post("/api/v1/rules", json=HOT, headers=headers)).status_code == 201
    received = datetime.now(UTC)
    writer = await asyncpg.connect(role_dsn(cloud_settings.database_url, cloud_settings.roles.writer, None))
    db = Database(cloud_settings.database_url, cloud_settings.roles, sizes=PoolSizes(app=2, operator=1, writer=1))
    await db.open()
    try:
        async with writer.transaction():  # a bug upstream: metrics that are not JSON
            await writer.execute(
                "INSERT INTO rule_outbox (tenant_id, device_ids, metrics, received_ms) VALUES ($1, $2, $3, $4)",
                a,
                ["a-2"],
                ["{not json"],
                [int(received.timestamp() * 1000)],
            )
        async with writer.transaction():
            await write_rows(writer, [_row(a, "a-1", received, 35), _row(b, "b-1", received, 36), _row(a, "a-1", received, 37)])
        runner = RuleRunner(db)
        await runner.catch_up()  # the app's own runner may take some entries first: the outcome is the same
        assert await runner.catch_up() == 0
        for tenant, device in ((a, "a-1"), (b, "b-1")):
            async with db.tenant(tenant) as conn:
                assert await conn.fetchval("SELECT count(*) FROM rule_outbox") == 0
                rows = await conn.fetch("SELECT device_id, occurrences FROM alerts")
                assert [(r["device_id"], r["occurrences"]) for r in rows] == [(device, 1)]
                opened = await conn.fetchval("SELECT count(*) FROM alert_events WHERE kind = 'opened'")
                assert opened == 1
    finally:
        await db.close()
        await writer.close()


def _row(tenant: uuid.UUID, device: str, at: datetime, temp: float) -> TelemetryRow:
    return TelemetryRow(at, tenant, device, "telemetry", json.dumps({"temp_c": temp}), None, None, None, None, "http", at)
