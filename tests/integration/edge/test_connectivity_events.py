"""Connectivity events at the gateway: a device's connect, clean disconnect and loss (its Will) become
device events on the EVENTS stream, in order; and the status page shows persistent sessions."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
from typing import Any

import httpx
import pytest

from pulse.protocol.batch import Stream
from pulse.protocol.connectivity import TAG

pytestmark = pytest.mark.integration

to_thread = asyncio.to_thread


async def events(gateway: Any) -> list[tuple[str, str, dict[str, Any] | None]]:
    records = await gateway.buffer.read(Stream.EVENTS, 0, 100)
    return [(r.device_id, (r.tags or {}).get(TAG), r.body) for r in records]


async def wait_events(gateway: Any, count: int) -> list[tuple[str, str, dict[str, Any] | None]]:
    deadline = time.monotonic() + 15
    while len(found := await events(gateway)) < count:
        assert time.monotonic() < deadline, f"{len(found)} of {count} events: {found}"
        await asyncio.sleep(0.02)
    return found


def _string(s: str) -> bytes:
    return struct.pack("!H", len(s)) + s.encode()


def silent_connect(port: int, device_id: str, secret: str) -> socket.socket:
    """CONNECT with keep-alive 1 s and a Will, then say nothing more."""
    will = json.dumps({"v": 1, "seq": 9, "metrics": {"lost": True}})
    payload = _string(device_id) + _string(f"pulse/{device_id}/event") + _string(will) + _string(device_id) + _string(secret)
    body = _string("MQTT") + bytes([4, 0x02 | 0x04 | 0x08 | 0x80 | 0x40]) + struct.pack("!H", 1) + payload
    sock = socket.create_connection(("127.0.0.1", port), timeout=15)
    assert len(body) < 16384
    length = bytes([len(body) % 128 | 0x80, len(body) // 128]) if len(body) > 127 else bytes([len(body)])
    sock.sendall(b"\x10" + length + body)
    assert sock.recv(4) == b"\x20\x02\x00\x00"
    return sock


async def test_connect_clean_disconnect_and_loss_become_device_events_in_order(start_gateway, devices, client_factory):
    gw = await start_gateway(connectivity_events=True)
    port = gw.settings.broker.port
    secret = devices.add("boiler-1")
    c = client_factory(port, "boiler-1", secret)
    assert await to_thread(c.connect)
    await to_thread(c.publish, "pulse/boiler-1/event", b'{"v":1,"seq":1,"metrics":{"door_open":true}}')
    await to_thread(c.close)  # DISCONNECT: clean
    sock = await to_thread(silent_connect, port, "boiler-1", secret)  # then silent past 1.5 x 1 s
    try:
        found = await wait_events(gw, 5)
    finally:
        sock.close()
    assert found == [
        ("boiler-1", "connected", None),
        ("boiler-1", None, None),  # the device's own event, between its connect and disconnect
        ("boiler-1", "disconnected", None),
        ("boiler-1", "connected", None),
        ("boiler-1", "lost", {"will": True}),
    ]


async def test_connectivity_events_can_be_turned_off(start_gateway, devices, client_factory):
    gw = await start_gateway(connectivity_events=False)
    secret = devices.add("boiler-1")
    c = client_factory(gw.settings.broker.port, "boiler-1", secret)
    assert await to_thread(c.connect)
    await to_thread(c.publish, "pulse/boiler-1/event", b'{"v":1,"seq":1,"metrics":{"door_open":true}}')
    await to_thread(c.close)
    assert [tag for _, tag, _ in await wait_events(gw, 1)] == [None]


async def test_status_page_and_metrics_show_persistent_sessions_and_their_queue(start_gateway, devices, client_factory):
    gw = await start_gateway(allow_anonymous=True, session_queue_max=2)
    port = gw.settings.broker.port
    secret = devices.add("boiler-1")
    away = client_factory(port, "boiler-1", secret, clean_session=False)
    assert await to_thread(away.connect)
    await to_thread(away.subscribe, "pulse/boiler-1/telemetry")
    await to_thread(away.close)
    site = client_factory(port, None, None, client_id="site-1")
    assert await to_thread(site.connect)
    for seq in range(1, 4):  # three for a queue of two: the oldest is dropped
        await to_thread(site.publish, "pulse/boiler-1/telemetry", json.dumps({"v": 1, "seq": seq, "metrics": {"t": seq}}))
    deadline = time.monotonic() + 15
    while gw.sessions.snapshot()["dropped_full"] < 1:
        assert time.monotonic() < deadline, gw.sessions.snapshot()
        await asyncio.sleep(0.02)
    await gw.board.sample()
    async with httpx.AsyncClient(base_url=gw.settings.status_url) as http:
        doc = (await http.get("/status")).raise_for_status().json()
        page = (await http.get("/")).raise_for_status().text
        metrics = (await http.get("/metrics")).raise_for_status().text
    assert {k: doc["sessions"][k] for k in ("persistent", "queued_now", "dropped_full")} == {
        "persistent": 1, "queued_now": 2, "dropped_full": 1}
    assert "1 persistent sessions" in page and "1 (queue full)" in page
    assert "pulse_gateway_sessions_persistent 1.0" in metrics
    assert 'pulse_gateway_session_dropped_total{reason="full"} 1.0' in metrics
