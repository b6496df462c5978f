"""Device -> gateway -> cloud, the real stack in real processes, under chaos: nothing acknowledged
is lost, nothing is written twice.

A dedicated embedded PostgreSQL, `pulse cloud serve` (API + mTLS sync listener), `pulse gateway
enroll` and `pulse gateway run`, and the numbered QoS 1 publisher (tests/integration/edge). The
gateway reaches the sync listener through a TCP proxy in this test (the cloud's
PULSE_SYNC_PUBLIC_URL names the proxy, so enrollment hands the gateway the proxy's address) that
cuts every open connection at random moments. Meanwhile, in a seeded random order: the gateway is
SIGKILLed and restarted twice, the cloud is SIGKILLed and restarted once, and PostgreSQL is stopped
and started once. Afterwards the cloud's telemetry for the device holds exactly the sequence
numbers the publisher saw acknowledged, each once. PULSE_CHAOS_SEED replays a schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import httpx
import pytest

from pulse.bench.sync_cloud_part import Provisioned, provision, serve_environment
from pulse.cloud.db.embedded import EmbeddedPostgres, free_port
from pulse.cloud.settings import RoleNames

pytestmark = pytest.mark.chaos

PUBLISHER = Path(__file__).parents[1] / "integration" / "edge" / "publisher.py"
PULSE = [sys.executable, "-m", "pulse.cli.main"]
ROLE_PREFIX = "pulse"


class CuttingProxy:
    """Forwards loopback TCP to ``target``; ``cut()`` aborts every connection open at that moment."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self.cuts = 0
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

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            w.transport.abort()

        await asyncio.gather(pipe(client_r, up_w), pipe(up_r, client_w))
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


def _spawn(args: list[str], log: Path, env: dict[str, str], **kwargs: object) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, **kwargs)  # type: ignore[call-overload, no-any-return]


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"


async def _wait_until(ok: Callable[[], Awaitable[bool]], proc: subprocess.Popen[bytes], log: Path, what: str, limit_s: float = 40) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{what}: exited with {proc.returncode}:\n{_tail(log)}"
        if await ok():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what}: not ready in {limit_s} s:\n{_tail(log)}")


async def _synced(dsn: str, p: Provisioned, device: str) -> list[int]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT seq FROM telemetry WHERE tenant_id = $1 AND device_id = $2 AND source = 'gateway'", p.tenant_id, device)
    finally:
        await conn.close()
    return [r["seq"] for r in rows]


async def test_acknowledged_stream_reaches_the_cloud_exactly_once_through_cuts_kills_and_a_database_restart(
    tmp_path: Path, own_postgres: EmbeddedPostgres
) -> None:
    seed = int(os.environ.get("PULSE_CHAOS_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    schedule = ["gateway", "gateway", "cloud", "postgres"]
    rng.shuffle(schedule)
    pauses = [rng.uniform(1.0, 3.0) for _ in schedule]
    cut_gaps = [rng.uniform(0.2, 1.5) for _ in range(200)]
    context = f"seed {seed} (PULSE_CHAOS_SEED={seed} replays it), schedule {list(zip(schedule, [round(x, 2) for x in pauses], strict=True))}"
    print(context)

    dsn = own_postgres.dsn
    p = await provision(dsn, RoleNames.from_prefix(ROLE_PREFIX), devices=1, prefix="chaos")
    device = p.device_ids[0]

    api_port, sync_port = free_port(), free_port()
    proxy = CuttingProxy(sync_port)
    await proxy.start()
    cloud_env = serve_environment(dsn, ROLE_PREFIX, port=api_port, sync_port=sync_port, data_dir=tmp_path / "cloud")
    cloud_env |= {"PULSE_WORKERS": "1", "PULSE_SYNC_PUBLIC_URL": f"https://127.0.0.1:{proxy.port}"}
    cloud_log = tmp_path / "cloud.log"
    api = f"http://127.0.0.1:{api_port}"

    async def start_cloud() -> subprocess.Popen[bytes]:
        proc = await asyncio.to_thread(_spawn, [*PULSE, "cloud", "serve", "--host", "127.0.0.1", "--port", str(api_port)], cloud_log, cloud_env)

        async def healthy() -> bool:
            try:
                async with httpx.AsyncClient() as c:
                    return (await c.get(api + "/health", timeout=1)).status_code == 200
            except httpx.HTTPError:
                return False

        await _wait_until(healthy, proc, cloud_log, "pulse cloud serve")
        return proc

    gw_dir = tmp_path / "gateway"
    gw_dir.mkdir()
    mqtt_port = free_port()
    config = gw_dir / "gateway.toml"
    config.write_text(
        f'[gateway]\nid = "chaos-gw"\nlog_level = "warning"\n[broker]\nhost = "127.0.0.1"\nport = {mqtt_port}\nconnectivity_events = false\n[status]\nport = 0\n'
        "[sync]\nrecords_per_batch = 200\nidle_poll_s = 0.05\nbackoff_base_s = 0.05\nbackoff_cap_s = 0.5\nrequest_timeout_s = 5\n"
        "downlink_wait_s = 2\n"
    )
    gw_env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
    gw_log = tmp_path / "gateway.log"

    async def start_gateway() -> subprocess.Popen[bytes]:
        proc = await asyncio.to_thread(_spawn, [*PULSE, "gateway", "run", "--config", str(config)], gw_log, gw_env)

        async def listening() -> bool:
            try:
                _, w = await asyncio.open_connection("127.0.0.1", mqtt_port)
            except OSError:
                return False
            w.close()
            return True

        await _wait_until(listening, proc, gw_log, "pulse gateway run")
        return proc

    def cli(*args: str) -> str:
        r = subprocess.run([*PULSE, "gateway", *args, "--config", str(config)], env=gw_env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, f"pulse gateway {args[0]}: {r.stdout}\n{r.stderr}"
        return r.stdout

    cloud = await start_cloud()
    await asyncio.to_thread(cli, "enroll", "--cloud", api, "--token", p.enrollment_token, "--insecure")  # loopback http
    secret = f"chaos-secret-{seed}"
    await asyncio.to_thread(cli, "device", "add", device, "--secret", secret)
    gateway = await start_gateway()
    acked_file = tmp_path / "acked.txt"
    publisher = await asyncio.to_thread(
        subprocess.Popen,
        [sys.executable, str(PUBLISHER), str(mqtt_port), device, secret, str(acked_file)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=gw_env,
    )

    async def cutter() -> None:
        for gap in cut_gaps:
            await asyncio.sleep(gap)
            proxy.cut()

    cutting = asyncio.create_task(cutter())
    synced: list[int] = []
    acked: set[int] = set()
    last = 0
    try:
        for event, pause in zip(schedule, pauses, strict=True):
            await asyncio.sleep(pause)
            if event == "gateway":
                gateway.send_signal(signal.SIGKILL)
                await asyncio.to_thread(gateway.wait)
                gateway = await start_gateway()
            elif event == "cloud":
                cloud.send_signal(signal.SIGKILL)
                await asyncio.to_thread(cloud.wait)
                cloud = await start_cloud()
            else:
                await asyncio.to_thread(own_postgres.stop)
                await asyncio.sleep(0.5)
                await asyncio.to_thread(own_postgres.start)
                assert own_postgres.dsn == dsn, "PostgreSQL came back on another port"
        await asyncio.sleep(1.0)
        cutting.cancel()
        assert publisher.stdin is not None
        publisher.stdin.write("stop\n")
        publisher.stdin.flush()
        pub_out, _ = await asyncio.to_thread(publisher.communicate, timeout=70)
        assert pub_out.startswith("done") and pub_out.strip().endswith("unacknowledged 0"), f"{context}: publisher said {pub_out!r}"
        last = int(pub_out.split()[1])
        acked = {int(line) for line in acked_file.read_text().split()}
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            synced = await _synced(dsn, p, device)
            if acked <= set(synced):
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.5)  # anything still in flight (a duplicate, say) lands before counting
        synced = await _synced(dsn, p, device)
    finally:
        cutting.cancel()
        if publisher.poll() is None:
            publisher.kill()
        for proc in (gateway, cloud):
            proc.send_signal(signal.SIGTERM)
        for proc in (gateway, cloud):
            try:
                await asyncio.to_thread(proc.wait, 20)
            except subprocess.TimeoutExpired:
                proc.kill()
        await proxy.close()

    summary = (f"{context}: {len(acked)} acknowledged to the device (last {last}), {len(synced)} rows in the cloud, "
               f"{len(set(synced))} distinct, {proxy.cuts} connection cuts\ngateway log:\n{_tail(gw_log)}\ncloud log:\n{_tail(cloud_log)}")
    print(summary.split("\n", 1)[0])
    assert len(acked) == last and last > 300, summary
    assert len(synced) == len(set(synced)), summary  # 0 duplicated
    assert acked - set(synced) == set(), summary  # 0 lost
    assert set(synced) == acked, summary  # nothing the device was not acknowledged for (it waited for every ack)
    assert proxy.cuts > 0, summary
