"""Simulated polled equipment: Modbus servers (pymodbus) and SNMP agents (pysnmp) on loopback.

``ModbusSim`` serves a device's register points (TCP, or RTU on a serial port such as one end of a
pty pair); ``SnmpSim`` answers GET/GETNEXT/GETBULK/SET for OID points (v2c community and a v3
user). Both hold values by metric (``set``), keep registers as the point's type, word and byte
order, scale and offset say (``pulse.protocol.connectors.encode``), and take faults:

- ``timeout``       the device stops answering (requests wait until the fault is cleared or the sim stops);
- ``exception``     every request is answered with an error (Modbus exception 4, SNMP genErr);
- ``wrong_type``    values of the wrong type: NaN in every register (float32 points read NaN),
                    an OCTET STRING for every SNMP object;
- ``ignore_writes`` writes are acknowledged but not applied (a write is then not confirmed).

``ups()`` and ``power_meter()`` build the shipped profiles' devices with realistic values that move
with ``tick(t_s)`` (the demo and the benchmark call it; tests set values directly).
"""

from __future__ import annotations

import asyncio
import math
import random
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType as SimType
from pymodbus.simulator import SimData, SimDevice
from pysnmp.carrier.asyncio.dgram import udp
from pysnmp.entity import config, engine
from pysnmp.entity.rfc3413 import cmdrsp, context
from pysnmp.proto import rfc1905
from pysnmp.proto.rfc1902 import Gauge32, Integer32, ObjectName, OctetString
from pysnmp.smi import error as smi_error

from pulse.protocol.connectors import (
    DataType,
    OidPoint,
    RegisterPoint,
    Table,
    decode,
    encode,
    parse_device,
    scaled,
    unscaled,
)
from pulse.protocol.profiles import PROFILES

FAULTS = ("timeout", "exception", "wrong_type", "ignore_writes")


def _raw(point: RegisterPoint | OidPoint, value: float | bool) -> int | float | bool:
    """The raw value a device holds for a metric value (the inverse of scale and offset)."""
    return unscaled(value, replace(point, writable=True))


class _Faults:
    def __init__(self) -> None:
        self.fault: str | None = None
        self.released = asyncio.Event()

    def inject(self, fault: str | None) -> None:
        if fault is not None and fault not in FAULTS:
            raise ValueError(f"fault is one of {', '.join(FAULTS)}")
        self.fault = fault
        if fault != "timeout":
            self.released.set()
        else:
            self.released.clear()


class ModbusSim(_Faults):
    """A Modbus device: holding and input registers (one shared block, 0..size-1) for its points."""

    def __init__(self, points: Sequence[RegisterPoint], values: Mapping[str, float | bool] | None = None, *, unit: int = 1) -> None:
        super().__init__()
        for p in points:
            if p.table.bits:
                raise ValueError("the simulator serves holding and input registers, not coils")
        self.points = {p.metric: p for p in points}
        self.unit = unit
        self.size = max((p.end for p in points), default=1) + 1
        self._words = [0] * self.size
        self._dirty = True
        self.requests = 0
        self.active = 0
        self.most_active = 0
        """Requests being answered at once, now and at most (what a client's in-flight bound allows)."""
        self.server: ModbusTcpServer | ModbusSerialServer | None = None
        self.port = 0
        for metric, value in (values or {}).items():
            self.set(metric, value)

    def set(self, metric: str, value: float | bool) -> None:
        p = self.points[metric]
        words = encode(_raw(p, value), p.type, p.word_order, p.byte_order)
        self._words[p.address : p.address + len(words)] = words
        self._dirty = True

    def get(self, metric: str) -> float | int | bool:
        """The metric's value as the registers hold it now (after writes by a client)."""
        p = self.points[metric]
        return scaled(decode(self._words[p.address : p.end], p.type, p.word_order, p.byte_order), p)

    async def _action(self, fc: int, start: int, address: int, count: int, registers: list[int], set_values: Any) -> ExcCodes | None:
        self.requests += 1
        if self.fault == "timeout":
            self.active += 1
            self.most_active = max(self.most_active, self.active)
            try:
                await self.released.wait()
            finally:
                self.active -= 1
        if self.fault == "exception":
            return ExcCodes.DEVICE_FAILURE
        if set_values is not None:
            if self.fault == "ignore_writes":
                set_values[:] = registers[address - start : address - start + len(set_values)]
            else:
                self._words[address : address + len(set_values)] = [int(v) for v in set_values]
            return None
        if self.fault == "wrong_type":
            registers[address - start : address - start + count] = [0xFFFF] * count
            self._dirty = True
        elif self._dirty:
            registers[:] = self._words
            self._dirty = False
        return None

    def _device(self) -> SimDevice:
        block = SimData(0, values=list(self._words), datatype=SimType.REGISTERS)
        return SimDevice(self.unit, simdata=[block], action=self._action)

    async def start_tcp(self, port: int, host: str = "127.0.0.1") -> None:
        self.port = port
        self.server = ModbusTcpServer([self._device()], address=(host, port))
        await self.server.serve_forever(background=True)

    async def start_rtu(self, serial_port: str, baudrate: int = 9600) -> None:
        self.server = ModbusSerialServer([self._device()], framer=FramerType.RTU, port=serial_port, baudrate=baudrate)
        await self.server.serve_forever(background=True)

    async def stop(self) -> None:
        self.released.set()
        if self.server is not None:
            server, self.server = self.server, None
            await server.shutdown()


class _Instrumentation:
    """What pysnmp's command responders call: read, read-next and write of var-binds (synchronous)."""

    def __init__(self, sim: SnmpSim) -> None:
        self.sim = sim

    def _check(self) -> None:
        self.sim.requests += 1
        if self.sim.fault == "timeout":
            raise smi_error.PySnmpError("simulated silence")  # the responder logs it and sends nothing
        if self.sim.fault == "exception":
            raise smi_error.GenError()

    def _value(self, oid: tuple[int, ...]) -> Any:
        if self.sim.fault == "wrong_type":
            return OctetString(b"n/a")
        return self.sim.value_of(oid)

    def read_variables(self, *var_binds: Any, **ctx: Any) -> list[tuple[Any, Any]]:
        self._check()
        out = []
        for name, _ in var_binds:
            oid = tuple(name)
            out.append((name, self._value(oid) if oid in self.sim.oids else rfc1905.noSuchObject))
        return out

    def read_next_variables(self, *var_binds: Any, **ctx: Any) -> list[tuple[Any, Any]]:
        self._check()
        out = []
        for name, _ in var_binds:
            oid = tuple(name)
            nxt = next((o for o in self.sim.sorted_oids if o > oid), None)
            out.append((name, rfc1905.endOfMibView) if nxt is None else (ObjectName(nxt), self._value(nxt)))
        return out

    def write_variables(self, *var_binds: Any, **ctx: Any) -> list[tuple[Any, Any]]:
        self._check()
        for name, value in var_binds:
            oid = tuple(name)
            if oid not in self.sim.oids:
                raise smi_error.NoSuchObjectError(name=name, idx=0)
            if self.sim.fault != "ignore_writes":
                self.sim.raw[oid] = int(value)
        return list(var_binds)


class SnmpSim(_Faults):
    """An SNMP agent for OID points: v2c with ``community``, v3 with user ``user`` (SHA/AES keys)."""

    def __init__(
        self,
        points: Sequence[OidPoint],
        values: Mapping[str, float | bool] | None = None,
        *,
        community: str = "public",
        user: str = "pulse",
        auth_key: str = "auth-key-1234",
        priv_key: str = "priv-key-5678",
        extra: Mapping[str, int] | None = None,
    ) -> None:
        super().__init__()
        self.points = {p.metric: p for p in points}
        self.raw: dict[tuple[int, ...], int] = {}
        for p in points:
            if not p.walk:
                self.raw[_oid(p.oid)] = 0
        for oid, v in (extra or {}).items():
            self.raw[_oid(oid)] = v
        self.community, self.user, self.auth_key, self.priv_key = community, user, auth_key, priv_key
        self.requests = 0
        self.port = 0
        self._engine: engine.SnmpEngine | None = None
        for metric, value in (values or {}).items():
            self.set(metric, value)

    @property
    def oids(self) -> dict[tuple[int, ...], int]:
        return self.raw

    @property
    def sorted_oids(self) -> list[tuple[int, ...]]:
        return sorted(self.raw)

    def set(self, metric: str, value: float | bool) -> None:
        p = self.points[metric]
        if p.true_if is not None:
            self.raw[_oid(p.oid)] = p.true_if if value else p.true_if + 1
            return
        self.raw[_oid(p.oid)] = int(round(_raw(p, value)))

    def get(self, metric: str) -> float | int | bool:
        p = self.points[metric]
        return scaled(self.raw[_oid(p.oid)], p)

    def value_of(self, oid: tuple[int, ...]) -> Any:
        v = self.raw[oid]
        return Integer32(v) if v < 0 else Gauge32(min(v, 2**32 - 1))

    def start(self, port: int, host: str = "127.0.0.1") -> None:
        self.port = port
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            snmp = engine.SnmpEngine()
        config.add_transport(snmp, udp.DOMAIN_NAME, udp.UdpTransport().open_server_mode((host, port)))
        config.add_v1_system(snmp, "sim-area", self.community)
        config.add_v3_user(snmp, self.user, config.USM_AUTH_HMAC96_SHA, self.auth_key, config.USM_PRIV_CFB128_AES, self.priv_key)
        ctx = context.SnmpContext(snmp)
        ctx.unregister_context_name(b"")
        ctx.register_context_name(b"", _Instrumentation(self))  # type: ignore[arg-type]
        for responder in (cmdrsp.GetCommandResponder, cmdrsp.NextCommandResponder, cmdrsp.BulkCommandResponder, cmdrsp.SetCommandResponder):
            responder(snmp, ctx)
        self._engine = snmp

    async def stop(self) -> None:
        self.released.set()
        if self._engine is not None:
            snmp, self._engine = self._engine, None
            snmp.close_dispatcher()


def _oid(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.strip(".").split("."))


# -- the shipped profiles, with realistic values ---------------------------------------------


def profile_points(name: str) -> tuple[Any, ...]:
    kind, _ = PROFILES[name]
    return parse_device({"id": "sim", "kind": kind.value, "host": "sim", "profile": name}).points


class UpsSim(SnmpSim):
    """A UPS (UPS-MIB) on mains: charge near 100 %, load wandering around 35 %, runtime from load."""

    def __init__(self, seed: int = 1, **kw: Any) -> None:
        super().__init__([p for p in profile_points("ups-mib") if isinstance(p, OidPoint)], **kw)
        self.rng = random.Random(seed)
        self.on_battery = False
        self.tick(0.0)

    def tick(self, t_s: float) -> None:
        load = max(5.0, min(95.0, 35 + 10 * math.sin(t_s / 900) + self.rng.gauss(0, 1.5)))
        charge = self.get("battery_charge_pct") if self.on_battery else 100
        if self.on_battery:
            charge = max(0, charge - 1)
        values: dict[str, float | bool] = {
            "battery_status": 2 if charge > 20 else 3,
            "battery_on_s": 0,
            "battery_charge_pct": charge,
            "runtime_min": round(charge * 0.9 * 40 / load),
            "battery_v": round(27.3 if not self.on_battery else 24.8, 1),
            "battery_temp_c": round(24 + self.rng.gauss(0, 0.3)),
            "input_v": 0 if self.on_battery else round(230 + self.rng.gauss(0, 2)),
            "on_battery": self.on_battery,
            "output_v": 230,
            "load_pct": round(load),
        }
        for metric, value in values.items():
            self.set(metric, value)


class MeterSim(ModbusSim):
    """A three-phase power meter (the power-meter profile) and a writable setpoint register at 100."""

    SETPOINT = RegisterPoint("setpoint_w", 100, type=DataType.UINT16, scale=10.0, writable=True)

    def __init__(self, seed: int = 2, unit: int = 1) -> None:
        points = [p for p in profile_points("power-meter") if isinstance(p, RegisterPoint)]
        super().__init__([*points, self.SETPOINT], unit=unit)
        self.rng = random.Random(seed)
        self.energy = 12_345.6
        self.set("setpoint_w", 5000)
        self.tick(0.0)

    def tick(self, t_s: float) -> None:
        values: dict[str, float] = {}
        total = 0.0
        for phase in (1, 2, 3):
            v = round(230 + self.rng.gauss(0, 1.5), 1)
            a = round(max(0.0, 8 + 3 * math.sin(t_s / 600 + phase) + self.rng.gauss(0, 0.2)), 2)
            pf = round(0.92 + self.rng.gauss(0, 0.01), 3)
            w = round(v * a * pf, 1)
            total += w
            values |= {f"voltage_l{phase}_v": v, f"current_l{phase}_a": a, f"power_factor_l{phase}": pf, f"power_l{phase}_w": w}
        self.energy += total / 3_600_000
        values |= {"power_w": round(total, 1), "frequency_hz": round(50 + self.rng.gauss(0, 0.01), 2),
                   "energy_import_kwh": round(self.energy, 2), "energy_export_kwh": 0.0}
        for metric, value in values.items():
            self.set(metric, value)


def register_block(count: int, *, table: Table = Table.HOLDING, start: int = 0, prefix: str = "r") -> list[RegisterPoint]:
    """``count`` uint16 registers from ``start`` (the benchmark's large device)."""
    return [RegisterPoint(f"{prefix}{i}", start + i, table=table) for i in range(count)]
