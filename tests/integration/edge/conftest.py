"""A real gateway in the test's event loop on free ports, and real paho-mqtt clients against it."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from edge_sync_receiver import Receiver

from pulse.cloud.db.embedded import free_port
from pulse.edge.app import Gateway
from pulse.edge.auth import DeviceRegistry
from pulse.edge.config import BrokerSettings, BufferSettings, GatewaySettings, Settings, StatusSettings, SyncSettings
from pulse.edge.enroll import enroll


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        gateway=GatewaySettings(id="test-gw", data_dir=tmp_path),
        # connectivity events (EVENTS records per connect/disconnect) would change the counts these
        # tests check; test_connectivity_events.py turns them on
        broker=BrokerSettings(host="127.0.0.1", port=free_port(), connectivity_events=False),
        buffer=BufferSettings(flush_interval_ms=1),
        status=StatusSettings(host="127.0.0.1", port=free_port()),
    )


@pytest.fixture
def devices(settings: Settings) -> Iterator[DeviceRegistry]:
    registry = DeviceRegistry(settings.database)
    yield registry
    registry.close()


@pytest.fixture
async def gateway(settings: Settings, devices: DeviceRegistry) -> AsyncIterator[Gateway]:
    gw = Gateway(settings)
    await gw.start()
    yield gw
    await gw.stop()


@pytest.fixture
async def start_gateway(settings: Settings, devices: DeviceRegistry) -> AsyncIterator[Callable[..., Any]]:
    """Start a gateway with changed broker settings: ``await start_gateway(allow_anonymous=True)``."""
    started: list[Gateway] = []

    async def start(**broker_changes: Any) -> Gateway:
        gw = Gateway(dataclasses.replace(settings, broker=dataclasses.replace(settings.broker, **broker_changes)))
        await gw.start()
        started.append(gw)
        return gw

    yield start
    async with contextlib.AsyncExitStack() as stack:  # every one is stopped, even after another failed to
        for gw in started:
            stack.push_async_callback(gw.stop)


class Client:
    """A paho-mqtt client driven synchronously (call it from a thread: the broker needs the loop)."""

    def __init__(self, port: int, device_id: str | None, secret: str | None, *, client_id: str | None = None,
                 transport: str = "tcp", tls_ca: Path | None = None, clean_session: bool = True) -> None:
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or device_id or "", transport=transport,
                             clean_session=clean_session)
        if device_id is not None:
            self.c.username_pw_set(device_id, secret)
        if tls_ca is not None:
            self.c.tls_set(ca_certs=str(tls_ca))
        self.c.reconnect_delay_set(0.05, 0.1)  # a refused client's loop thread then stops quickly
        self.port = port
        self.connected = threading.Event()
        self.reason: Any = None
        self.messages: list[mqtt.MQTTMessage] = []
        self.subacks: list[Any] = []
        self._subscribed = threading.Event()
        self.c.on_connect = self._on_connect
        self.c.on_message = lambda c, u, m: self.messages.append(m)
        self.c.on_subscribe = self._on_subscribe

    def _on_connect(self, c: Any, u: Any, flags: Any, reason: Any, props: Any) -> None:
        self.reason = reason
        self.connected.set()

    def _on_subscribe(self, c: Any, u: Any, mid: Any, reasons: Any, props: Any) -> None:
        self.subacks = list(reasons)
        self._subscribed.set()

    def connect(self) -> bool:
        """True when the broker accepted the connection."""
        self.c.connect("127.0.0.1", self.port, keepalive=30)
        self.c.loop_start()
        assert self.connected.wait(10), "no CONNACK"
        return not self.reason.is_failure

    def publish(self, topic: str, payload: bytes | str, qos: int = 1) -> None:
        info = self.c.publish(topic, payload, qos=qos)
        info.wait_for_publish(10)
        assert info.is_published()

    def subscribe(self, topic_filter: str) -> list[Any]:
        self._subscribed.clear()
        self.c.subscribe(topic_filter, qos=1)
        assert self._subscribed.wait(10), "no SUBACK"
        return self.subacks

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()
        # paho closes its socket and wake-up socket pair from its loop; a client whose loop a test
        # stopped early (a device that lost power) would leave them open
        self.c._reset_sockets()


@pytest.fixture
def client_factory() -> Iterator[Callable[..., Client]]:
    made: list[Client] = []

    def make(*args: Any, **kwargs: Any) -> Client:
        client = Client(*args, **kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        try:
            client.close()
        except Exception:  # noqa: BLE001 - a client the test already closed or that never connected
            pass


# --- a gateway enrolled with a real mTLS receiver (edge_sync_receiver.Receiver) ------------------

ENROLLED_SYNC = SyncSettings(
    idle_poll_s=0.05, report_interval_s=60, request_timeout_s=5, downlink_wait_s=1, backoff_base_s=0.05, backoff_cap_s=0.4
)


@pytest.fixture
async def receiver(tmp_path: Path) -> AsyncIterator[Receiver]:
    r = Receiver(tmp_path / "cloud")
    await r.start()
    yield r
    await r.close()


@pytest.fixture
async def enrolled_settings(settings: Settings, receiver: Receiver) -> Settings:
    s = dataclasses.replace(settings, sync=ENROLLED_SYNC)
    await asyncio.to_thread(enroll, s, receiver.public_url, "good-token", ca_file=receiver.ca_file)
    return s


@pytest.fixture
async def run_gateway(enrolled_settings: Settings) -> AsyncIterator[Callable[[], Any]]:
    """Start the enrolled gateway (again, after a stop); every one started is stopped at the end."""
    running: list[Gateway] = []

    async def start() -> Gateway:
        gw = Gateway(enrolled_settings)
        await gw.start()
        running.append(gw)
        return gw

    yield start
    async with contextlib.AsyncExitStack() as stack:  # every one is stopped, even after another failed to
        for gw in running:
            stack.push_async_callback(gw.stop)
