"""Polled devices pushed from the cloud: a ``connectors`` item over the real mTLS downlink puts a
device in use beside gateway.toml's, survives a restart, never replaces a device of the file, and
a refused or older set changes nothing. The gateway says what it did in its report."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sqlite3
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from edge_sync_receiver import Receiver, wait_for

from pulse.common.ports import free_port
from pulse.edge.app import Gateway
from pulse.edge.config import Settings
from pulse.firmware_sim.equipment import MeterSim, UpsSim
from pulse.protocol.batch import Stream
from pulse.protocol.connectors import parse_devices

pytestmark = pytest.mark.integration


@pytest.fixture
async def equipment() -> AsyncIterator[tuple[MeterSim, UpsSim]]:
    meter, ups = MeterSim(), UpsSim()
    await meter.start_tcp(free_port())
    ups.start(free_port())
    yield meter, ups
    await meter.stop()
    await ups.stop()


def meter_doc(meter: MeterSim, **extra: Any) -> dict[str, Any]:
    return {"id": "meter-1", "kind": "modbus", "host": "127.0.0.1", "port": meter.port, "profile": "power-meter", "interval_s": 0.2, **extra}


def ups_doc(ups: UpsSim) -> dict[str, Any]:
    return {"id": "ups-1", "kind": "snmp", "host": "127.0.0.1", "port": ups.port, "profile": "ups-mib", "interval_s": 0.2}


@pytest.fixture
async def start(enrolled_settings: Settings, equipment: tuple[MeterSim, UpsSim]) -> AsyncIterator[Callable[[], Any]]:
    """The enrolled gateway with meter-1 in its gateway.toml (reports every 0.2 s)."""
    meter, _ = equipment
    settings = dataclasses.replace(enrolled_settings, connectors=parse_devices([meter_doc(meter)]),
                                   sync=dataclasses.replace(enrolled_settings.sync, report_interval_s=0.2))
    running: list[Gateway] = []

    async def run() -> Gateway:
        gw = Gateway(settings)
        await gw.start()
        running.append(gw)
        return gw

    yield run
    async with contextlib.AsyncExitStack() as stack:
        for gw in running:
            stack.push_async_callback(gw.stop)


def status_of(settings: Settings, seq: int) -> str:
    conn = sqlite3.connect(settings.database)
    try:
        return str(conn.execute("SELECT status FROM downlink WHERE seq = ?", (seq,)).fetchone()[0])
    finally:
        conn.close()


def polled(gw: Gateway) -> dict[str, dict[str, Any]]:
    assert gw.connectors is not None
    return {row["id"]: row for row in gw.connectors.snapshot()}


async def readings_of(gw: Gateway, device_id: str) -> int:
    return sum(1 for r in await gw.buffer.read(Stream.TELEMETRY, 0, 10_000) if r.device_id == device_id)


async def test_a_pushed_set_adds_a_polled_device_keeps_the_files_own_and_survives_a_restart(
    start: Callable[[], Any], receiver: Receiver, enrolled_settings: Settings, equipment: tuple[MeterSim, UpsSim]
) -> None:
    meter, ups = equipment
    gw = await start()
    await wait_for(lambda: polled(gw).get("meter-1", {}).get("polls", 0) >= 2, "meter-1 polled from gateway.toml")
    polls_before = polled(gw)["meter-1"]["polls"]

    # the cloud's set names ups-1, and meter-1 again with another unit: the file's meter-1 stays
    seq = receiver.add_downlink("connectors", {"version": 1, "devices": [ups_doc(ups), meter_doc(meter, unit=7)]})
    await wait_for(lambda: seq in receiver.downlink_acks, "the connector set acked")
    await wait_for(lambda: "ups-1" in polled(gw), "ups-1 polled")
    assert status_of(enrolled_settings, seq) == "applied; connector.defined_locally: meter-1"
    rows = polled(gw)
    assert rows["ups-1"]["source"] == "cloud v1" and rows["meter-1"]["source"] == "gateway.toml"
    assert rows["meter-1"]["polls"] >= polls_before  # an unchanged device keeps its figures across the change
    assert gw.connectors is not None and gw.connectors.poller.devices["meter-1"].unit == 1  # type: ignore[union-attr]

    for _ in range(500):
        if await readings_of(gw, "ups-1"):
            break
        await asyncio.sleep(0.02)
    assert await readings_of(gw, "ups-1") > 0, "a reading of ups-1 in the buffer"
    await wait_for(lambda: any((r.get("connectors") or {}).get("version") == 1 for r in receiver.reports), "the report naming version 1")
    report = next(r["connectors"] for r in reversed(receiver.reports) if (r.get("connectors") or {}).get("version") == 1)
    assert report == {"version": 1, "status": "applied", "polled": ["meter-1", "ups-1"], "defined_locally": ["meter-1"]}

    # restarted with the link down: the stored set is polled again at once
    await gw.stop()
    await receiver.close()
    gw = await start()
    assert set(polled(gw)) == {"meter-1", "ups-1"}
    assert polled(gw)["ups-1"]["source"] == "cloud v1"


async def test_a_refused_or_older_set_changes_nothing_and_an_empty_one_removes_the_pushed_devices(
    start: Callable[[], Any], receiver: Receiver, enrolled_settings: Settings, equipment: tuple[MeterSim, UpsSim]
) -> None:
    meter, ups = equipment
    gw = await start()
    first = receiver.add_downlink("connectors", {"version": 5, "devices": [ups_doc(ups)]})
    await wait_for(lambda: first in receiver.downlink_acks, "version 5 acked")
    await wait_for(lambda: "ups-1" in polled(gw), "ups-1 polled")

    bad = receiver.add_downlink("connectors", {"version": 6, "devices": [{**ups_doc(ups), "colour": "red"}]})
    older = receiver.add_downlink("connectors", {"version": 4, "devices": []})
    await wait_for(lambda: older in receiver.downlink_acks, "the later items acked")
    # one poll may carry both: then only the newest (by seq) is taken and the other is superseded
    assert status_of(enrolled_settings, older) == "superseded: version 5 is in use"
    assert status_of(enrolled_settings, bad) == "superseded" or status_of(enrolled_settings, bad).startswith("refused: connector.unknown_field")
    assert set(polled(gw)) == {"meter-1", "ups-1"}

    bad = receiver.add_downlink("connectors", {"version": 7, "devices": [{**ups_doc(ups), "colour": "red"}]})
    await wait_for(lambda: bad in receiver.downlink_acks, "the bad set acked")
    assert status_of(enrolled_settings, bad).startswith("refused: connector.unknown_field")
    assert set(polled(gw)) == {"meter-1", "ups-1"}

    empty = receiver.add_downlink("connectors", {"version": 8, "devices": []})
    await wait_for(lambda: empty in receiver.downlink_acks, "the empty set acked")
    await wait_for(lambda: set(polled(gw)) == {"meter-1"}, "ups-1 no longer polled")
    assert status_of(enrolled_settings, empty) == "applied"
