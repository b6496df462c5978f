"""Connector sets pushed from the cloud: the payload's validation and how it combines with the
gateway's own gateway.toml devices."""

from __future__ import annotations

from typing import Any

import pytest

from pulse.protocol import connectors as c
from pulse.protocol.errors import Code, ConnectorError

pytestmark = pytest.mark.unit


def meter(device_id: str, **extra: Any) -> dict[str, Any]:
    return {"id": device_id, "kind": "modbus", "host": "10.0.0.9", "points": [{"metric": "v", "address": 0}], **extra}


def rtu(device_id: str, baudrate: int) -> dict[str, Any]:
    return {"id": device_id, "kind": "modbus", "transport": "rtu", "serial_port": "/dev/ttyUSB0", "baudrate": baudrate,
            "points": [{"metric": "v", "address": 0}]}


def test_a_set_round_trips_through_its_payload_as_written() -> None:
    docs = [meter("m-1"), {"id": "ups-1", "kind": "snmp", "host": "ups", "profile": "ups-mib"}]
    s = c.parse_set({"version": 3, "devices": docs})
    assert (s.version, [d.id for d in s.devices]) == (3, ["m-1", "ups-1"])
    assert c.parse_set(s.to_payload()) == s
    assert s.to_payload() == {"version": 3, "devices": docs}


def test_an_empty_set_is_a_set_it_removes_every_pushed_device() -> None:
    assert c.parse_set({"version": 1, "devices": []}).devices == ()


@pytest.mark.parametrize(
    ("payload", "code", "field"),
    [
        ([], Code.CONNECTOR_BAD_DEVICE, None),
        ({"devices": []}, Code.CONNECTOR_BAD_DEVICE, "version"),
        ({"version": 0, "devices": []}, Code.CONNECTOR_BAD_DEVICE, "version"),
        ({"version": True, "devices": []}, Code.CONNECTOR_BAD_DEVICE, "version"),
        ({"version": 1, "devices": {}}, Code.CONNECTOR_BAD_DEVICE, None),
        ({"version": 1, "devices": [meter("m-1"), meter("m-1")]}, Code.CONNECTOR_DUPLICATE, None),
        ({"version": 1, "devices": [meter("m-1", colour="red")]}, Code.CONNECTOR_UNKNOWN_FIELD, None),
        ({"version": 1, "devices": [meter(f"m-{i}") for i in range(c.MAX_PUSHED_DEVICES + 1)]}, Code.CONNECTOR_BAD_DEVICE, "devices"),
    ],
)
def test_a_bad_set_is_refused_with_a_code(payload: object, code: Code, field: str | None) -> None:
    with pytest.raises(ConnectorError) as info:
        c.parse_set(payload)
    assert info.value.code is code
    if field is not None:
        assert info.value.context.get("field") == field


def test_the_gateways_own_file_wins_over_a_pushed_device_of_the_same_id() -> None:
    local = c.parse_devices([meter("m-1", host="10.0.0.1")])
    pushed = c.parse_set({"version": 2, "devices": [meter("m-1", host="10.0.0.2"), meter("m-2")]}).devices
    devices, conflicts = c.combine(local, pushed)
    assert [(d.id, getattr(d, "host", "")) for d in devices] == [("m-1", "10.0.0.1"), ("m-2", "10.0.0.9")]
    assert conflicts == ("m-1",)


def test_nothing_pushed_leaves_the_local_devices() -> None:
    local = c.parse_devices([meter("m-1")])
    assert c.combine(local, ()) == (local, ())


def test_a_serial_line_with_two_settings_across_file_and_cloud_is_refused() -> None:
    local = c.parse_devices([rtu("plc-1", 9600)])
    pushed = c.parse_set({"version": 1, "devices": [rtu("plc-2", 19200)]}).devices
    with pytest.raises(ConnectorError) as info:
        c.combine(local, pushed)
    assert info.value.code is Code.CONNECTOR_BAD_DEVICE
