"""Connectors against real equipment simulators on loopback: pymodbus servers (TCP, and RTU through a
socat pty pair) and pysnmp agents (v2c, v3). Nothing here asserts a timing: polls are driven by
``Poller.poll`` or awaited by their outcome."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from pulse.common.ports import free_port
from pulse.edge.connectors.poller import Poller
from pulse.firmware_sim.equipment import MeterSim, ModbusSim, UpsSim
from pulse.protocol.connectors import DataType, Device, MetricValue, RegisterPoint, parse_device
from pulse.protocol.errors import Code, ConnectorError

pytestmark = pytest.mark.integration


class Readings:
    """A sink that keeps what the poller hands over."""

    def __init__(self) -> None:
        self.got: list[tuple[str, int, dict[str, MetricValue]]] = []
        self.arrived = asyncio.Event()

    async def __call__(self, device_id: str, ts_ms: int, metrics: Mapping[str, MetricValue]) -> None:
        self.got.append((device_id, ts_ms, dict(metrics)))
        self.arrived.set()

    def last(self, device_id: str) -> dict[str, MetricValue]:
        return next(m for d, _, m in reversed(self.got) if d == device_id)


@pytest.fixture
async def meter() -> AsyncIterator[MeterSim]:
    sim = MeterSim()
    await sim.start_tcp(free_port())
    yield sim
    await sim.stop()


@pytest.fixture
async def ups() -> AsyncIterator[UpsSim]:
    sim = UpsSim()
    sim.start(free_port())
    yield sim
    await sim.stop()


@contextlib.asynccontextmanager
async def polling(devices: list[Device], sink: Readings | None = None, **kw: Any) -> AsyncIterator[Poller]:
    poller = Poller(devices, sink or Readings(), wall_ms=lambda: 1_764_000_000_000, **kw)
    try:
        yield poller
    finally:
        await poller.stop()


def meter_device(sim: ModbusSim, **extra: Any) -> Device:
    return parse_device({"id": "meter-1", "kind": "modbus", "host": "127.0.0.1", "port": sim.port, "profile": "power-meter",
                         "points": [{"metric": "setpoint_w", "address": 100, "scale": 10, "writable": True}], "timeout_s": 0.5, **extra})


def ups_device(sim: UpsSim, **extra: Any) -> Device:
    return parse_device({"id": "ups-1", "kind": "snmp", "host": "127.0.0.1", "port": sim.port, "profile": "ups-mib", "timeout_s": 0.5, **extra})


async def test_a_power_meter_is_read_over_modbus_tcp_in_merged_requests(meter: MeterSim) -> None:
    meter.set("voltage_l1_v", 231.5)
    meter.set("energy_import_kwh", 42.25)
    sink = Readings()
    async with polling([meter_device(meter)], sink) as poller:
        assert await poller.poll("meter-1")
    values = sink.last("meter-1")
    assert values["voltage_l1_v"] == pytest.approx(231.5)
    assert values["energy_import_kwh"] == pytest.approx(42.25)
    assert values["setpoint_w"] == pytest.approx(5000)
    assert len(values) == 17
    # 17 points, 5 requests: input registers 0-17, 30-35, 52-53, 70-75 (gaps of 12, 16, 16 are over
    # max_gap 8) and holding register 100
    assert meter.requests == 5
    assert poller.states["meter-1"].points == 17


async def test_a_ups_is_read_over_snmp_v2c_and_on_battery_is_a_boolean(ups: UpsSim) -> None:
    ups.on_battery = True
    ups.tick(0)
    sink = Readings()
    async with polling([ups_device(ups)], sink) as poller:
        assert await poller.poll("ups-1")
    values = sink.last("ups-1")
    assert values["on_battery"] is True
    assert values["battery_charge_pct"] == 99
    assert values["battery_v"] == pytest.approx(24.8)
    assert values["input_v"] == 0


async def test_snmp_v3_with_authentication_and_privacy_reads_the_ups(ups: UpsSim) -> None:
    sink = Readings()
    device = ups_device(ups, version="3", user="pulse", auth_key="auth-key-1234", priv_key="priv-key-5678")
    async with polling([device], sink) as poller:
        assert await poller.poll("ups-1")
    assert sink.last("ups-1")["load_pct"] == ups.get("load_pct")


async def test_snmp_v3_with_the_wrong_key_gets_no_answer_and_the_poll_fails(ups: UpsSim) -> None:
    device = ups_device(ups, version="3", user="pulse", auth_key="not-the-key-1", priv_key="priv-key-5678", retries=0)
    async with polling([device]) as poller:
        assert not await poller.poll("ups-1")
        assert poller.snapshot()[0]["state"] == "failing"


async def test_a_walk_reads_every_oid_under_a_subtree(ups: UpsSim) -> None:
    sink = Readings()
    device = parse_device({"id": "ups-1", "kind": "snmp", "host": "127.0.0.1", "port": ups.port,
                           "points": [{"metric": "battery", "oid": "1.3.6.1.2.1.33.1.2", "walk": True}]})
    async with polling([device], sink) as poller:
        assert await poller.poll("ups-1")
    values = sink.last("ups-1")
    assert values["battery.4.0"] == ups.get("battery_charge_pct")
    assert {"battery.1.0", "battery.2.0", "battery.3.0", "battery.5.0", "battery.7.0"} <= set(values)
    assert not any(name.startswith("battery.3.3") for name in values) and len(values) == 6


async def test_a_modbus_device_that_stops_answering_times_out_then_goes_down_and_recovers(meter: MeterSim) -> None:
    async with polling([meter_device(meter, retries=1)]) as poller:
        meter.inject("timeout")
        for _ in range(3):
            assert not await poller.poll("meter-1")
        snap = poller.snapshot()[0]
        assert snap["state"] == "down" and snap["consecutive_failures"] == 3
        assert snap["last_error"]["code"] == Code.CONNECTOR_TIMEOUT
        meter.inject(None)
        assert await poller.poll("meter-1")
        assert poller.snapshot()[0]["state"] == "ok"


async def test_a_modbus_exception_is_a_device_exception_and_wrong_types_keep_the_good_points(meter: MeterSim) -> None:
    sink = Readings()
    async with polling([meter_device(meter)], sink) as poller:
        meter.inject("exception")
        assert not await poller.poll("meter-1")
        assert poller.snapshot()[0]["last_error"]["code"] == Code.CONNECTOR_DEVICE_EXCEPTION
        meter.inject("wrong_type")
        assert await poller.poll("meter-1")  # every float32 reads NaN; the uint16 setpoint still reads
        assert sink.last("meter-1") == {"setpoint_w": 655350.0}
        snap = poller.snapshot()[0]
        assert snap["point_errors"] >= 16 and snap["last_error"]["code"] == Code.CONNECTOR_WRONG_TYPE


async def test_an_snmp_agent_that_answers_strings_or_errors_is_reported(ups: UpsSim) -> None:
    async with polling([ups_device(ups)]) as poller:
        ups.inject("wrong_type")
        assert not await poller.poll("ups-1")
        assert poller.snapshot()[0]["last_error"]["code"] == Code.CONNECTOR_WRONG_TYPE
        ups.inject("exception")
        assert not await poller.poll("ups-1")
        assert poller.snapshot()[0]["last_error"]["code"] == Code.CONNECTOR_DEVICE_EXCEPTION
        ups.inject("timeout")
        assert not await poller.poll("ups-1")
        assert poller.snapshot()[0]["last_error"]["code"] == Code.CONNECTOR_TIMEOUT


async def test_a_device_nobody_listens_for_is_unreachable() -> None:
    device = parse_device({"id": "gone", "kind": "modbus", "host": "127.0.0.1", "port": free_port(), "points": [{"metric": "v", "address": 0}]})
    async with polling([device]) as poller:
        assert not await poller.poll("gone")
        assert poller.snapshot()[0]["last_error"]["code"] == Code.CONNECTOR_UNREACHABLE


async def wait_for(check: Callable[[], bool], what: str) -> None:
    for _ in range(400):
        if check():
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"timed out waiting for {what}")


async def test_a_silent_device_does_not_delay_the_polls_of_another(meter: MeterSim, ups: UpsSim) -> None:
    """The meter stops answering for good; the UPS, on its own line, keeps being polled."""
    meter.inject("timeout")
    sink = Readings()
    devices = [meter_device(meter, interval_s=0.05, timeout_s=5.0, retries=3), ups_device(ups, interval_s=0.05)]
    async with polling(devices, sink) as poller:
        poller.start()
        await wait_for(lambda: sum(1 for d, _, _ in sink.got if d == "ups-1") >= 5, "five polls of the UPS")
        assert poller.states["meter-1"].polls == 0  # its first poll is still waiting for its first answer
        assert poller.snapshot()[1]["state"] == "ok"


async def test_a_write_is_confirmed_by_reading_it_back(meter: MeterSim) -> None:
    async with polling([meter_device(meter)]) as poller:
        assert await poller.write("meter-1", "setpoint_w", 7500) == pytest.approx(7500)
        assert meter.get("setpoint_w") == pytest.approx(7500)
        meter.inject("ignore_writes")
        with pytest.raises(ConnectorError) as info:
            await poller.write("meter-1", "setpoint_w", 6000)
        assert info.value.code is Code.CONNECTOR_WRITE_NOT_CONFIRMED
        with pytest.raises(ConnectorError) as info:
            await poller.write("meter-1", "voltage_l1_v", 1)
        assert info.value.code is Code.CONNECTOR_NOT_WRITABLE


async def test_an_snmp_set_is_confirmed_by_reading_it_back(ups: UpsSim) -> None:
    device = parse_device({"id": "ups-1", "kind": "snmp", "host": "127.0.0.1", "port": ups.port, "community": "public",
                           "profile": "ups-mib", "points": [{"metric": "battery_temp_c", "oid": "1.3.6.1.2.1.33.1.2.7.0", "writable": True}]})
    async with polling([device]) as poller:
        assert await poller.write("ups-1", "battery_temp_c", 31) == 31
        assert ups.get("battery_temp_c") == 31


# -- Modbus RTU over a pseudo-terminal pair -------------------------------------------------------


@pytest.fixture
def pty_pair(tmp_path: Path) -> Iterator[tuple[str, str]]:
    if shutil.which("socat") is None:
        pytest.fail("socat is needed for the RTU test (apt-get install socat)")
    a, b = tmp_path / "ttyA", tmp_path / "ttyB"
    proc = subprocess.Popen(["socat", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"], stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            if a.exists() and b.exists():
                break
            if proc.poll() is not None:
                pytest.fail("socat ended before making the pty pair")
            subprocess.run(["sleep", "0.02"], check=True)
        yield str(a), str(b)
    finally:
        proc.terminate()
        proc.wait(10)


async def _rtu_meter(serial_port: str, unit: int) -> ModbusSim:
    sim = ModbusSim([RegisterPoint("temp_c", 0, scale=0.1), RegisterPoint("count", 1, type=DataType.UINT32)], unit=unit)
    sim.set("temp_c", 21.5)
    sim.set("count", 70_000)
    await sim.start_rtu(serial_port)
    return sim


async def test_modbus_rtu_over_a_serial_line_reads_the_device(pty_pair: tuple[str, str]) -> None:
    server_end, client_end = pty_pair
    sim = await _rtu_meter(server_end, unit=7)
    try:
        device = parse_device({"id": "plc-7", "kind": "modbus", "transport": "rtu", "serial_port": client_end, "unit": 7, "timeout_s": 1.0,
                               "points": [{"metric": "temp_c", "address": 0, "scale": 0.1}, {"metric": "count", "address": 1, "type": "uint32"}]})
        sink = Readings()
        async with polling([device], sink) as poller:
            assert await poller.poll("plc-7")
        assert sink.last("plc-7") == {"temp_c": pytest.approx(21.5), "count": 70_000}
    finally:
        await sim.stop()



async def test_requests_in_flight_to_one_host_stay_within_its_bound(meter: MeterSim) -> None:
    """Three devices on one Modbus TCP host that allows two requests at once; the host stops
    answering, so every request it receives stays open: at most two ever are."""
    meter.inject("timeout")
    devices = [
        parse_device({"id": f"dev-{u}", "kind": "modbus", "host": "127.0.0.1", "port": meter.port, "max_in_flight": 2,
                      "timeout_s": 30.0, "points": [{"metric": "v", "address": 0}]})
        for u in (1, 2, 3)
    ]
    async with polling(devices) as poller:
        poller.start()
        await wait_for(lambda: meter.active == 2, "two requests held by the silent host")
        for _ in range(20):  # give a third request every chance to be sent
            await asyncio.sleep(0.01)
        assert meter.most_active == 2
