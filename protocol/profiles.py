"""Device profiles shipped with Pulse: the points of common equipment, named once.

A device definition says ``profile = "ups-mib"`` and gets these points (and may add or replace
points by metric). Profiles are data in the same shape as the points of a definition, validated by
the same code (``pulse.protocol.connectors.parse_device``).

- ``ups-mib``: any UPS with an SNMP card implementing the standard UPS-MIB (RFC 1628): battery
  charge, runtime, load, on-battery, battery status/voltage/temperature, input and output voltage.
- ``power-meter``: a generic three-phase power meter whose input registers hold float32 values
  (big-endian words and bytes) at the addresses the common DIN-rail meters use (Eastron SDM630
  register map): voltages, currents, powers, power factor, frequency, energy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pulse.protocol.connectors import Kind

UPS_MIB = "1.3.6.1.2.1.33.1"
UPS_OUTPUT_SOURCE_BATTERY = 5
"""upsOutputSource: other(1) none(2) normal(3) bypass(4) battery(5) booster(6) reducer(7)."""

UPS_MIB_POINTS: tuple[Mapping[str, object], ...] = (
    {"metric": "battery_status", "oid": f"{UPS_MIB}.2.1.0"},  # unknown(1) normal(2) low(3) depleted(4)
    {"metric": "battery_on_s", "oid": f"{UPS_MIB}.2.2.0"},  # upsSecondsOnBattery
    {"metric": "runtime_min", "oid": f"{UPS_MIB}.2.3.0"},  # upsEstimatedMinutesRemaining
    {"metric": "battery_charge_pct", "oid": f"{UPS_MIB}.2.4.0"},  # upsEstimatedChargeRemaining
    {"metric": "battery_v", "oid": f"{UPS_MIB}.2.5.0", "scale": 0.1},  # upsBatteryVoltage, 0.1 V DC
    {"metric": "battery_temp_c", "oid": f"{UPS_MIB}.2.7.0"},  # upsBatteryTemperature
    {"metric": "input_v", "oid": f"{UPS_MIB}.3.3.1.3.1"},  # upsInputVoltage, line 1
    {"metric": "on_battery", "oid": f"{UPS_MIB}.4.1.0", "true_if": UPS_OUTPUT_SOURCE_BATTERY},  # upsOutputSource
    {"metric": "output_v", "oid": f"{UPS_MIB}.4.4.1.2.1"},  # upsOutputVoltage, line 1
    {"metric": "load_pct", "oid": f"{UPS_MIB}.4.4.1.5.1"},  # upsOutputPercentLoad, line 1
)


def _f32(metric: str, address: int) -> Mapping[str, object]:
    return {"metric": metric, "table": "input", "address": address, "type": "float32"}


POWER_METER_POINTS: tuple[Mapping[str, object], ...] = (
    _f32("voltage_l1_v", 0x00),
    _f32("voltage_l2_v", 0x02),
    _f32("voltage_l3_v", 0x04),
    _f32("current_l1_a", 0x06),
    _f32("current_l2_a", 0x08),
    _f32("current_l3_a", 0x0A),
    _f32("power_l1_w", 0x0C),
    _f32("power_l2_w", 0x0E),
    _f32("power_l3_w", 0x10),
    _f32("power_factor_l1", 0x1E),
    _f32("power_factor_l2", 0x20),
    _f32("power_factor_l3", 0x22),
    _f32("power_w", 0x34),
    _f32("frequency_hz", 0x46),
    _f32("energy_import_kwh", 0x48),
    _f32("energy_export_kwh", 0x4A),
)

PROFILES: Mapping[str, tuple[Kind, Sequence[Mapping[str, object]]]] = {
    "ups-mib": (Kind.SNMP, UPS_MIB_POINTS),
    "power-meter": (Kind.MODBUS, POWER_METER_POINTS),
}
