"""kill -9 of a process that writes the ingest stream's partitions and receives gateway batches,
under gateway sync load through the stream: nothing a gateway was acknowledged is lost, nothing is
stored twice.

Two real `pulse cloud serve` processes with PULSE_STREAM_URL on one database and one real
nats-server: A starts first and takes every partition's writer; B starts (A hands it half of the
partitions). Gateways send their telemetry over mutual TLS to A and to B in turn; a batch not
answered 200 (503, or a connection cut) is sent again to B from the gateway's acknowledged
position, halved, as the uplink does. Once enough is stored, nats-server is paused (SIGSTOP) so
that the batches A and B are receiving wait in their publishes, A is SIGKILLed, and nats-server
resumes: A's writers' open transactions roll back (their messages are redelivered to B), and what
A's receivers had published reaches the stream without the gateways' marks committing (B gets it
again, in resends split otherwise). The load goes on, stops, and PostgreSQL must hold exactly the
records the gateways had acknowledged, each once (and at most the last unacknowledged batch of a
gateway besides: published, never answered, never sent again)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from cloud_harness import enrolled_gateway
from natsserver import NatsServer, stream_names
from replica_harness import Replica, health, holds, start, stop, stream_env, tenant_admin, until

from pulse.cloud.settings import Settings
from pulse.common.ports import free_port
from pulse.edge.identity import IdentityFiles
from pulse.protocol import batch
from pulse.protocol.batch import Record, Stream
from pulse.protocol.sync import BATCH_CONTENT_TYPE

pytestmark = pytest.mark.integration

PARTITIONS = 4
GATEWAYS = 3
DEVICES = 4
PER_BATCH = 20


async def test_kill_9_of_a_writer_under_gateway_sync_load_loses_and_duplicates_nothing(
    cloud_settings: Settings, nats_server: NatsServer, tmp_path: Path
) -> None:
    names = stream_names()
    env = stream_env(nats_server.url, names, PARTITIONS, PULSE_STREAM_BATCH_MESSAGES="4")
    partitions = {f"stream-{p}" for p in range(PARTITIONS)}
    a_sync, b_sync = free_port(), free_port()
    a = start(cloud_settings, tmp_path, "a", PULSE_SYNC_PORT=str(a_sync), **env)
    b: Replica | None = None
    counter = await asyncpg.connect(cloud_settings.database_url)
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            await until(
                lambda: holds(client, a, partitions), "A to take every partition", limit_s=180
            )  # a process start on a busy machine
            b = start(cloud_settings, tmp_path, "b", PULSE_SYNC_PORT=str(b_sync), **env)
            await until(lambda: health(client, b), "B to answer", limit_s=180)
            tenant, admin = await tenant_admin(cloud_settings, client, b.url)
            devices = [f"dev-{i}" for i in range(DEVICES)]
            for device in devices:
                r = await client.post(b.url + "/api/v1/devices", json={"device_id": device}, headers=admin)
                assert r.status_code == 201, r.text
            gateways = [await enrolled_gateway(client, admin, tmp_path / "gateways", b.url) for _ in range(GATEWAYS)]
            ca = tmp_path / "ca" / "ca.crt"

            acked: set[tuple[str, int]] = set()
            failures = 0
            enough = asyncio.Event()

            def tls(files: IdentityFiles) -> ssl.SSLContext:
                ctx = ssl.create_default_context(cafile=str(ca))
                ctx.load_cert_chain(str(files.cert), str(files.key))
                return ctx

            async def gateway(gw: str, files: IdentityFiles) -> None:
                """Sends its records in batches to A and B in turn; after a failure, from its acknowledged
                position, halved, to B (A may be dead), until acknowledged: as the uplink does."""
                nonlocal failures
                ctx = tls(files)
                position, turn, size = 0, 0, PER_BATCH
                async with httpx.AsyncClient(verify=ctx, timeout=30) as c:
                    while not enough.is_set():
                        port = (a_sync, b_sync)[turn % 2] if size == PER_BATCH else b_sync
                        turn += 1
                        seqs = range(position + 1, position + 1 + size)
                        now = int(time.time() * 1000)
                        records = [
                            Record(s, devices[s % DEVICES], now - 5000 + s % 1000, "telemetry", {"rec": float(s)}, s)
                            for s in seqs
                        ]
                        data = batch.encode(records, gateway_id=gw, stream=Stream.TELEMETRY, gateway_time_ms=now)
                        try:
                            r = await c.post(
                                f"https://127.0.0.1:{port}/sync/v1/batches",
                                content=data,
                                headers={"Content-Type": BATCH_CONTENT_TYPE},
                            )
                        except httpx.HTTPError:
                            r = None
                        if r is None or r.status_code != 200:
                            assert r is None or r.status_code == 503, r.text
                            failures += 1
                            size = max(1, size // 2)
                            await asyncio.sleep(0.05)
                            continue
                        ack = r.json()["ack_seq"]
                        assert ack == seqs[-1]
                        acked.update((gw, s) for s in range(position + 1, ack + 1))
                        position, size = ack, PER_BATCH

            async def stored() -> int:
                return int(await counter.fetchval("SELECT count(*) FROM telemetry WHERE tenant_id = $1", tenant))

            load = [asyncio.create_task(gateway(gw, files)) for gw, files in gateways]
            try:
                await until(lambda: _at_least(stored, 300), "A and B to store under load")
                paused = nats_server.server.pid if nats_server.server is not None else None
                if paused is not None:
                    os.kill(paused, signal.SIGSTOP)  # the batches being received now wait in their publishes
                try:
                    await asyncio.sleep(0.3)  # (not a timing assertion: only lets batches reach the publish)
                    a.proc.send_signal(signal.SIGKILL)  # mid-stream: batches being received, fetched, maybe mid-commit
                    a.proc.wait(10)
                finally:
                    if paused is not None:
                        os.kill(paused, signal.SIGCONT)
                before_takeover = await stored()

                await until(lambda: holds(client, b, partitions), "B to take the partitions over")
                await until(lambda: _at_least(stored, before_takeover + 300), "B to store under load")
            finally:
                enough.set()
                await asyncio.gather(*load)

            async def stored_records() -> list[tuple[str, int]]:
                rows = await counter.fetch("SELECT gateway_id, metrics FROM telemetry WHERE tenant_id = $1", tenant)
                return [(str(r["gateway_id"]), int(_metrics(r["metrics"])["rec"])) for r in rows]

            async def drained() -> bool:
                return acked <= set(await stored_records())

            await until(drained, "every acknowledged record to be stored")
            await asyncio.sleep(0.5)  # anything more would be a duplicate: give it the chance to show
            records = await stored_records()
            assert len(records) == len(set(records)), "a record was stored twice"
            # a batch answered by nobody (A killed) may still have reached the stream: stored, not
            # acknowledged; the gateway sends it again and it is not stored twice. Nothing acked is missing.
            assert acked <= set(records), f"lost {len(acked - set(records))}"
            extra = set(records) - acked
            assert all(s <= max(p for g2, p in acked if g2 == g) + PER_BATCH for g, s in extra)
            assert len(acked) > 600
    finally:
        await counter.close()
        if b is not None:
            stop(b)
        stop(a)


def _metrics(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else json.loads(value)


async def _at_least(count: Any, n: int) -> bool:
    return bool(await count() >= n)
