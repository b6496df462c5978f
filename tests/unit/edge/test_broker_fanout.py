"""The shared broker's own decoding and fan-out (pulse.broker.server) against amqtt's: the same
packets and the same matching filters, however the subscription table changes."""

from __future__ import annotations

import asyncio

import pytest
from amqtt.adapters import StreamReaderAdapter
from amqtt.errors import MQTTError
from amqtt.mqtt.packet import MQTTFixedHeader
from amqtt.mqtt.publish import PublishPacket
from amqtt.session import Session

from pulse.broker.server import DeviceBroker, FilterTable, _read_publish


def _publish_bytes(topic: str, payload: bytes, *, qos: int, packet_id: int = 7, retain: bool = False) -> bytes:
    packet = PublishPacket.build(topic, payload, packet_id if qos else None, False, qos, retain)
    return bytes(packet.to_bytes())


async def _reader(data: bytes) -> StreamReaderAdapter:
    stream = asyncio.StreamReader()
    stream.feed_data(data)
    stream.feed_eof()
    return StreamReaderAdapter(stream)


@pytest.mark.parametrize(
    ("topic", "payload", "qos", "retain"),
    [
        ("pulse/d1/telemetry", b'{"v":1,"metrics":{"t":1}}', 1, False),
        ("pulse/d1/event", b"", 0, True),
        ("pulse/d\u00e9/telemetry", b"x" * 300, 2, False),  # two-byte remaining length, UTF-8 topic
    ],
)
async def test_read_publish_decodes_the_same_packet_as_amqtt(topic: str, payload: bytes, qos: int, retain: bool) -> None:
    raw = _publish_bytes(topic, payload, qos=qos, retain=retain)
    ours_reader, theirs_reader = await _reader(raw), await _reader(raw)
    ours = await _read_publish(ours_reader, await MQTTFixedHeader.from_stream(ours_reader))
    theirs = await PublishPacket.from_stream(theirs_reader)
    assert (ours.topic_name, ours.packet_id, ours.data, ours.qos, ours.retain_flag, ours.dup_flag) == (
        theirs.topic_name, theirs.packet_id, theirs.data, theirs.qos, theirs.retain_flag, theirs.dup_flag
    )


async def test_a_publish_shorter_than_its_topic_is_refused_and_the_next_packet_still_reads() -> None:
    truncated = bytes([0x32, 3, 0, 20, ord("p")])  # QoS 1, says a 20-byte topic, carries 1 byte
    good = _publish_bytes("pulse/d1/telemetry", b"{}", qos=1, packet_id=9)
    reader = await _reader(truncated + good)
    with pytest.raises(MQTTError):
        await _read_publish(reader, await MQTTFixedHeader.from_stream(reader))
    packet = await _read_publish(reader, await MQTTFixedHeader.from_stream(reader))
    assert (packet.topic_name, packet.packet_id, packet.data) == ("pulse/d1/telemetry", 9, b"{}")


def test_the_filter_table_counts_changes_to_its_filters_not_to_their_subscribers() -> None:
    table = FilterTable()
    versions = [table.version]
    table["pulse/a/cmd/+"] = []
    versions.append(table.version)
    table["pulse/a/cmd/+"].append((Session(), 1))  # a subscriber more: the same filters
    table["pulse/a/cmd/+"] = table["pulse/a/cmd/+"]  # amqtt re-assigns an existing filter
    versions.append(table.version)
    table.setdefault("pulse/b/#", [])
    versions.append(table.version)
    del table["pulse/a/cmd/+"]
    versions.append(table.version)
    table.clear()
    versions.append(table.version)
    assert versions == [0, 1, 1, 2, 3, 4]


async def test_the_fan_out_sees_every_change_to_the_filters_after_a_topic_was_matched() -> None:
    config = {
        "listeners": {"default": {"type": "tcp", "bind": "127.0.0.1:0"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }
    broker = DeviceBroker(config, intake=None)  # type: ignore[arg-type]  # never started: no intake needed
    topic = "pulse/d1/cmd/42"
    assert broker._filters_matching(topic) == ()
    broker._subscriptions["pulse/d1/cmd/+"] = []
    assert broker._filters_matching(topic) == ("pulse/d1/cmd/+",)
    broker._subscriptions["#"] = []
    broker._subscriptions["pulse/d2/cmd/+"] = []
    assert set(broker._filters_matching(topic)) == {"pulse/d1/cmd/+", "#"}
    assert broker._filters_matching("$SYS/broker/uptime") == ()  # '#' never matches a $ topic
    del broker._subscriptions["pulse/d1/cmd/+"]
    assert broker._filters_matching(topic) == ("#",)
    broker._subscriptions.clear()
    assert broker._filters_matching(topic) == ()
