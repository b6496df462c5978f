"""`pulse bench sync`: draining a gateway's buffer to the cloud, against a raw COPY of the same rows.

Set-up (not timed): an embedded PostgreSQL (fsync on; or DATABASE_URL), a tenant with the fleet's
devices and a gateway with its enrollment token (bench/sync_cloud_part.py), ``pulse cloud serve``
in its own process (API + mutual-TLS sync listener on loopback, default settings), the gateway
enrolled like ``pulse gateway enroll`` does, and its SQLite buffer filled with ``--points`` metric
points through the buffer's own write path (realistic multi-metric records from the codec bench's
generated fleet, 3-6 metrics each, shifted to end now), not over MQTT.

- ``drain_points_per_s``: the gateway's uplink (the same ``Uplink`` that ``pulse gateway run`` runs,
  default [sync] settings) reads the buffer, encodes batches, sends them over mutual TLS and records
  the cloud's acks, until the buffer is empty; counted from its start to the last ack. The cloud
  acks a batch only after it committed it, so an empty buffer means every row is in PostgreSQL.
- ``raw_copy_points_per_s``: the rows the cloud wrote for those records, prepared in advance,
  COPYed by one connection into the same telemetry table in transactions of the same size as the
  uplink's batches (the ceiling: no network, no TLS, no codec, no checks).
- ``ratio`` = drain / raw. ``wire_bytes_per_point``: batch bytes the uplink sent / points (TLS
  and HTTP framing not included). ``lost`` / ``duplicated``: from counting the gateway's rows and
  distinct (device, device seq) pairs in the cloud against the records buffered.

Both timed parts run in this process with the garbage-collector settings of `pulse gateway run`
(``pulse.common.heap.settle``: what exists before them frozen, collections less often), as the
gateway side would run in its own process.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import orjson

from pulse.bench.codec import fleet_sample
from pulse.bench.ingest import _create_db, _wait_healthy, stop_server, timed_copy
from pulse.bench.sync_cloud_part import count_synced, provision, serve_environment
from pulse.cloud.db.embedded import EmbeddedPostgres
from pulse.cloud.db.rows import TelemetryRow, telemetry_row
from pulse.cloud.settings import RoleNames
from pulse.common import heap
from pulse.common.ports import free_port
from pulse.edge.buffer import Buffer
from pulse.edge.config import Settings, load
from pulse.edge.enroll import enroll
from pulse.edge.identity import IdentityFiles
from pulse.edge.ingest import Store
from pulse.edge.link import load_enrollment
from pulse.edge.uplink import Uplink
from pulse.protocol.batch import Record, Stream

DEVICES = 50


def _records(points: int, device_ids: list[str]) -> tuple[list[Record], int]:
    """Fleet records holding ``points`` metric points (the last record may hold a few more)."""
    hours = points / 3.5 / DEVICES / 360  # a record every 10 s per device, 3-6 metrics each
    while True:
        sample = fleet_sample(devices=DEVICES, hours=max(hours, 0.01))
        if sample.points >= points:
            break
        hours *= 1.1 * points / max(sample.points, 1)
    names = {d: device_ids[i] for i, d in enumerate(sorted({r.device_id for r in sample.records}))}
    shift = int(time.time() * 1000) - max(r.ts_ms for r in sample.records) - 60_000
    out: list[Record] = []
    total = 0
    for r in sample.records:
        if total >= points:
            break
        out.append(r._replace(device_id=names[r.device_id], ts_ms=r.ts_ms + shift))
        total += len(r.metrics)
    return out, total


async def _fill(settings: Settings, records: list[Record]) -> None:
    buffer = Buffer(settings.database, settings.buffer)
    await buffer.open()
    try:
        for i in range(0, len(records), 20_000):
            futures = [
                buffer.submit(
                    Store(Stream.TELEMETRY, r.device_id, r.ts_ms, "telemetry", r.device_seq,
                          orjson.dumps({"v": 1, "ts": r.ts_ms, "seq": r.device_seq, "metrics": r.metrics}), None)
                )
                for r in records[i : i + 20_000]
            ]
            await asyncio.gather(*futures)  # type: ignore[arg-type]
    finally:
        await buffer.close()


async def _drain(settings: Settings) -> tuple[float, int, int]:
    """Run the uplink until the buffer is empty: (seconds, bytes sent, batches acked)."""
    enrollment = load_enrollment(settings.state_dir)
    assert enrollment is not None
    buffer = Buffer(settings.database, settings.buffer)
    await buffer.open()
    uplink = Uplink(settings.sync, buffer, enrollment, IdentityFiles(settings.state_dir))
    try:
        started = time.perf_counter()
        task = asyncio.create_task(uplink.run())
        while any(buffer.backlog().values()):
            if task.done():
                task.result()
                raise RuntimeError("the uplink stopped")
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - started
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    finally:
        await buffer.close()
    return elapsed, uplink.bytes_sent, uplink.batches_acked


async def _raw_copy(dsn: str, roles: RoleNames, tenant: uuid.UUID, records: list[Record], chunk: int) -> float:
    now = datetime.now(UTC)
    rows: list[TelemetryRow] = [
        telemetry_row(datetime.fromtimestamp(r.ts_ms / 1000, UTC), tenant, r.device_id, "telemetry", r.metrics,
                      None, None, r.device_seq, None, "bench-raw", now)
        for r in records
    ]
    return await timed_copy(dsn, roles, rows, chunk)


def _bench(dsn: str, points: int, root: Path, database: str) -> dict[str, object]:
    prefix = os.environ.get("PULSE_DB_ROLE_PREFIX", "pulse")
    roles = RoleNames.from_prefix(prefix)
    p = asyncio.run(provision(dsn, roles, devices=DEVICES, prefix="bsync"))
    records, total_points = _records(points, p.device_ids)

    api_port = free_port()
    env = serve_environment(dsn, prefix, port=api_port, sync_port=free_port(), data_dir=root / "cloud")
    log = root / "cloud.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "pulse.cli.main", "cloud", "serve"], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        api = f"http://127.0.0.1:{api_port}"
        _wait_healthy(api, proc, log)
        config = root / "gateway" / "gateway.toml"
        config.parent.mkdir()
        config.write_text('[gateway]\nid = "bench-sync"\n[buffer]\nquota_mb = 8192\n')
        settings = load(config, {})
        enroll(settings, api, p.enrollment_token, insecure=True)  # the bench cloud is on loopback http
        asyncio.run(_fill(settings, records))
        # both timed parts run with the collector settings `pulse gateway run` uses (and with this
        # bench's own records frozen, which a gateway does not hold in memory at all)
        thresholds = gc.get_threshold()
        heap.settle(gen1_threshold=20, gen2_threshold=20)
        try:
            drain_s, wire_bytes, batches = asyncio.run(_drain(settings))
            rows, distinct = asyncio.run(count_synced(dsn, p.tenant_id))
            raw_s = asyncio.run(_raw_copy(dsn, roles, p.tenant_id, records, settings.sync.records_per_batch))
        finally:
            gc.unfreeze()
            gc.set_threshold(*thresholds)
    finally:
        stop_server(proc)
    drain_rate, raw_rate = total_points / drain_s, total_points / raw_s
    return {
        "points": total_points,
        "records": len(records),
        "devices": DEVICES,
        "batches": batches,
        "records_per_batch": settings.sync.records_per_batch,
        "database": database,
        "cpu_count": os.cpu_count(),
        "drain_s": round(drain_s, 2),
        "raw_copy_s": round(raw_s, 2),
        "drain_points_per_s": round(drain_rate),
        "raw_copy_points_per_s": round(raw_rate),
        "ratio": round(drain_rate / raw_rate, 3),
        "wire_bytes_per_point": round(wire_bytes / total_points, 3),
        "lost": len(records) - distinct,
        "duplicated": rows - distinct,
    }


def run(argv: list[str] | None = None) -> dict[str, object]:
    p = argparse.ArgumentParser(prog="pulse bench sync")
    p.add_argument("--points", type=int, default=1_000_000, help="metric points in the gateway's buffer (default 1,000,000)")
    args = p.parse_args(argv or [])
    root = Path(tempfile.mkdtemp(prefix="pulse-bench-sync-"))
    os.chmod(root, 0o755)  # the postgres account must reach the cluster when running as root
    try:
        if url := os.environ.get("DATABASE_URL"):
            return _bench(url, args.points, root, "DATABASE_URL")
        server = EmbeddedPostgres(root / "pg")
        try:
            admin = server.start()
            asyncio.run(_create_db(admin))
            return _bench(admin.rsplit("/", 1)[0] + "/pulse_bench", args.points, root, "embedded (fsync on)")
        finally:
            server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
