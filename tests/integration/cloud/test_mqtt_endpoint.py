"""`pulse cloud mqtt` with real paho-mqtt devices over real TLS (the cloud CA's server certificate),
against the module's real PostgreSQL: rows committed before PUBACK, refused credentials, the topic
ACL across tenants, commands and twin deltas pushed as they change, persistent sessions."""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import paho.mqtt.client as mqtt
import pytest
from cloud_harness import Cloud, app_role_dsn
from natsserver import NatsServer, stream_names

from pulse.cloud.mqtt.endpoint import MqttEndpoint
from pulse.cloud.settings import Settings
from pulse.common.ports import free_port
from pulse.firmware_sim.runner import Fleet, MqttTarget


class Device:
    """A paho-mqtt device driven synchronously (from a thread: the endpoint runs on the test's loop)."""

    def __init__(self, port: int, ca: Path, device_id: str, token: str, *, clean_session: bool = True) -> None:
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device_id, clean_session=clean_session)
        self.c.username_pw_set(device_id, token)
        self.c.tls_set(ca_certs=str(ca))
        self.c.reconnect_delay_set(0.05, 0.1)
        self.port = port
        self.connected = threading.Event()
        self.reason: Any = None
        self.session_present: bool | None = None
        self.messages: list[mqtt.MQTTMessage] = []
        self.arrived = threading.Condition()
        self.subacks: list[Any] = []
        self._subscribed = threading.Event()
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self.c.on_subscribe = self._on_subscribe

    def _on_connect(self, c: Any, u: Any, flags: Any, reason: Any, props: Any) -> None:
        self.reason, self.session_present = reason, flags.session_present
        self.connected.set()

    def _on_message(self, c: Any, u: Any, m: mqtt.MQTTMessage) -> None:
        with self.arrived:
            self.messages.append(m)
            self.arrived.notify_all()

    def _on_subscribe(self, c: Any, u: Any, mid: Any, reasons: Any, props: Any) -> None:
        self.subacks = list(reasons)
        self._subscribed.set()

    def connect(self) -> bool:
        self.c.connect("127.0.0.1", self.port, keepalive=30)
        self.c.loop_start()
        assert self.connected.wait(10), "no CONNACK"
        return not self.reason.is_failure

    def publish(self, topic: str, payload: bytes | str, qos: int = 1) -> None:
        info = self.c.publish(topic, payload, qos=qos)
        info.wait_for_publish(10)
        assert info.is_published(), "no PUBACK"

    def subscribe(self, topic_filter: str) -> list[Any]:
        self._subscribed.clear()
        self.c.subscribe(topic_filter, qos=1)
        assert self._subscribed.wait(10), "no SUBACK"
        return self.subacks

    def wait_for(self, topic_part: str, timeout: float = 10) -> mqtt.MQTTMessage:
        with self.arrived:
            assert self.arrived.wait_for(lambda: any(topic_part in m.topic for m in self.messages), timeout), (
                f"nothing on {topic_part}: {[m.topic for m in self.messages]}"
            )
            return next(m for m in self.messages if topic_part in m.topic)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()
        self.c._reset_sockets()


@pytest.fixture
def mqtt_settings(cloud_settings: Settings, tmp_path: Path) -> Settings:
    return cloud_settings.model_copy(update={"data_dir": tmp_path, "mqtt_host": "127.0.0.1", "mqtt_tls_port": free_port(),
                                              "subscription_cache_s": 0.0})  # subscription changes show at once


@pytest.fixture
async def endpoint(mqtt_settings: Settings) -> AsyncIterator[MqttEndpoint]:
    ep = MqttEndpoint(mqtt_settings)
    await ep.start()
    try:
        yield ep
    finally:
        await ep.stop()


@pytest.fixture
async def api(mqtt_settings: Settings, start_cloud: Callable[..., Any]) -> AsyncIterator[Cloud]:
    async with start_cloud(mqtt_settings) as c:
        yield c


@pytest.fixture
def devices(mqtt_settings: Settings) -> Iterator[Callable[..., Device]]:
    made: list[Device] = []

    def make(device_id: str, token: str, **kwargs: Any) -> Device:
        d = Device(mqtt_settings.mqtt_tls_port, mqtt_settings.sync.ca_dir / "ca.crt", device_id, token, **kwargs)
        made.append(d)
        return d

    yield make
    for d in made:
        try:
            d.close()
        except Exception:  # noqa: BLE001 - closed already, or never connected
            pass


def envelope(device_id: str, seq: int, **metrics: float) -> bytes:
    return json.dumps({"v": 1, "device": device_id, "ts": int(time.time() * 1000), "seq": seq, "metrics": metrics}).encode()


async def rows(settings: Settings, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(settings.database_url)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def test_telemetry_over_tls_is_committed_before_its_puback(api: Cloud, endpoint: MqttEndpoint, devices: Callable[..., Device],
                                                                mqtt_settings: Settings) -> None:
    _, headers = await api.tenant_user()
    _, device_id, token = await api.device_with_token(headers)
    d = devices(device_id, token)
    assert await asyncio.to_thread(d.connect)
    for seq in range(3):
        await asyncio.to_thread(d.publish, f"pulse/{device_id}/telemetry", envelope(device_id, seq, temp=20.5 + seq))
        # PUBACK came back: the row is in PostgreSQL now, not in a moment
        found = await rows(mqtt_settings, "SELECT seq, source FROM telemetry WHERE device_id = $1 AND msg_type = 'telemetry' ORDER BY seq", device_id)
        assert [(r["seq"], r["source"]) for r in found] == [(s, "mqtt") for s in range(seq + 1)]
    await asyncio.to_thread(d.publish, f"pulse/{device_id}/telemetry", b"not json")
    bad = await rows(mqtt_settings, "SELECT code, source, raw FROM quarantine WHERE device_id = $1", device_id)
    assert [(r["code"], r["source"], bytes(r["raw"])) for r in bad] == [("envelope.not_json", "mqtt", b"not json")]


async def test_wrong_token_and_another_devices_token_are_refused(api: Cloud, endpoint: MqttEndpoint, devices: Callable[..., Device]) -> None:
    _, headers = await api.tenant_user()
    _, device_id, token = await api.device_with_token(headers)
    _, other_id, other_token = await api.device_with_token(headers)
    wrong = devices(device_id, token[:-4] + "AAAA")
    assert not await asyncio.to_thread(wrong.connect)
    assert str(wrong.reason) == "Not authorized"  # CONNACK 5 (paho names the 3.1.1 code)
    borrowed = devices(device_id, other_token)
    assert not await asyncio.to_thread(borrowed.connect)
    assert str(borrowed.reason) == "Not authorized"


async def test_a_device_cannot_publish_or_subscribe_across_devices_or_tenants(
    api: Cloud, endpoint: MqttEndpoint, devices: Callable[..., Device], mqtt_settings: Settings
) -> None:
    _, ha = await api.tenant_user()
    _, hb = await api.tenant_user()
    shared = "dev-" + uuid.uuid4().hex[:8]  # the same device id in two tenants
    _, _, token_a = await api.device_with_token(ha, shared)
    _, _, token_b = await api.device_with_token(hb, shared)
    _, victim, _ = await api.device_with_token(hb)
    a, b = devices(shared, token_a), devices(shared, token_b)
    assert await asyncio.to_thread(a.connect)
    assert await asyncio.to_thread(b.connect)
    assert not b.reason.is_failure and a.c.is_connected()  # two sessions: one device id does not take over the other tenant's
    assert [r.value for r in await asyncio.to_thread(a.subscribe, f"pulse/{victim}/#")] == [0x80]
    assert [r.value for r in await asyncio.to_thread(a.subscribe, f"pulse/{shared}/cmd/+")] == [1]
    await asyncio.to_thread(a.publish, f"pulse/{victim}/telemetry", envelope(victim, 1, temp=1))
    assert await rows(mqtt_settings, "SELECT 1 FROM telemetry WHERE device_id = $1", victim) == []
    q = await rows(mqtt_settings, "SELECT code FROM quarantine WHERE device_id = $1 AND code = 'topic.not_own_subtree'", shared)
    assert len(q) == 1
    # a command for tenant B's device reaches B's session only
    await asyncio.to_thread(b.subscribe, f"pulse/{shared}/cmd/+")
    r = await api.client.post(f"/api/v1/devices/{shared}/commands", json={"name": "reboot"}, headers=hb)
    assert r.status_code == 201, r.text
    got = await asyncio.to_thread(b.wait_for, "/cmd/")
    assert json.loads(got.payload)["name"] == "reboot"
    await asyncio.sleep(0.2)
    assert [m.topic for m in a.messages] == []


async def test_a_command_is_pushed_at_once_and_answered_over_mqtt(
    api: Cloud, endpoint: MqttEndpoint, devices: Callable[..., Device]
) -> None:
    _, headers = await api.tenant_user()
    _, device_id, token = await api.device_with_token(headers)
    d = devices(device_id, token)
    assert await asyncio.to_thread(d.connect)
    await asyncio.to_thread(d.subscribe, f"pulse/{device_id}/cmd/+")
    r = await api.client.post(f"/api/v1/devices/{device_id}/commands", json={"name": "ping", "params": {"n": 1}}, headers=headers)
    assert r.status_code == 201, r.text
    command_id = r.json()["id"]
    msg = await asyncio.to_thread(d.wait_for, f"/cmd/{command_id}")
    assert json.loads(msg.payload)["params"] == {"n": 1}
    ack = {"v": 1, "device": device_id, "ts": int(time.time() * 1000), "type": "command_ack",
           "body": {"id": command_id, "status": "succeeded", "result": {"pong": True}}}
    await asyncio.to_thread(d.publish, f"pulse/{device_id}/cmd/{command_id}/ack", json.dumps(ack))
    state = (await api.client.get(f"/api/v1/devices/{device_id}/commands/{command_id}", headers=headers)).json()
    assert state["state"] == "succeeded", state


async def test_a_persistent_session_gets_the_twin_delta_set_while_it_was_away(
    api: Cloud, endpoint: MqttEndpoint, devices: Callable[..., Device]
) -> None:
    _, headers = await api.tenant_user()
    _, device_id, token = await api.device_with_token(headers)
    first = devices(device_id, token, clean_session=False)
    assert await asyncio.to_thread(first.connect)
    await asyncio.to_thread(first.subscribe, f"pulse/{device_id}/twin/desired")
    await asyncio.to_thread(first.close)
    r = await api.client.patch(f"/api/v1/devices/{device_id}/twin", json={"state": {"desired": {"interval_s": 60}}}, headers=headers)
    assert r.status_code == 200, r.text
    again = devices(device_id, token, clean_session=False)
    assert await asyncio.to_thread(again.connect)
    assert again.session_present  # its subscription was kept: it does not subscribe again
    msg = await asyncio.to_thread(again.wait_for, "/twin/desired")
    assert json.loads(msg.payload)["state"] == {"interval_s": 60}


async def test_app_role_sees_mqtt_rows_only_in_their_tenant(api: Cloud, endpoint: MqttEndpoint, devices: Callable[..., Device],
                                                           mqtt_settings: Settings) -> None:
    tenant_a, ha = await api.tenant_user()
    tenant_b, _ = await api.tenant_user()
    _, device_id, token = await api.device_with_token(ha)
    d = devices(device_id, token)
    assert await asyncio.to_thread(d.connect)
    await asyncio.to_thread(d.publish, f"pulse/{device_id}/telemetry", envelope(device_id, 1, temp=3))
    conn = await asyncpg.connect(app_role_dsn(mqtt_settings))
    try:
        for tenant, expected in ((tenant_a, 1), (tenant_b, 0)):
            async with conn.transaction():
                await conn.execute("SELECT set_config('app.tenant_id', $1, true)", str(tenant))
                n = await conn.fetchval("SELECT count(*) FROM telemetry WHERE device_id = $1 AND msg_type = 'telemetry'", device_id)
            assert n == expected
    finally:
        await conn.close()


async def test_revoking_the_token_ends_the_live_session_and_refuses_the_reconnect(
    api: Cloud, endpoint: MqttEndpoint, devices: Callable[..., Device]
) -> None:
    _, headers = await api.tenant_user()
    dev, device_id, token = await api.device_with_token(headers)
    d = devices(device_id, token)
    assert await asyncio.to_thread(d.connect)
    lost = threading.Event()
    d.c.on_disconnect = lambda *args: lost.set()
    cred_id = (await api.client.get(f"/api/v1/devices/{dev}/credentials", headers=headers)).json()[0]["id"]
    assert (await api.client.delete(f"/api/v1/devices/{dev}/credentials/{cred_id}", headers=headers)).status_code == 204
    assert await asyncio.to_thread(lost.wait, 10), "the session outlived its revoked token"
    d.c.loop_stop()
    again = devices(device_id, token)
    assert not await asyncio.to_thread(again.connect)
    assert str(again.reason) == "Not authorized"


async def test_a_command_reaches_the_device_on_whichever_instance_holds_it(
    api: Cloud, endpoint: MqttEndpoint, mqtt_settings: Settings, tmp_path: Path
) -> None:
    other_settings = mqtt_settings.model_copy(update={"data_dir": tmp_path / "second", "mqtt_tls_port": free_port()})
    other = MqttEndpoint(other_settings)
    await other.start()
    try:
        _, headers = await api.tenant_user()
        _, device_id, token = await api.device_with_token(headers)
        # the second instance has a data directory of its own, so a CA of its own: the device trusts that one
        d = Device(other_settings.mqtt_tls_port, other_settings.sync.ca_dir / "ca.crt", device_id, token)
        try:
            assert await asyncio.to_thread(d.connect)
            await asyncio.to_thread(d.subscribe, f"pulse/{device_id}/cmd/+")
            r = await api.client.post(f"/api/v1/devices/{device_id}/commands", json={"name": "blink"}, headers=headers)
            assert r.status_code == 201, r.text
            msg = await asyncio.to_thread(d.wait_for, "/cmd/")
            assert json.loads(msg.payload)["name"] == "blink"
            assert other.counters["commands_sent"] == 1 and endpoint.counters["commands_sent"] == 0
        finally:
            await asyncio.to_thread(d.close)
    finally:
        await other.stop()


async def test_a_device_of_a_suspended_tenant_is_refused_at_connect(
    api: Cloud, endpoint: MqttEndpoint, devices: Callable[..., Device]
) -> None:
    tenant, headers = await api.tenant_user()
    _, device_id, token = await api.device_with_token(headers)
    before = devices(device_id, token)
    assert await asyncio.to_thread(before.connect)  # admitted while the subscription is active
    await asyncio.to_thread(before.close)
    operator = await api.user("operator-admin", tenant=None)
    base = f"/api/v1/operator/tenants/{tenant}/subscriptions"
    main = await api.client.post(base, json={"kind": "MAIN", "device_limit": 5, "starts_at": "2026-01-01T00:00:00Z",
                                                 "ends_at": "2100-01-01T00:00:00Z"}, headers=operator)
    assert main.status_code == 201, main.text
    r = await api.client.post(f"{base}/{main.json()['id']}/events", json={"event": "suspend"}, headers=operator)
    assert r.status_code == 200 and r.json()["state"] == "SUSPENDED", r.text
    d = devices(device_id, token)
    assert not await asyncio.to_thread(d.connect)
    assert str(d.reason) == "Not authorized"


async def test_the_simulated_fleet_runs_as_direct_devices_over_mqtt(
    api: Cloud, endpoint: MqttEndpoint, mqtt_settings: Settings
) -> None:
    _, headers = await api.tenant_user()
    prefix = "sim" + uuid.uuid4().hex[:6]
    tokens = {}
    for i in range(2):
        _, device_id, token = await api.device_with_token(headers, f"{prefix}-{i:04d}")
        tokens[device_id] = token
    tls = ssl.create_default_context(cafile=str(mqtt_settings.sync.ca_dir / "ca.crt"))
    fleet = Fleet.generate(2, MqttTarget("127.0.0.1", mqtt_settings.mqtt_tls_port, tokens, tls), interval_s=0.2, prefix=prefix)
    stats = await fleet.run(3.0)
    assert stats.acknowledged >= 2 and stats.connect_errors == 0, stats.to_json()
    stored = await rows(mqtt_settings, "SELECT DISTINCT device_id FROM telemetry WHERE device_id = ANY($1::text[])", list(tokens))
    assert {r["device_id"] for r in stored} == set(tokens)


async def test_a_command_created_while_a_persistent_session_is_away_arrives_when_it_is_back(
    api: Cloud, endpoint: MqttEndpoint, devices: Callable[..., Device]
) -> None:
    _, headers = await api.tenant_user()
    _, device_id, token = await api.device_with_token(headers)
    first = devices(device_id, token, clean_session=False)
    assert await asyncio.to_thread(first.connect)
    await asyncio.to_thread(first.subscribe, f"pulse/{device_id}/cmd/+")
    await asyncio.to_thread(first.close)
    r = await api.client.post(f"/api/v1/devices/{device_id}/commands", json={"name": "calibrate"}, headers=headers)
    assert r.status_code == 201, r.text
    assert r.json()["state"] == "queued"
    again = devices(device_id, token, clean_session=False)
    assert await asyncio.to_thread(again.connect)
    assert again.session_present
    msg = await asyncio.to_thread(again.wait_for, f"/cmd/{r.json()['id']}")
    assert json.loads(msg.payload)["name"] == "calibrate"


async def test_connecting_and_losing_the_link_are_stored_as_connectivity_events(
    api: Cloud, endpoint: MqttEndpoint, devices: Callable[..., Device], mqtt_settings: Settings
) -> None:
    _, headers = await api.tenant_user()
    _, device_id, token = await api.device_with_token(headers)
    d = devices(device_id, token)
    d.c.will_set(f"pulse/{device_id}/event", b'{"v":1,"type":"event","metrics":{"gone":true}}', qos=1)
    assert await asyncio.to_thread(d.connect)
    await asyncio.to_thread(d.publish, f"pulse/{device_id}/telemetry", envelope(device_id, 1, temp=1))
    d.c.loop_stop()
    d.c._reset_sockets()  # the link drops: no DISCONNECT
    sql = "SELECT tags->>'pulse.connectivity' AS kind, body FROM telemetry WHERE device_id = $1 AND msg_type = 'event' ORDER BY time"
    found: list[asyncpg.Record] = []
    for _ in range(200):  # the endpoint notices the closed socket at once; its event is committed a moment later
        found = await rows(mqtt_settings, sql, device_id)
        if len(found) == 2:
            break
        await asyncio.sleep(0.05)
    assert [r["kind"] for r in found] == ["connected", "lost"]
    assert json.loads(found[1]["body"]) == {"will": True}


async def test_with_the_stream_a_puback_means_jetstream_has_it_and_the_writers_store_it_once(
    mqtt_settings: Settings, nats_server: NatsServer, start_cloud: Callable[..., Any], devices: Callable[..., Device]
) -> None:
    settings = mqtt_settings.model_copy(
        update={"stream_url": nats_server.url, "stream_partitions": 2, "cluster_poll_s": 0.1, "stream_publish_timeout_s": 1.0, **stream_names()}
    )
    async with start_cloud(settings) as api:  # the partition writers run in `serve`
        ep = MqttEndpoint(settings)
        await ep.start()
        try:
            _, headers = await api.tenant_user()
            _, device_id, token = await api.device_with_token(headers)
            d = devices(device_id, token)
            assert await asyncio.to_thread(d.connect)
            for seq in range(5):
                await asyncio.to_thread(d.publish, f"pulse/{device_id}/telemetry", envelope(device_id, seq, temp=20.0 + seq))
            assert ep.sink.published >= 5  # type: ignore[attr-defined]  # each PUBACK after JetStream's acknowledgement (+ the connect event)
            deadline = time.monotonic() + 30
            query = "SELECT seq, source FROM telemetry WHERE device_id = $1 AND msg_type = 'telemetry' ORDER BY seq"
            while len(found := await rows(settings, query, device_id)) < 5:
                assert time.monotonic() < deadline, "the partition writers did not store the MQTT messages"
                await asyncio.sleep(0.05)
            assert [(r["seq"], r["source"]) for r in found] == [(s, "mqtt") for s in range(5)]
            if nats_server.own:  # the stream goes away: PUBACK from the spool, nothing lost
                nats_server.stop()
                await asyncio.to_thread(d.publish, f"pulse/{device_id}/telemetry", envelope(device_id, 5, temp=1.0))
                assert ep.counters["spooled"] == 1 and ep.spool.count == 1
        finally:
            await ep.stop()
