"""Connector definitions, register decoding and read planning: pure, tables and properties."""

from __future__ import annotations

import math
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pulse.protocol import connectors as c
from pulse.protocol.connectors import DataType, ModbusDevice, Order, RegisterPoint, SnmpDevice, Table
from pulse.protocol.errors import Code, ConnectorError
from pulse.protocol.profiles import PROFILES

pytestmark = pytest.mark.unit


def modbus(**extra: Any) -> dict[str, Any]:
    return {"id": "meter-1", "kind": "modbus", "host": "10.0.0.9", "points": [{"metric": "v", "address": 0}], **extra}


# ---- definitions -------------------------------------------------------------------------------


def test_a_modbus_device_gets_defaults_for_what_it_does_not_say() -> None:
    d = c.parse_device(modbus())
    assert isinstance(d, ModbusDevice)
    assert (d.port, d.unit, d.polling.interval_s, d.polling.retries, d.line) == (502, 1, 10.0, 1, "tcp:10.0.0.9:502")
    assert d.points == (RegisterPoint("v", 0),)


def test_the_ups_profile_gives_the_ups_mib_points_and_a_point_beside_it_replaces_one() -> None:
    d = c.parse_device({"id": "ups-1", "kind": "snmp", "host": "ups", "profile": "ups-mib",
                        "points": [{"metric": "load_pct", "oid": "1.3.6.1.4.1.9.9.1.0"}]})
    assert isinstance(d, SnmpDevice)
    by = {p.metric: p for p in d.points}
    assert {"battery_charge_pct", "runtime_min", "load_pct", "on_battery"} <= set(by)
    assert by["load_pct"].oid == "1.3.6.1.4.1.9.9.1.0"
    assert by["on_battery"].true_if == 5


def test_every_shipped_profile_is_valid() -> None:
    for name, (kind, _) in PROFILES.items():
        doc: dict[str, Any] = {"id": "d", "kind": kind.value, "host": "h", "profile": name}
        assert c.parse_device(doc).points


REFUSED = [
    ("not a table", [1], Code.CONNECTOR_BAD_DEVICE),
    ("bad id", modbus(id="a b"), Code.CONNECTOR_BAD_DEVICE),
    ("no kind", {"id": "x", "host": "h", "points": [{"metric": "v", "address": 0}]}, Code.CONNECTOR_BAD_DEVICE),
    ("unknown kind", modbus(kind="bacnet"), Code.CONNECTOR_BAD_DEVICE),
    ("typo", modbus(intervall_s=5), Code.CONNECTOR_UNKNOWN_FIELD),
    ("tcp without host", modbus(host=""), Code.CONNECTOR_BAD_DEVICE),
    ("rtu without serial port", modbus(transport="rtu"), Code.CONNECTOR_BAD_DEVICE),
    ("zero interval", modbus(interval_s=0), Code.CONNECTOR_BAD_DEVICE),
    ("bool as a number", modbus(timeout_s=True), Code.CONNECTOR_BAD_DEVICE),
    ("unit out of range", modbus(unit=300), Code.CONNECTOR_BAD_DEVICE),
    ("no points", modbus(points=[]), Code.CONNECTOR_BAD_DEVICE),
    ("unknown profile", modbus(profile="toaster"), Code.CONNECTOR_UNKNOWN_PROFILE),
    ("profile of the other kind", modbus(profile="ups-mib"), Code.CONNECTOR_UNKNOWN_PROFILE),
    ("bad metric", modbus(points=[{"metric": "1v", "address": 0}]), Code.CONNECTOR_BAD_POINT),
    ("address out of range", modbus(points=[{"metric": "v", "address": 70000}]), Code.CONNECTOR_BAD_POINT),
    ("int32 past the end", modbus(points=[{"metric": "v", "address": 65535, "type": "int32"}]), Code.CONNECTOR_BAD_POINT),
    ("unknown type", modbus(points=[{"metric": "v", "address": 0, "type": "int64"}]), Code.CONNECTOR_BAD_POINT),
    ("coil as float", modbus(points=[{"metric": "v", "address": 0, "table": "coil", "type": "float32"}]), Code.CONNECTOR_BAD_POINT),
    ("bad word order", modbus(points=[{"metric": "v", "address": 0, "word_order": "middle"}]), Code.CONNECTOR_BAD_POINT),
    ("scale zero", modbus(points=[{"metric": "v", "address": 0, "scale": 0}]), Code.CONNECTOR_BAD_POINT),
    ("writable input register", modbus(points=[{"metric": "v", "address": 0, "table": "input", "writable": True}]), Code.CONNECTOR_BAD_POINT),
    ("point typo", modbus(points=[{"metric": "v", "adress": 0}]), Code.CONNECTOR_UNKNOWN_FIELD),
    ("two points, one metric", modbus(points=[{"metric": "v", "address": 0}, {"metric": "v", "address": 1}]), Code.CONNECTOR_DUPLICATE),
    ("snmp without host", {"id": "u", "kind": "snmp", "profile": "ups-mib"}, Code.CONNECTOR_BAD_DEVICE),
    ("snmp bad oid", {"id": "u", "kind": "snmp", "host": "h", "points": [{"metric": "x", "oid": "iso.3.6"}]}, Code.CONNECTOR_BAD_POINT),
    ("snmp v1", {"id": "u", "kind": "snmp", "host": "h", "version": "1", "profile": "ups-mib"}, Code.CONNECTOR_BAD_DEVICE),
    ("v3 without user", {"id": "u", "kind": "snmp", "host": "h", "version": "3", "profile": "ups-mib"}, Code.CONNECTOR_BAD_DEVICE),
    ("short key", {"id": "u", "kind": "snmp", "host": "h", "version": "3", "user": "o", "auth_key": "short", "profile": "ups-mib"}, Code.CONNECTOR_BAD_DEVICE),
    ("writable walk", {"id": "u", "kind": "snmp", "host": "h", "points": [{"metric": "x", "oid": "1.3.6", "walk": True, "writable": True}]}, Code.CONNECTOR_BAD_POINT),
]


@pytest.mark.parametrize(("doc", "code"), [(d, code) for _, d, code in REFUSED], ids=[r[0] for r in REFUSED])
def test_a_bad_definition_is_refused_with_its_code(doc: Any, code: Code) -> None:
    with pytest.raises(ConnectorError) as info:
        c.parse_device(doc)
    assert info.value.code is code


def test_two_devices_with_one_id_are_refused() -> None:
    with pytest.raises(ConnectorError) as info:
        c.parse_devices([modbus(), modbus()])
    assert info.value.code is Code.CONNECTOR_DUPLICATE


def test_devices_on_one_serial_line_must_share_its_settings() -> None:
    rtu = {"kind": "modbus", "transport": "rtu", "serial_port": "/dev/ttyUSB0", "points": [{"metric": "v", "address": 0}]}
    assert len(c.parse_devices([{**rtu, "id": "a", "unit": 1}, {**rtu, "id": "b", "unit": 2}])) == 2
    with pytest.raises(ConnectorError) as info:
        c.parse_devices([{**rtu, "id": "a"}, {**rtu, "id": "b", "baudrate": 19200}])
    assert info.value.code is Code.CONNECTOR_BAD_DEVICE


# ---- decoding ----------------------------------------------------------------------------------

DECODED = [
    ([0xFFFF], DataType.INT16, Order.BIG, Order.BIG, -1),
    ([0xFFFF], DataType.UINT16, Order.BIG, Order.BIG, 65535),
    ([0x3412], DataType.UINT16, Order.BIG, Order.LITTLE, 0x1234),
    ([0x0001, 0x0002], DataType.UINT32, Order.BIG, Order.BIG, 0x00010002),  # ABCD
    ([0x0002, 0x0001], DataType.UINT32, Order.LITTLE, Order.BIG, 0x00010002),  # CDAB
    ([0x0100, 0x0200], DataType.UINT32, Order.BIG, Order.LITTLE, 0x00010002),  # BADC
    ([0x0200, 0x0100], DataType.UINT32, Order.LITTLE, Order.LITTLE, 0x00010002),  # DCBA
    ([0xFFFF, 0xFFFE], DataType.INT32, Order.BIG, Order.BIG, -2),
    ([0x4348, 0x0000], DataType.FLOAT32, Order.BIG, Order.BIG, 200.0),
    ([0x0000, 0x4348], DataType.FLOAT32, Order.LITTLE, Order.BIG, 200.0),
    ([0x0007], DataType.BOOL, Order.BIG, Order.BIG, True),
]


@pytest.mark.parametrize(("words", "type_", "word_order", "byte_order", "value"), DECODED)
def test_decode_reads_every_word_and_byte_order(words: list[int], type_: DataType, word_order: Order, byte_order: Order, value: object) -> None:
    assert c.decode(words, type_, word_order, byte_order) == value


@pytest.mark.parametrize("words", [[], [1, 2, 3], [70000, 0], [-1, 0]])
def test_decode_refuses_words_that_are_not_a_float32(words: list[int]) -> None:
    with pytest.raises(ConnectorError) as info:
        c.decode(words, DataType.FLOAT32)
    assert info.value.code is Code.CONNECTOR_WRONG_TYPE


orders = st.sampled_from(list(Order))
INT_TYPES = [DataType.INT16, DataType.UINT16, DataType.INT32, DataType.UINT32]


@given(st.sampled_from(INT_TYPES), st.data(), orders, orders)
def test_integers_survive_encode_then_decode(type_: DataType, data: st.DataObject, wo: Order, bo: Order) -> None:
    lo, hi = c._RANGE[type_]
    value = data.draw(st.integers(lo, hi))
    words = c.encode(value, type_, wo, bo)
    assert len(words) == c.WIDTH[type_] and all(0 <= w <= 0xFFFF for w in words)
    assert c.decode(words, type_, wo, bo) == value


@given(st.floats(width=32, allow_nan=False, allow_infinity=False), orders, orders)
def test_float32_survives_encode_then_decode(value: float, wo: Order, bo: Order) -> None:
    assert c.decode(c.encode(value, DataType.FLOAT32, wo, bo), DataType.FLOAT32, wo, bo) == value


@given(st.lists(st.integers(0, 0xFFFF), min_size=2, max_size=2), orders, orders)
def test_any_two_words_decode_to_the_float_struct_gives(words: list[int], wo: Order, bo: Order) -> None:
    value = c.decode(words, DataType.FLOAT32, wo, bo)
    again = c.encode(value, DataType.FLOAT32, wo, bo) if math.isfinite(value) else None
    if again is not None and not math.isnan(value):
        assert c.decode(again, DataType.FLOAT32, wo, bo) == value
    ordered = words if wo is Order.BIG else words[::-1]
    raw = b"".join(w.to_bytes(2, "big" if bo is Order.BIG else "little") for w in ordered)
    expected = struct.unpack(">f", raw)[0]
    assert value == expected or (math.isnan(value) and math.isnan(expected))


@pytest.mark.parametrize(("value", "type_"), [(70000, DataType.UINT16), (-1, DataType.UINT32), (1.5, DataType.INT16), (math.nan, DataType.FLOAT32)])
def test_encode_refuses_a_value_the_type_cannot_hold(value: float, type_: DataType) -> None:
    with pytest.raises(ConnectorError) as info:
        c.encode(value, type_)
    assert info.value.code is Code.CONNECTOR_BAD_VALUE


@given(st.integers(-(2**15), 2**15 - 1), st.sampled_from([0.1, 0.01, 2.0, 10.0]), st.sampled_from([0.0, -40.0, 5.0]))
def test_unscaled_is_the_inverse_of_scaled_for_integer_registers(raw: int, scale: float, offset: float) -> None:
    p = RegisterPoint("sp", 0, type=DataType.INT16, scale=scale, offset=offset, writable=True)
    assert c.unscaled(c.scaled(raw, p), p) == raw


def test_a_point_that_is_not_writable_refuses_a_write() -> None:
    with pytest.raises(ConnectorError) as info:
        c.unscaled(1, RegisterPoint("v", 0))
    assert info.value.code is Code.CONNECTOR_NOT_WRITABLE


def test_true_if_turns_a_status_code_into_a_boolean() -> None:
    p = c.OidPoint("on_battery", "1.3.6.1.2.1.33.1.4.1.0", true_if=5)
    assert c.snmp_value(p, 5) is True and c.snmp_value(p, 3) is False


@pytest.mark.parametrize(("raw", "value"), [(42, 42), (b"12.5", 12.5), ("-3", -3)])
def test_snmp_numbers_and_numeric_strings_are_values(raw: c.SnmpRaw, value: float) -> None:
    assert c.snmp_value(c.OidPoint("x", "1.3.6.1"), raw) == value


@pytest.mark.parametrize(("raw", "code"), [(b"OK", Code.CONNECTOR_WRONG_TYPE), (None, Code.CONNECTOR_DEVICE_EXCEPTION)])
def test_snmp_strings_and_missing_objects_are_refused(raw: c.SnmpRaw, code: Code) -> None:
    with pytest.raises(ConnectorError) as info:
        c.snmp_value(c.OidPoint("x", "1.3.6.1"), raw)
    assert info.value.code is code


def test_walked_oids_become_metrics_named_by_their_suffix() -> None:
    p = c.OidPoint("if_in", "1.3.6.1.2.1.2.2.1.10", walk=True)
    assert c.walk_metric(p, "1.3.6.1.2.1.2.2.1.10.3") == "if_in.3"
    assert c.walk_metric(p, "1.3.6.1.2.1.2.2.1.11.1") is None


# ---- planning ----------------------------------------------------------------------------------


def test_contiguous_registers_are_read_in_one_request_and_far_ones_in_another() -> None:
    pts = [RegisterPoint("a", 0), RegisterPoint("b", 1, type=DataType.FLOAT32), RegisterPoint("c", 5), RegisterPoint("d", 100)]
    reads = c.plan_reads(pts, max_gap=4)
    assert [(r.address, r.count, [p.metric for p in r.points]) for r in reads] == [(0, 6, ["a", "b", "c"]), (100, 1, ["d"])]


def test_tables_are_never_merged_and_coils_are_read_as_bits() -> None:
    pts = [RegisterPoint("h", 0), RegisterPoint("i", 1, table=Table.INPUT), RegisterPoint("k", 2, table=Table.COIL, type=DataType.BOOL)]
    assert [(r.table, r.address, r.count) for r in c.plan_reads(pts)] == [(Table.HOLDING, 0, 1), (Table.INPUT, 1, 1), (Table.COIL, 2, 1)]


points_st = st.lists(
    st.builds(
        RegisterPoint,
        metric=st.text("abcdefghij", min_size=1, max_size=6),
        address=st.integers(0, 400),
        table=st.sampled_from([Table.HOLDING, Table.INPUT]),
        type=st.sampled_from(list(DataType)[:5]),
    ),
    max_size=60,
    unique_by=lambda p: p.metric,
)


@given(points_st, st.integers(0, 20), st.integers(2, 125))
def test_every_point_is_in_exactly_one_read_that_holds_it_whole(points: list[RegisterPoint], gap: int, count: int) -> None:
    reads = c.plan_reads(points, max_gap=gap, max_count=count)
    placed = [p for r in reads for p in r.points]
    assert sorted(p.metric for p in placed) == sorted(p.metric for p in points)
    for r in reads:
        assert r.count <= count
        for p in r.points:
            assert p.table is r.table and r.address <= p.address and p.end <= r.address + r.count


@given(points_st, st.integers(0, 20))
def test_merging_never_needs_more_requests_than_one_per_point(points: list[RegisterPoint], gap: int) -> None:
    assert len(c.plan_reads(points, max_gap=gap)) <= len(c.plan_one_per_point(points))


def test_extract_keeps_the_good_points_when_one_is_not_a_number() -> None:
    pts = (RegisterPoint("t", 0, type=DataType.FLOAT32), RegisterPoint("n", 2, scale=0.1))
    read = c.plan_reads(pts)[0]
    values, errors = c.extract(read, [0x7FC0, 0x0000, 215])  # a float32 NaN, then 21.5 at scale 0.1
    assert values == {"n": pytest.approx(21.5)}
    assert errors["t"].code is Code.CONNECTOR_WRONG_TYPE


# ---- schedule ----------------------------------------------------------------------------------


def test_the_next_poll_stays_on_the_grid_and_skips_slots_an_overrun_missed() -> None:
    assert c.next_due(100.0, 10.0, 101.0) == (110.0, 0)
    assert c.next_due(100.0, 10.0, 125.0) == (130.0, 2)


def test_a_device_that_stopped_answering_is_polled_less_and_less_often_up_to_the_cap() -> None:
    p = c.Polling(interval_s=10, backoff_cap_s=60)
    assert [c.backoff_s(n, p) for n in range(6)] == [10, 10, 10, 20, 40, 60]
    assert [c.health(n, True) for n in (0, 1, 3)] == ["ok", "failing", "down"] and c.health(0, False) == "pending"
