"""`pulse bench ingest`: HTTP ingest throughput against a raw COPY of the same rows.

- ``raw_copy_msgs_per_s``: the rows Pulse would write, prepared in advance, COPYed straight into the
  same telemetry table by one connection in batches of the writer's size (the ceiling).
- ``ingest_msgs_per_s``: the same number of envelopes POSTed as JSON arrays to ``pulse cloud serve``
  running in its own process (device-token auth, envelope validation, rate limiting, the batched
  COPY writer, ack after commit), by a client in this process with a few requests in flight.
  Counted from the first request to the last answer; every accepted message is then counted in
  the database.
- ``ratio`` = ingest / raw.
- ``sampling``: what the platform sampler (``pulse.cloud.platform``) costs. ``ingest_msgs_per_s``
  above is a server sampling every PULSE_PLATFORM_SAMPLE_INTERVAL_S (default 5 s, as in
  production); a second server with sampling off runs the same rounds, alternated, and
  ``with_over_without`` is the ratio of the two best runs. That difference drowns in run-to-run
  noise, so the cost is also measured directly: 40 samples against this database with 25 and
  with 1,000 devices (device states, 1 gateway per 25 devices with a backlog, open alerts), each
  sample's wall time (client and database together, one round trip after the other, so an upper
  bound of the CPU it takes) over the 5 s interval = ``core_pct`` of one core.

Three rounds (``PULSE_BENCH_ROUNDS``) alternate the two, and the best run of each side counts:
other work on the machine can only slow a run down. Every run is listed. Knobs for exploring:
``PULSE_BENCH_WORKERS`` (server processes, default 2 = one per core), ``PULSE_BENCH_CONCURRENCY``
(requests in flight, 16), ``PULSE_BENCH_BATCH`` (envelopes per request, 1000 = the default PULSE_INGEST_MAX_MESSAGES).

PostgreSQL is an embedded server in a temporary directory (durable: fsync on), unless
DATABASE_URL names one (then a fresh tenant in that database is used, and left there).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx

from pulse.cloud.auth.credentials import new_device_token
from pulse.cloud.db.embedded import EmbeddedPostgres
from pulse.cloud.db.migrate import migrate
from pulse.cloud.db.pool import role_dsn
from pulse.cloud.db.rows import TelemetryRow, telemetry_row
from pulse.cloud.ingest.writer import write_rows
from pulse.cloud.settings import RoleNames
from pulse.common.ports import free_port

DEVICES = 50
BATCH = int(os.environ.get("PULSE_BENCH_BATCH", "1000"))  # envelopes per HTTP request
MESSAGES = 200_000
CONCURRENCY = int(os.environ.get("PULSE_BENCH_CONCURRENCY", "16"))
SERVER_WORKERS = int(os.environ.get("PULSE_BENCH_WORKERS", "2"))  # one per core
ROUNDS = int(os.environ.get("PULSE_BENCH_ROUNDS", "3"))
REFUSED = {"rate_limited": 0}
"""429s the runs met and resent (a run that met one is slower than it could be)"""
WRITER_BATCH_ROWS = int(os.environ.get("PULSE_BENCH_WRITER_BATCH_ROWS", "5000"))


def _envelopes(device: int, start_ms: int, count: int) -> list[dict[str, object]]:
    return [
        {
            "v": 1,
            "ts": start_ms + i * 10,
            "seq": i,
            "metrics": {"temp_c": 20 + (i % 97) / 10, "humidity": 40 + (i % 13), "on": i % 2 == 0},
        }
        for i in range(count)
    ]


async def _setup(dsn: str, roles: RoleNames) -> tuple[uuid.UUID, list[tuple[str, str]]]:
    """A tenant with DEVICES devices and a token each: [(device_id, token)]."""
    await migrate(dsn, roles)
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            tenant = await conn.fetchval(
                "INSERT INTO tenants (slug, name) VALUES ($1, 'bench') RETURNING id", "bench-" + uuid.uuid4().hex[:8]
            )
            await conn.execute("SELECT set_config('app.tenant_id', $1, true)", str(tenant))
            devices = []
            for d in range(DEVICES):
                device_id = f"bench-{d:03d}"
                pk = await conn.fetchval(
                    "INSERT INTO devices (tenant_id, device_id, status) VALUES ($1, $2, 'active') RETURNING id", tenant, device_id
                )
                token = new_device_token(uuid.uuid4())
                await conn.execute(
                    "INSERT INTO device_credentials (id, tenant_id, device, secret_hash) VALUES ($1, $2, $3, $4)",
                    token.credential_id,
                    tenant,
                    pk,
                    token.secret_hash,
                )
                devices.append((device_id, str(token)))
        await conn.execute("SELECT pulse_telemetry_maintain(7, 90)")
    finally:
        await conn.close()
    return tenant, devices


async def _raw_copy(dsn: str, roles: RoleNames, tenant: uuid.UUID, devices: list[tuple[str, str]], start_ms: int) -> float:
    per_device = MESSAGES // DEVICES
    now = datetime.now(UTC)
    rows: list[TelemetryRow] = []
    for device_id, _ in devices:
        for env in _envelopes(0, start_ms, per_device):
            metrics: dict[str, float | bool] = env["metrics"]  # type: ignore[assignment]
            at = datetime.fromtimestamp(int(env["ts"]) / 1000, UTC)  # type: ignore[call-overload]
            rows.append(telemetry_row(at, tenant, device_id, "telemetry", metrics, None, None, env["seq"], None, "bench-raw", now))
    return len(rows) / await timed_copy(dsn, roles, rows, WRITER_BATCH_ROWS)


async def timed_copy(dsn: str, roles: RoleNames, rows: list[TelemetryRow], chunk: int) -> float:
    """Seconds to COPY ``rows`` into telemetry as the writer role, one transaction per ``chunk`` rows."""
    conn = await asyncpg.connect(role_dsn(dsn, roles.writer, None))
    try:
        started = time.perf_counter()
        for i in range(0, len(rows), chunk):
            async with conn.transaction():
                await write_rows(conn, rows[i : i + chunk])
        return time.perf_counter() - started
    finally:
        await conn.close()


def _server(
    dsn: str, roles_prefix: str, port: int, log: Path, *, workers: int = SERVER_WORKERS, sample_interval_s: float = 5.0,
    extra: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PULSE_MODE": "development",
        "PULSE_DATABASE_URL": dsn,
        "PULSE_DB_ROLE_PREFIX": roles_prefix,
        "PULSE_INGEST_RATE_PER_S": "1000000",
        "PULSE_INGEST_BURST": "1000000",
        "PULSE_INGEST_MAX_MESSAGES": str(BATCH),
        "PULSE_WRITER_BATCH_ROWS": str(WRITER_BATCH_ROWS),
        "PULSE_WORKERS": str(workers),
        "PULSE_SYNC_PORT": str(free_port()),  # the gateway sync listener, unused here
        "PULSE_DATA_DIR": tempfile.mkdtemp(prefix="pulse-bench-data-"),
        "PULSE_PLATFORM_SAMPLE_INTERVAL_S": str(sample_interval_s),
        **(extra or {}),
    }
    with log.open("wb") as out:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "pulse.cli.main", "cloud", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    with httpx.Client() as client:
        for _ in range(600):
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited: {log.read_text()[-2000:]}")
            try:
                if client.get(url + "/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
    raise RuntimeError("the server did not become healthy in 60 s")


async def _ingest(url: str | list[str], devices: list[tuple[str, str]], start_ms: int, *, warm_up: bool) -> tuple[float, int]:
    """POST every device's envelopes with CONCURRENCY requests in flight, spread over ``url`` (one
    server, or several replicas: request slots alternate between them); (messages/s, accepted)."""
    urls = [url] if isinstance(url, str) else url
    per_device = MESSAGES // DEVICES
    work: list[tuple[str, bytes]] = []
    for _, token in devices:
        envs = _envelopes(0, start_ms + 3_600_000, per_device)
        for i in range(0, per_device, BATCH):
            work.append((token, json.dumps(envs[i : i + BATCH], separators=(",", ":")).encode()))
    accepted = 0
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        # warm-up: one request per device and server (fills the token caches), not counted
        for base, (_, token) in [(u, d) for u in urls for d in devices] if warm_up else []:
            r = await client.post(
                base + "/ingest/v1/telemetry",
                content=b'{"v":1,"metrics":{"w":1}}',
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            )
            r.raise_for_status()
        queue = list(reversed(work))

        async def worker(slot: int) -> int:
            done = 0
            while queue:
                token, body = queue.pop()
                while True:
                    r = await client.post(
                        urls[slot % len(urls)] + "/ingest/v1/telemetry",
                        content=body,
                        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                    )
                    if r.status_code != 429:
                        break
                    REFUSED["rate_limited"] += 1  # the shared bucket said no: resend after Retry-After, as a device does
                    await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
                if r.status_code != 200:
                    raise RuntimeError(f"ingest answered {r.status_code}: {r.text[:300]}")
                done += int(r.json()["accepted"])
            return done

        started = time.perf_counter()
        accepted = sum(await asyncio.gather(*(worker(slot) for slot in range(CONCURRENCY))))
        elapsed = time.perf_counter() - started
    return accepted / elapsed, accepted


async def _count(dsn: str, tenant: uuid.UUID, source: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute("SELECT set_config('app.tenant_id', $1, true)", str(tenant))
            return int(await conn.fetchval("SELECT count(*) FROM telemetry WHERE tenant_id = $1 AND source = $2", tenant, source))
    finally:
        await conn.close()


def _bench(dsn: str, embedded: bool) -> dict[str, object]:
    """ROUNDS rounds, each a raw COPY then an ingest run of MESSAGES messages; the best of each side
    counts (other work on the machine only ever makes a run slower)."""
    prefix = os.environ.get("PULSE_DB_ROLE_PREFIX", "pulse")
    roles = RoleNames.from_prefix(prefix)
    tenant, devices = asyncio.run(_setup(dsn, roles))
    start_ms = int(time.time() * 1000) - 6 * 3_600_000
    port, quiet_port = free_port(), free_port()
    log = Path(tempfile.mkstemp(prefix="pulse-bench-server-", suffix=".log")[1])
    quiet_log = Path(tempfile.mkstemp(prefix="pulse-bench-server-", suffix=".log")[1])
    proc = _server(dsn, prefix, port, log)
    quiet = _server(dsn, prefix, quiet_port, quiet_log, sample_interval_s=0)
    raws: list[float] = []
    ingests: list[float] = []
    unsampled: list[float] = []
    accepted = 0
    try:
        url, quiet_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{quiet_port}"
        _wait_healthy(url, proc, log)
        _wait_healthy(quiet_url, quiet, quiet_log)
        for r in range(ROUNDS):
            raws.append(asyncio.run(_raw_copy(dsn, roles, tenant, devices, start_ms + r * 60_000)))
            rate, n = asyncio.run(_ingest(url, devices, start_ms + r * 60_000, warm_up=r == 0))
            ingests.append(rate)
            accepted += n
            rate, n = asyncio.run(_ingest(quiet_url, devices, start_ms + r * 60_000 + 30_000, warm_up=r == 0))
            unsampled.append(rate)
            accepted += n
    finally:
        stop_server(proc)
        stop_server(quiet)
        log.unlink(missing_ok=True)
        quiet_log.unlink(missing_ok=True)
    stored = asyncio.run(_count(dsn, tenant, "http")) - 2 * len(devices)  # minus the warm-up messages
    raw, ingest = max(raws), max(ingests)
    cost = asyncio.run(_sampler_cost(dsn, roles))
    return {
        "messages_per_round": MESSAGES,
        "rounds": ROUNDS,
        "accepted": accepted,
        "stored": stored,
        "devices": DEVICES,
        "envelopes_per_request": BATCH,
        "requests_in_flight": CONCURRENCY,
        "server_workers": SERVER_WORKERS,
        "database": "embedded (fsync on)" if embedded else "DATABASE_URL",
        "cpu_count": os.cpu_count(),
        "raw_copy_runs": [round(x) for x in raws],
        "ingest_runs": [round(x) for x in ingests],
        "raw_copy_msgs_per_s": round(raw),
        "ingest_msgs_per_s": round(ingest),
        "ratio": round(ingest / raw, 3),
        "sampling": {
            "interval_s": SAMPLE_INTERVAL_S,
            "ingest_without_sampling_runs": [round(x) for x in unsampled],
            "ingest_without_sampling_msgs_per_s": round(max(unsampled)),
            "with_over_without": round(ingest / max(unsampled), 3),
            "per_sample": cost,
        },
    }


SAMPLE_INTERVAL_S = 5.0
SAMPLES = 40


async def _sampler_cost(dsn: str, roles: RoleNames) -> dict[str, dict[str, float]]:
    """The direct cost of one platform sample with 25 and with 1,000 devices in the database."""
    from pulse.cloud.db.pool import Database, PoolSizes
    from pulse.cloud.metrics import Metrics
    from pulse.cloud.platform.sampler import Sampler

    out: dict[str, dict[str, float]] = {}
    conn = await asyncpg.connect(dsn)
    db = Database(dsn, roles, sizes=PoolSizes(app=2, operator=1, writer=1))
    await db.open()
    try:
        tenant = await conn.fetchval("INSERT INTO tenants (slug, name) VALUES ($1, 'bench-sampling') RETURNING id", "bench-s-" + uuid.uuid4().hex[:8])
        sampler = Sampler(db, Metrics(), writer_depth=lambda: 0, clock=lambda: datetime.now(UTC), interval_s=SAMPLE_INTERVAL_S)
        have = 0
        for devices in (25, 1000):
            async with conn.transaction():
                await conn.execute("SELECT set_config('app.tenant_id', $1, true)", str(tenant))
                await conn.executemany(
                    "INSERT INTO device_states (tenant_id, device_id, status) VALUES ($1, $2, $3)",
                    [(tenant, f"sim-{d:04d}", ("online", "online", "stale", "offline")[d % 4]) for d in range(have, devices)],
                )
                await conn.executemany(
                    "INSERT INTO gateways (tenant_id, name, status, last_seen_at, backlog, oldest_unsynced_at)"
                    " VALUES ($1, $2, 'active', now(), '{\"telemetry\": 100}'::jsonb, now() - interval '1 minute')",
                    [(tenant, f"gw-{g:03d}") for g in range(have // 25, devices // 25)],
                )
                await conn.executemany(
                    "INSERT INTO alerts (tenant_id, device_id, rule_id, severity, explanation) VALUES ($1, $2, 'hot', 'major', '{}'::jsonb)",
                    [(tenant, f"sim-{d:04d}") for d in range(have, devices, 10)],
                )
            have = devices
            await sampler.sample_once()  # warm: statements prepared, pools filled
            walls: list[float] = []
            cpus: list[float] = []
            for _ in range(SAMPLES):
                w0, c0 = time.perf_counter(), time.process_time()
                await sampler.sample_once()
                walls.append(time.perf_counter() - w0)
                cpus.append(time.process_time() - c0)
            wall = sorted(walls)[len(walls) // 2]
            out[f"devices_{devices}"] = {
                "median_wall_ms": round(wall * 1000, 3),
                "median_client_cpu_ms": round(sorted(cpus)[len(cpus) // 2] * 1000, 3),
                "core_pct": round(100 * wall / SAMPLE_INTERVAL_S, 3),
            }
    finally:
        await db.close()
        await conn.close()
    return out


def run() -> dict[str, object]:
    if url := os.environ.get("DATABASE_URL"):
        return _bench(url, embedded=False)
    root = Path(tempfile.mkdtemp(prefix="pulse-bench-pg-"))
    os.chmod(root, 0o755)
    server = EmbeddedPostgres(root / "pg")
    try:
        admin = server.start()
        asyncio.run(_create_db(admin))
        return _bench(admin.rsplit("/", 1)[0] + "/pulse_bench", embedded=True)
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


async def _create_db(admin_dsn: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute("CREATE DATABASE pulse_bench")
    finally:
        await conn.close()
