"""Twin and commands end to end, in real processes: an embedded PostgreSQL, `pulse cloud serve`,
`pulse gateway enroll` / `device add` / `run`, and `pulse sim run` as the device.

While the gateway is stopped, an operator sets desired state and sends two commands through the
API; one command's deadline passes before the gateway comes back. When it does, the simulated
device receives the delta, applies it and reports; the cloud's delta becomes empty. The live
command is answered (succeeded, with the device's result); the late one is expired and was never
sent to the device."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from pulse.bench.sync_cloud_part import provision, serve_environment
from pulse.cloud.db.embedded import EmbeddedPostgres, free_port
from pulse.cloud.settings import RoleNames
from pulse.edge.config import DATABASE_FILE

pytestmark = pytest.mark.integration

PULSE = [sys.executable, "-m", "pulse.cli.main"]
ROLE_PREFIX = "pulsetwin"
PASSWORD = "a long enough password for the test"


def _spawn(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"


async def _until(ok: Callable[[], Awaitable[Any]], what: str, logs: list[Path], limit_s: float = 60) -> Any:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if value := await ok():
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what}: not within {limit_s} s\n" + "\n".join(f"{p.name}:\n{_tail(p)}" for p in logs))


async def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            await asyncio.to_thread(proc.wait, 20)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait)


async def test_desired_and_commands_set_while_the_gateway_is_down_reach_the_device_when_it_returns(
    tmp_path: Path, own_postgres: EmbeddedPostgres
) -> None:
    dsn = own_postgres.dsn
    p = await provision(dsn, RoleNames.from_prefix(ROLE_PREFIX), devices=1, prefix="twin")
    device = p.device_ids[0]  # "twin-0000", the id `pulse sim run --prefix twin` gives its first device
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("UPDATE devices SET gateway_id = $1 WHERE device_id = $2", p.gateway_id, device)
        slug = await conn.fetchval("SELECT slug FROM tenants WHERE id = $1", p.tenant_id)
    finally:
        await conn.close()

    api_port, sync_port, mqtt_port = free_port(), free_port(), free_port()
    env = serve_environment(dsn, ROLE_PREFIX, port=api_port, sync_port=sync_port, data_dir=tmp_path / "cloud")
    env |= {"PULSE_WORKERS": "1", "PULSE_COMMAND_SWEEP_INTERVAL_S": "0.2"}
    api = f"http://127.0.0.1:{api_port}"
    cloud_log, gw_log, sim_log = tmp_path / "cloud.log", tmp_path / "gateway.log", tmp_path / "sim.log"
    logs = [cloud_log, gw_log, sim_log]
    user = await asyncio.to_thread(
        subprocess.run,
        [*PULSE, "cloud", "admin", "create-user", "ops@example.com", "--role", "tenant-admin", "--tenant", slug, "--password-stdin"],
        input=PASSWORD + "\n", env=env, capture_output=True, text=True, timeout=60,
    )
    assert user.returncode == 0, user.stderr
    cloud = await asyncio.to_thread(_spawn, [*PULSE, "cloud", "serve", "--host", "127.0.0.1", "--port", str(api_port)], cloud_log, env)

    gw_dir = tmp_path / "gateway"
    gw_dir.mkdir()
    config = gw_dir / "gateway.toml"
    config.write_text(
        f'[gateway]\nid = "twin-gw"\nlog_level = "info"\n[broker]\nhost = "127.0.0.1"\nport = {mqtt_port}\n[status]\nport = 0\n'
        "[sync]\nidle_poll_s = 0.05\nbackoff_base_s = 0.05\nbackoff_cap_s = 0.5\nrequest_timeout_s = 5\ndownlink_wait_s = 2\n"
    )
    gw_env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}

    def gateway_cli(*args: str) -> None:
        r = subprocess.run([*PULSE, "gateway", *args, "--config", str(config)], env=gw_env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, f"pulse gateway {args[0]}: {r.stdout}\n{r.stderr}"

    secret = "twin-device-secret-0123456789"
    credentials = tmp_path / "credentials.json"
    credentials.write_text(json.dumps({device: secret}))
    gateway: subprocess.Popen[bytes] | None = None
    sim: subprocess.Popen[bytes] | None = None
    try:
        async with httpx.AsyncClient(base_url=api, timeout=10) as c:

            async def healthy() -> bool:
                assert cloud.poll() is None, _tail(cloud_log)
                try:
                    return (await c.get("/health")).status_code == 200
                except httpx.HTTPError:
                    return False

            await _until(healthy, "the cloud answering", logs)
            await asyncio.to_thread(gateway_cli, "enroll", "--cloud", api, "--token", p.enrollment_token, "--insecure")  # loopback http
            await asyncio.to_thread(gateway_cli, "device", "add", device, "--secret", secret)
            login = await c.post("/auth/login", json={"email": "ops@example.com", "password": PASSWORD})
            assert login.status_code == 200, login.text
            h = {"Authorization": f"Bearer {login.json()['access_token']}"}

            # the gateway is down (not started yet); the operator changes desired state and sends commands
            r = await c.patch(f"/api/v1/devices/{device}/twin", json={"state": {"desired": {"interval_s": 2}}}, headers=h)
            assert r.status_code == 200 and r.json()["state"]["delta"] == {"interval_s": 2}, r.text
            ping = (await c.post(f"/api/v1/devices/{device}/commands", json={"name": "ping", "expires_in_s": 600}, headers=h)).json()
            late = (await c.post(f"/api/v1/devices/{device}/commands", json={"name": "reboot", "expires_in_s": 1}, headers=h)).json()

            async def command(cid: str) -> dict[str, Any]:
                got = await c.get(f"/api/v1/devices/{device}/commands/{cid}", headers=h)
                assert got.status_code == 200, got.text
                return got.json()  # type: ignore[no-any-return]

            async def late_expired() -> bool:
                return (await command(late["id"]))["state"] == "expired"

            await _until(late_expired, "the late command expired by the cloud's sweep while the gateway is down", logs)

            # the gateway comes back, and the device with it
            gateway = await asyncio.to_thread(_spawn, [*PULSE, "gateway", "run", "--config", str(config)], gw_log, gw_env)
            sim = await asyncio.to_thread(
                _spawn,
                [*PULSE, "sim", "run", "--mqtt", f"127.0.0.1:{mqtt_port}", "--credentials", str(credentials), "--devices", "1",
                 "--prefix", "twin", "--interval", "30", "--report-every", "1"],
                sim_log,
                gw_env,
            )

            async def converged() -> dict[str, Any] | None:
                assert gateway is not None and gateway.poll() is None, _tail(gw_log)
                twin = (await c.get(f"/api/v1/devices/{device}/twin", headers=h)).json()
                return twin if twin["state"]["reported"].get("interval_s") == 2 else None

            twin = await _until(converged, "the device's report of the new interval reaching the cloud", logs)
            assert twin["state"]["delta"] == {}
            assert twin["state"]["desired"] == {"interval_s": 2}

            async def answered() -> dict[str, Any] | None:
                got = await command(ping["id"])
                return got if got["state"] in ("succeeded", "failed") else None

            done = await _until(answered, "the device's answer to ping", logs)
            assert (done["state"], done["result"]) == ("succeeded", {"pong": True})
            # the gateway's "sent" report and the device's answer race on the twin stream; an answer
            # proves the command was sent, so the protocol takes delivered -> succeeded as well
            states = [s["state"] for s in done["history"]]
            assert states in (["queued", "delivered", "sent", "succeeded"], ["queued", "delivered", "succeeded"]), states
            expired = await command(late["id"])
            assert [s["state"] for s in expired["history"]] == ["queued", "expired"]
            history = (await c.get(f"/api/v1/devices/{device}/twin/history", headers=h)).json()["items"]
            assert history[0]["source"] == "device" and history[-1]["source"] == "user"
    finally:
        for proc in (sim, gateway):
            if proc is not None:
                await _stop(proc, signal.SIGINT if proc is sim else signal.SIGTERM)
        await _stop(cloud)

    # the late command never reached the gateway, so it can never have been sent to the device
    assert (gw_dir / DATABASE_FILE).exists(), sorted(str(x) for x in gw_dir.rglob("*"))
    db = sqlite3.connect(gw_dir / DATABASE_FILE)
    try:
        held = dict(db.execute("SELECT id, state FROM commands").fetchall())
    finally:
        db.close()
    assert held == {ping["id"]: "succeeded"}, _tail(gw_log)
