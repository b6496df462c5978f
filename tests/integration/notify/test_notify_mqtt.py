"""MQTT publish to a real amqtt broker on loopback (plain and TLS with a certificate made by the test)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from amqtt.broker import Broker
from notify_receivers import LocalCA

from pulse.cloud.db.embedded import free_port
from pulse.cloud.notify import senders
from pulse.cloud.notify.model import Delivered, Notification, Retry
from pulse.cloud.notify.senders.base import SendContext
from pulse.protocol.errors import Code

pytestmark = pytest.mark.integration
Make = Callable[..., Notification]


async def _broker(listener: dict[str, Any]) -> Broker:
    broker = Broker(
        {
            "listeners": {"default": listener},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
    )
    await broker.start()
    return broker


@pytest.fixture
async def broker_port() -> AsyncIterator[int]:
    port = free_port()
    broker = await _broker({"type": "tcp", "bind": f"127.0.0.1:{port}"})
    try:
        yield port
    finally:
        await broker.shutdown()


@pytest.fixture
async def tls_broker_port(test_ca: LocalCA, tmp_path: Path) -> AsyncIterator[int]:
    cert, key = test_ca.server_files(tmp_path, ["localhost"])
    port = free_port()
    broker = await _broker({"type": "tcp", "bind": f"127.0.0.1:{port}", "ssl": True, "certfile": str(cert), "keyfile": str(key)})
    try:
        yield port
    finally:
        await broker.shutdown()


async def _first_message(port: int, topic: str, **tls: Any) -> aiomqtt.Message:
    async with aiomqtt.Client("127.0.0.1", port, identifier="observer", **tls) as observer:
        await observer.subscribe(topic, qos=1)
        async for message in observer.messages:
            return message
    raise AssertionError("no message")


async def test_publish_reaches_the_broker_retained_on_the_expanded_topic(broker_port: int, ctx: SendContext, make_notification: Make) -> None:
    n = make_notification(device="pump/7#a")
    raw = {"host": "127.0.0.1", "port": broker_port, "topic": "acme/alerts/{severity}/{device}", "qos": 1, "retain": True}
    outcome = await senders.send("mqtt", senders.validate("mqtt", raw), n, ctx)
    assert outcome == Delivered("published to acme/alerts/critical/pump_7_a (QoS 1)")
    # Subscribing after the publish: only a retained message can arrive.
    message = await asyncio.wait_for(_first_message(broker_port, "acme/alerts/#"), 10)
    assert str(message.topic) == "acme/alerts/critical/pump_7_a" and message.retain and message.qos == 1
    assert isinstance(message.payload, bytes)
    doc = json.loads(message.payload)
    assert doc["schema"] == "pulse.notification.v1" and doc["event_id"] == n.event_id and doc["device"] == "pump/7#a"


async def test_publish_over_tls_verifies_the_broker_by_name(tls_broker_port: int, ctx: SendContext, make_notification: Make, test_ca: LocalCA) -> None:
    raw = {"host": "localhost", "port": tls_broker_port, "tls": True, "topic": "t/{event}", "retain": True}
    outcome = await senders.send("mqtt", senders.validate("mqtt", raw), make_notification(event="acknowledged"), ctx)
    assert outcome == Delivered("published to t/acknowledged (QoS 1)")
    message = await asyncio.wait_for(_first_message(tls_broker_port, "t/#", tls_context=test_ca.client_context, tls_insecure=True), 10)
    assert json.loads(message.payload)["event"] == "acknowledged"  # type: ignore[arg-type]


async def test_a_broker_that_is_down_is_retried(ctx: SendContext, make_notification: Make) -> None:
    raw = {"host": "127.0.0.1", "port": free_port()}
    outcome = await senders.send("mqtt", senders.validate("mqtt", raw), make_notification(), ctx)
    assert isinstance(outcome, Retry) and outcome.code is Code.NOTIFY_UNREACHABLE
