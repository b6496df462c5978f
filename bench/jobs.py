"""`pulse bench jobs`: a desired-state job over a large fleet, and firmware uplink bytes per device.

Part 1, ``desired``: ``--devices`` (10,000) devices of one tenant, half of them direct (HTTP) and half
behind gateways (250 per gateway). One desired-state job (one stage) is started by the job runner's
own code (``cloud.jobs.run_once``: per device the twin update, the downlink item for its gateway,
the job row); then every device reports the new value through the same code HTTP ingest and gateway
sync use (``twins.apply_device_messages``, 500 reports per transaction, as a sync batch would), and
the runner reads the outcomes. Per device: ``reach_p50_ms``/``reach_p99_ms`` from the job's start
until the runner committed its change (the runner starts 500 devices a transaction; a device's time
is its round's start plus the mean round length);
``p50_ms``/``p99_ms`` until its report was committed (reports go in the order the devices were
started); ``job_s`` until the runner recorded every outcome. Baseline in the same run, on another tenant of the same
size: the same change made the way it was made before jobs, one ``PATCH /twin`` per device
(``twins.update_desired`` in its own transaction each). ``ratio`` = job time / baseline time.

Part 2, ``firmware``: a 1 MiB artifact to 25 devices on one site. With the gateway's cache
(edge/firmware.py: ``FirmwareCache`` + its local HTTP download, real uvicorn on loopback) the
uplink carries it once; without, each device downloads it from the origin. The origin is a loopback
HTTP server in this process standing in for the cloud's sync listener (same ranged answers, no
TLS); bytes are counted where they leave it. ``uplink_bytes_per_device`` with and without, and
``ratio`` = without / with.

PostgreSQL is embedded unless DATABASE_URL names one. ``--devices N``."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from pulse.cloud import jobs, twins
from pulse.cloud.db.embedded import EmbeddedPostgres
from pulse.cloud.db.migrate import migrate
from pulse.cloud.db.pool import Database
from pulse.cloud.settings import RoleNames
from pulse.common.ports import free_port
from pulse.edge.firmware import FirmwareCache, FirmwareService, LocalUrls
from pulse.protocol import jobs as job_model
from pulse.protocol.firmware import Manifest, parse_range
from pulse.protocol.twin import TwinLimits, TwinUpdate

PER_GATEWAY = 250
REPORTS_PER_TX = 500
SITE_DEVICES = 25
ARTIFACT = 1024 * 1024


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


async def _tenant(conn: asyncpg.Connection, n: int, prefix: str) -> tuple[uuid.UUID, list[str]]:
    async with conn.transaction():
        tenant = await conn.fetchval("INSERT INTO tenants (slug, name) VALUES ($1, 'bench jobs') RETURNING id", f"{prefix}-{uuid.uuid4().hex[:8]}")
        await conn.execute("SELECT set_config('app.tenant_id', $1, true)", str(tenant))
        gateways = [await conn.fetchval("INSERT INTO gateways (tenant_id, name) VALUES ($1, $2) RETURNING id", tenant, f"{prefix}-gw{g}")
                    for g in range((n // 2 + PER_GATEWAY - 1) // PER_GATEWAY)]
        ids = [f"{prefix}-{d:05d}" for d in range(n)]
        await conn.executemany(
            "INSERT INTO devices (tenant_id, device_id, status, gateway_id) VALUES ($1, $2, 'active', $3)",
            [(tenant, d, gateways[i // PER_GATEWAY] if i < n // 2 else None) for i, d in enumerate(ids)],
        )
    return tenant, ids


async def _desired(dsn: str, n: int) -> dict[str, Any]:
    roles = RoleNames.from_prefix("benchjobs" + uuid.uuid4().hex[:6])
    await migrate(dsn, roles)
    owner = await asyncpg.connect(dsn)
    try:
        tenant, ids = await _tenant(owner, n, "job")
        base_tenant, base_ids = await _tenant(owner, n, "patch")
    finally:
        await owner.close()
    db = Database(dsn, roles)
    await db.open()
    limits = TwinLimits()
    try:
        now = lambda: int(time.time() * 1000)  # noqa: E731 - the bench's clock is the wall clock
        t0 = time.perf_counter()
        async with db.tenant(tenant) as conn:
            job_id = await jobs.create(conn, tenant, name="bench", target=job_model.Target(),
                                       action=job_model.Action(job_model.ActionKind.DESIRED, patch={"interval_s": 30}),
                                       rollout=job_model.Rollout(), actor="bench", now_ms=now())
        await jobs.run_once(db, clock=now, limits=limits)  # every device gets its change (one stage, rounds of 500)
        started = time.perf_counter() - t0
        round_s = started / -(-n // jobs.STARTS_PER_ROUND)  # a round's length: its devices reach at its commit
        reported: list[float] = []
        for i in range(0, n, REPORTS_PER_TX):
            msgs = [twins.DeviceMessage(d, "twin_reported", {"interval_s": 30}, now()) for d in ids[i : i + REPORTS_PER_TX]]
            async with db.tenant(tenant) as conn:
                await twins.apply_device_messages(conn, tenant, msgs, actor="bench", limits=limits)
            reported += [(time.perf_counter() - t0) * 1000] * len(msgs)
        await jobs.run_once(db, clock=now, limits=limits)
        job_s = time.perf_counter() - t0
        async with db.tenant(tenant) as conn:
            job = await jobs.load(conn, tenant, str(job_id))
            rows = await conn.fetch("SELECT outcome, started_at, finished_at FROM job_devices WHERE tenant_id = $1 AND job_id = $2",
                                    tenant, job_id)
        assert job is not None
        reach = [(r["started_at"] - twins.from_ms(job.run.started_ms)).total_seconds() * 1000 + round_s * 1000
                 for r in rows if r["started_at"]]
        succeeded = sum(1 for r in rows if r["outcome"] == "succeeded")

        t1 = time.perf_counter()
        base_latency: list[float] = []
        for d in base_ids:
            s = time.perf_counter()
            async with db.tenant(base_tenant) as conn:
                device = await conn.fetchval("SELECT id FROM devices WHERE tenant_id = $1 AND device_id = $2", base_tenant, d)
                await twins.update_desired(conn, base_tenant, device, d, TwinUpdate(desired={"interval_s": 30}), actor="bench",
                                           now_ms=now(), limits=limits)
            base_latency.append((time.perf_counter() - s) * 1000)
        for i in range(0, n, REPORTS_PER_TX):
            msgs = [twins.DeviceMessage(d, "twin_reported", {"interval_s": 30}, now()) for d in base_ids[i : i + REPORTS_PER_TX]]
            async with db.tenant(base_tenant) as conn:
                await twins.apply_device_messages(conn, base_tenant, msgs, actor="bench", limits=limits)
        base_s = time.perf_counter() - t1
    finally:
        await db.close()
    return {
        "devices": n, "direct": n - n // 2, "behind_gateways": n // 2, "per_gateway": PER_GATEWAY,
        "job_state": job.run.state.value, "succeeded": succeeded,
        "job_s": round(job_s, 2), "all_started_s": round(started, 2),
        "reach_p50_ms": round(_pct(reach, 0.5)), "reach_p99_ms": round(_pct(reach, 0.99)),
        "p50_ms": round(_pct(reported, 0.5)), "p99_ms": round(_pct(reported, 0.99)),
        "baseline": "one PATCH /twin per device (twins.update_desired, a transaction each), then the same reports",
        "baseline_s": round(base_s, 2), "baseline_patch_p50_ms": round(statistics.median(base_latency), 2),
        "ratio": round(job_s / base_s, 3),
    }


def _origin(data: bytes, counted: list[int]) -> Starlette:
    async def download(request: Request) -> Response:
        start, end = parse_range(request.headers.get("range"), len(data)) or (0, len(data) - 1)

        async def body() -> AsyncIterator[bytes]:
            for i in range(start, end + 1, 65536):
                chunk = data[i : min(end + 1, i + 65536)]
                counted[0] += len(chunk)
                yield chunk

        return StreamingResponse(body(), status_code=206 if request.headers.get("range") else 200)

    return Starlette(routes=[Route("/sync/v1/firmware/{artifact}", download)])


class _OriginClient:
    """What ``FirmwareCache`` asks of the cloud link (``SyncClient.firmware``), over plain loopback HTTP."""

    def __init__(self, base: str) -> None:
        self.base = base

    async def firmware(self, artifact: str, start: int, *, chunk_timeout_s: float) -> AsyncIterator[bytes]:
        async with httpx.AsyncClient(timeout=chunk_timeout_s) as c, c.stream(
            "GET", f"{self.base}/sync/v1/firmware/{artifact}", headers={"Range": f"bytes={start}-"} if start else {}
        ) as resp:
            async for chunk in resp.aiter_bytes():
                yield chunk


class _OriginConnection:
    def __init__(self, base: str) -> None:
        self.client = _OriginClient(base)

    def get(self) -> _OriginClient:
        return self.client

    async def drop(self) -> None:
        return None


async def _serve(app: Starlette, port: int) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    return server, task


async def _firmware(tmp: Path) -> dict[str, Any]:
    data = os.urandom(ARTIFACT)
    m = Manifest("a" * 32, "2.0.0", "any", hashlib.sha256(data).hexdigest(), len(data))
    counted = [0]
    origin_port, local_port = free_port(), free_port()
    origin, origin_task = await _serve(_origin(data, counted), origin_port)
    base = f"http://127.0.0.1:{origin_port}"
    cache = FirmwareCache(tmp / "cache", _OriginConnection(base))  # type: ignore[arg-type]
    service = FirmwareService(cache, LocalUrls(b"k" * 32, f"http://127.0.0.1:{local_port}", 600))
    local, local_task = await _serve(service.app(), local_port)
    try:
        cache.manifests[m.artifact] = m
        async with httpx.AsyncClient(timeout=60) as c:
            t0 = time.perf_counter()
            got = await asyncio.gather(*(c.get(service.urls.url(f"dev-{i}", m.artifact)) for i in range(SITE_DEVICES)))
            cached_s = time.perf_counter() - t0
            assert all(r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == m.sha256 for r in got)
            with_cache = counted[0]
            counted[0] = 0
            t1 = time.perf_counter()
            direct = await asyncio.gather(*(c.get(f"{base}/sync/v1/firmware/{m.artifact}") for _ in range(SITE_DEVICES)))
            direct_s = time.perf_counter() - t1
            assert all(len(r.content) == len(data) for r in direct)
            without = counted[0]
    finally:
        for server in (local, origin):
            server.should_exit = True
        await asyncio.gather(origin_task, local_task)
    return {
        "artifact_bytes": ARTIFACT, "devices_on_site": SITE_DEVICES,
        "uplink_bytes_with_gateway_cache": with_cache, "uplink_bytes_without": without,
        "uplink_bytes_per_device_with": round(with_cache / SITE_DEVICES), "uplink_bytes_per_device_without": round(without / SITE_DEVICES),
        "gateway_served": cache.counts.served, "all_devices_s_with": round(cached_s, 3), "all_devices_s_without": round(direct_s, 3),
        "ratio": round(without / with_cache, 2),
    }


async def _bench(dsn: str, n: int, tmp: Path) -> dict[str, Any]:
    return {"desired": await _desired(dsn, n), "firmware": await _firmware(tmp)}


def run(argv: list[str] | None = None) -> dict[str, object]:
    n = 10_000
    args = list(argv or [])
    if "--devices" in args:
        n = int(args[args.index("--devices") + 1])
    root = Path(tempfile.mkdtemp(prefix="pulse-bench-jobs-"))
    os.chmod(root, 0o755)
    try:
        if url := os.environ.get("DATABASE_URL"):
            out = asyncio.run(_bench(url, n, root))
            out["database"] = "DATABASE_URL"
            return out
        server = EmbeddedPostgres(root / "pg")
        try:
            admin = server.start()

            async def create() -> None:
                conn = await asyncpg.connect(admin)
                try:
                    await conn.execute("CREATE DATABASE pulse_bench_jobs")
                finally:
                    await conn.close()

            asyncio.run(create())
            out = asyncio.run(_bench(admin.rsplit("/", 1)[0] + "/pulse_bench_jobs", n, root))
            out["database"] = "embedded (fsync on)"
            return out
        finally:
            server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    print(json.dumps(run()))
