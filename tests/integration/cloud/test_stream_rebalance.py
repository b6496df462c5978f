"""A replica started later takes its share of the ingest stream's partitions, without a restart,
and the handover under load loses and duplicates nothing.

Two real `pulse cloud serve` processes with PULSE_STREAM_URL on one database and one real
nats-server: A starts alone and takes every partition's writer; devices POST to A (resending what
A did not answer 200, as the ingest contract says). B starts: A, now holding more than
ceil(partitions / 2), releases partitions one at a time at a clean point (batch stored,
acknowledged, consumer stopped, lock freed) and B takes them, until each holds half. The load goes
on through the handover and after, stops, and PostgreSQL must hold exactly the (device, seq) pairs
acknowledged, each once. Then B stops (SIGTERM): it hands its partitions back cleanly and A takes
them all again."""

from __future__ import annotations

import asyncio
import re
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


async def _partitions(client: httpx.AsyncClient, replica: Replica) -> set[str]:
    h = await health(client, replica)
    return {j for j in h["cluster_jobs"] if j.startswith("stream-")} if h is not None else set()


async def _figure(client: httpx.AsyncClient, replica: Replica, name: str) -> float:
    text = (await client.get(replica.url + "/metrics")).text
    match = re.search(rf"^pulse_stream_{name} ([0-9.e+]+)$", text, re.M)
    assert match is not None, f"pulse_stream_{name} missing from /metrics"
    return float(match.group(1))


async def test_a_replica_started_later_takes_its_share_of_the_partitions_and_nothing_is_lost_or_doubled(
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
        PULSE_CLUSTER_LEASE_S="6",  # a replica slow to answer on a busy machine must not drop its partitions meanwhile
    )
    every = {f"stream-{p}" for p in range(PARTITIONS)}
    a = start(cloud_settings, tmp_path, "a", **env)
    b: Replica | None = None
    counter = await asyncpg.connect(cloud_settings.database_url)
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            await until(lambda: holds(client, a, every), "A to take every partition")
            tenant, devices = await tenant_devices(cloud_settings, client, a.url, prefix="share", count=DEVICES)

            acked: set[tuple[str, int]] = set()
            enough = asyncio.Event()

            async def device(device_id: str, token: str) -> None:
                seq = 0
                while not enough.is_set():
                    now = int(time.time() * 1000)
                    body = [{"v": 1, "ts": now - 5000 + i, "seq": seq + i, "metrics": {"n": seq + i}} for i in range(PER_REQUEST)]
                    while True:  # resend until acknowledged, as a device does
                        r = await client.post(
                            a.url + "/ingest/v1/telemetry", json=body, headers={"Authorization": f"Bearer {token}"}
                        )
                        if r.status_code == 200:
                            break
                        assert r.status_code == 503, r.text
                        await asyncio.sleep(0.05)
                    acked.update((device_id, seq + i) for i in range(PER_REQUEST))
                    seq += PER_REQUEST

            async def stored() -> int:
                return int(await counter.fetchval("SELECT count(*) FROM telemetry WHERE tenant_id = $1", tenant))

            load = [asyncio.create_task(device(d, t)) for d, t in devices]
            try:
                await until(lambda: _at_least(stored, 200), "A to store under load")
                b = start(cloud_settings, tmp_path, "b", **env)
                replica_b = b

                async def shared() -> bool:
                    held_a, held_b = await _partitions(client, a), await _partitions(client, replica_b)
                    return len(held_a) == len(held_b) == PARTITIONS // 2 and held_a | held_b == every

                await until(shared, "A and B to hold half of the partitions each, without a restart")
                # handed over cleanly (stopped at a clean point, not cancelled)
                assert await _figure(client, a, "releases") >= PARTITIONS // 2, a.tail()
                assert "did not stop within" not in a.log.read_text(errors="replace"), a.tail()
                assert await _figure(client, a, "replicas") == 2 and await _figure(client, b, "replicas") == 2
                mid = await stored()
                await until(lambda: _at_least(stored, mid + 200), "both to store under load after the handover")
            finally:
                enough.set()
                await asyncio.gather(*load)
            assert await _figure(client, b, "stored_messages") > 0  # B writes its share

            async def drained() -> bool:
                return await stored() >= len(acked)

            await until(drained, "every acknowledged reading to be stored")
            await asyncio.sleep(0.5)  # anything more would be a duplicate: give it the chance to show
            rows = await counter.fetch("SELECT device_id, seq FROM telemetry WHERE tenant_id = $1", tenant)
            pairs = [(r["device_id"], r["seq"]) for r in rows]
            assert len(pairs) == len(set(pairs)), f"a reading was stored twice\nA: {a.tail()}\nB: {b.tail()}"
            assert set(pairs) == acked, (
                f"lost {len(acked - set(pairs))}, unacknowledged extra {len(set(pairs) - acked)}\nA: {a.tail()}"
            )
            assert len(acked) > 400

            stop(b)  # SIGTERM: B hands its partitions over at a clean point; A takes them all again
            assert "released at a clean point" in b.log.read_text(errors="replace")
            await until(lambda: holds(client, a, every), "A to take every partition again")
    finally:
        await counter.close()
        if b is not None:
            stop(b)
        stop(a)


async def _at_least(count: Any, n: int) -> bool:
    return bool(await count() >= n)
