"""The simulated fleet publishes real QoS 1 MQTT to a real broker, and follows desired state and commands."""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict

import aiomqtt
import pytest
from amqtt.broker import Broker

from pulse.cloud.db.embedded import free_port
from pulse.firmware_sim.device import Fault, FaultKind
from pulse.firmware_sim.runner import Fleet, MqttTarget
from pulse.protocol import envelope, topics

pytestmark = pytest.mark.integration


async def test_fleet_publishes_valid_envelopes_and_answers_commands() -> None:
    port = free_port()
    broker = Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
    )
    await broker.start()
    try:
        seen: dict[str, list[envelope.Envelope]] = defaultdict(list)
        acks: list[dict[str, object]] = []
        async with aiomqtt.Client("127.0.0.1", port, identifier="observer") as observer:
            await observer.subscribe("pulse/+/telemetry", qos=1)
            await observer.subscribe("pulse/+/cmd/+/ack", qos=1)

            fleet = Fleet.generate(4, MqttTarget("127.0.0.1", port, {}), interval_s=10.0, speed=100.0)
            fleet.inject("dev-0002", Fault(FaultKind.SILENT))
            run = asyncio.create_task(fleet.run(duration_s=20))

            async def collect() -> None:
                async for msg in observer.messages:
                    t = topics.parse(str(msg.topic))
                    assert isinstance(msg.payload, bytes)
                    if t.kind is topics.TopicKind.TELEMETRY:
                        seen[t.device_id].append(
                            envelope.parse(msg.payload, now_ms=int(time.time() * 1000), device_id=t.device_id, expected_type=envelope.MessageType.TELEMETRY)
                        )
                    else:
                        acks.append(json.loads(msg.payload)["body"])
                    if len(seen["dev-0000"]) >= 5 and acks:
                        return

            await asyncio.sleep(0.5)
            await observer.publish("pulse/dev-0001/cmd/c-1", json.dumps({"name": "ping", "params": {}}), qos=1)
            await asyncio.wait_for(collect(), 15)
            fleet.stop()
            stats = await run

        assert [e.seq for e in seen["dev-0000"]][:5] == [1, 2, 3, 4, 5]
        assert "dev-0002" not in seen  # the silent device sent nothing
        assert acks[0] == {"id": "c-1", "status": "succeeded", "result": {"pong": True}}
        assert stats.acknowledged >= 5 and stats.connect_errors == 0
    finally:
        await broker.shutdown()
