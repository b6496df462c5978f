"""When the SQLite file cannot grow, the gateway acknowledges nothing, closes the connection, and the
device's resent message is stored once there is room again."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading

import paho.mqtt.client as mqtt
import pytest

from pulse.edge.app import Gateway
from pulse.protocol.batch import Stream

pytestmark = pytest.mark.integration


def event(seq: int) -> bytes:
    return json.dumps({"v": 1, "seq": seq, "body": {"note": "x" * 1500}}).encode()


async def test_full_file_means_no_puback_and_the_resent_message_lands_after_space_frees(settings, devices):
    # events are never dropped by the quota, so a small file ceiling is what stops them
    gw = Gateway(dataclasses.replace(settings, buffer=dataclasses.replace(settings.buffer, max_file_mb=0.25)))
    await gw.start()
    secret = devices.add("boiler-1")
    acked: list[int] = []
    disconnects = threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="boiler-1")
    c.username_pw_set("boiler-1", secret)
    c.reconnect_delay_set(0.05, 0.2)
    c.on_disconnect = lambda *a: disconnects.set()
    mids: dict[int, int] = {}
    c.on_publish = lambda client, userdata, mid, reason, props: acked.append(mids[mid])
    try:
        c.connect("127.0.0.1", settings.broker.port)
        c.loop_start()
        seq = 0
        while not disconnects.is_set() and seq < 1000:  # ~1.5 MB of events into a 0.25 MB file
            seq += 1
            info = c.publish("pulse/boiler-1/event", event(seq), qos=1)
            mids[info.mid] = seq
            await asyncio.to_thread(info.wait_for_publish, 3)
        assert disconnects.is_set(), "the gateway kept acknowledging past its file ceiling"
        assert gw.intake.counters.storage_errors >= 1
        stored = [r.device_seq for r in await gw.buffer.read(Stream.EVENTS, 0, 10_000)]
        assert sorted(acked) == stored  # everything acknowledged is stored, nothing else
        unacked = seq
        assert unacked not in stored

        # the cloud takes what is there (sync's ack): space frees, the resent message is stored once
        await gw.buffer.ack(Stream.EVENTS, (await gw.buffer.read(Stream.EVENTS, 0, 10_000))[-1].seq)
        for _ in range(200):
            if unacked in acked:
                break
            await asyncio.sleep(0.05)
        later = [r.device_seq for r in await gw.buffer.read(Stream.EVENTS, 0, 10_000)]
        assert unacked in acked and later.count(unacked) == 1
    finally:
        c.disconnect()
        c.loop_stop()
        await gw.stop()
