"""kill -9 of the process writing the ingest stream's partitions, under load: nothing a device was
acknowledged is lost, nothing is stored twice.

Two real `pulse cloud serve` processes with PULSE_STREAM_URL on one database and one real
nats-server: A starts first and takes every partition's writer; B starts and ingests (A hands it
half of the partitions, cluster/leader.py). Devices POST to B, each resending a request B did not answer 200 (as the ingest
contract says), until enough is stored; then A is SIGKILLed mid-stream (its open transaction, if
any, rolls back; what it fetched is unacknowledged), B takes the partitions over, the load goes on a
while, stops, and PostgreSQL must hold exactly the (device, seq) pairs B acknowledged, each once."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from natsserver import NatsServer, stream_names
from replica_harness import Replica, health, holds, start, stop, stream_env, tenant_devices, until

from pulse.cloud.settings import Settings

pytestmark = pytest.mark.integration

PARTITIONS = 4
DEVICES = 8
PER_REQUEST = 20


async def test_kill_9_of_the_partition_writer_under_load_loses_and_duplicates_nothing(
    cloud_settings: Settings, nats_server: NatsServer, tmp_path: Path
) -> None:
    names = stream_names()
    env = stream_env(
        nats_server.url,
        names,
        PARTITIONS,
        PULSE_INGEST_RATE_PER_S="100000",
        PULSE_INGEST_BURST="100000",
        PULSE_STREAM_BATCH_MESSAGES="16",
    )
    partitions = {f"stream-{p}" for p in range(PARTITIONS)}
    a = start(cloud_settings, tmp_path, "a", **env)
    b: Replica | None = None
    counter = await asyncpg.connect(cloud_settings.database_url)
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            await until(lambda: holds(client, a, partitions), "A to take every partition")
            b = start(cloud_settings, tmp_path, "b", **env)
            await until(lambda: health(client, b), "B to answer")  # type: ignore[arg-type]
            tenant, devices = await tenant_devices(cloud_settings, client, b.url, prefix="crash", count=DEVICES)

            acked: set[tuple[str, int]] = set()
            refused = 0
            enough = asyncio.Event()

            async def device(device_id: str, token: str) -> None:
                nonlocal refused
                seq = 0
                while not enough.is_set():
                    now = int(time.time() * 1000)
                    body = [{"v": 1, "ts": now - 5000 + i, "seq": seq + i, "metrics": {"n": seq + i}} for i in range(PER_REQUEST)]
                    while True:  # resend until acknowledged, as a device does
                        r = await client.post(
                            b.url + "/ingest/v1/telemetry", json=body, headers={"Authorization": f"Bearer {token}"}
                        )
                        if r.status_code == 200:
                            break
                        assert r.status_code == 503, r.text
                        refused += 1
                        await asyncio.sleep(0.05)
                    acked.update((device_id, seq + i) for i in range(PER_REQUEST))
                    seq += PER_REQUEST

            async def stored() -> int:
                return int(await counter.fetchval("SELECT count(*) FROM telemetry WHERE tenant_id = $1", tenant))

            load = [asyncio.create_task(device(d, t)) for d, t in devices]
            try:
                await until(lambda: _at_least(stored, 200), "A to store under load")
                a.proc.send_signal(signal.SIGKILL)  # mid-stream: fetched, maybe mid-commit, unacknowledged
                a.proc.wait(10)
                before_takeover = await stored()

                await until(lambda: holds(client, b, partitions), "B to take the partitions over")
                await until(lambda: _at_least(stored, before_takeover + 200), "B to store under load")
            finally:
                enough.set()
                await asyncio.gather(*load)

            async def drained() -> bool:
                return await stored() >= len(acked)

            await until(drained, "every acknowledged reading to be stored")
            await asyncio.sleep(0.5)  # anything more would be a duplicate: give it the chance to show
            rows = await counter.fetch("SELECT device_id, seq FROM telemetry WHERE tenant_id = $1", tenant)
            pairs = [(r["device_id"], r["seq"]) for r in rows]
            assert len(pairs) == len(set(pairs)), "a reading was stored twice"
            assert set(pairs) == acked, f"lost {len(acked - set(pairs))}, unacknowledged extra {len(set(pairs) - acked)}"
            assert len(acked) > 400
    finally:
        await counter.close()
        if b is not None:
            stop(b)
        stop(a)


async def _at_least(count: Any, n: int) -> bool:
    return bool(await count() >= n)
