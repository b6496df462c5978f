"""`pulse sim equipment` as a real process: a gateway's poller reads its meter and UPS, then SIGTERM ends it."""

from __future__ import annotations

import asyncio
import json
import signal
import sys

import pytest

from pulse.common.ports import free_port
from pulse.edge.connectors.poller import Poller
from pulse.protocol.connectors import MetricValue, parse_device

pytestmark = pytest.mark.integration


async def test_the_simulated_equipment_is_polled_and_ends_on_sigterm() -> None:
    modbus_port, snmp_port = free_port(), free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pulse.cli.main", "sim", "equipment", "--modbus-port", str(modbus_port), "--snmp-port", str(snmp_port),
        "--fault", "ups:wrong_type", stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        ready = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
        assert ready["modbus_tcp"] == f"127.0.0.1:{modbus_port}"
        got: dict[str, dict[str, MetricValue]] = {}

        async def sink(device_id: str, ts_ms: int, metrics: dict[str, MetricValue]) -> None:
            got[device_id] = dict(metrics)

        devices = [
            parse_device({"id": "meter", "kind": "modbus", "host": "127.0.0.1", "port": modbus_port, "profile": "power-meter"}),
            parse_device({"id": "ups", "kind": "snmp", "host": "127.0.0.1", "port": snmp_port, "profile": "ups-mib", "retries": 0}),
        ]
        poller = Poller(devices, sink)  # type: ignore[arg-type]
        try:
            assert await poller.poll("meter")
            assert not await poller.poll("ups")  # started with the UPS answering strings
        finally:
            await poller.stop()
        assert 200 < float(got["meter"]["voltage_l1_v"]) < 260 and 49 < float(got["meter"]["frequency_hz"]) < 51
        assert poller.snapshot()[1]["last_error"]["code"] == "connector.wrong_type"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
