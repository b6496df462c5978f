"""The optional ingest stream (PULSE_STREAM_URL, cloud/stream/) with a real nats-server: readings
acknowledged to a device only once JetStream has them, stored by the partition writers once each,
seen by the live view and the rules as without the stream; tenants apart on the stream path; the
stream away answers a coded 503 and stores nothing."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

import pytest
from cloud_harness import Cloud
from natsserver import NatsServer, stream_names

from pulse.cloud.settings import Settings
from pulse.common.ports import free_port

pytestmark = pytest.mark.integration


def _stream_settings(settings: Settings, url: str, **extra: object) -> Settings:
    return settings.model_copy(
        update={"stream_url": url, "stream_partitions": 4, "cluster_poll_s": 0.1, "stream_publish_timeout_s": 1.0, **stream_names(), **extra}
    )


async def _until(check: Callable[[], object], what: str, limit_s: float = 30) -> None:
    deadline = time.monotonic() + limit_s
    while not await check():  # type: ignore[misc]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def _rows(cloud: Cloud, tenant: uuid.UUID, device_id: str) -> list[tuple[int, float]]:
    """(seq, temp_c) of the device's rows, as the tenant sees them (app role, row-level security)."""
    async with cloud.app.state.pulse.db.tenant(tenant) as conn:
        rows = await conn.fetch("SELECT seq, (metrics->>'temp_c')::float8 AS v FROM telemetry WHERE device_id = $1 ORDER BY seq", device_id)
    return [(r["seq"], r["v"]) for r in rows]


def _batch(first: int, n: int, value: float) -> list[dict[str, object]]:
    now = int(time.time() * 1000)
    return [{"v": 1, "ts": now - 1000 + i, "seq": first + i, "metrics": {"temp_c": value + i}} for i in range(n)]


@pytest.fixture
async def streamed(
    cloud_settings: Settings, nats_server: NatsServer, start_cloud: Callable[[Settings], AbstractAsyncContextManager[Cloud]]
) -> AsyncIterator[Cloud]:
    async with start_cloud(_stream_settings(cloud_settings, nats_server.url)) as cloud:
        yield cloud


async def test_readings_go_through_the_stream_to_postgresql_the_live_view_and_the_rules(streamed: Cloud) -> None:
    cloud = streamed
    tenant, admin = await cloud.tenant_user()
    _, device_id, token = await cloud.device_with_token(admin)
    auth = {"Authorization": f"Bearer {token}"}
    live = cloud.app.state.live.subscribe(tenant, device_id)
    r = await cloud.client.post("/ingest/v1/telemetry", json=_batch(1, 20, 10.0), headers=auth)
    assert r.status_code == 200, r.text
    publisher = cloud.app.state.pulse.ingest.writer
    assert publisher.published == 1  # acknowledged by JetStream before the answer
    r = await cloud.client.post("/ingest/v1/telemetry", json=_batch(21, 5, 30.0), headers=auth)
    assert r.status_code == 200, r.text

    async def stored() -> bool:
        return len(await _rows(cloud, tenant, device_id)) >= 25

    await _until(stored, "the partition writer to store the readings")
    rows = await _rows(cloud, tenant, device_id)
    assert [seq for seq, _ in rows] == list(range(1, 26))  # each once, all of them
    points, _ = await asyncio.wait_for(live.next_batch(), 10)  # the live view saw what was written
    assert {p.metrics["temp_c"] for p in points} <= {v for _, v in rows}
    async with cloud.app.state.pulse.db.writer_transaction() as conn:
        outbox = await conn.fetchval("SELECT count(*) FROM stream_marks WHERE stream = $1", cloud.settings.stream_name)
    assert outbox >= 1  # the partition's mark moved with the rows
    stats = cloud.app.state.stream.stats
    assert stats.stored_messages == 2 and stats.skipped_messages == 0
    assert len(stats.partitions) == cloud.settings.stream_partitions  # one process: it writes every partition
    prometheus = (await cloud.client.get("/metrics")).text
    assert "pulse_stream_stored_messages 2.0" in prometheus and "pulse_stream_connected 1.0" in prometheus
    health = (await cloud.client.get("/health")).json()
    assert health["stream"] == "connected"
    assert {f"stream-{p}" for p in range(cloud.settings.stream_partitions)} <= set(health["cluster_jobs"])


async def test_a_redelivered_batch_writes_nothing_twice(streamed: Cloud) -> None:
    """The writer restarts (as on a takeover) after storing but before acknowledging: the stream
    redelivers, the mark skips."""
    cloud = streamed
    tenant, admin = await cloud.tenant_user()
    _, device_id, token = await cloud.device_with_token(admin)
    auth = {"Authorization": f"Bearer {token}"}
    writers = cloud.app.state.stream
    original_ack_wait = writers.config.ack_wait_s
    assert original_ack_wait > 10
    # stop acknowledging: store, then fail before the acks (as a process killed right after its commit)
    real_store = writers._store

    async def store_then_fail(subject: str, msgs: list[object]) -> None:
        await real_store(subject, msgs)  # type: ignore[arg-type]
        raise OSError("simulated loss of the stream connection after the commit")

    writers._store = store_then_fail
    r = await cloud.client.post("/ingest/v1/telemetry", json=_batch(1, 10, 1.0), headers=auth)
    assert r.status_code == 200, r.text

    async def redelivered() -> bool:
        return writers.stats.skipped_messages >= 1

    await _until(lambda: _rows(cloud, tenant, device_id), "the first delivery to be stored")
    await _until(redelivered, "the unacknowledged message to be redelivered to the restarted writer")
    writers._store = real_store
    r = await cloud.client.post("/ingest/v1/telemetry", json=_batch(11, 1, 1.0), headers=auth)
    assert r.status_code == 200, r.text

    async def all_stored() -> bool:
        return len(await _rows(cloud, tenant, device_id)) >= 11

    await _until(all_stored, "the next reading")
    assert [seq for seq, _ in await _rows(cloud, tenant, device_id)] == list(range(1, 12))


async def test_tenants_stay_apart_on_the_stream_path(streamed: Cloud) -> None:
    """Two tenants' devices with the same id share nothing: each tenant sees its own readings only."""
    cloud = streamed
    same_id = "meter-" + uuid.uuid4().hex[:6]
    tenant_a, admin_a = await cloud.tenant_user()
    tenant_b, admin_b = await cloud.tenant_user()
    _, _, token_a = await cloud.device_with_token(admin_a, same_id)
    _, _, token_b = await cloud.device_with_token(admin_b, same_id)
    for token, value in ((token_a, 100.0), (token_b, 200.0)):
        r = await cloud.client.post("/ingest/v1/telemetry", json=_batch(1, 5, value), headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200, r.text

    async def both() -> bool:
        return len(await _rows(cloud, tenant_a, same_id)) == 5 and len(await _rows(cloud, tenant_b, same_id)) == 5

    await _until(both, "both tenants' readings")
    assert {v for _, v in await _rows(cloud, tenant_a, same_id)} == {100.0 + i for i in range(5)}
    assert {v for _, v in await _rows(cloud, tenant_b, same_id)} == {200.0 + i for i in range(5)}
    # and the other tenant's device is not reachable through the API either
    r = await cloud.client.get(f"/api/v1/devices?device_id={same_id}", headers=admin_a)
    assert r.status_code == 200
    assert all(d.get("tenant_id", str(tenant_a)) == str(tenant_a) for d in r.json().get("items", r.json()) if isinstance(d, dict))


async def test_the_stream_away_answers_a_coded_503_and_acknowledges_nothing(
    cloud_settings: Settings, nats_server: NatsServer, start_cloud: Callable[[Settings], AbstractAsyncContextManager[Cloud]]
) -> None:
    # nothing listens there: the replica keeps trying to connect; ingest answers 503 meanwhile
    async with start_cloud(_stream_settings(cloud_settings, f"nats://127.0.0.1:{free_port()}")) as cloud:
        tenant, admin = await cloud.tenant_user()
        _, device_id, token = await cloud.device_with_token(admin)
        r = await cloud.client.post("/ingest/v1/telemetry", json=_batch(1, 3, 1.0), headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 503, r.text
        assert r.json()["code"] == "ingest.stream_unavailable"
        assert int(r.headers["Retry-After"]) >= 1
        assert (await cloud.client.get("/health")).json()["stream"] == "unreachable"
        assert await _rows(cloud, tenant, device_id) == []
    if not nats_server.own:
        return  # PULSE_TEST_NATS_URL's server is not ours to stop
    # a stream that was there and went away mid-run
    async with start_cloud(_stream_settings(cloud_settings, nats_server.url)) as cloud:
        tenant, admin = await cloud.tenant_user()
        _, device_id, token = await cloud.device_with_token(admin)
        auth = {"Authorization": f"Bearer {token}"}
        r = await cloud.client.post("/ingest/v1/telemetry", json=_batch(1, 3, 1.0), headers=auth)
        assert r.status_code == 200, r.text
        nats_server.stop()
        r = await cloud.client.post("/ingest/v1/telemetry", json=_batch(4, 3, 1.0), headers=auth)
        assert r.status_code == 503, r.text
        assert r.json()["code"] == "ingest.stream_unavailable"
