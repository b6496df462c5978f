"""A firmware job end to end, in real processes: an embedded PostgreSQL, `pulse cloud serve`,
`pulse gateway enroll` / `device add` / `run`, and `pulse sim run` as the 25 devices of an LTE-M site
behind the one gateway (one process simulates them all). The gateway reaches the sync listener
through a TCP proxy in this test that cuts every open connection twice while the artifact is
downloading.

An operator uploads an artifact and starts a staged firmware job (a canary of 2, then the rest).
Every device ends `succeeded` and reports the new version on its twin; the artifact crossed the
uplink once: the cloud counted exactly its size as served (the gateway resumed after each cut with
a range request, which takes back what the cut left in flight), the gateway fetched and verified it
once, and served it once to each of the 25 devices."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
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
from pulse.edge.auth import DeviceRegistry
from pulse.edge.config import load as load_gateway_settings

pytestmark = pytest.mark.integration

PULSE = [sys.executable, "-m", "pulse.cli.main"]
ROLE_PREFIX = "pulsefw"
PASSWORD = "a long enough password for the test"
DEVICES = 25
SIZE = 768 * 1024


class CuttingProxy:
    """Forwards loopback TCP to ``target``; aborts every open connection when the bytes sent back
    to the client pass each of ``cut_at`` (the uplink cut mid-download)."""

    def __init__(self, target: int, cut_at: list[int]) -> None:
        self.target = target
        self.cut_at = sorted(cut_at)
        self.port = 0
        self.cuts = 0
        self.down_bytes = 0
        self._open: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            client_w.transport.abort()
            return
        self._open |= {client_w, up_w}

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter, down: bool) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while data := await r.read(16384):
                    w.write(data)
                    await w.drain()
                    if down:
                        self.down_bytes += len(data)
                        if self.cut_at and self.down_bytes >= self.cut_at[0]:
                            self.cut_at.pop(0)
                            self.cut()
            w.transport.abort()

        await asyncio.gather(pipe(client_r, up_w, False), pipe(up_r, client_w, True))
        self._open -= {client_w, up_w}

    def cut(self) -> None:
        if self._open:
            self.cuts += 1
        for w in list(self._open):
            w.transport.abort()

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


def _spawn(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"


async def _until(ok: Callable[[], Awaitable[Any]], what: str, logs: list[Path], limit_s: float = 90) -> Any:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if value := await ok():
            return value
        await asyncio.sleep(0.2)
    raise AssertionError(f"{what}: not within {limit_s} s\n" + "\n".join(f"{p.name}:\n{_tail(p)}" for p in logs))


async def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            await asyncio.to_thread(proc.wait, 20)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait)


async def test_a_staged_firmware_job_crosses_a_cut_uplink_once_and_every_device_behind_the_gateway_updates(
    tmp_path: Path, own_postgres: EmbeddedPostgres
) -> None:
    dsn = own_postgres.dsn
    p = await provision(dsn, RoleNames.from_prefix(ROLE_PREFIX), devices=DEVICES, prefix="fw")
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("UPDATE devices SET gateway_id = $1", p.gateway_id)
        slug = await conn.fetchval("SELECT slug FROM tenants WHERE id = $1", p.tenant_id)
    finally:
        await conn.close()

    api_port, sync_port, mqtt_port, fw_port = free_port(), free_port(), free_port(), free_port()
    proxy = CuttingProxy(sync_port, cut_at=[SIZE // 4, SIZE // 2])
    await proxy.start()
    env = serve_environment(dsn, ROLE_PREFIX, port=api_port, sync_port=sync_port, data_dir=tmp_path / "cloud")
    env |= {"PULSE_WORKERS": "1", "PULSE_JOB_INTERVAL_S": "0.2", "PULSE_SYNC_PUBLIC_URL": f"https://127.0.0.1:{proxy.port}"}
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
        f'[gateway]\nid = "fw-gw"\nlog_level = "info"\n[broker]\nhost = "127.0.0.1"\nport = {mqtt_port}\n[status]\nport = 0\n'
        "[sync]\nidle_poll_s = 0.05\nbackoff_base_s = 0.05\nbackoff_cap_s = 0.5\nrequest_timeout_s = 5\ndownlink_wait_s = 2\n"
        f'[firmware]\nhost = "127.0.0.1"\nport = {fw_port}\n'
    )
    gw_env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}

    def gateway_cli(*args: str) -> None:
        r = subprocess.run([*PULSE, "gateway", *args, "--config", str(config)], env=gw_env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, f"pulse gateway {args[0]}: {r.stdout}\n{r.stderr}"

    credentials = tmp_path / "credentials.json"
    image = hashlib.sha256(b"seed").digest() * (SIZE // 32)
    gateway: subprocess.Popen[bytes] | None = None
    sim: subprocess.Popen[bytes] | None = None
    try:
        async with httpx.AsyncClient(base_url=api, timeout=30) as c:

            async def healthy() -> bool:
                assert cloud.poll() is None, _tail(cloud_log)
                try:
                    return (await c.get("/health")).status_code == 200
                except httpx.HTTPError:
                    return False

            await _until(healthy, "the cloud answering", logs)
            await asyncio.to_thread(gateway_cli, "enroll", "--cloud", api, "--token", p.enrollment_token, "--insecure")  # loopback http
            # the first device through the CLI, the others in one transaction (25 CLI processes take a while)
            first, *others = p.device_ids
            secrets = {first: "fw-device-secret-0000-0123456789"}
            await asyncio.to_thread(gateway_cli, "device", "add", first, "--secret", secrets[first])
            registry = DeviceRegistry(load_gateway_settings(config, gw_env).database)
            try:
                secrets |= registry.add_many(others)
            finally:
                registry.close()
            credentials.write_text(json.dumps(secrets))
            login = await c.post("/auth/login", json={"email": "ops@example.com", "password": PASSWORD})
            h = {"Authorization": f"Bearer {login.json()['access_token']}"}
            art = await c.post("/api/v1/firmware", content=image, headers={**h, "Content-Type": "application/octet-stream"},
                               params={"version": "2.0.0", "model": "any", "sha256": hashlib.sha256(image).hexdigest()})
            assert art.status_code == 201, art.text
            artifact = art.json()

            gateway = await asyncio.to_thread(_spawn, [*PULSE, "gateway", "run", "--config", str(config)], gw_log, gw_env)
            sim = await asyncio.to_thread(
                _spawn,
                [*PULSE, "sim", "run", "--mqtt", f"127.0.0.1:{mqtt_port}", "--credentials", str(credentials), "--devices", str(DEVICES),
                 "--prefix", "fw", "--interval", "1", "--report-every", "1"],  # the sim spreads connects over one interval
                sim_log, gw_env,
            )

            async def connected() -> bool:
                assert gateway is not None and gateway.poll() is None, _tail(gw_log)
                return _tail(sim_log).count(f"{DEVICES}/{DEVICES} connected") > 0

            await _until(connected, "every simulated device connected to the gateway", logs)
            r = await c.post("/api/v1/jobs", json={
                "name": "firmware 2.0.0", "target": {"gateway": str(p.gateway_id)},
                "action": {"kind": "firmware", "artifact": artifact["id"], "expires_in_s": 600},
                "rollout": {"canary": 2, "abort_percent": 20, "device_timeout_s": 300},
            }, headers=h)
            assert r.status_code == 201, r.text
            job_id = r.json()["id"]

            async def finished() -> dict[str, Any] | None:
                assert gateway is not None and gateway.poll() is None, _tail(gw_log)
                job = (await c.get(f"/api/v1/jobs/{job_id}", headers=h)).json()
                return job if job["state"] in ("completed", "aborted", "cancelled") else None

            job = await _until(finished, "the firmware job finishing", logs, limit_s=180)
            assert job["state"] == "completed", json.dumps(job, indent=1)
            assert {d["outcome"] for d in job["devices"]} == {"succeeded"}, job["devices"]
            assert [s["succeeded"] for s in job["stage_progress"]] == [2, DEVICES - 2]
            for device in p.device_ids:
                twin = (await c.get(f"/api/v1/devices/{device}/twin", headers=h)).json()
                assert twin["state"]["reported"]["firmware"] == {"version": "2.0.0"}, twin

            # the uplink (the proxy) carried the artifact once, plus what the cuts threw away in flight and
            # the small sync traffic; the cloud counts the bytes that arrived: each resume's Range start takes
            # back what the cut download had written past it
            assert proxy.cuts >= 2
            assert SIZE <= proxy.down_bytes < SIZE * 1.5, (proxy.down_bytes, SIZE)

            async def counted() -> dict[str, Any] | None:  # the cloud counts a download once its response has ended
                got: dict[str, Any] = (await c.get(f"/api/v1/firmware/{artifact['id']}", headers=h)).json()
                return got if got["downloads"] >= 1 else None

            served = await _until(counted, "the cloud counting the download", logs)
            assert (served["bytes_served"], served["downloads"]) == (SIZE, 1), served
            async with httpx.AsyncClient(timeout=10) as local:
                status = (await local.get(f"http://127.0.0.1:{fw_port}/firmware")).json()
            assert (status["fetches"], status["uplink_bytes"], status["served"]) == (1, SIZE, DEVICES), status
            assert status["resumes"] >= 1, status
    finally:
        for proc in (sim, gateway):
            if proc is not None:
                await _stop(proc, signal.SIGINT if proc is sim else signal.SIGTERM)
        await _stop(cloud)
        await proxy.close()
