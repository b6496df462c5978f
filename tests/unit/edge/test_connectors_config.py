"""`[[connectors.devices]]` in gateway.toml: parsed by the protocol's definitions, refused with codes."""

from __future__ import annotations

from pathlib import Path

import pytest

from pulse.edge import config
from pulse.edge.errors import ConfigError
from pulse.protocol.connectors import ModbusDevice, SnmpDevice, Transport

pytestmark = pytest.mark.unit

GOOD = """
[status]
port = 0
[[connectors.devices]]
id = "ups-1"
kind = "snmp"
host = "10.0.0.5"
profile = "ups-mib"
[[connectors.devices]]
id = "plc-7"
kind = "modbus"
transport = "rtu"
serial_port = "/dev/ttyUSB0"
unit = 7
points = [{ metric = "flow", table = "input", address = 0, type = "float32", word_order = "little" }]
"""


def test_connector_devices_are_read_from_gateway_toml(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(GOOD)
    ups, plc = config.load(path, {}).connectors
    assert isinstance(ups, SnmpDevice) and ups.host == "10.0.0.5" and len(ups.points) == 10
    assert isinstance(plc, ModbusDevice) and plc.transport is Transport.RTU and plc.unit == 7 and plc.line == "serial:/dev/ttyUSB0"


def test_a_gateway_without_connectors_has_none(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text("[status]\nport = 0\n")
    assert config.load(path, {}).connectors == ()


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ('[connectors]\ndevice = []\n', None),
        ('[[connectors.devices]]\nid = "a"\nkind = "modbus"\nhost = "h"\nprofile = "nope"\n', "connector.unknown_profile"),
        ('[[connectors.devices]]\nid = "a"\nkind = "snmp"\nhost = "h"\nprofile = "ups-mib"\n'
         '[[connectors.devices]]\nid = "a"\nkind = "snmp"\nhost = "h"\nprofile = "ups-mib"\n', "connector.duplicate"),
    ],
)
def test_bad_connector_configuration_stops_the_gateway_with_a_code(tmp_path: Path, text: str, code: str | None) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        config.load(path, {})
    assert info.value.code == "gateway.config_invalid"
    assert info.value.context.get("connector_code") == code
