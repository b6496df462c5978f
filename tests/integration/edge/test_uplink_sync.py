"""The uplink against a real mTLS receiver: exactly-once delivery in drain order, through cut
connections, 503s and an outage; poison records quarantined; certificate renewal; status."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from edge_sync_receiver import GATEWAY, TENANT, Receiver, wait_for

from pulse.edge.app import Gateway
from pulse.edge.auth import DeviceRegistry
from pulse.edge.config import Settings, SyncSettings
from pulse.edge.enroll import enroll
from pulse.edge.identity import IdentityFiles
from pulse.protocol.batch import Stream
from pulse.protocol.sync import DRAIN_ORDER, Verdict

pytestmark = pytest.mark.integration

FAST_SYNC = SyncSettings(records_per_batch=50, idle_poll_s=0.05, report_interval_s=0.3, request_timeout_s=5,
                         downlink_wait_s=1, backoff_base_s=0.05, backoff_cap_s=0.4)


@pytest.fixture
def sync_settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, sync=FAST_SYNC)


@pytest.fixture
async def run_gateway(sync_settings: Settings) -> AsyncIterator[Callable[..., Any]]:
    running: list[Gateway] = []

    async def start(settings: Settings | None = None) -> Gateway:
        gw = Gateway(settings or sync_settings)
        await gw.start()
        running.append(gw)
        return gw

    yield start
    for gw in running:
        await gw.stop()


def publish_all(port: int, device: str, secret: str, messages: list[tuple[str, dict[str, Any]]]) -> None:
    """Publish QoS 1 messages from a real paho client and wait for every PUBACK (run in a thread)."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device)
    c.username_pw_set(device, secret)
    connected = threading.Event()
    c.on_connect = lambda *a: connected.set()
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        assert connected.wait(10)
        infos = [c.publish(f"pulse/{device}/{kind}", json.dumps(doc), qos=1) for kind, doc in messages]
        for info in infos:
            info.wait_for_publish(20)
            assert info.is_published()
    finally:
        c.disconnect()
        c.loop_stop()


def mixed(n_telemetry: int, n_events: int, n_twin: int) -> list[tuple[str, dict[str, Any]]]:
    """Interleaved telemetry, events and twin reports, each with its own device seq."""
    out: list[tuple[str, dict[str, Any]]] = []
    seq = 0
    for i in range(max(n_telemetry, n_events, n_twin)):
        for kind, count, doc in (("telemetry", n_telemetry, {"metrics": {"t": i + 0.5}}), ("event", n_events, {"metrics": {"door": 1}}),
                                 ("twin/reported", n_twin, {"body": {"fw": f"1.{i}"}})):
            if i < count:
                seq += 1
                out.append((kind, {"v": 1, "seq": seq, **doc}))
    return out


async def enrolled(settings: Settings, receiver: Receiver) -> None:
    await asyncio.to_thread(enroll, settings, receiver.public_url, "good-token", ca_file=receiver.ca_file)


def delivered_exactly_once(receiver: Receiver) -> Counter[tuple[Stream, int]]:
    counts = Counter((stream, rec.seq) for stream, rec in receiver.rows)
    assert max(counts.values(), default=1) == 1, "a record was written twice"
    return counts


async def test_gateway_drains_the_buffer_to_the_cloud_exactly_once_in_drain_order(sync_settings, receiver, run_gateway):
    secret = DeviceRegistry(sync_settings.database).add("dev-1")
    messages = mixed(n_telemetry=300, n_events=60, n_twin=40)
    gw = await run_gateway()
    assert gw.board.snapshot["uplink"]["state"] == "not enrolled"
    await asyncio.to_thread(publish_all, sync_settings.broker.port, "dev-1", secret, messages)
    await gw.stop()

    await enrolled(sync_settings, receiver)
    gw = await run_gateway()
    await wait_for(lambda: len(receiver.rows) == len(messages), "every record at the receiver")
    delivered_exactly_once(receiver)
    by_stream = Counter(stream for stream, _ in receiver.rows)
    assert by_stream == {Stream.TELEMETRY: 300, Stream.EVENTS: 60, Stream.TWIN: 40}
    for stream in (Stream.TELEMETRY, Stream.EVENTS, Stream.TWIN):
        assert [r.seq for s, r in receiver.rows if s is stream] == list(range(1, by_stream[stream] + 1))
    assert {r.device_seq for _, r in receiver.rows} == set(range(1, len(messages) + 1))
    # everything was buffered before the uplink started: streams arrive in DRAIN_ORDER
    rank = [DRAIN_ORDER.index(s) for s in receiver.batch_streams]
    assert rank == sorted(rank)
    assert receiver.batch_streams[0] is Stream.EVENTS and receiver.batch_streams[-1] is Stream.TELEMETRY
    assert receiver.identities == {f"{TENANT}/{GATEWAY}"}

    await wait_for(lambda: gw.buffer.backlog() == dict.fromkeys(Stream, 0), "the buffer emptied by the acks")
    assert gw.buffer.acked(Stream.TELEMETRY) == 300
    await wait_for(lambda: any(r["backlog"]["telemetry"] == 0 for r in receiver.reports), "a report with the drained backlog")
    # the connector set's status rides along since the cloud pushes connector sets (edge/app.py)
    assert set(receiver.reports[0]) == {"dropped", "backlog", "oldest_unsynced_ms", "version", "connectors"}

    await gw.board.sample()
    async with httpx.AsyncClient(base_url=sync_settings.status_url) as http:
        up = (await http.get("/status")).json()["uplink"]
        metrics = (await http.get("/metrics")).text
    assert up["state"] == "connected"
    assert up["batches_acked"] >= 8 and up["bytes_sent"] > 0 and up["last_success_ms"] is not None
    assert up["gateway_id"] == GATEWAY and up["certificate_expires"] is not None
    assert up["downlink"]["state"] in ("connected", "connecting")
    assert "pulse_gateway_uplink_batches_acked_total" in metrics


async def test_cut_connections_503s_and_an_outage_lose_nothing_and_duplicate_nothing(sync_settings, receiver, run_gateway):
    secret = DeviceRegistry(sync_settings.database).add("dev-1")
    await enrolled(sync_settings, receiver)
    await receiver.stop_sync()  # the cloud is down
    gw = await run_gateway()
    messages = mixed(n_telemetry=250, n_events=0, n_twin=0)
    await asyncio.to_thread(publish_all, sync_settings.broker.port, "dev-1", secret, messages)
    assert gw.uplink is not None
    await wait_for(lambda: gw.uplink.status.errors >= 3, "the uplink failing against the closed port")
    assert gw.uplink.status.last_error_code == "gateway.cloud_unreachable"
    assert gw.buffer.acked(Stream.TELEMETRY) == 0
    assert [r.seq for r in await gw.buffer.read(Stream.TELEMETRY, 0, 1000)] == list(range(1, 251))  # nothing deleted

    receiver.abort_after_commit = 2  # committed, then the connection dies before the ack
    receiver.busy = 2  # then 503 with Retry-After
    await receiver.start()
    await wait_for(lambda: gw.buffer.backlog()[Stream.TELEMETRY] == 0, "the backlog delivered after the outage")
    counts = delivered_exactly_once(receiver)
    assert len(counts) == 250
    assert {r.device_seq for _, r in receiver.rows} == set(range(1, 251))
    assert receiver.aborted == 2 and receiver.busy_answers == 2
    assert Verdict.REPLAY in receiver.verdicts  # the cut batches were sent again and acked without a second write
    assert gw.uplink.replays >= 1


async def test_working_ahead_never_skips_a_record_the_cloud_did_not_ack(sync_settings, receiver, run_gateway):
    """While the cloud stores one batch the gateway prepares the next; a short ack must send the
    unacked rest again rather than the prepared batch that starts after it."""
    secret = DeviceRegistry(sync_settings.database).add("dev-1")
    await enrolled(sync_settings, receiver)
    receiver.batch_delay_s = 0.1  # a slow cloud: the next batch is always prepared in time
    receiver.short_acks = 3
    gw = await run_gateway()
    messages = mixed(n_telemetry=400, n_events=0, n_twin=0)
    await asyncio.to_thread(publish_all, sync_settings.broker.port, "dev-1", secret, messages)
    await wait_for(lambda: gw.buffer.backlog()[Stream.TELEMETRY] == 0, "the backlog delivered")
    delivered_exactly_once(receiver)
    assert [r.seq for _, r in receiver.rows] == list(range(1, 401))  # in order, none skipped
    assert receiver.short_acks == 0


async def test_alerts_and_events_overtake_telemetry_prepared_ahead(sync_settings, receiver, run_gateway):
    """An event that arrives while telemetry drains goes next, before the telemetry batch the
    gateway already prepared."""
    secret = DeviceRegistry(sync_settings.database).add("dev-1")
    gw = await run_gateway()
    await asyncio.to_thread(publish_all, sync_settings.broker.port, "dev-1", secret, mixed(n_telemetry=500, n_events=0, n_twin=0))
    await gw.stop()
    await enrolled(sync_settings, receiver)
    receiver.batch_delay_s = 0.3
    gw = await run_gateway()
    await wait_for(lambda: len(receiver.batch_streams) >= 1, "the first telemetry batch stored")
    event = [("event", {"v": 1, "seq": 10_000, "body": {"door": "open"}})]
    await asyncio.to_thread(publish_all, sync_settings.broker.port, "dev-1", secret, event)
    at = len(receiver.batch_streams)  # batches stored when the event was acknowledged to the device
    await wait_for(lambda: gw.buffer.backlog()[Stream.TELEMETRY] == 0 and gw.buffer.backlog()[Stream.EVENTS] == 0, "all delivered")
    delivered_exactly_once(receiver)
    streams = receiver.batch_streams
    assert streams.count(Stream.EVENTS) == 1
    # at most the batches in flight when the event arrived (a window) are stored before it
    assert streams.index(Stream.EVENTS) <= at + sync_settings.sync.window
    assert [r.seq for s, r in receiver.rows if s is Stream.TELEMETRY] == list(range(1, 501))


async def test_a_record_the_cloud_can_never_accept_is_quarantined_and_the_rest_delivered(sync_settings, receiver, run_gateway):
    secret = DeviceRegistry(sync_settings.database).add("dev-1")
    await enrolled(sync_settings, receiver)
    settings = dataclasses.replace(sync_settings, sync=dataclasses.replace(FAST_SYNC, records_per_batch=8))
    gw = await run_gateway(settings)
    messages = [("telemetry", {"v": 1, "seq": i, "metrics": {"poison": 1} if i == 13 else {"t": i}}) for i in range(1, 31)]
    await asyncio.to_thread(publish_all, settings.broker.port, "dev-1", secret, messages)
    await wait_for(lambda: gw.buffer.backlog()[Stream.TELEMETRY] == 0, "the stream drained past the poison record")
    delivered_exactly_once(receiver)
    assert sorted(r.device_seq for _, r in receiver.rows) == [i for i in range(1, 31) if i != 13]
    rows = await gw.buffer.quarantined()
    assert [(q.code, json.loads(q.raw)["seq"]) for q in rows] == [("batch.malformed", 13)]
    assert gw.uplink is not None and gw.uplink.records_quarantined == 1


@pytest.mark.parametrize(
    ("reads", "expected"),
    [((1,), {1}), ((1, 2), {1, 2})],
    ids=["a cloud older than format 2", "a cloud that reads format 2"],
)
async def test_the_gateway_sends_the_newest_batch_format_the_cloud_announces(sync_settings, receiver, run_gateway, reads, expected):
    secret = DeviceRegistry(sync_settings.database).add("dev-1")
    receiver.batch_versions = reads
    await enrolled(sync_settings, receiver)
    gw = await run_gateway()
    messages = [("telemetry", {"v": 1, "seq": i, "metrics": {"t": round(20 + i * 0.1, 1), "on": i % 2 == 0}}) for i in range(1, 201)]
    await asyncio.to_thread(publish_all, sync_settings.broker.port, "dev-1", secret, messages)
    await wait_for(lambda: gw.buffer.backlog()[Stream.TELEMETRY] == 0, "the stream drained")
    delivered_exactly_once(receiver)
    assert sorted(r.device_seq for _, r in receiver.rows) == list(range(1, 201))
    assert set(receiver.versions_seen) == expected
    assert receiver.versions_seen[0] == 1  # before any ack, only version 1: every cloud reads it
    assert [r.metrics for _, r in sorted(receiver.rows, key=lambda sr: sr[1].seq)] == [doc["metrics"] for _, doc in messages]


async def test_a_cloud_rolled_back_to_format_1_gets_version_1_again_and_nothing_is_quarantined(sync_settings, receiver, run_gateway):
    secret = DeviceRegistry(sync_settings.database).add("dev-1")
    await enrolled(sync_settings, receiver)
    gw = await run_gateway()
    for start in (1, 51):  # the first batches go before any ack; those after it in format 2
        first = [("telemetry", {"v": 1, "seq": i, "metrics": {"t": i}}) for i in range(start, start + 50)]
        await asyncio.to_thread(publish_all, sync_settings.broker.port, "dev-1", secret, first)
        await wait_for(lambda: gw.buffer.backlog()[Stream.TELEMETRY] == 0, "the stream drained")
    assert receiver.versions_seen[-1] == 2
    receiver.batch_versions = (1,)  # the cloud is rolled back: it refuses format 2 from now on
    seen = len(receiver.versions_seen)
    more = [("telemetry", {"v": 1, "seq": i, "metrics": {"t": i}}) for i in range(101, 201)]
    await asyncio.to_thread(publish_all, sync_settings.broker.port, "dev-1", secret, more)
    await wait_for(lambda: gw.buffer.backlog()[Stream.TELEMETRY] == 0, "the stream drained in format 1")
    delivered_exactly_once(receiver)
    assert sorted(r.device_seq for _, r in receiver.rows) == list(range(1, 201))
    assert await gw.buffer.quarantined() == []
    assert gw.uplink is not None and gw.uplink.records_quarantined == 0 and gw.uplink.batch_version == 1
    after = receiver.versions_seen[seen:]
    # refused in format 2, then sent again in format 1 (a format-2 batch already in flight when the
    # first refusal came back is refused too, and may reach the receiver after a format-1 one)
    assert after[0] == 2 and 1 in after and set(after) == {1, 2}


async def test_certificate_is_renewed_at_two_thirds_of_its_life_with_the_same_key(sync_settings, receiver, run_gateway):
    receiver.cert_backdate = dt.timedelta(days=21)  # 21 of 30 days gone: past two thirds
    await enrolled(sync_settings, receiver)
    files = IdentityFiles(sync_settings.state_dir)
    old = x509.load_pem_x509_certificate(files.cert.read_bytes())
    key_before = files.key.read_bytes()
    await run_gateway()
    await wait_for(lambda: receiver.renewals == 1, "a renewal")
    await wait_for(lambda: x509.load_pem_x509_certificate(files.cert.read_bytes()).not_valid_after_utc > old.not_valid_after_utc,
                   "the renewed certificate on disk")
    new = x509.load_pem_x509_certificate(files.cert.read_bytes())
    assert files.key.read_bytes() == key_before
    assert new.public_key().public_numbers() == old.public_key().public_numbers()  # type: ignore[union-attr]
    secret = DeviceRegistry(sync_settings.database).add("dev-1")
    await asyncio.to_thread(publish_all, sync_settings.broker.port, "dev-1", secret, [("telemetry", {"v": 1, "seq": 1, "metrics": {"t": 1}})])
    await wait_for(lambda: len(receiver.rows) == 1, "a batch sent with the renewed certificate")
    assert receiver.renewals == 1


async def test_the_bandwidth_cap_holds_the_batch_bytes_to_burst_plus_rate_times_elapsed(sync_settings, receiver, run_gateway):
    secret = DeviceRegistry(sync_settings.database).add("dev-1")
    await enrolled(sync_settings, receiver)
    rate = 1500
    settings = dataclasses.replace(sync_settings, sync=dataclasses.replace(FAST_SYNC, records_per_batch=25, bandwidth_bytes_per_s=rate))
    await receiver.stop_sync()  # let the backlog build up first, so the cap is what paces the drain
    gw = await run_gateway(settings)
    messages = [("telemetry", {"v": 1, "seq": i, "metrics": {"t": i * 1.37, "h": 40 + i % 7}}) for i in range(1, 301)]
    await asyncio.to_thread(publish_all, settings.broker.port, "dev-1", secret, messages)
    assert gw.uplink is not None
    loop = asyncio.get_running_loop()
    sent_before = gw.uplink.bytes_sent
    started = loop.time()
    await receiver.start()
    await wait_for(lambda: gw.buffer.backlog()[Stream.TELEMETRY] == 0, "the capped drain")
    elapsed = loop.time() - started
    delivered_exactly_once(receiver)
    assert len(receiver.rows) == 300
    sent = gw.uplink.bytes_sent - sent_before
    # An upper bound only (a slow machine makes elapsed longer, never the bound tighter): one burst,
    # plus one more for a reservation made before ``started`` and sent after it.
    assert sent <= 2 * rate + rate * elapsed
    assert sent > 2 * rate  # the cap was actually in play


async def test_a_refused_report_is_shown_but_does_not_hold_up_the_data(sync_settings, receiver, run_gateway):
    secret = DeviceRegistry(sync_settings.database).add("dev-1")
    await enrolled(sync_settings, receiver)
    receiver.refuse_reports = True
    gw = await run_gateway()
    await asyncio.to_thread(publish_all, sync_settings.broker.port, "dev-1", secret, mixed(20, 0, 0))
    await wait_for(lambda: len(receiver.rows) == 20, "the data delivered although reports are refused")
    assert gw.uplink is not None and gw.uplink.status.last_error_code == "api.not_found"
    assert "no reports here" in (gw.uplink.status.last_error or "")


async def test_a_cloud_that_never_answers_does_not_wedge_the_uplink(sync_settings, receiver, run_gateway):
    secret = DeviceRegistry(sync_settings.database).add("dev-1")
    await enrolled(sync_settings, receiver)
    receiver.hang = 2  # the first two batches are read and never answered
    # one batch in flight at a time, so each hung request is a failure of its own
    settings = dataclasses.replace(sync_settings, sync=dataclasses.replace(FAST_SYNC, request_timeout_s=0.5, window=1))
    gw = await run_gateway(settings)
    await asyncio.to_thread(publish_all, settings.broker.port, "dev-1", secret, mixed(60, 0, 0))
    await wait_for(lambda: len(receiver.rows) == 60, "the data delivered after the requests that hung")
    delivered_exactly_once(receiver)
    assert receiver.hung == 2
    assert gw.uplink is not None and gw.uplink.status.errors >= 2


async def test_gateway_status_command_shows_the_link(sync_settings, receiver, run_gateway, capsys):
    from pulse.cli.main import main

    await enrolled(sync_settings, receiver)
    receiver.refuse_reports = True
    gw = await run_gateway()
    await wait_for(lambda: gw.uplink is not None and gw.uplink.status.last_error_code == "api.not_found", "a refused report")
    await gw.board.sample()
    config = sync_settings.gateway.data_dir / "gateway.toml"
    config.write_text(f'[status]\nhost = "127.0.0.1"\nport = {sync_settings.status.port}\n')
    assert await asyncio.to_thread(main, ["gateway", "status", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert f"cloud      {receiver.sync_url} as {GATEWAY} (tenant {TENANT})" in out
    assert "last error api.not_found" in out and "cert until" in out and "downlink" in out
