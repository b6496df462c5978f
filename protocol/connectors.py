"""Connectors: equipment the gateway polls (Modbus TCP/RTU, SNMP v2c/v3). Pure: definitions, decoding, planning.

A *device definition* (a table in gateway.toml, or a document pushed from the cloud) names how to
reach the device and its *points*: each point is one metric of the device's envelope.

- Modbus point: ``table`` (holding | input | coil | discrete), ``address`` (0-65535, the protocol
  address, not the 4xxxx label), ``type`` (int16 | uint16 | int32 | uint32 | float32 | bool),
  ``word_order`` and ``byte_order`` (big | little) for 32-bit types, ``scale`` and ``offset``
  (value = raw * scale + offset), ``true_if`` (the metric is the boolean raw == true_if),
  ``writable``.
- SNMP point: ``oid`` (numeric, dotted), ``walk`` (true: every OID under it becomes the metric
  ``{metric}.{suffix}``), ``scale``, ``offset``, ``true_if``, ``writable``.

``parse_device(doc)`` validates one definition once, at the boundary, into frozen objects and
raises ``ConnectorError`` with a code (``connector.*``) naming the field. ``profile = "ups-mib"``
takes the points of a profile shipped with Pulse (``pulse.protocol.profiles``); points given
beside it add to or replace (by metric) the profile's.

Decoding is pure: ``decode(words, type, word_order, byte_order)`` turns 16-bit register words into
a number and ``encode`` is its inverse; ``plan_reads`` merges the points of a device into as few
Modbus requests as the gaps and the request size allow, and ``extract`` takes each point's value
out of a request's answer. The edge (``pulse.edge.connectors``) owns sockets, serial lines,
timeouts and the schedule; it calls these.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal, TypeAlias

from pulse.protocol.errors import Code, ConnectorError
from pulse.protocol.topics import valid_device_id

MetricValue: TypeAlias = float | int | bool


class Kind(StrEnum):
    MODBUS = "modbus"
    SNMP = "snmp"


class Transport(StrEnum):
    TCP = "tcp"
    RTU = "rtu"


class Table(StrEnum):
    HOLDING = "holding"
    INPUT = "input"
    COIL = "coil"
    DISCRETE = "discrete"

    @property
    def bits(self) -> bool:
        return self in (Table.COIL, Table.DISCRETE)

    @property
    def writable(self) -> bool:
        return self in (Table.HOLDING, Table.COIL)


class DataType(StrEnum):
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    FLOAT32 = "float32"
    BOOL = "bool"


class Order(StrEnum):
    BIG = "big"
    LITTLE = "little"


WIDTH: dict[DataType, int] = {
    DataType.INT16: 1,
    DataType.UINT16: 1,
    DataType.INT32: 2,
    DataType.UINT32: 2,
    DataType.FLOAT32: 2,
    DataType.BOOL: 1,
}
"""Registers (16-bit words) per value; a bool is one bit of a coil/discrete table, or a register != 0."""

_STRUCT = {DataType.INT16: "h", DataType.UINT16: "H", DataType.INT32: "i", DataType.UINT32: "I", DataType.FLOAT32: "f"}
_RANGE = {
    DataType.INT16: (-(2**15), 2**15 - 1),
    DataType.UINT16: (0, 2**16 - 1),
    DataType.INT32: (-(2**31), 2**31 - 1),
    DataType.UINT32: (0, 2**32 - 1),
}
MAX_REGISTERS_PER_READ = 125
"""Modbus limit for one read of holding/input registers (function 3/4)."""
MAX_BITS_PER_READ = 2000
"""Modbus limit for one read of coils/discrete inputs (function 1/2)."""
METRIC_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,63}")
OID_RE = re.compile(r"[0-2](\.\d{1,10}){1,127}")
DOWN_AFTER = 3
"""Consecutive failed polls after which a device is shown ``down`` and polled with back-off."""


@dataclass(frozen=True, slots=True)
class Polling:
    interval_s: float = 10.0
    timeout_s: float = 2.0
    """One request's answer; a poll makes 1 + ``retries`` attempts at most."""
    retries: int = 1
    backoff_cap_s: float = 300.0
    """Longest wait between polls of a device that stopped answering."""


@dataclass(frozen=True, slots=True)
class RegisterPoint:
    metric: str
    address: int
    table: Table = Table.HOLDING
    type: DataType = DataType.UINT16
    word_order: Order = Order.BIG
    byte_order: Order = Order.BIG
    scale: float = 1.0
    offset: float = 0.0
    true_if: int | None = None
    writable: bool = False

    @property
    def width(self) -> int:
        return 1 if self.table.bits else WIDTH[self.type]

    @property
    def end(self) -> int:
        return self.address + self.width


@dataclass(frozen=True, slots=True)
class OidPoint:
    metric: str
    oid: str
    walk: bool = False
    scale: float = 1.0
    offset: float = 0.0
    true_if: int | None = None
    writable: bool = False


@dataclass(frozen=True, slots=True)
class ModbusDevice:
    id: str
    points: tuple[RegisterPoint, ...]
    transport: Transport = Transport.TCP
    host: str = ""
    port: int = 502
    serial_port: str = ""
    baudrate: int = 9600
    parity: str = "N"
    stopbits: int = 1
    unit: int = 1
    polling: Polling = Polling()
    max_gap: int = 8
    """Unused registers a merged read may span between two points (a read of a few more registers
    is cheaper than another round trip; some devices refuse reads of undefined registers: set 0)."""
    max_registers: int = MAX_REGISTERS_PER_READ
    max_in_flight: int = 1
    """Requests in flight at once to this host (TCP); a serial line always carries one at a time."""
    kind: Kind = Kind.MODBUS

    @property
    def line(self) -> str:
        """What requests queue on: the serial line, or the host and port."""
        return f"serial:{self.serial_port}" if self.transport is Transport.RTU else f"tcp:{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class SnmpDevice:
    id: str
    points: tuple[OidPoint, ...]
    host: str = ""
    port: int = 161
    version: str = "2c"
    community: str = "public"
    user: str = ""
    auth_protocol: str = "SHA"
    auth_key: str = ""
    priv_protocol: str = "AES"
    priv_key: str = ""
    polling: Polling = Polling()
    max_oids: int = 20
    """OIDs in one GET request."""
    max_in_flight: int = 1
    kind: Kind = Kind.SNMP

    @property
    def line(self) -> str:
        return f"udp:{self.host}:{self.port}"


Device: TypeAlias = ModbusDevice | SnmpDevice
Point: TypeAlias = RegisterPoint | OidPoint

AUTH_PROTOCOLS = ("MD5", "SHA", "SHA224", "SHA256", "SHA384", "SHA512")
PRIV_PROTOCOLS = ("DES", "AES", "AES192", "AES256")

# ---------------------------------------------------------------------------------------------
# Definitions: parse and validate once


def _fail(code: Code, message: str, **context: object) -> ConnectorError:
    return ConnectorError(code, message, **context)


def _get(doc: Mapping[str, object], key: str, kind: type | tuple[type, ...], default: object, where: str) -> object:
    value = doc.get(key, default)
    if value is default:
        return value
    ok = isinstance(value, kind) and not (isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)))
    if not ok:
        names = "/".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        code = Code.CONNECTOR_BAD_POINT if "point" in where else Code.CONNECTOR_BAD_DEVICE
        raise _fail(code, f"{where}: {key} must be {names}, got {value!r}", field=key)
    return value


def _choice(doc: Mapping[str, object], key: str, enum: type[StrEnum], default: StrEnum, where: str, code: Code) -> StrEnum:
    raw = doc.get(key, default.value)
    try:
        return enum(str(raw)) if isinstance(raw, str) else enum(None)  # type: ignore[arg-type]
    except ValueError:
        allowed = " | ".join(m.value for m in enum)
        raise _fail(code, f"{where}: {key} is {allowed}, got {raw!r}", field=key) from None


def _number(doc: Mapping[str, object], key: str, default: float, where: str, *, code: Code, positive: bool = False) -> float:
    raw = doc.get(key, default)
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw) or (positive and raw <= 0):
        raise _fail(code, f"{where}: {key} must be a {'positive ' if positive else ''}number, got {raw!r}", field=key)
    return float(raw)


def _int(doc: Mapping[str, object], key: str, default: int, lo: int, hi: int, where: str, code: Code) -> int:
    raw = doc.get(key, default)
    if isinstance(raw, bool) or not isinstance(raw, int) or not lo <= raw <= hi:
        raise _fail(code, f"{where}: {key} must be an integer from {lo} to {hi}, got {raw!r}", field=key)
    return raw


def _unknown(doc: Mapping[str, object], allowed: set[str], where: str, code: Code = Code.CONNECTOR_UNKNOWN_FIELD) -> None:
    extra = sorted(set(doc) - allowed)
    if extra:
        raise _fail(code, f"{where}: unknown field {extra[0]!r}; fields are {', '.join(sorted(allowed))}", field=extra[0])


def _metric(doc: Mapping[str, object], where: str) -> str:
    metric = doc.get("metric")
    if not isinstance(metric, str) or not METRIC_RE.fullmatch(metric):
        raise _fail(Code.CONNECTOR_BAD_POINT, f"{where}: metric must be a name of letters, digits, '_', '.', '-' (at most 64)", field="metric")
    return metric


def _true_if(doc: Mapping[str, object], where: str) -> int | None:
    raw = doc.get("true_if")
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise _fail(Code.CONNECTOR_BAD_POINT, f"{where}: true_if must be an integer", field="true_if")
    return raw


_COMMON_POINT = {"metric", "scale", "offset", "true_if", "writable"}
_REGISTER_FIELDS = _COMMON_POINT | {"address", "table", "type", "word_order", "byte_order"}
_OID_FIELDS = _COMMON_POINT | {"oid", "walk"}


def _point_common(doc: Mapping[str, object], where: str) -> dict[str, object]:
    scale = _number(doc, "scale", 1.0, where, code=Code.CONNECTOR_BAD_POINT)
    if scale == 0:
        raise _fail(Code.CONNECTOR_BAD_POINT, f"{where}: scale must not be 0", field="scale")
    return {
        "metric": _metric(doc, where),
        "scale": scale,
        "offset": _number(doc, "offset", 0.0, where, code=Code.CONNECTOR_BAD_POINT),
        "true_if": _true_if(doc, where),
        "writable": _get(doc, "writable", bool, False, where),
    }


def parse_register_point(doc: object, where: str = "point") -> RegisterPoint:
    if not isinstance(doc, Mapping):
        raise _fail(Code.CONNECTOR_BAD_POINT, f"{where} must be a table")
    _unknown(doc, _REGISTER_FIELDS, where)
    common = _point_common(doc, where)
    where = f"{where} {common['metric']}"
    table = Table(_choice(doc, "table", Table, Table.HOLDING, where, Code.CONNECTOR_BAD_POINT))
    type_ = DataType(_choice(doc, "type", DataType, DataType.BOOL if table.bits else DataType.UINT16, where, Code.CONNECTOR_BAD_POINT))
    if table.bits and type_ is not DataType.BOOL:
        raise _fail(Code.CONNECTOR_BAD_POINT, f"{where}: a {table} is a single bit; its type is bool", field="type")
    point = RegisterPoint(
        address=_int(doc, "address", -1, 0, 65535, where, Code.CONNECTOR_BAD_POINT),
        table=table,
        type=type_,
        word_order=Order(_choice(doc, "word_order", Order, Order.BIG, where, Code.CONNECTOR_BAD_POINT)),
        byte_order=Order(_choice(doc, "byte_order", Order, Order.BIG, where, Code.CONNECTOR_BAD_POINT)),
        **common,  # type: ignore[arg-type]
    )
    if point.end > 65536:
        raise _fail(Code.CONNECTOR_BAD_POINT, f"{where}: a {type_} at {point.address} runs past register 65535", field="address")
    if point.writable and not table.writable:
        raise _fail(Code.CONNECTOR_BAD_POINT, f"{where}: {table} is read-only; only holding registers and coils are writable", field="writable")
    return point


def parse_oid_point(doc: object, where: str = "point") -> OidPoint:
    if not isinstance(doc, Mapping):
        raise _fail(Code.CONNECTOR_BAD_POINT, f"{where} must be a table")
    _unknown(doc, _OID_FIELDS, where)
    common = _point_common(doc, where)
    where = f"{where} {common['metric']}"
    oid = doc.get("oid")
    if not isinstance(oid, str) or not OID_RE.fullmatch(oid.removeprefix(".")):
        raise _fail(Code.CONNECTOR_BAD_POINT, f"{where}: oid must be a numeric OID such as 1.3.6.1.2.1.33.1.2.4.0", field="oid")
    walk = _get(doc, "walk", bool, False, where)
    if walk and common["writable"]:
        raise _fail(Code.CONNECTOR_BAD_POINT, f"{where}: a walked subtree is not writable; name the one OID to write", field="writable")
    return OidPoint(oid=oid.removeprefix("."), walk=bool(walk), **common)  # type: ignore[arg-type]


_COMMON_DEVICE = {"id", "kind", "profile", "points", "interval_s", "timeout_s", "retries", "backoff_cap_s", "max_in_flight", "host", "port"}
_MODBUS_FIELDS = _COMMON_DEVICE | {"transport", "serial_port", "baudrate", "parity", "stopbits", "unit", "max_gap", "max_registers"}
_SNMP_FIELDS = _COMMON_DEVICE | {"version", "community", "user", "auth_protocol", "auth_key", "priv_protocol", "priv_key", "max_oids"}


def _polling(doc: Mapping[str, object], where: str) -> Polling:
    c = Code.CONNECTOR_BAD_DEVICE
    interval = _number(doc, "interval_s", 10.0, where, code=c, positive=True)
    timeout = _number(doc, "timeout_s", 2.0, where, code=c, positive=True)
    cap = _number(doc, "backoff_cap_s", max(300.0, interval), where, code=c, positive=True)
    if cap < interval:
        raise _fail(c, f"{where}: backoff_cap_s must be at least interval_s", field="backoff_cap_s")
    return Polling(interval_s=interval, timeout_s=timeout, retries=_int(doc, "retries", 1, 0, 10, where, c), backoff_cap_s=cap)


def _points(
    doc: Mapping[str, object], kind: Kind, profiles: Mapping[str, tuple[Kind, Sequence[Mapping[str, object]]]], where: str
) -> tuple[Point, ...]:
    raw_points: list[object] = []
    profile = doc.get("profile")
    if profile is not None:
        if not isinstance(profile, str) or profile not in profiles:
            raise _fail(Code.CONNECTOR_UNKNOWN_PROFILE, f"{where}: no profile {profile!r}; profiles are {', '.join(sorted(profiles))}", profile=str(profile))
        profile_kind, profile_points = profiles[profile]
        if profile_kind is not kind:
            raise _fail(Code.CONNECTOR_UNKNOWN_PROFILE, f"{where}: profile {profile} is for {profile_kind} devices, not {kind}", profile=profile)
        raw_points.extend(profile_points)
    given = doc.get("points", [])
    if not isinstance(given, list):
        raise _fail(Code.CONNECTOR_BAD_DEVICE, f"{where}: points must be a list of tables", field="points")
    parse = parse_register_point if kind is Kind.MODBUS else parse_oid_point
    by_metric: dict[str, Point] = {p.metric: p for p in (parse(d, f"{where} profile point") for d in raw_points)}
    seen: set[str] = set()
    for i, d in enumerate(given):
        point = parse(d, f"{where} point {i}")
        if point.metric in seen:
            raise _fail(Code.CONNECTOR_DUPLICATE, f"{where}: two points name the metric {point.metric}", metric=point.metric)
        seen.add(point.metric)
        by_metric[point.metric] = point
    if not by_metric:
        raise _fail(Code.CONNECTOR_BAD_DEVICE, f"{where}: a device needs points or a profile", field="points")
    return tuple(by_metric.values())


def _text(doc: Mapping[str, object], key: str, default: str, where: str) -> str:
    return str(_get(doc, key, str, default, where))


def parse_device(doc: object, profiles: Mapping[str, tuple[Kind, Sequence[Mapping[str, object]]]] | None = None) -> Device:
    """One device definition, validated. Raises ``ConnectorError`` and nothing else."""
    if profiles is None:
        from pulse.protocol.profiles import PROFILES

        profiles = PROFILES
    if not isinstance(doc, Mapping):
        raise _fail(Code.CONNECTOR_BAD_DEVICE, "a connector device is a table")
    device_id = doc.get("id")
    if not isinstance(device_id, str) or not valid_device_id(device_id):
        raise _fail(Code.CONNECTOR_BAD_DEVICE, "a connector device needs an id that is a valid device id", field="id")
    where = f"device {device_id}"
    kind = Kind(_choice(doc, "kind", Kind, Kind.MODBUS, where, Code.CONNECTOR_BAD_DEVICE)) if "kind" in doc else None
    if kind is None:
        raise _fail(Code.CONNECTOR_BAD_DEVICE, f"{where}: kind is modbus | snmp", field="kind")
    c = Code.CONNECTOR_BAD_DEVICE
    _unknown(doc, _MODBUS_FIELDS if kind is Kind.MODBUS else _SNMP_FIELDS, where)
    polling = _polling(doc, where)
    points = _points(doc, kind, profiles, where)
    in_flight = _int(doc, "max_in_flight", 1, 1, 16, where, c)
    host = _text(doc, "host", "", where)
    if kind is Kind.MODBUS:
        transport = Transport(_choice(doc, "transport", Transport, Transport.TCP, where, c))
        serial_port = _text(doc, "serial_port", "", where)
        if transport is Transport.TCP and not host:
            raise _fail(c, f"{where}: a Modbus TCP device needs host", field="host")
        if transport is Transport.RTU and not serial_port:
            raise _fail(c, f"{where}: a Modbus RTU device needs serial_port (e.g. /dev/ttyUSB0)", field="serial_port")
        parity = _text(doc, "parity", "N", where)
        if parity not in ("N", "E", "O"):
            raise _fail(c, f"{where}: parity is N, E or O", field="parity")
        return ModbusDevice(
            id=device_id,
            points=tuple(p for p in points if isinstance(p, RegisterPoint)),
            transport=transport,
            host=host,
            port=_int(doc, "port", 502, 1, 65535, where, c),
            serial_port=serial_port,
            baudrate=_int(doc, "baudrate", 9600, 300, 4_000_000, where, c),
            parity=parity,
            stopbits=_int(doc, "stopbits", 1, 1, 2, where, c),
            unit=_int(doc, "unit", 1, 0, 247, where, c),
            polling=polling,
            max_gap=_int(doc, "max_gap", 8, 0, MAX_REGISTERS_PER_READ, where, c),
            max_registers=_int(doc, "max_registers", MAX_REGISTERS_PER_READ, 1, MAX_REGISTERS_PER_READ, where, c),
            max_in_flight=in_flight,
        )
    if not host:
        raise _fail(c, f"{where}: an SNMP device needs host", field="host")
    version = _text(doc, "version", "2c", where)
    if version not in ("2c", "3"):
        raise _fail(c, f'{where}: version is "2c" or "3"', field="version")
    auth_protocol, priv_protocol = _text(doc, "auth_protocol", "SHA", where), _text(doc, "priv_protocol", "AES", where)
    if auth_protocol not in AUTH_PROTOCOLS or priv_protocol not in PRIV_PROTOCOLS:
        raise _fail(c, f"{where}: auth_protocol is one of {', '.join(AUTH_PROTOCOLS)}; priv_protocol one of {', '.join(PRIV_PROTOCOLS)}", field="auth_protocol")
    user = _text(doc, "user", "", where)
    auth_key, priv_key = _text(doc, "auth_key", "", where), _text(doc, "priv_key", "", where)
    if version == "3" and not user:
        raise _fail(c, f"{where}: SNMP v3 needs user", field="user")
    for name, key in (("auth_key", auth_key), ("priv_key", priv_key)):
        if key and len(key) < 8:
            raise _fail(c, f"{where}: {name} must be at least 8 characters (RFC 3414)", field=name)
    if priv_key and not auth_key:
        raise _fail(c, f"{where}: privacy (priv_key) needs authentication (auth_key)", field="priv_key")
    return SnmpDevice(
        id=device_id,
        points=tuple(p for p in points if isinstance(p, OidPoint)),
        host=host,
        port=_int(doc, "port", 161, 1, 65535, where, c),
        version=version,
        community=_text(doc, "community", "public", where),
        user=user,
        auth_protocol=auth_protocol,
        auth_key=auth_key,
        priv_protocol=priv_protocol,
        priv_key=priv_key,
        polling=polling,
        max_oids=_int(doc, "max_oids", 20, 1, 100, where, c),
        max_in_flight=in_flight,
    )


def parse_devices(docs: object) -> tuple[Device, ...]:
    """A list of device definitions; ids are unique."""
    if not isinstance(docs, list):
        raise _fail(Code.CONNECTOR_BAD_DEVICE, "connector devices are a list of tables ([[connectors.devices]])")
    devices = tuple(parse_device(d) for d in docs)
    check_set(devices)
    return devices


def check_set(devices: Sequence[Device]) -> None:
    """What must hold across the devices one gateway polls: unique ids, one setting per serial line."""
    seen: set[str] = set()
    lines: dict[str, tuple[int, str, int]] = {}
    for d in devices:
        if d.id in seen:
            raise _fail(Code.CONNECTOR_DUPLICATE, f"two connector devices have the id {d.id}", device_id=d.id)
        seen.add(d.id)
        if isinstance(d, ModbusDevice) and d.transport is Transport.RTU:
            serial = (d.baudrate, d.parity, d.stopbits)
            if lines.setdefault(d.serial_port, serial) != serial:
                raise _fail(Code.CONNECTOR_BAD_DEVICE, f"device {d.id}: the devices on {d.serial_port} must share baudrate, parity and stopbits",
                            device_id=d.id, field="baudrate")


# ---------------------------------------------------------------------------------------------
# Sets pushed from the cloud

MAX_PUSHED_DEVICES = 500
"""Devices in one pushed connector set at most (a gateway polls hundreds, not thousands)."""


@dataclass(frozen=True, slots=True)
class ConnectorSet:
    """The polled devices the cloud manages for one gateway, versioned like a rule set: each set
    replaces the previous one whole; a gateway takes only a version newer than the one it uses."""

    version: int
    devices: tuple[Device, ...]
    docs: tuple[Mapping[str, object], ...]
    """The definitions as written (what the gateway stores and the cloud shows back)."""

    def to_payload(self) -> dict[str, object]:
        return {"version": self.version, "devices": [dict(d) for d in self.docs]}


def parse_set(payload: object) -> ConnectorSet:
    """A ``connectors`` downlink payload ``{"version": int >= 1, "devices": [definition, ...]}``,
    validated as gateway.toml's ``[[connectors.devices]]`` are. Raises ``ConnectorError``."""
    if not isinstance(payload, Mapping):
        raise _fail(Code.CONNECTOR_BAD_DEVICE, "a connector set is an object {version, devices}")
    version = payload.get("version")
    if type(version) is not int or version < 1:
        raise _fail(Code.CONNECTOR_BAD_DEVICE, "a connector set's version is an integer >= 1", field="version")
    docs = payload.get("devices")
    if isinstance(docs, list) and len(docs) > MAX_PUSHED_DEVICES:
        raise _fail(Code.CONNECTOR_BAD_DEVICE, f"a connector set holds at most {MAX_PUSHED_DEVICES} devices", field="devices")
    devices = parse_devices(docs)
    assert isinstance(docs, list)  # parse_devices refused anything else
    return ConnectorSet(version, devices, tuple(dict(d) for d in docs if isinstance(d, Mapping)))


def combine(local: Sequence[Device], pushed: Sequence[Device]) -> tuple[tuple[Device, ...], tuple[str, ...]]:
    """The devices a gateway polls: its own gateway.toml's, then the cloud's. A pushed device with
    the id of a local one is left out (the file on site wins: an installer's definition is never
    replaced from afar); its id is returned with the others left out. Raises ``ConnectorError``
    when the two together break a set rule (one serial line with two settings)."""
    ids = {d.id for d in local}
    taken = tuple(d for d in pushed if d.id not in ids)
    conflicts = tuple(d.id for d in pushed if d.id in ids)
    combined = (*local, *taken)
    check_set(combined)
    return combined, conflicts


# ---------------------------------------------------------------------------------------------
# Register words <-> values


def _to_bytes(words: Sequence[int], word_order: Order, byte_order: Order) -> bytes:
    ordered = words if word_order is Order.BIG else list(reversed(words))
    endian: Literal["big", "little"] = "big" if byte_order is Order.BIG else "little"
    return b"".join(w.to_bytes(2, endian) for w in ordered)


def _to_words(data: bytes, word_order: Order, byte_order: Order) -> list[int]:
    endian: Literal["big", "little"] = "big" if byte_order is Order.BIG else "little"
    words = [int.from_bytes(data[i : i + 2], endian) for i in range(0, len(data), 2)]
    return words if word_order is Order.BIG else list(reversed(words))


def decode(words: Sequence[int], type_: DataType, word_order: Order = Order.BIG, byte_order: Order = Order.BIG) -> int | float | bool:
    """The value held by ``words`` (16-bit registers as the device sent them, first register first).

    ``word_order`` little: the low word comes first (CDAB); ``byte_order`` little: each register's two
    bytes are swapped (BADC). Raises ``ConnectorError(connector.wrong_type)`` for the wrong count of
    words or a word outside 0-65535."""
    if len(words) != WIDTH[type_] or any(not 0 <= w <= 0xFFFF for w in words):
        raise _fail(Code.CONNECTOR_WRONG_TYPE, f"a {type_} is {WIDTH[type_]} register(s) of 0-65535, got {list(words)[:4]}")
    if type_ is DataType.BOOL:
        return words[0] != 0
    value: int | float = struct.unpack(">" + _STRUCT[type_], _to_bytes(words, word_order, byte_order))[0]
    return value


def encode(value: int | float | bool, type_: DataType, word_order: Order = Order.BIG, byte_order: Order = Order.BIG) -> list[int]:
    """The registers that hold ``value``: the inverse of ``decode``. Raises ``connector.bad_value``
    for a value the type cannot hold (out of range, a fraction for an integer type, NaN)."""
    if type_ is DataType.BOOL:
        return [1 if value else 0]
    if type_ is DataType.FLOAT32:
        if not math.isfinite(value) or abs(value) > 3.4028234663852886e38:
            raise _fail(Code.CONNECTOR_BAD_VALUE, f"{value!r} does not fit a float32")
        return _to_words(struct.pack(">f", value), word_order, byte_order)
    if isinstance(value, float) and not value.is_integer():
        raise _fail(Code.CONNECTOR_BAD_VALUE, f"{value!r} is not a whole number; a {type_} holds integers")
    lo, hi = _RANGE[type_]
    if not lo <= int(value) <= hi:
        raise _fail(Code.CONNECTOR_BAD_VALUE, f"{value!r} is outside {lo}..{hi}, the range of a {type_}")
    return _to_words(struct.pack(">" + _STRUCT[type_], int(value)), word_order, byte_order)


def scaled(raw: int | float | bool, point: Point) -> MetricValue:
    """The metric's value from the raw value: ``true_if`` comparison, or raw * scale + offset
    (integers stay integers when scale is 1 and offset 0). Non-finite floats are ``connector.wrong_type``."""
    if isinstance(raw, bool):
        return raw
    if point.true_if is not None:
        return raw == point.true_if
    if isinstance(raw, float) and not math.isfinite(raw):
        raise _fail(Code.CONNECTOR_WRONG_TYPE, f"{point.metric}: the device sent {raw!r}, not a number", metric=point.metric)
    if point.scale == 1.0 and point.offset == 0.0:
        return raw
    return raw * point.scale + point.offset


def unscaled(value: MetricValue, point: Point) -> int | float | bool:
    """The raw value to write for a metric value: the inverse of ``scaled`` (rounded for integer
    types; an SNMP point takes an INTEGER, i.e. an int32)."""
    if not point.writable:
        raise _fail(Code.CONNECTOR_NOT_WRITABLE, f"{point.metric} is not writable", metric=point.metric)
    type_ = point.type if isinstance(point, RegisterPoint) else DataType.INT32
    if type_ is DataType.BOOL:
        if not isinstance(value, bool):
            raise _fail(Code.CONNECTOR_BAD_VALUE, f"{point.metric} takes true or false", metric=point.metric)
        return value
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _fail(Code.CONNECTOR_BAD_VALUE, f"{point.metric} takes a number", metric=point.metric)
    raw = (value - point.offset) / point.scale
    if type_ is DataType.FLOAT32:
        return raw
    rounded = round(raw)
    lo, hi = _RANGE[type_]
    if not lo <= rounded <= hi:
        raise _fail(Code.CONNECTOR_BAD_VALUE, f"{point.metric}: {value!r} is outside what a {type_} holds with this scale", metric=point.metric)
    return rounded


# ---------------------------------------------------------------------------------------------
# Planning Modbus reads


@dataclass(frozen=True, slots=True)
class Read:
    """One Modbus request: ``count`` registers (or bits) of ``table`` from ``address``, and the points in it."""

    table: Table
    address: int
    count: int
    points: tuple[RegisterPoint, ...]


def plan_reads(points: Sequence[RegisterPoint], *, max_gap: int = 8, max_count: int = MAX_REGISTERS_PER_READ) -> tuple[Read, ...]:
    """Merge points of one table into as few reads as possible: a read grows over a gap of at most
    ``max_gap`` unused registers and up to ``max_count`` registers (2000 bits for coils). Every point
    is in exactly one read, whole. Deterministic: tables in a fixed order, addresses ascending."""
    reads: list[Read] = []
    for table in Table:
        group = sorted((p for p in points if p.table is table), key=lambda p: (p.address, p.end, p.metric))
        limit = MAX_BITS_PER_READ if table.bits else max_count
        gap = max_gap * 16 if table.bits else max_gap
        start = end = -1
        members: list[RegisterPoint] = []
        for p in group:
            if members and p.address - end <= gap and max(end, p.end) - start <= limit:
                members.append(p)
                end = max(end, p.end)
                continue
            if members:
                reads.append(Read(table, start, end - start, tuple(members)))
            start, end, members = p.address, p.end, [p]
        if members:
            reads.append(Read(table, start, end - start, tuple(members)))
    return tuple(reads)


def plan_one_per_point(points: Sequence[RegisterPoint]) -> tuple[Read, ...]:
    """No merging: one request per point (what a naive poller does; the benchmark's baseline)."""
    return tuple(Read(p.table, p.address, p.width, (p,)) for p in points)


def extract(read: Read, values: Sequence[int] | Sequence[bool]) -> tuple[dict[str, MetricValue], dict[str, ConnectorError]]:
    """Each point's metric from a read's answer (registers, or bits for coils), and the points whose
    value could not be used (``connector.wrong_type``): one bad point does not lose the others."""
    if len(values) < read.count:
        err = _fail(Code.CONNECTOR_WRONG_TYPE, f"asked for {read.count} values at {read.table} {read.address}, got {len(values)}")
        return {}, {p.metric: err for p in read.points}
    metrics: dict[str, MetricValue] = {}
    errors: dict[str, ConnectorError] = {}
    for p in read.points:
        i = p.address - read.address
        try:
            if read.table.bits:
                metrics[p.metric] = bool(values[i])
            else:
                words = [int(v) for v in values[i : i + p.width]]
                metrics[p.metric] = scaled(decode(words, p.type, p.word_order, p.byte_order), p)
        except ConnectorError as exc:
            errors[p.metric] = replace_context(exc, metric=p.metric)
    return metrics, errors


def replace_context(exc: ConnectorError, **context: object) -> ConnectorError:
    return ConnectorError(exc.code, exc.message, **{**exc.context, **context})


# ---------------------------------------------------------------------------------------------
# SNMP values

SnmpRaw: TypeAlias = int | float | bytes | str | None
"""What an agent answered for one OID, as the edge adapter hands it over: a number (INTEGER,
Gauge32, Counter32/64, TimeTicks, Unsigned32), the octets of an OCTET STRING, or None for
noSuchObject / noSuchInstance / endOfMibView."""


def snmp_value(point: OidPoint, raw: SnmpRaw) -> MetricValue:
    """The metric's value for an agent's answer. A string is accepted when it is a number ("12.5",
    as some agents send); anything else is ``connector.wrong_type``; a missing object is
    ``connector.device_exception``."""
    if raw is None:
        raise _fail(Code.CONNECTOR_DEVICE_EXCEPTION, f"{point.metric}: the agent has no object {point.oid}", metric=point.metric, oid=point.oid)
    if isinstance(raw, bytes | str):
        text = raw.decode("ascii", "replace") if isinstance(raw, bytes) else raw
        try:
            number: int | float = int(text.strip()) if text.strip().lstrip("-").isdigit() else float(text)
        except ValueError:
            raise _fail(Code.CONNECTOR_WRONG_TYPE, f"{point.metric}: the agent sent the string {text[:40]!r}, not a number", metric=point.metric, oid=point.oid) from None
        raw = number
    return scaled(raw, point)


def walk_metric(point: OidPoint, oid: str) -> str | None:
    """The metric name of one OID found under a walked point (``{metric}.{suffix}``), or None when
    the OID is not under the point's subtree (the walk is over)."""
    prefix = point.oid + "."
    if not oid.startswith(prefix):
        return None
    name = f"{point.metric}.{oid[len(prefix):]}"
    return name if METRIC_RE.fullmatch(name) else None


def plan_gets(points: Sequence[OidPoint], max_oids: int) -> tuple[tuple[OidPoint, ...], ...]:
    """Scalar (non-walk) points in GET requests of at most ``max_oids`` OIDs each."""
    scalars = [p for p in points if not p.walk]
    return tuple(tuple(scalars[i : i + max_oids]) for i in range(0, len(scalars), max_oids))


# ---------------------------------------------------------------------------------------------
# Schedule and back-off


def next_due(due: float, interval: float, now: float) -> tuple[float, int]:
    """The next poll time after the poll due at ``due`` finished at ``now``, on the device's grid
    (``due + k * interval``), and how many grid slots were skipped because a poll overran."""
    nxt = due + interval
    if nxt > now:
        return nxt, 0
    skipped = math.floor((now - due) / interval)
    return due + (skipped + 1) * interval, skipped


def backoff_s(failures: int, polling: Polling) -> float:
    """Wait before the next poll of a device whose last ``failures`` polls failed: the interval
    until the device is ``down``, then doubling up to ``backoff_cap_s``."""
    if failures < DOWN_AFTER:
        return polling.interval_s
    return float(min(polling.backoff_cap_s, polling.interval_s * 2 ** (failures - DOWN_AFTER + 1)))


def health(failures: int, polled: bool) -> str:
    """A polled device's state: ``pending`` (never polled), ``ok``, ``failing`` (recent polls failed,
    still polled every interval), ``down`` (polled with back-off)."""
    if not polled:
        return "pending"
    if failures == 0:
        return "ok"
    return "failing" if failures < DOWN_AFTER else "down"
