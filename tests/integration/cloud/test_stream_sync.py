"""Gateway sync through the optional ingest stream (PULSE_STREAM_URL), over real mutual TLS with a
real nats-server: a gateway's telemetry and events are acknowledged only once JetStream has them
and are stored by the partition writers exactly once, also when the gateway resends records that
reached the stream in a batch split otherwise and with new records; the stream away answers a coded
503 and moves nothing; connectivity events still set device states, in order."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest
from cloud_harness import Cloud, enrolled_gateway
from natsserver import NatsServer, stream_names

from pulse.cloud.settings import Settings
from pulse.edge.identity import IdentityFiles
from pulse.protocol import batch, connectivity
from pulse.protocol.batch import Record, Stream
from pulse.protocol.connectivity import Connectivity
from pulse.protocol.sync import BATCH_CONTENT_TYPE

pytestmark = pytest.mark.integration

PARTITIONS = 4
DEVICES = ("dev-a", "dev-b", "dev-c", "dev-d", "dev-e")


@dataclass
class StreamedSync:
    cloud: Cloud
    sync_url: str
    ca_file: Path
    tmp: Path
    settings: Settings

    async def send(self, files: IdentityFiles, data: bytes) -> httpx.Response:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        ctx.load_cert_chain(str(files.cert), str(files.key))
        async with httpx.AsyncClient(verify=ctx, base_url=self.sync_url, timeout=40) as c:
            return await c.post("/sync/v1/batches", content=data, headers={"Content-Type": BATCH_CONTENT_TYPE})

    async def fetch(self, sql: str, *args: object) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.settings.database_url)
        try:
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()

    async def stored(self, tenant: uuid.UUID, msg_type: str = "telemetry") -> list[tuple[str, int]]:
        """(device, gateway record seq as the test put it in the metrics) of every stored row, with duplicates."""
        rows = await self.fetch("SELECT device_id, metrics FROM telemetry WHERE tenant_id = $1 AND msg_type = $2", tenant, msg_type)
        metrics = [(r["device_id"], r["metrics"] if isinstance(r["metrics"], dict) else json.loads(r["metrics"])) for r in rows]
        return sorted((device, int(m["rec"])) for device, m in metrics)

    async def high_water(self, gateway: str, stream: Stream) -> int:
        rows = await self.fetch("SELECT high_water FROM gateway_sync_marks WHERE gateway_id = $1 AND stream = $2", uuid.UUID(gateway), int(stream))
        return int(rows[0]["high_water"]) if rows else 0


@asynccontextmanager
async def _streamed_sync(start_cloud: Callable[..., AbstractAsyncContextManager[Cloud]], base: Settings, tmp: Path,
                         nats_url: str) -> AsyncIterator[StreamedSync]:
    settings = Settings(
        **{
            **base.model_dump(),
            "jwt_secret": base.jwt_secret.get_secret_value(),
            "data_dir": tmp / "data",
            "sync_port": 0,
            "sync_host": "127.0.0.1",
            "stream_url": nats_url,
            "stream_partitions": PARTITIONS,
            "cluster_poll_s": 0.1,
            "stream_publish_timeout_s": 1.0,
            **stream_names(),
        }
    )
    async with start_cloud(settings, sync_listener=True) as cloud:
        port = cloud.app.state.sync_listener.port
        yield StreamedSync(cloud, f"https://127.0.0.1:{port}", tmp / "data" / "ca" / "ca.crt", tmp, settings)


@pytest.fixture
async def streamed(cloud_settings: Settings, tmp_path: Path, nats_server: NatsServer,
                   start_cloud: Callable[..., AbstractAsyncContextManager[Cloud]]) -> AsyncIterator[StreamedSync]:
    async with _streamed_sync(start_cloud, cloud_settings, tmp_path, nats_server.url) as sc:
        yield sc


NOW_MS = int(time.time() * 1000)


def _device_of(seq: int) -> str:
    return DEVICES[seq % len(DEVICES)]  # a gateway's records spread over the devices, so over partitions


def _batch(gateway: str, seqs: Sequence[int], stream: Stream = Stream.TELEMETRY) -> bytes:
    kind = "telemetry" if stream is Stream.TELEMETRY else "event"
    records = [Record(s, _device_of(s), NOW_MS + s, kind, {"rec": float(s)}, s) for s in seqs]
    return batch.encode(records, gateway_id=gateway, stream=stream, gateway_time_ms=int(time.time() * 1000))


async def _gateway(sc: StreamedSync) -> tuple[uuid.UUID, dict[str, str], str, IdentityFiles]:
    tenant, h = await sc.cloud.tenant_user()
    for device in DEVICES:
        r = await sc.cloud.client.post("/api/v1/devices", json={"device_id": device}, headers=h)
        assert r.status_code == 201, r.text
    gw, files = await enrolled_gateway(sc.cloud.client, h, sc.tmp)
    return tenant, h, gw, files


async def _until(check: Callable[[], Awaitable[bool]], what: str, limit_s: float = 60) -> None:
    deadline = time.monotonic() + limit_s
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def _expected(seqs: Sequence[int]) -> list[tuple[str, int]]:
    return sorted((_device_of(s), s) for s in seqs)


async def test_a_gateway_batch_goes_through_the_stream_and_a_resent_batch_split_otherwise_is_stored_once(streamed: StreamedSync) -> None:
    sc = streamed
    tenant, _, gw, files = await _gateway(sc)
    writers, publisher = sc.cloud.app.state.stream, sc.cloud.app.state.pulse.ingest.writer
    r = await sc.send(files, _batch(gw, range(1, 11)))
    assert r.status_code == 200, r.text
    assert (r.json()["verdict"], r.json()["ack_seq"], r.json()["written"]) == ("write", 10, 10)
    assert publisher.published >= 1  # acknowledged by JetStream before the BatchAck

    async def first_ten() -> bool:
        return len(await sc.stored(tenant)) >= 10

    await _until(first_ten, "the partition writers to store the batch")
    assert await sc.stored(tenant) == _expected(range(1, 11))
    rows = await sc.fetch("SELECT DISTINCT gateway_id, source FROM telemetry WHERE tenant_id = $1", tenant)
    assert [(str(r["gateway_id"]), r["source"]) for r in rows] == [(gw, "gateway")]

    # The next batch reaches the stream, but its mark does not commit (the database connection drops
    # after the publish): the gateway is answered 503 and resends from its acknowledged position,
    # halved and then with records that arrived since.
    receiver = sc.cloud.app.state.pulse.sync.receiver
    real_write = receiver.stream.write_gateway

    async def publish_then_lose_the_commit(*args: object, **kwargs: object) -> None:
        await real_write(*args, **kwargs)
        raise OSError("simulated loss of the database connection after the publish")

    receiver.stream.write_gateway = publish_then_lose_the_commit
    r = await sc.send(files, _batch(gw, range(11, 21)))
    assert r.status_code == 503, r.text
    assert await sc.high_water(gw, Stream.TELEMETRY) == 10  # not acknowledged
    del receiver.stream.write_gateway  # the class's method again

    async def published_copy_stored() -> bool:
        return len(await sc.stored(tenant)) >= 20

    await _until(published_copy_stored, "the records that reached the stream to be stored")
    r = await sc.send(files, _batch(gw, range(11, 16)))  # halved
    assert (r.status_code, r.json()["ack_seq"]) == (200, 15), r.text
    r = await sc.send(files, _batch(gw, range(16, 31)))  # the rest, and what arrived since
    assert (r.status_code, r.json()["ack_seq"]) == (200, 30), r.text

    async def all_thirty() -> bool:
        return len(await sc.stored(tenant)) >= 30

    await _until(all_thirty, "the resent and the new records")
    # everything published is stored: each record once, none lost
    await _until(lambda: _drained(sc), "the stream to be drained")
    assert await sc.stored(tenant) == _expected(range(1, 31))
    assert writers.stats.skipped_gateway_records == 10  # 11..20 came twice; the second copies were skipped
    assert await sc.high_water(gw, Stream.TELEMETRY) == 30


async def _drained(sc: StreamedSync) -> bool:
    """Every message in the stream stored and acknowledged (work-queue retention: none left)."""
    js = sc.cloud.app.state.stream.client.jetstream()
    info = await js.stream_info(sc.settings.stream_name)
    return bool(info.state.messages == 0)


async def test_the_stream_away_answers_sync_stream_unavailable_moves_nothing_and_the_resend_is_stored_once(
    cloud_settings: Settings, tmp_path: Path, nats_server: NatsServer, start_cloud: Callable[..., AbstractAsyncContextManager[Cloud]]
) -> None:
    if not nats_server.own:
        pytest.skip("PULSE_TEST_NATS_URL's server is not ours to stop")
    async with _streamed_sync(start_cloud, cloud_settings, tmp_path, nats_server.url) as sc:
        tenant, _, gw, files = await _gateway(sc)
        r = await sc.send(files, _batch(gw, range(1, 6)))
        assert r.status_code == 200, r.text
        nats_server.stop()
        for seqs in (range(6, 16), range(6, 11)):  # refused, and refused again halved: nothing acknowledged
            r = await sc.send(files, _batch(gw, seqs))
            assert r.status_code == 503, r.text
            assert r.json()["code"] == "sync.stream_unavailable"
            assert int(r.headers["Retry-After"]) >= 1
        assert await sc.high_water(gw, Stream.TELEMETRY) == 5
        nats_server.restart()
        # the gateway backs off and resends from its acknowledged position until the cloud takes it
        deadline = time.monotonic() + 60
        while (r := await sc.send(files, _batch(gw, range(6, 21)))).status_code == 503:
            assert r.json()["code"] == "sync.stream_unavailable"
            assert time.monotonic() < deadline, "the stream did not come back"
            await asyncio.sleep(0.2)
        assert (r.status_code, r.json()["ack_seq"]) == (200, 20), r.text

        async def all_twenty() -> bool:
            return len(await sc.stored(tenant)) >= 20

        await _until(all_twenty, "the records to be stored after the stream came back")
        await _until(lambda: _drained(sc), "the stream to be drained")
        assert await sc.stored(tenant) == _expected(range(1, 21))


async def test_connectivity_events_through_the_stream_set_device_states_in_their_order(streamed: StreamedSync) -> None:
    sc = streamed
    tenant, h, gw, files = await _gateway(sc)

    def events(items: list[tuple[int, str, str]]) -> bytes:
        records = []
        for seq, device, kind in items:
            doc = json.loads(connectivity.event_message(Connectivity(kind), now_ms=NOW_MS + seq, will=kind == "lost"))
            records.append(Record(seq, device, NOW_MS + seq, "event", {**doc["metrics"], "rec": float(seq)}, None, doc["tags"], doc.get("body")))
        return batch.encode(records, gateway_id=gw, stream=Stream.EVENTS, gateway_time_ms=int(time.time() * 1000))

    async def states() -> dict[str, tuple[str, str | None]]:
        r = await sc.cloud.client.get("/api/v1/device-states", headers=h)
        return {s["device_id"]: (s["status"], s["reason"].get("connectivity")) for s in r.json()}

    r = await sc.send(files, events([(1, "dev-a", "connected"), (2, "dev-b", "connected"), (3, "dev-a", "lost"), (4, "dev-b", "disconnected"),
                                     (5, "dev-b", "connected")]))
    assert r.status_code == 200, r.text

    async def applied() -> bool:
        return await states() == {"dev-a": ("offline", "lost"), "dev-b": ("online", "connected")}

    await _until(applied, "the writers to apply the connectivity events")
    assert await sc.stored(tenant, "event") == [("dev-a", 1), ("dev-a", 3), ("dev-b", 2), ("dev-b", 4), ("dev-b", 5)]
