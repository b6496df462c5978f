"""Device credentials and the topic ACL, with real paho-mqtt clients against the real broker."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pulse.cloud.db.embedded import free_port
from pulse.edge.auth import DeviceRegistry
from pulse.protocol.batch import Stream

pytestmark = pytest.mark.integration

to_thread = asyncio.to_thread


def telemetry(seq: int) -> bytes:
    return json.dumps({"v": 1, "seq": seq, "metrics": {"temp_c": 20 + seq}}).encode()


async def test_device_with_its_secret_publishes_and_the_message_is_buffered(gateway, devices, client_factory):
    secret = devices.add("boiler-1")
    c = client_factory(gateway.settings.broker.port, "boiler-1", secret)
    assert await to_thread(c.connect)
    await to_thread(c.publish, "pulse/boiler-1/telemetry", telemetry(7))
    records = await gateway.buffer.read(Stream.TELEMETRY, 0, 10)
    assert [(r.device_id, r.device_seq, r.metrics) for r in records] == [("boiler-1", 7, {"temp_c": 27})]


async def test_wrong_secret_is_refused(gateway, devices, client_factory):
    devices.add("boiler-1")
    c = client_factory(gateway.settings.broker.port, "boiler-1", "not-the-secret")
    assert not await to_thread(c.connect)
    assert c.reason == "Not authorized"


async def test_unknown_device_is_refused(gateway, client_factory):
    c = client_factory(gateway.settings.broker.port, "nobody", "whatever")
    assert not await to_thread(c.connect)


async def test_anonymous_client_is_refused_by_default(gateway, client_factory):
    c = client_factory(gateway.settings.broker.port, None, None, client_id="anon-1")
    assert not await to_thread(c.connect)


async def test_client_id_must_be_the_device_id(gateway, devices, client_factory):
    secret = devices.add("boiler-1")
    c = client_factory(gateway.settings.broker.port, "boiler-1", secret, client_id="boiler-2")
    assert not await to_thread(c.connect)


async def test_chosen_secret_is_hashed_with_scrypt_and_accepted(gateway, devices, client_factory):
    devices.add("pump-3", "correct horse battery staple")
    assert [d.scheme for d in devices.list()] == ["scrypt"]
    good = client_factory(gateway.settings.broker.port, "pump-3", "correct horse battery staple")
    assert await to_thread(good.connect)
    bad = client_factory(gateway.settings.broker.port, "pump-3", "correct horse battery")
    assert not await to_thread(bad.connect)


async def test_publish_on_another_devices_topic_is_refused_not_buffered_not_forwarded(gateway, devices, client_factory):
    port = gateway.settings.broker.port
    mallory, victim = devices.add("mallory"), devices.add("victim")
    watcher = client_factory(port, "victim", victim)
    assert await to_thread(watcher.connect)
    assert [r.value for r in await to_thread(watcher.subscribe, "pulse/victim/#")] == [1]

    m = client_factory(port, "mallory", mallory)
    assert await to_thread(m.connect)
    await to_thread(m.publish, "pulse/victim/telemetry", telemetry(1))  # acknowledged (MQTT 3.1.1 has no refusal) ...
    await to_thread(m.publish, "pulse/mallory/telemetry", telemetry(2))  # ... and the session goes on

    records = await gateway.buffer.read(Stream.TELEMETRY, 0, 10)
    assert [(r.device_id, r.device_seq) for r in records] == [("mallory", 2)]
    rows = await gateway.buffer.quarantined()
    assert [(q.device_id, q.topic, q.code, q.raw) for q in rows] == [
        ("mallory", "pulse/victim/telemetry", "topic.not_own_subtree", telemetry(1))
    ]
    assert (await gateway.buffer.stats()).acl_denied == 1
    await asyncio.sleep(0.3)
    assert watcher.messages == []


async def test_device_may_not_publish_downlink_topics_of_its_own(gateway, devices, client_factory):
    secret = devices.add("boiler-1")
    c = client_factory(gateway.settings.broker.port, "boiler-1", secret)
    assert await to_thread(c.connect)
    await to_thread(c.publish, "pulse/boiler-1/twin/desired", b'{"v":1}')
    assert [q.code for q in await gateway.buffer.quarantined()] == ["topic.downlink_only"]


async def test_subscription_outside_own_subtree_is_refused(gateway, devices, client_factory):
    secret = devices.add("boiler-1")
    c = client_factory(gateway.settings.broker.port, "boiler-1", secret)
    assert await to_thread(c.connect)
    granted = await to_thread(c.subscribe, "pulse/+/telemetry")
    assert [r.is_failure for r in granted] == [True]
    assert [r.is_failure for r in await to_thread(c.subscribe, "pulse/boiler-1/cmd/+")] == [False]


async def test_device_added_while_running_can_connect_and_removed_one_cannot(gateway, settings, client_factory):
    registry = DeviceRegistry(settings.database)  # what `pulse gateway device add` does, from another connection
    try:
        secret = registry.add("late-1")
        c = client_factory(settings.broker.port, "late-1", secret)
        assert await to_thread(c.connect)
        registry.remove("late-1")
        again = client_factory(settings.broker.port, "late-1", secret)
        assert not await to_thread(again.connect)
    finally:
        registry.close()


async def test_anonymous_publisher_when_enabled_is_stored_under_the_topics_device(start_gateway, devices, client_factory):
    gw = await start_gateway(allow_anonymous=True)
    c = client_factory(gw.settings.broker.port, None, None, client_id="anon-1")
    assert await to_thread(c.connect)
    await to_thread(c.publish, "pulse/legacy-9/telemetry", telemetry(1))
    assert [r.device_id for r in await gw.buffer.read(Stream.TELEMETRY, 0, 10)] == ["legacy-9"]
    # a wrong secret is still refused when anonymous access is on
    devices.add("boiler-1")
    bad = client_factory(gw.settings.broker.port, "boiler-1", "wrong")
    assert not await to_thread(bad.connect)


def _certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it, made by the test."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pulse test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gateway")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem, cert_pem, key_pem = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return ca_pem, cert_pem, key_pem


async def test_tls_and_websocket_listeners_authenticate_and_buffer(start_gateway, devices, client_factory, tmp_path):
    ca, cert, key = _certificates(tmp_path)
    tls_port, ws_port = free_port(), free_port()
    gw = await start_gateway(tls_port=tls_port, tls_certfile=cert, tls_keyfile=key, ws_port=ws_port)
    secret = devices.add("boiler-1")
    over_tls = client_factory(tls_port, "boiler-1", secret, tls_ca=ca)
    assert await to_thread(over_tls.connect)
    await to_thread(over_tls.publish, "pulse/boiler-1/telemetry", telemetry(1))
    await to_thread(over_tls.close)
    over_ws = client_factory(ws_port, "boiler-1", secret, transport="websockets")
    assert await to_thread(over_ws.connect)
    await to_thread(over_ws.publish, "pulse/boiler-1/event", b'{"v":1,"seq":2,"body":{"door":"open"}}')
    wrong = client_factory(tls_port, "boiler-1", "wrong", tls_ca=ca)
    assert not await to_thread(wrong.connect)
    assert [r.device_seq for r in await gw.buffer.read(Stream.TELEMETRY, 0, 10)] == [1]
    assert [(r.type, r.body) for r in await gw.buffer.read(Stream.EVENTS, 0, 10)] == [("event", {"door": "open"})]


@pytest.mark.parametrize("qos", [0, 1, 2])
async def test_valid_messages_reach_local_subscribers_and_refused_ones_do_not(gateway, devices, client_factory, qos):
    secret = devices.add("boiler-1")
    c = client_factory(gateway.settings.broker.port, "boiler-1", secret)
    assert await to_thread(c.connect)
    assert [r.is_failure for r in await to_thread(c.subscribe, "pulse/boiler-1/#")] == [False]
    await to_thread(c.publish, "pulse/boiler-1/telemetry", b"not json", qos)
    await to_thread(c.publish, "pulse/boiler-1/telemetry", telemetry(5), qos)
    for _ in range(100):
        if c.messages:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)
    assert [m.payload for m in c.messages] == [telemetry(5)]
    assert [r.device_seq for r in await gateway.buffer.read(Stream.TELEMETRY, 0, 10)] == [5]
    assert [q.code for q in await gateway.buffer.quarantined()] == ["envelope.not_json"]


async def test_a_device_reconnecting_while_its_old_connection_lingers_takes_over(gateway, devices, client_factory):
    secret = devices.add("boiler-1")
    port = gateway.settings.broker.port
    first = client_factory(port, "boiler-1", secret)
    assert await to_thread(first.connect)
    second = client_factory(port, "boiler-1", secret)  # same client id: amqtt's session take-over
    assert await to_thread(second.connect)
    await to_thread(second.publish, "pulse/boiler-1/telemetry", telemetry(9))
    assert [r.device_seq for r in await gateway.buffer.read(Stream.TELEMETRY, 0, 10)] == [9]
    assert gateway.broker.connected_devices() == 1


@pytest.mark.parametrize("clean_session", [True, False])
async def test_a_refused_connect_with_a_devices_client_id_leaves_its_session_alone(gateway, devices, client_factory, clean_session):
    secret = devices.add("boiler-1")
    port = gateway.settings.broker.port
    device = client_factory(port, "boiler-1", secret, clean_session=False)
    assert await to_thread(device.connect)
    await to_thread(device.subscribe, "pulse/boiler-1/#")
    intruder = client_factory(port, "boiler-1", "not-the-secret", clean_session=clean_session)
    assert not await to_thread(intruder.connect)
    await to_thread(intruder.close)
    # the device is still connected, subscribed, and its session is its own
    assert gateway.broker.connected_devices() == 1
    await to_thread(device.publish, "pulse/boiler-1/telemetry", telemetry(3))
    for _ in range(250):
        if device.messages:
            break
        await asyncio.sleep(0.02)
    assert [m.payload for m in device.messages] == [telemetry(3)]
    assert gateway.broker.subscribed("boiler-1", "pulse/boiler-1/cmd/c-1")
    assert await gateway.broker.disconnect_device("boiler-1") == 1


async def test_a_persistent_session_taken_over_by_a_new_connection_delivers_to_the_new_one(start_gateway, devices, client_factory):
    gw = await start_gateway(allow_anonymous=True)
    secret = devices.add("boiler-1")
    port = gw.settings.broker.port
    first = client_factory(port, "boiler-1", secret, clean_session=False)
    assert await to_thread(first.connect)
    await to_thread(first.subscribe, "pulse/boiler-1/telemetry")
    await to_thread(first.c.loop_stop)  # its connection lingers, silent (a device that lost power)
    second = client_factory(port, "boiler-1", secret, clean_session=False)
    assert await to_thread(second.connect)
    site = client_factory(port, None, None, client_id="site-1")
    assert await to_thread(site.connect)
    for seq in (1, 2):
        await to_thread(site.publish, "pulse/boiler-1/telemetry", telemetry(seq))
    for _ in range(250):
        if len(second.messages) >= 2:
            break
        await asyncio.sleep(0.02)
    assert [m.payload for m in second.messages] == [telemetry(1), telemetry(2)]
    # a queued message leaves the session's queue when its PUBACK arrives, a moment after delivery
    for _ in range(250):
        if gw.sessions.snapshot()["queued_now"] == 0:
            break
        await asyncio.sleep(0.02)
    assert gw.sessions.snapshot()["queued_now"] == 0


async def test_a_connecting_device_never_gets_the_retained_messages_of_another_devices_topics(gateway, devices, client_factory):
    port = gateway.settings.broker.port
    a = client_factory(port, "dev-a", devices.add("dev-a"))
    assert await to_thread(a.connect)
    await to_thread(a.subscribe, "pulse/dev-a/twin/desired")
    await gateway.broker.publish("pulse/dev-a/twin/desired", b'{"state":{"interval_s":5}}', retain=True)
    b = client_factory(port, "dev-b", devices.add("dev-b"))
    assert await to_thread(b.connect)
    await to_thread(b.subscribe, "pulse/dev-b/#")  # a sentinel: published after the CONNECT's retained messages
    await gateway.broker.publish("pulse/dev-b/twin/desired", b'{"state":{"mode":"eco"}}', retain=False)
    for _ in range(250):
        if b.messages and a.messages:
            break
        await asyncio.sleep(0.02)
    assert [(m.topic, m.payload) for m in b.messages] == [("pulse/dev-b/twin/desired", b'{"state":{"mode":"eco"}}')]
    assert [m.payload for m in a.messages] == [b'{"state":{"interval_s":5}}']


async def test_a_will_on_a_topic_the_device_may_not_publish_on_is_refused_at_connect(gateway, devices, client_factory):
    port = gateway.settings.broker.port
    bad = client_factory(port, "dev-a", devices.add("dev-a"))
    bad.c.will_set("pulse/dev-b/cmd/reboot", b'{"id":"c-1","name":"reboot"}', qos=1)
    assert not await to_thread(bad.connect)
    assert bad.reason == "Not authorized"
    good = client_factory(port, "dev-c", devices.add("dev-c"))
    good.c.will_set("pulse/dev-c/event", b'{"v":1,"metrics":{"lost":true}}', qos=1)
    assert await to_thread(good.connect)
