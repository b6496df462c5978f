"""A gateway configured with polled devices (gateway.toml): readings land in the buffer like MQTT
messages, the status page shows each device, and a command becomes a confirmed register write."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from pulse.cli.main import main
from pulse.common.ports import free_port
from pulse.edge import config
from pulse.edge.app import Gateway
from pulse.edge.auth import DeviceRegistry
from pulse.edge.config import Settings
from pulse.edge.errors import ConfigError
from pulse.firmware_sim.equipment import MeterSim, UpsSim
from pulse.protocol import commands, twin
from pulse.protocol.batch import Stream
from pulse.protocol.sync import TwinDesired
from pulse.protocol.twin import TwinDocument, TwinUpdate

pytestmark = pytest.mark.integration


@pytest.fixture
async def equipment() -> AsyncIterator[tuple[MeterSim, UpsSim]]:
    meter, ups = MeterSim(), UpsSim()
    await meter.start_tcp(free_port())
    ups.start(free_port())
    yield meter, ups
    await meter.stop()
    await ups.stop()


def toml(settings: Settings, meter: MeterSim, ups: UpsSim) -> str:
    return f"""
[broker]
host = "127.0.0.1"
port = {settings.broker.port}
[status]
port = {settings.status.port}
[[connectors.devices]]
id = "meter-1"
kind = "modbus"
host = "127.0.0.1"
port = {meter.port}
profile = "power-meter"
interval_s = 0.2
points = [{{ metric = "setpoint_w", address = 100, scale = 10, writable = true }}]
[[connectors.devices]]
id = "ups-1"
kind = "snmp"
host = "127.0.0.1"
port = {ups.port}
profile = "ups-mib"
interval_s = 0.2
"""


async def wait_for(check: Callable[[], Any], what: str) -> Any:
    for _ in range(400):
        if got := await check():
            return got
        await asyncio.sleep(0.025)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
async def polling_gateway(settings: Settings, devices: DeviceRegistry, equipment: tuple[MeterSim, UpsSim], tmp_path: Path) -> AsyncIterator[Gateway]:
    path = tmp_path / "gateway.toml"
    path.write_text(toml(settings, *equipment))
    loaded = config.load(path, {})
    gw = Gateway(dataclasses.replace(loaded, buffer=settings.buffer))
    await gw.start()
    yield gw
    await gw.stop()


async def test_polled_readings_enter_the_buffer_as_telemetry_of_their_device(polling_gateway: Gateway, equipment: tuple[MeterSim, UpsSim]) -> None:
    meter, ups = equipment
    meter.set("frequency_hz", 49.5)

    async def both() -> dict[str, Any]:
        # the first poll may come before the set value: wait for a reading that carries it
        by_device = {r.device_id: r for r in await polling_gateway.buffer.read(Stream.TELEMETRY, 0, 1000)}
        meter_set = "meter-1" in by_device and by_device["meter-1"].metrics["frequency_hz"] == pytest.approx(49.5)
        return by_device if meter_set and "ups-1" in by_device else {}

    records = await wait_for(both, "a reading of each device in the buffer")
    assert records["meter-1"].type == "telemetry" and records["meter-1"].metrics["frequency_hz"] == pytest.approx(49.5)
    assert records["ups-1"].metrics["on_battery"] is False and records["ups-1"].metrics["battery_charge_pct"] == 100


async def test_the_status_page_shows_each_polled_device_and_its_errors(
    polling_gateway: Gateway, equipment: tuple[MeterSim, UpsSim], capsys: pytest.CaptureFixture[str]
) -> None:
    meter, _ = equipment
    meter.inject("exception")
    board = polling_gateway.board
    assert board is not None

    async def failed() -> dict[str, Any] | None:
        doc = await board.sample()
        meter_row = next(r for r in doc["connectors"] if r["id"] == "meter-1")
        return doc if meter_row["failed_polls"] and any(r["id"] == "ups-1" and r["state"] == "ok" for r in doc["connectors"]) else None

    await wait_for(failed, "a failed poll of the meter and a good one of the UPS")
    async with httpx.AsyncClient(base_url=polling_gateway.settings.status_url) as http:
        doc = (await http.get("/status")).raise_for_status().json()
        page = (await http.get("/")).raise_for_status().text
        metrics = (await http.get("/metrics")).raise_for_status().text
    rows = {r["id"]: r for r in doc["connectors"]}
    assert rows["meter-1"]["state"] in ("failing", "down")
    assert rows["meter-1"]["last_error"]["code"] == "connector.device_exception"
    assert rows["ups-1"]["interval_s"] == 0.2 and rows["ups-1"]["duration_ms"] is not None
    assert "Polled devices" in page and "connector.device_exception" in page
    assert 'pulse_gateway_connector_up{device="ups-1"} 1.0' in metrics
    path = polling_gateway.settings.gateway.data_dir / "status.toml"
    path.write_text(f'[status]\nport = {polling_gateway.settings.status.port}\n')
    assert await asyncio.to_thread(main, ["gateway", "status", "--config", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "polled       meter-1" in printed and "connector.device_exception" in printed


async def test_a_write_command_to_a_polled_device_is_written_read_back_and_answered(polling_gateway: Gateway, equipment: tuple[MeterSim, UpsSim]) -> None:
    meter, _ = equipment
    now = int(time.time() * 1000)  # the gateway's twin checks deadlines on its clock
    cmd = commands.new_command(id="c-1", device_id="meter-1", name="write", params={"setpoint_w": 6500}, now_ms=now, expires_at_ms=now + 60_000)
    await polling_gateway.twins.apply_command(cmd)

    async def answered() -> Any:
        [stored] = await polling_gateway.twins.commands("meter-1")
        return stored if stored.state.value in ("succeeded", "failed") else None

    stored = await wait_for(answered, "the command's answer")
    assert stored.state.value == "succeeded", stored.error
    assert stored.result == {"setpoint_w": 6500.0}
    assert meter.get("setpoint_w") == pytest.approx(6500)


def test_a_bad_connector_definition_in_gateway_toml_is_refused_with_its_code(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text('[[connectors.devices]]\nid = "m"\nkind = "modbus"\nhost = "h"\npoints = [{ metric = "v", adress = 1 }]\n')
    with pytest.raises(ConfigError) as info:
        config.load(path, {})
    assert info.value.context["connector_code"] == "connector.unknown_field"


async def test_a_desired_key_of_a_polled_device_is_written_and_reported_so_the_delta_clears(
    polling_gateway: Gateway, equipment: tuple[MeterSim, UpsSim]
) -> None:
    meter, _ = equipment
    cloud, _ = twin.apply_update(TwinDocument(), TwinUpdate(desired={"setpoint_w": 4200, "label": "north"}), now_ms=int(time.time() * 1000))
    assert await polling_gateway.twins.apply_desired(TwinDesired("meter-1", cloud))

    async def confirmed() -> TwinDocument | None:
        doc = await polling_gateway.twins.document("meter-1")
        return doc if doc.reported.get("setpoint_w") == 4200 else None

    doc = await wait_for(confirmed, "the write reported back into the twin")
    assert meter.get("setpoint_w") == pytest.approx(4200)
    assert doc.delta == {"label": "north"}  # not a point of the device: nothing to write, it stays in the delta


async def test_a_command_stored_while_the_gateway_was_down_is_written_when_it_starts(
    settings: Settings, devices: DeviceRegistry, equipment: tuple[MeterSim, UpsSim], tmp_path: Path
) -> None:
    meter, ups = equipment
    path = tmp_path / "gateway.toml"
    path.write_text(toml(settings, meter, ups))
    loaded = dataclasses.replace(config.load(path, {}), buffer=settings.buffer)
    plain = Gateway(dataclasses.replace(loaded, connectors=()))  # the same gateway, before the devices were configured
    await plain.start()
    try:
        now = int(time.time() * 1000)
        cmd = commands.new_command(id="c-2", device_id="meter-1", name="write", params={"setpoint_w": 3300}, now_ms=now, expires_at_ms=now + 60_000)
        await plain.twins.apply_command(cmd)
        [held] = await plain.twins.commands("meter-1")
        assert held.state.value == "delivered"  # nobody to send it to
    finally:
        await plain.stop()
    gw = Gateway(loaded)
    await gw.start()
    try:
        async def answered() -> Any:
            [stored] = await gw.twins.commands("meter-1")
            return stored if stored.state.value in ("succeeded", "failed") else None

        stored = await wait_for(answered, "the held command's answer")
        assert stored.state.value == "succeeded" and meter.get("setpoint_w") == pytest.approx(3300)
    finally:
        await gw.stop()
