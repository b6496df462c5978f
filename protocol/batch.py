"""Sync batch codec: how a gateway ships a run of buffered records to the cloud.

A batch is a 48-byte fixed header, the gateway id, and a payload (big-endian integers)::

    offset size  field
    0      4     magic b"PSYN"
    4      1     format version (1 or 2: the body's layout; the header is the same in both)
    5      1     compression: 0 none, 1 zstd
    6      1     stream (Stream)
    7      1     gateway id length L (1-128)
    8      8     first sequence (u64)
    16     8     last sequence (u64)
    24     8     gateway clock when the batch was made, Unix ms (u64)
    32     4     record count (u32)
    36     4     body length before compression (u32)
    40     4     payload length as sent (u32)
    44     4     CRC-32 of bytes 0-43, the gateway id and the payload
    48     L     gateway id, UTF-8
    48+L   ...   payload: the msgpack body, zstd-compressed when compression is 1

Everything a receiver needs to refuse a batch (size, count, sequence range, checksum) is in the
header, so it can answer a replay or refuse a bomb before it decompresses anything.

The body is columnar (see docs/protocol.md for a worked example): device ids, metric names and
record types are dictionary-encoded; each record names a *group* (device + the set of metric
names and kinds it carries); timestamps are delta-of-delta per device; device sequence numbers
are deltas per device; metric values live in one column per (device, metric), as deltas of
decimal-scaled integers when the floats are short decimals (21.37 -> 2137 at scale 2), so a
slowly changing or repeated reading costs about one byte before zstd.

Version 2 keeps the header and the dictionaries and changes how the numbers travel: a small msgpack
*directory* (dictionaries, groups, per-series first values and scales, and the list of numeric
columns) followed by the numeric columns as fixed-width little-endian integers (1, 2, 4 or 8 bytes,
the narrowest that holds the column) stored byte-plane by byte-plane ("shuffled"), so zstd sees
long runs of equal high bytes. A series' first value lives in the directory, so one large starting
value does not widen its column; timestamps travel as the difference between each interval and
the device's usual interval (its median), which costs less than delta-of-delta when the jitter is
independent from one reading to the next. Decoding is ``array.frombytes`` + ``accumulate`` per column
and C-level ``map`` to assemble the records. See docs/protocol.md, "Body, version 2".

Which version a gateway sends is its choice among those the cloud announces (``VERSIONS``,
carried in every batch ack); a cloud decodes every version in ``VERSIONS``.
"""

from __future__ import annotations

import gc
import math
import struct
import sys
import zlib
from array import array
from collections import Counter
from collections.abc import Callable, Container, Iterator, Sequence
from dataclasses import dataclass
from enum import IntEnum
from itertools import accumulate, chain, compress, repeat
from operator import add, itemgetter, sub, truediv
from typing import Any, NamedTuple, cast

import msgpack
import zstandard

from pulse.protocol.envelope import MAX_INT, MAX_SEQ, JsonObject, MetricValue
from pulse.protocol.errors import BatchError, Code
from pulse.protocol.topics import valid_device_id

MAGIC = b"PSYN"
VERSION_1 = 1
"""msgpack columns (every Pulse cloud reads it; a gateway sends it until the cloud announces more)."""
VERSION_2 = 2
"""A msgpack directory + fixed-width, byte-shuffled numeric columns (smaller and faster to decode)."""
VERSIONS = (VERSION_1, VERSION_2)
"""The batch format versions this codec reads and writes."""
HEADER = struct.Struct(">4sBBBBQQQIIII")
HEADER_SIZE = HEADER.size  # 48
_CRC_SPAN = 44
MAX_U64 = 2**64 - 1
_MAX_SCALE = 6
_MAX_SCALED = 2**62
_KIND_BOOL, _KIND_INT, _KIND_FLOAT = 0, 1, 2
_KINDS = {bool: _KIND_BOOL, int: _KIND_INT, float: _KIND_FLOAT}
_RAW_FLOAT = -1
_JSON_SCALARS = (str, int, float, bool, type(None))
MAX_TS_MS = MAX_INT  # record timestamps: 0 to 2**53 ms, so every delta-of-delta fits msgpack's integers
_MAX_BODY_DEPTH = 16
_MAX_SCALED_V2 = MAX_INT  # version 2: scaled decimals within ±2**53, so their deltas fit 64-bit columns
_U32 = struct.Struct(">I")
_POW10 = tuple(10**scale for scale in range(_MAX_SCALE + 1))
_BOOLS = (False, True)


def _typecode(size: int, candidates: str) -> str:
    """The ``array`` type code of this platform with exactly ``size`` bytes."""
    return next(tc for tc in candidates if array(tc).itemsize == size)


# version 2 numeric columns: wire code -> array type code. 1, 2, 4, 8: signed integers of that
# many bytes; 17, 18, 20, 24 (16 + bytes): unsigned integers; 40: IEEE 754 doubles (8 bytes)
_UNSIGNED = 16
_COL_F64 = 40
_U8 = _UNSIGNED + 1
_COLUMN_TYPES = {
    1: "b",
    2: _typecode(2, "hil"),
    4: _typecode(4, "hilq"),
    8: _typecode(8, "lq"),
    17: "B",
    18: _typecode(2, "HIL"),
    20: _typecode(4, "HILQ"),
    24: _typecode(8, "LQ"),
    _COL_F64: "d",
}
_WIDTHS = (1, 2, 4, 8)
_BIG_ENDIAN = sys.byteorder == "big"


class Compression(IntEnum):
    NONE = 0
    ZSTD = 1


class Stream(IntEnum):
    """The gateway's buffer streams; each has its own sequence numbers and cloud high-water mark."""

    TELEMETRY = 1
    EVENTS = 2
    ALERTS = 3
    TWIN = 4


@dataclass(frozen=True, slots=True)
class BatchLimits:
    """What a receiver accepts. Checked from the header before anything is allocated."""

    max_payload_bytes: int = 2 * 1024 * 1024
    max_body_bytes: int = 8 * 1024 * 1024
    max_records: int = 50_000


DEFAULT_BATCH_LIMITS = BatchLimits()


class Record(NamedTuple):
    """One buffered message. A NamedTuple (immutable, and cheap enough to build a million a second)."""

    seq: int
    device_id: str
    ts_ms: int
    type: str
    metrics: dict[str, MetricValue]
    device_seq: int | None = None
    tags: dict[str, str] | None = None
    body: JsonObject | None = None


@dataclass(frozen=True, slots=True)
class Header:
    gateway_id: str
    stream: Stream
    first_seq: int
    last_seq: int
    gateway_time_ms: int
    record_count: int
    body_len: int
    payload_len: int
    compression: Compression
    version: int = VERSION_1


@dataclass(frozen=True, slots=True)
class Batch:
    header: Header
    records: list[Record]


# ---------------------------------------------------------------------------------------------
# header


def read_header(data: bytes, limits: BatchLimits = DEFAULT_BATCH_LIMITS) -> Header:
    """Parse and check the fixed header (sizes, counts, sequence range, checksum). Cheap."""
    if len(data) < HEADER_SIZE:
        raise BatchError(Code.BATCH_TOO_SHORT, f"a batch is at least {HEADER_SIZE} bytes", size=len(data))
    (magic, version, compression, stream, gw_len, first, last, gw_time, count, body_len, payload_len, crc) = HEADER.unpack_from(
        data
    )
    if magic != MAGIC:
        raise BatchError(Code.BATCH_BAD_MAGIC, "not a Pulse sync batch")
    if version not in VERSIONS:
        raise BatchError(
            Code.BATCH_VERSION_UNSUPPORTED,
            f"this receiver understands batch formats {', '.join(map(str, VERSIONS))}",
            version=version,
        )
    if payload_len > limits.max_payload_bytes or body_len > limits.max_body_bytes:
        raise BatchError(
            Code.BATCH_TOO_LARGE,
            f"batches are at most {limits.max_payload_bytes} bytes on the wire and {limits.max_body_bytes} decompressed; send smaller batches",
            payload_len=payload_len,
            body_len=body_len,
        )
    if count > limits.max_records:
        raise BatchError(Code.BATCH_TOO_MANY_RECORDS, f"batches hold at most {limits.max_records} records", count=count)
    if HEADER_SIZE + gw_len + payload_len != len(data):
        raise BatchError(Code.BATCH_LENGTH_MISMATCH, "the header's lengths do not add up to the batch's size", size=len(data))
    if zlib.crc32(data[HEADER_SIZE:], zlib.crc32(data[:_CRC_SPAN])) != crc:
        raise BatchError(Code.BATCH_CHECKSUM_MISMATCH, "the batch was damaged in transit (CRC-32 mismatch)")
    try:
        compression_kind = Compression(compression)
        stream_kind = Stream(stream)
        gateway_id = data[HEADER_SIZE : HEADER_SIZE + gw_len].decode()
    except (ValueError, UnicodeDecodeError) as exc:
        raise BatchError(Code.BATCH_MALFORMED, f"bad header field: {exc}") from exc
    if not valid_device_id(gateway_id):
        raise BatchError(Code.BATCH_MALFORMED, "the gateway id in the header is not a valid id")
    if count == 0 or first > last or last - first + 1 < count:
        raise BatchError(
            Code.BATCH_BAD_SEQUENCE,
            "a batch holds 1 or more records whose sequence numbers run from first to last",
            first=first,
            last=last,
            count=count,
        )
    return Header(gateway_id, stream_kind, first, last, gw_time, count, body_len, payload_len, compression_kind, version)


# ---------------------------------------------------------------------------------------------
# encode


def _float_scale(values: Sequence[float], max_scaled: int = _MAX_SCALED) -> int:
    """The smallest decimal scale that reproduces every value exactly, or -1 (keep raw floats)."""
    for scale in range(_MAX_SCALE + 1):
        p = 10**scale
        for v in values:
            scaled = v * p
            if not -max_scaled <= scaled <= max_scaled:  # also keeps round() away from infinity
                break
            r = round(scaled)
            if r / p != v or (v == 0 and math.copysign(1.0, v) < 0):
                break
        else:
            return scale
    return _RAW_FLOAT


def _deltas(values: Sequence[int]) -> list[int]:
    """Each value minus the one before it (the first minus 0)."""
    return list(map(sub, values, chain((0,), values)))


def _kind(value: object) -> int:
    t = type(value)
    if t is bool:
        return _KIND_BOOL
    if t is int:
        return _KIND_INT
    if t is float:
        return _KIND_FLOAT
    raise BatchError(Code.BATCH_UNENCODABLE, "metric values are bool, int or float", value=repr(value)[:40])


def _unencodable(why: str, **context: object) -> BatchError:
    return BatchError(Code.BATCH_UNENCODABLE, why, **context)


def _check_records(records: Sequence[Record]) -> None:
    for rec in records:
        _check_record(rec)
    raise AssertionError("unreachable: a bulk check failed, so one record is bad")  # pragma: no cover


def _check_record(rec: Record) -> None:
    """Refuse, at the edge, any record the decoder would refuse: a batch that encodes always decodes.

    ``encode`` checks the common fields in bulk and calls this to name the record that is wrong."""
    if type(rec.device_id) is not str or type(rec.type) is not str:
        raise _unencodable("record device ids and types are strings", seq=rec.seq)
    if type(rec.ts_ms) is not int or not 0 <= rec.ts_ms <= MAX_TS_MS:
        raise _unencodable(f"record timestamps are integers from 0 to {MAX_TS_MS} ms", seq=rec.seq, ts=repr(rec.ts_ms)[:40])
    if rec.device_seq is not None and (type(rec.device_seq) is not int or not 0 <= rec.device_seq <= MAX_SEQ):
        raise _unencodable("device sequence numbers are None or integers from 0 to 2**63-1", seq=rec.seq)
    if type(rec.metrics) is not dict:
        raise _unencodable("metrics is a dict of name -> bool, int or float", seq=rec.seq)
    if rec.tags is not None and (
        type(rec.tags) is not dict or not all(type(k) is str and type(v) is str for k, v in rec.tags.items())
    ):
        raise _unencodable("tags is None or a dict of str -> str (an empty dict travels as None)", seq=rec.seq)
    if rec.body is not None:
        if type(rec.body) is not dict:
            raise _unencodable("body is None or a JSON object", seq=rec.seq)
        _check_json(rec.body, Code.BATCH_UNENCODABLE)


def encode(
    records: Sequence[Record],
    *,
    gateway_id: str,
    stream: Stream,
    gateway_time_ms: int,
    compression: Compression = Compression.ZSTD,
    level: int = 9,
    version: int = VERSION_1,
) -> bytes:
    """Encode records (in increasing ``seq`` order) into one batch of format ``version``.

    Version 1 is the default because every cloud reads it; a gateway sends a later version once
    the cloud has announced it (``sync.BatchAck.batch_versions``)."""
    if version not in VERSIONS:
        raise BatchError(Code.BATCH_UNENCODABLE, f"batch format versions are {', '.join(map(str, VERSIONS))}", version=version)
    if not records:
        raise BatchError(Code.BATCH_UNENCODABLE, "a batch holds at least one record")
    if type(gateway_id) is not str or not valid_device_id(gateway_id):
        raise BatchError(Code.BATCH_UNENCODABLE, "the gateway id is not a valid id")
    devices: dict[str, int] = {}
    names: dict[str, int] = {}
    types: dict[str, int] = {}
    groups: dict[tuple[int, tuple[int, ...]], int] = {}  # (device, (name, kind, name, kind, ...)) -> index
    tag_table: dict[tuple[tuple[str, str], ...], int] = {}
    series: dict[tuple[int, int, int], list[MetricValue]] = {}
    dev_ts: dict[int, list[int]] = {}
    dev_dseq: dict[int, list[int | None]] = {}
    rec_group: list[int] = []
    rec_type: list[int] = []
    rec_tags: list[int] = []
    seq_deltas: list[int] = []
    bodies: list[list[object]] = []
    prev_seq = records[0].seq
    for i, rec in enumerate(records):
        if type(rec.seq) is not int or not (0 <= rec.seq <= MAX_U64) or (i and rec.seq <= prev_seq):
            raise BatchError(Code.BATCH_UNENCODABLE, "record sequence numbers must increase", seq=repr(rec.seq))
        seq_deltas.append(rec.seq - prev_seq)
        prev_seq = rec.seq
        if type(rec.metrics) is not dict or type(rec.device_id) is not str or type(rec.type) is not str:
            _check_record(rec)  # raises, naming what is wrong
        if rec.tags is not None or rec.body is not None:
            _check_record(rec)
        dev = devices.get(rec.device_id)
        if dev is None:
            if not valid_device_id(rec.device_id):
                raise _unencodable("record device ids are valid device ids", seq=rec.seq, device_id=repr(rec.device_id)[:140])
            dev = devices[rec.device_id] = len(devices)
        layout: list[int] = []
        for name, value in rec.metrics.items():
            n = names.get(name)
            if n is None:
                if type(name) is not str:
                    raise _unencodable("metric names are strings", seq=rec.seq, name=repr(name)[:80])
                n = names[name] = len(names)
            k = _KINDS.get(type(value))
            if k is None:
                k = _kind(value)  # raises
            layout += (n, k)
            series.setdefault((dev, n, k), []).append(value)
        g = groups.setdefault((dev, tuple(layout)), len(groups))
        rec_group.append(g)
        t = types.get(rec.type)
        if t is None:
            t = types[rec.type] = len(types)
        rec_type.append(t)
        tags = tuple(sorted(rec.tags.items())) if rec.tags else ()
        rec_tags.append(tag_table.setdefault(tags, len(tag_table)))
        dev_ts.setdefault(dev, []).append(rec.ts_ms)
        dev_dseq.setdefault(dev, []).append(rec.device_seq)
        if rec.body is not None:
            bodies.append([i, rec.body])

    # timestamps and device sequence numbers are checked a device at a time, in bulk
    for stamps in dev_ts.values():
        if not set(map(type, stamps)) <= {int} or min(stamps) < 0 or max(stamps) > MAX_TS_MS:
            _check_records(records)
    for dseqs in dev_dseq.values():
        kinds = set(map(type, dseqs))
        if not kinds <= {int, type(None)}:
            _check_records(records)
        present = [d for d in dseqs if d is not None] if type(None) in kinds else dseqs
        if present and (min(cast(list[int], present)) < 0 or max(cast(list[int], present)) > MAX_SEQ):
            _check_records(records)

    # each series as integers where it can be (bools 0/1, ints, decimals scaled), else raw floats
    scaled: list[tuple[int, int, int, int, list[int] | list[float]]] = []  # (device, name, kind, scale, values)
    max_scaled = _MAX_SCALED if version == VERSION_1 else _MAX_SCALED_V2
    for (dev, n, k), values in series.items():
        if k == _KIND_FLOAT:
            if not all(map(math.isfinite, cast(list[float], values))):
                raise _unencodable("metric values are finite: NaN and infinities cannot be sent", metric=list(names)[n])
            scale = _float_scale(cast(list[float], values), max_scaled)
            if scale == _RAW_FLOAT:
                scaled.append((dev, n, k, scale, cast(list[float], values)))
                continue
            p = 10**scale
            scaled.append((dev, n, k, scale, [round(v * p) for v in values]))
        elif k == _KIND_INT:
            if min(cast(list[int], values)) < -MAX_INT or max(cast(list[int], values)) > MAX_INT:
                raise _unencodable("integer metric values are within ±2**53", metric=list(names)[n])
            scaled.append((dev, n, k, 0, cast(list[int], values)))
        else:
            scaled.append((dev, n, k, 0, [int(v) for v in values]))

    head_tables: list[object] = [
        list(devices),
        list(names),
        list(types),
        [[dev, list(layout)] for (dev, layout) in groups],
        [dict(t) for t in tag_table],
    ]
    parts = _Parts(head_tables, seq_deltas, rec_group, rec_type, rec_tags, dev_ts, dev_dseq, scaled, bodies)
    try:
        raw = _body_v1(parts) if version == VERSION_1 else _body_v2(parts)
    except (TypeError, ValueError, OverflowError) as exc:
        raise BatchError(Code.BATCH_UNENCODABLE, f"record content cannot be encoded: {exc}") from exc
    payload = zstandard.ZstdCompressor(level=level).compress(raw) if compression is Compression.ZSTD else raw
    gw = gateway_id.encode()
    try:
        head = HEADER.pack(
            MAGIC,
            version,
            Compression(compression),
            Stream(stream),
            len(gw),
            records[0].seq,
            records[-1].seq,
            gateway_time_ms,
            len(records),
            len(raw),
            len(payload),
            0,
        )
    except (struct.error, ValueError) as exc:
        raise _unencodable(f"header field out of range: {exc}") from exc
    crc = zlib.crc32(gw + payload, zlib.crc32(head[:_CRC_SPAN]))
    return head[:_CRC_SPAN] + struct.pack(">I", crc) + gw + payload


class _Parts(NamedTuple):
    """What the encoder gathered from the records, before a version lays it out."""

    head_tables: list[object]  # devices, names, types, groups, tag sets
    seq_deltas: list[int]
    rec_group: list[int]
    rec_type: list[int]
    rec_tags: list[int]
    dev_ts: dict[int, list[int]]
    dev_dseq: dict[int, list[int | None]]
    scaled: list[tuple[int, int, int, int, list[int] | list[float]]]  # (device, name, kind, scale, values)
    bodies: list[list[object]]


def _body_v1(parts: _Parts) -> bytes:
    """Version 1: one msgpack array of 13 columns."""
    head_tables, seq_deltas, rec_group, rec_type, rec_tags, dev_ts, dev_dseq, scaled, bodies = parts
    series_out = [
        [dev, n, k, scale, values if scale == _RAW_FLOAT or k == _KIND_BOOL else _deltas(cast(list[int], values))]
        for dev, n, k, scale, values in scaled
    ]
    ts_out = []
    dseq_out = []
    for dev, stamps in dev_ts.items():
        ts_out.append(_deltas(_deltas(stamps)))  # delta-of-delta: a steady cadence becomes zeros
        dseq_out.append(_dseq_deltas(dev_dseq[dev]))
    body = [*head_tables, seq_deltas, rec_group, rec_type, rec_tags, ts_out, dseq_out, series_out, bodies]
    return cast(bytes, msgpack.packb(body, use_bin_type=True))


def _dseq_deltas(dseqs: list[int | None]) -> list[int | None]:
    """Device sequence numbers as deltas from the previous present one; None stays None."""
    prev = 0
    col: list[int | None] = []
    for s in dseqs:
        if s is None:
            col.append(None)
        else:
            col.append(s - prev)
            prev = s
    return col


def _body_v2(parts: _Parts) -> bytes:
    """Version 2: a u32 length, the msgpack directory, then the numeric columns (see the module doc)."""
    head_tables, seq_deltas, rec_group, rec_type, rec_tags, dev_ts, dev_dseq, scaled, bodies = parts
    # the four per-record columns first, each on its own; then every other column, grouped by code
    columns: list[tuple[int, Sequence[int] | Sequence[float]]] = []
    types_, tag_sets = cast(list[str], head_tables[2]), cast(list[object], head_tables[4])
    # a type or tag column whose table has one entry says nothing: it is sent empty
    for col in (seq_deltas[1:], rec_group, rec_type if len(types_) > 1 else [], rec_tags if len(tag_sets) > 1 else []):
        columns.append((_code(col), col))
    first_ts: list[int] = []
    cadences: list[int] = []
    dev_dseqs: list[object] = []
    prev_first = 0
    for dev, stamps in dev_ts.items():
        intervals = _deltas(stamps)[1:]
        cadence = sorted(intervals)[len(intervals) // 2] if intervals else 0
        residuals = [d - cadence for d in intervals]
        columns.append((_code(residuals), residuals))
        first_ts.append(stamps[0] - prev_first)
        prev_first = stamps[0]
        cadences.append(cadence)
        dseqs = dev_dseq[dev]
        if None in dseqs:
            dev_dseqs.append(_dseq_deltas(dseqs))
        else:
            present = cast(list[int], dseqs)
            gaps = _deltas(present)[1:]
            columns.append((_code(gaps), gaps))
            dev_dseqs.append(present[0])
    # series in the order their keys first appear in the groups' layouts, which is the order the
    # encoder met them in: the decoder derives the keys, so only scales and first values travel
    by_key = {(dev, n, k): (scale, values) for dev, n, k, scale, values in scaled}
    layouts = cast(list[list[Any]], head_tables[3])
    order = dict.fromkeys((dev, layout[j], layout[j + 1]) for dev, layout in layouts for j in range(0, len(layout), 2))
    scales: list[int] = []
    firsts: list[int | None] = []
    for key in order:
        scale, values = by_key[key]
        scales.append(scale)
        if scale == _RAW_FLOAT:
            columns.append((_COL_F64, values))
            firsts.append(None)
        elif key[2] == _KIND_BOOL:
            columns.append((_code(cast(list[int], values)), values))
            firsts.append(None)
        else:
            ints = cast(list[int], values)
            steps = _deltas(ints)[1:]
            columns.append((_code(steps), steps))
            firsts.append(ints[0])
    codes = bytes(code for code, _ in columns)
    blob = [_pack(code, col) for code, col in columns[:4]]
    for code in sorted(set(codes[4:])):
        blob.append(_pack(code, [v for c, col in columns[4:] if c == code for v in col]))
    directory = msgpack.packb([*head_tables, bodies, first_ts, cadences, dev_dseqs, scales, firsts, codes], use_bin_type=True)
    return b"".join([_U32.pack(len(directory)), directory, *blob])


def _code(values: Sequence[int]) -> int:
    """The narrowest column code that holds every value: unsigned when none is negative."""
    lo, hi = (min(values), max(values)) if values else (0, 0)
    if lo >= 0:
        return _UNSIGNED + next((w for w in _WIDTHS if hi < 1 << (8 * w)), 8)
    return next((w for w in _WIDTHS if -(1 << (8 * w - 1)) <= lo and hi < 1 << (8 * w - 1)), 8)


def _pack(code: int, values: Sequence[int] | Sequence[float]) -> bytes:
    """Values as little-endian fixed-width numbers, byte-shuffled: byte 0 of every value, then byte 1..."""
    col = array(_COLUMN_TYPES[code], values)  # OverflowError for what the code cannot hold
    if _BIG_ENDIAN:
        col.byteswap()
    raw = col.tobytes()
    w = col.itemsize
    return raw if w == 1 else b"".join([raw[k::w] for k in range(w)])


# ---------------------------------------------------------------------------------------------
# decode


def _malformed(why: str) -> BatchError:
    return BatchError(Code.BATCH_MALFORMED, f"batch body is malformed: {why}")


def _ints(col: object, what: str) -> list[int]:
    if not isinstance(col, list) or not set(map(type, col)) <= {int}:
        raise _malformed(f"{what} must be a list of integers")
    return col


def _strs(col: object, what: str) -> list[str]:
    if not isinstance(col, list) or not set(map(type, col)) <= {str}:
        raise _malformed(f"{what} must be a list of strings")
    return col


def _in_range(col: list[int], size: int, what: str) -> None:
    if col and (min(col) < 0 or max(col) >= size):
        raise _malformed(f"{what} index out of range")


def _check_json(value: object, code: Code = Code.BATCH_MALFORMED, depth: int = 0) -> None:
    """A record body is JSON: objects with string keys, lists, strings, finite numbers, bools, null."""
    if depth > _MAX_BODY_DEPTH:
        raise BatchError(code, f"a record body nests at most {_MAX_BODY_DEPTH} deep")
    if type(value) is dict:
        for k, v in value.items():
            if type(k) is not str:
                raise BatchError(code, "record body keys are strings")
            _check_json(v, code, depth + 1)
    elif type(value) is list:
        for v in value:
            _check_json(v, code, depth + 1)
    elif type(value) not in _JSON_SCALARS or (type(value) is float and not math.isfinite(value)):
        raise BatchError(code, "a record body holds only what JSON can carry", value=repr(value)[:40])


def _decompress(payload: bytes, header: Header) -> bytes:
    if header.compression is Compression.NONE:
        if len(payload) != header.body_len:
            raise BatchError(Code.BATCH_LENGTH_MISMATCH, "body length differs from the header")
        return payload
    try:
        declared = zstandard.frame_content_size(payload)
        if declared not in (-1, header.body_len):
            raise BatchError(Code.BATCH_LENGTH_MISMATCH, "compressed frame declares a different size than the header")
        # Never allocates more than the header allows; reading across frames makes a second frame
        # or trailing bytes after the first one an error instead of something silently ignored.
        with zstandard.ZstdDecompressor().stream_reader(payload, read_across_frames=True) as reader:
            raw = reader.read(header.body_len + 1)
    except zstandard.ZstdError as exc:
        raise BatchError(Code.BATCH_DECOMPRESS_FAILED, f"zstd: {exc}") from exc
    if len(raw) != header.body_len:
        raise BatchError(Code.BATCH_LENGTH_MISMATCH, "decompressed size differs from the header", got=len(raw))
    return raw


def _device_seqs(col: list[object]) -> list[int | None]:
    """Device sequence numbers: deltas from the device's previous present number; None = absent."""
    kinds = set(map(type, col))
    if kinds == {int}:  # the common case: every record carries one
        seqs: list[int | None] = list(accumulate(cast(list[int], col)))
        present = cast(list[int], seqs)
    elif kinds <= {int, type(None)}:
        prev = 0
        seqs = []
        for d in col:
            if d is None:
                seqs.append(None)
            else:
                prev += cast(int, d)
                seqs.append(prev)
        present = [s for s in seqs if s is not None]
    else:
        raise _malformed("device sequence numbers")
    if present and (min(present) < 0 or max(present) > MAX_SEQ):
        raise _malformed("device sequence numbers out of range")
    return seqs


def decode(data: bytes, limits: BatchLimits = DEFAULT_BATCH_LIMITS) -> Batch:
    """Decode a batch. Raises ``BatchError`` (never anything else) for every refusal."""
    header = read_header(data, limits)
    # The cyclic garbage collector is paused while the body is decoded. A batch makes two objects per
    # record the collector counts (a Record, which as a tuple subclass it tracks for good, and its
    # metrics dict), so it would run a collection every ~350 records, each one walking the decoder's
    # per-record columns again, and a full collection every other bench pass: ~15% of decode time
    # in ``pulse bench codec``. Pausing only defers: the decoder makes no reference cycles of its own
    # (reference counting frees what it drops), and whatever else became garbage meanwhile is found
    # by the next collection. Paused only when it is on: a process that turned it off keeps it off.
    paused = gc.isenabled()
    if paused:
        gc.disable()
    try:
        return Batch(header, _decode_body(data, header))
    except BatchError:
        raise
    except Exception as exc:  # the decoder promises: only the taxonomy's error escapes
        raise _malformed(f"{type(exc).__name__}") from exc
    finally:
        if paused:
            gc.enable()


def _decode_body(data: bytes, header: Header) -> list[Record]:
    payload = data[HEADER_SIZE + len(header.gateway_id.encode()) :]
    raw = _decompress(payload, header)
    if header.version == VERSION_2:
        return _decode_v2(raw, header)
    return _decode_v1(raw, header)


def _unpack(raw: bytes | memoryview) -> object:
    try:
        return msgpack.unpackb(raw, raw=False, use_list=True, strict_map_key=True)
    except (ValueError, msgpack.UnpackException, TypeError) as exc:
        raise _malformed(f"msgpack: {str(exc)[:80]}") from exc


def _check_tables(devices: object, names: object, types: object, tag_table: object) -> tuple[list[str], list[str], list[str], list[dict[str, str]]]:
    """The dictionaries, the same in every version."""
    devices = _strs(devices, "devices")
    names = _strs(names, "names")
    types = _strs(types, "types")
    if not all(valid_device_id(d) for d in devices) or len(set(devices)) != len(devices):
        raise _malformed("device ids")
    if len(set(names)) != len(names):
        raise _malformed("metric names repeat in the dictionary")
    if not isinstance(tag_table, list) or not all(
        type(t) is dict and set(map(type, t)) <= {str} and set(map(type, t.values())) <= {str} for t in tag_table
    ):
        raise _malformed("tags table")
    return devices, names, types, tag_table


def _check_records_columns(seqs: list[int], header: Header, rec_group: list[int], rec_type: list[int], rec_tags: list[int],
                           groups: int, types: int, tag_sets: int) -> None:
    if seqs[-1] != header.last_seq:
        raise BatchError(Code.BATCH_BAD_SEQUENCE, "records' sequence numbers do not end at the header's last")
    _in_range(rec_type, types, "type")
    _in_range(rec_tags, tag_sets, "tags")
    _in_range(rec_group, groups, "group")


def _group_entry(entry: object, n_devices: int) -> tuple[int, list[int]]:
    """One entry of the groups column, both versions: ``[device index, layout]``, checked."""
    if not isinstance(entry, list) or len(entry) != 2:
        raise _malformed("group entry")
    dev, layout = entry
    if type(dev) is not int or not 0 <= dev < n_devices:
        raise _malformed("group device")
    return dev, _ints(layout, "group layout")


class _Groups(NamedTuple):
    dev_idx: list[int]  # per group: index into devices
    dev: list[str]  # per group: the device id
    names: list[tuple[str, ...]]  # per group: its metric names, in order
    keys: list[list[tuple[int, int, int]]]  # per group: the (device, name, kind) series it draws from
    expected: dict[tuple[int, int, int], int]  # per series: how many values the records use
    uses: Counter[int]  # per group: how many records use it


def _groups(groups_raw: object, devices: list[str], names: list[str], series_keys: Container[tuple[int, int, int]],
            rec_group: list[int]) -> _Groups:
    """Groups: which device, which metric names in which order, drawn from which series."""
    if not isinstance(groups_raw, list):
        raise _malformed("groups")
    uses = Counter(rec_group)
    out = _Groups([], [], [], [], {}, uses)
    expected = out.expected
    n_devices, n_names = len(devices), len(names)
    seen: dict[tuple[object, ...], tuple[list[int], list[int], tuple[str, ...]]] = {}
    for g, entry in enumerate(groups_raw):
        dev, layout = _group_entry(entry, n_devices)
        shape = seen.get(tuple(layout))  # devices of one profile share a layout: checked once
        if shape is None:
            name_idx = layout[0::2]
            if len(layout) % 2 or (name_idx and (min(name_idx) < 0 or max(name_idx) >= n_names)) or len(set(name_idx)) != len(name_idx):
                raise _malformed("group layout")
            shape = seen[tuple(layout)] = (name_idx, layout[1::2], tuple(map(names.__getitem__, name_idx)))
        keys = list(zip(repeat(dev), shape[0], shape[1]))
        if not all(map(series_keys.__contains__, keys)):
            raise _malformed("group refers to a missing series")
        out.dev_idx.append(dev)
        out.dev.append(devices[dev])
        out.names.append(shape[2])
        out.keys.append(keys)
        count = uses.get(g, 0)
        for k in keys:
            expected[k] = expected.get(k, 0) + count
    return out


def _bodies(bodies: object, n: int) -> list[JsonObject | None]:
    if not isinstance(bodies, list):
        raise _malformed("bodies")
    body_col: list[JsonObject | None] = [None] * n
    for item in bodies:
        if not isinstance(item, list) or len(item) != 2 or type(item[0]) is not int or not 0 <= item[0] < n:
            raise _malformed("body entry")
        if body_col[item[0]] is not None:
            raise _malformed("two bodies for one record")
        if not isinstance(item[1], dict):
            raise _malformed("body is an object")
        _check_json(item[1])
        body_col[item[0]] = item[1]
    return body_col


def _assemble(
    seqs: list[int],
    rec_group: Sequence[int],
    rec_dev: Sequence[int],
    rec_type: Sequence[int] | None,
    rec_tags: Sequence[int] | None,
    group_dev: Sequence[str],
    group_names: Sequence[tuple[str, ...]],
    group_keys: Sequence[Sequence[tuple[int, int, int]]],
    series: dict[tuple[int, int, int], list[MetricValue]],
    stamps: Sequence[list[int]],
    dseqs: Sequence[list[int | None]],
    types: list[str],
    tag_table: list[dict[str, str]],
    body_col: list[JsonObject | None] | None,
) -> list[Record]:
    """The records, built column by column in C: every length was checked by the caller.

    Per group: its device id, metric names and the (device, name, kind) series it draws from; per
    device (by index): its timestamps and device sequence numbers, in record order. ``rec_type`` and
    ``rec_tags`` are None when their table has one entry (every record uses it).

    One lazy stream of metric dicts per group: for each of the group's series, a stream of
    (name, value) pairs; zip takes one pair from each and dict() makes the record's metrics (series
    a device shares between groups stay in record order, as their iterators are shared). Each
    per-record column is a ``map`` over the record's group or device index, and ``next`` on the
    matching stream."""
    iters = {k: iter(v) for k, v in series.items()}
    group_metrics: list[Iterator[dict[str, MetricValue]]] = [
        map(dict, zip(*[zip(repeat(name), iters[k], strict=False) for name, k in zip(names_g, keys, strict=True)], strict=False))
        if keys
        else iter(dict, None)
        for names_g, keys in zip(group_names, group_keys, strict=True)
    ]
    n = len(seqs)
    tags_out = [t or None for t in tag_table]
    # itemgetter(*indices)(table) picks every record's entry in one C call (given 2 or more indices)
    by_dev, by_group = (itemgetter(*rec_dev), itemgetter(*rec_group)) if n > 1 else (_single(rec_dev[0]), _single(rec_group[0]))
    columns = zip(  # noqa: B905 (the lengths were checked)
        seqs,
        by_group(group_dev) if len(group_dev) > 1 else repeat(group_dev[0], n),
        map(next, by_dev(list(map(iter, stamps)))),
        repeat(types[0], n) if rec_type is None else map(types.__getitem__, rec_type),
        map(next, by_group(group_metrics)),
        map(next, by_dev(list(map(iter, dseqs)))),
        repeat(tags_out[0], n) if rec_tags is None else map(tags_out.__getitem__, rec_tags),
        repeat(None, n) if body_col is None else body_col,
    )
    return list(map(tuple.__new__, repeat(Record), columns))


def _single(i: int) -> Callable[[Sequence[Any]], tuple[Any, ...]]:
    """What ``itemgetter(i, j, ...)`` does, for a single index (itemgetter(i) alone gives no tuple)."""
    return lambda table: (table[i],)


def _devices(groups: _Groups, rec_group: list[int]) -> tuple[list[int], list[int], Counter[int]]:
    """Per record its device index; the devices in order of first appearance; records per device."""
    rec_dev = list(map(groups.dev_idx.__getitem__, rec_group))
    order = list(dict.fromkeys(map(groups.dev_idx.__getitem__, dict.fromkeys(rec_group))))
    counts: Counter[int] = Counter()
    for g, c in groups.uses.items():
        counts[groups.dev_idx[g]] += c
    return rec_dev, order, counts


def _decode_v1(raw: bytes, header: Header) -> list[Record]:
    body = _unpack(raw)
    if not isinstance(body, list) or len(body) != 13:
        raise _malformed("expected 13 columns")
    (devices, names, types, groups_raw, tag_table, seq_deltas, rec_group, rec_type, rec_tags, ts_cols, dseq_cols, series_raw, bodies) = body
    devices, names, types, tag_table = _check_tables(devices, names, types, tag_table)
    n = header.record_count
    seq_deltas = _ints(seq_deltas, "sequence deltas")
    rec_group = _ints(rec_group, "record groups")
    rec_type = _ints(rec_type, "record types")
    rec_tags = _ints(rec_tags, "record tags")
    if not (len(seq_deltas) == len(rec_group) == len(rec_type) == len(rec_tags) == n):
        raise _malformed("columns differ in length from the record count")
    if seq_deltas[0] != 0 or (n > 1 and min(seq_deltas[1:]) < 1):
        raise _malformed("sequence numbers must increase")
    seqs = list(accumulate(seq_deltas, initial=header.first_seq))[1:]
    if not isinstance(groups_raw, list):
        raise _malformed("groups")
    _check_records_columns(seqs, header, rec_group, rec_type, rec_tags, len(groups_raw), len(types), len(tag_table))

    # series: (device, name, kind) -> decoded values
    if not isinstance(series_raw, list):
        raise _malformed("series")
    series: dict[tuple[int, int, int], list[MetricValue]] = {}
    for item in series_raw:
        if not isinstance(item, list) or len(item) != 5:
            raise _malformed("series entry")
        dev, name, kind, scale, values = item
        if (
            type(dev) is not int
            or not 0 <= dev < len(devices)
            or type(name) is not int
            or not 0 <= name < len(names)
            or type(kind) is not int
        ):
            raise _malformed("series key")
        if not isinstance(values, list) or not values or (dev, name, kind) in series:
            raise _malformed("series values")
        if kind == _KIND_FLOAT and scale == _RAW_FLOAT:
            if not set(map(type, values)) <= {float} or not all(map(math.isfinite, values)):
                raise _malformed("raw float series")
            decoded: list[MetricValue] = values
        elif kind == _KIND_FLOAT and type(scale) is int and 0 <= scale <= _MAX_SCALE:
            p = 10**scale
            decoded = list(map(truediv, accumulate(_ints(values, "float series")), repeat(p)))
        elif kind == _KIND_INT and scale == 0:
            ints = list(accumulate(_ints(values, "int series")))
            if min(ints) < -MAX_INT or max(ints) > MAX_INT:
                raise _malformed("integer metric values are within ±2**53")
            decoded = cast(list[MetricValue], ints)
        elif kind == _KIND_BOOL and scale == 0:
            if not set(map(type, values)) <= {int} or not set(values) <= {0, 1}:
                raise _malformed("bool series")
            decoded = [v == 1 for v in values]
        else:
            raise _malformed("series kind")
        series[(dev, name, kind)] = decoded

    groups = _groups(groups_raw, devices, names, series, rec_group)
    if any(groups.expected.get(k, 0) != len(v) for k, v in series.items()):
        raise _malformed("series lengths do not match the records that use them")

    # per-device columns: timestamps (delta-of-delta) and device sequence numbers (deltas)
    rec_dev, order, dev_counts = _devices(groups, rec_group)  # devices in order of first appearance, as the encoder wrote them
    if not isinstance(ts_cols, list) or not isinstance(dseq_cols, list):
        raise _malformed("per-device columns")
    if len(ts_cols) != len(order) or len(dseq_cols) != len(order):
        raise _malformed("per-device columns")
    stamps_of: dict[int, list[int]] = {}
    dseqs_of: dict[int, list[int | None]] = {}
    for dev, ts_col, dseq_col in zip(order, ts_cols, dseq_cols, strict=True):
        ts_col = _ints(ts_col, "timestamps")
        if len(ts_col) != dev_counts[dev] or not isinstance(dseq_col, list) or len(dseq_col) != dev_counts[dev]:
            raise _malformed("per-device column length")
        stamps = list(accumulate(accumulate(ts_col)))
        if min(stamps) < 0 or max(stamps) > MAX_TS_MS:
            raise _malformed("timestamps out of range")
        stamps_of[dev] = stamps
        dseqs_of[dev] = _device_seqs(dseq_col)

    body_col = _bodies(bodies, n) if bodies != [] else None
    return _assemble(
        seqs, rec_group, rec_dev, rec_type if len(types) > 1 else None, rec_tags if len(tag_table) > 1 else None,
        groups.dev, groups.names, groups.keys, series,
        [stamps_of.get(d, []) for d in range(len(devices))], [dseqs_of.get(d, []) for d in range(len(devices))],
        types, tag_table, body_col,
    )


class _Columns:
    """Version 2's numeric columns: the four per-record columns, then the others grouped by code.
    Every region is checked to lie within the body before anything is copied out of it."""

    def __init__(self, codes: object, blob: memoryview) -> None:
        if type(codes) is not bytes or len(codes) < 4 or not set(codes) <= _COLUMN_TYPES.keys():
            raise _malformed("column codes")
        self.codes = codes
        self.blob = blob
        self.pos = 0

    def _region(self, code: int, count: int, what: str) -> list[Any]:
        col = array(_COLUMN_TYPES[code])
        w = col.itemsize
        start, end = self.pos, self.pos + w * count
        if end > len(self.blob):
            raise _malformed(f"{what} run past the body")
        if w == 1:
            col.frombytes(self.blob[start:end])
        else:
            buf = bytearray(w * count)
            for k in range(w):  # un-shuffle: plane k holds byte k of every value
                buf[k::w] = self.blob[start + k * count : start + (k + 1) * count]
            col.frombytes(buf)
            if _BIG_ENDIAN:
                col.byteswap()
        self.pos = end
        return col.tolist()

    def record_column(self, i: int, count: int, what: str) -> Sequence[int]:
        """One of the four per-record columns; they hold no negative number (the encoder writes them unsigned)."""
        code = self.codes[i]
        if code == _COL_F64:
            raise _malformed(f"{what} column kind")
        if code == _U8:  # the usual case: the bytes themselves (bytes.count, translate and find run in C)
            start, end = self.pos, self.pos + count
            if end > len(self.blob):
                raise _malformed(f"{what} run past the body")
            self.pos = end
            return bytes(self.blob[start:end])
        col = self._region(code, count, what)
        if code < _UNSIGNED and col and min(col) < 0:
            raise _malformed(f"{what}: negative")
        return col

    def others(self, counts: list[int], floats: list[bool]) -> list[list[Any]]:
        """The other columns, in their logical order, given how many values each holds."""
        codes = self.codes[4:]
        if len(codes) != len(counts) or any((c == _COL_F64) != f for c, f in zip(codes, floats, strict=True)):
            raise _malformed("column codes do not match the directory")
        out: list[list[Any]] = [[] for _ in counts]
        for code in sorted(set(codes)):
            which = [i for i, c in enumerate(codes) if c == code]
            values = self._region(code, sum(map(counts.__getitem__, which)), "columns")
            pos = 0
            for i in which:  # cut the region into its columns, each to its logical place
                out[i] = values[pos : pos + counts[i]]
                pos += counts[i]
        if self.pos != len(self.blob):
            raise _malformed("bytes left over after the columns")
        return out


def _decode_v2(raw: bytes, header: Header) -> list[Record]:
    if len(raw) < _U32.size:
        raise _malformed("no directory")
    (dir_len,) = _U32.unpack_from(raw)
    if _U32.size + dir_len > len(raw):
        raise _malformed("the directory runs past the body")
    view = memoryview(raw)
    directory = _unpack(view[_U32.size : _U32.size + dir_len])
    if not isinstance(directory, list) or len(directory) != 12:
        raise _malformed("expected a directory of 12 entries")
    (devices, names, types, groups_raw, tag_table, bodies, first_ts, cadences, dev_dseqs, scales, firsts, codes) = directory
    devices, names, types, tag_table = _check_tables(devices, names, types, tag_table)
    cols = _Columns(codes, view[_U32.size + dir_len :])
    n = header.record_count
    # a type or tag table of one entry sends no column (every record uses entry 0): None here
    seq_gaps = cols.record_column(0, n - 1, "sequence gaps")
    rec_group = cols.record_column(1, n, "record groups")
    rec_type = cols.record_column(2, n, "record types") if len(types) > 1 else None
    rec_tags = cols.record_column(3, n, "record tags") if len(tag_table) > 1 else None
    if 0 in seq_gaps:
        raise _malformed("sequence numbers must increase")
    if seq_gaps.count(1) == len(seq_gaps):  # the usual case: no gap in the gateway's numbering
        seqs = list(range(header.first_seq, header.first_seq + n))
    else:
        seqs = list(accumulate(seq_gaps, initial=header.first_seq))
    if not isinstance(groups_raw, list):
        raise _malformed("groups")
    if seqs[-1] != header.last_seq:
        raise BatchError(Code.BATCH_BAD_SEQUENCE, "records' sequence numbers do not end at the header's last")
    for col, size, what in ((rec_group, len(groups_raw), "group"), (rec_type, len(types), "type"), (rec_tags, len(tag_table), "tags")):
        if size == 0 or (col is not None and max(col) >= size):
            raise _malformed(f"{what} index out of range")

    group_dev, group_names, group_keys = _groups_v2(groups_raw, len(devices), names)
    group_ids = list(map(devices.__getitem__, group_dev))
    # the series, in order of first appearance in the groups' layouts, and how many values each holds
    flat = list(chain.from_iterable(group_keys))
    keys = list(dict.fromkeys(flat))
    if type(rec_group) is bytes and len(groups_raw) <= 256:
        uses = list(map(rec_group.count, range(len(groups_raw))))  # bytes.count: a C scan per group
    else:
        counter = Counter(rec_group)
        uses = list(map(counter.__getitem__, range(len(groups_raw))))
    if len(keys) == len(flat):  # the usual case: no two groups share a series
        key_counts = list(chain.from_iterable(map(repeat, uses, map(len, group_keys))))
    else:
        expected = dict.fromkeys(keys, 0)
        for keys_g, used in zip(group_keys, uses, strict=True):
            for k in keys_g:
                expected[k] += used
        key_counts = list(map(expected.__getitem__, keys))

    # per record its device; per device its record count; the devices in order of first appearance
    n_devices = len(devices)
    if type(rec_group) is bytes and n_devices <= 256:
        dev_of = rec_group.translate(bytes(group_dev[:256]).ljust(256, b"\0"))
        dev_counts = list(map(dev_of.count, range(n_devices)))
        order = sorted(compress(range(n_devices), dev_counts), key=dev_of.find)
        rec_dev: Sequence[int] = dev_of
    else:
        rec_dev = list(map(group_dev.__getitem__, rec_group))
        dev_counter = Counter(rec_dev)
        dev_counts = list(map(dev_counter.__getitem__, range(n_devices)))
        order = list(dict.fromkeys(rec_dev))
    first_ts = _ints(first_ts, "first timestamps")
    cadences = _ints(cadences, "cadences")
    if not isinstance(dev_dseqs, list) or not len(first_ts) == len(cadences) == len(dev_dseqs) == len(order):
        raise _malformed("per-device entries")
    if not isinstance(scales, list) or not isinstance(firsts, list) or not len(scales) == len(firsts) == len(keys):
        raise _malformed("series")

    # what each column holds: per device, its timestamps and (when all present) its device sequence
    # numbers; then per series its values
    counts: list[int] = []
    for dev, dseq in zip(order, dev_dseqs, strict=True):
        counts.append(dev_counts[dev] - 1)
        if type(dseq) is int:
            counts.append(dev_counts[dev] - 1)
        elif not isinstance(dseq, list) or len(dseq) != dev_counts[dev]:
            raise _malformed("device sequence numbers")
    floats = [False] * len(counts)
    shapes: list[int] = []
    for key, count, scale, first in zip(keys, key_counts, scales, firsts, strict=True):
        kind = key[2]
        if count == 0:
            raise _malformed("a series no record uses")
        if kind == _KIND_FLOAT and type(scale) is int and 0 <= scale <= _MAX_SCALE and type(first) is int:
            shape = _KIND_FLOAT
        elif kind == _KIND_FLOAT and scale == _RAW_FLOAT and first is None:
            shape = _RAW_FLOAT
        elif kind == _KIND_INT and scale == 0 and type(first) is int:
            shape = _KIND_INT
        elif kind == _KIND_BOOL and scale == 0 and first is None:
            shape = _KIND_BOOL
        else:
            raise _malformed("series kind")
        shapes.append(shape)
        counts.append(count if first is None else count - 1)
        floats.append(shape == _RAW_FLOAT)
    columns = iter(cols.others(counts, floats))

    # per device: timestamps as (interval - cadence) from the first; device sequence numbers as
    # deltas from the first (or version 1's list when some are absent)
    stamps_of: list[list[int]] = [[]] * n_devices
    dseqs_of: list[list[int | None]] = [[]] * n_devices
    for dev, first, cadence, dseq in zip(order, accumulate(first_ts), cadences, dev_dseqs, strict=True):
        stamps = list(accumulate(map(add, next(columns), repeat(cadence)), initial=first))
        if min(stamps) < 0 or max(stamps) > MAX_TS_MS:
            raise _malformed("timestamps out of range")
        stamps_of[dev] = stamps
        if type(dseq) is int:
            gaps = next(columns)
            if gaps.count(1) == len(gaps):  # the usual case: the device counted one by one
                present = list(range(dseq, dseq + len(gaps) + 1))
                low, high = dseq, present[-1]
            else:
                present = list(accumulate(gaps, initial=dseq))
                low, high = min(present), max(present)
            if low < 0 or high > MAX_SEQ:
                raise _malformed("device sequence numbers out of range")
            dseqs_of[dev] = cast(list[int | None], present)
        else:
            dseqs_of[dev] = _device_seqs(dseq)

    series: dict[tuple[int, int, int], list[MetricValue]] = {}
    for key, shape, scale, first in zip(keys, shapes, scales, firsts, strict=True):
        col = next(columns)
        if shape == _KIND_FLOAT:
            if col.count(0) == len(col):  # a value that did not change: one float object, shared
                series[key] = [first / _POW10[scale]] * (len(col) + 1)
            else:
                series[key] = list(map(truediv, accumulate(col, initial=first), repeat(_POW10[scale])))
        elif shape == _RAW_FLOAT:
            if not all(map(math.isfinite, col)):
                raise _malformed("raw float series")
            series[key] = col
        elif shape == _KIND_INT:
            values = list(accumulate(col, initial=first))
            if min(values) < -MAX_INT or max(values) > MAX_INT:
                raise _malformed("integer metric values are within ±2**53")
            series[key] = values
        else:
            if col.count(0) + col.count(1) != len(col):
                raise _malformed("bool series")
            series[key] = list(map(_BOOLS.__getitem__, col))

    body_col = _bodies(bodies, n) if bodies != [] else None
    return _assemble(
        seqs, rec_group, rec_dev, rec_type, rec_tags, group_ids, group_names, group_keys, series, stamps_of, dseqs_of, types, tag_table, body_col
    )


def _groups_v2(groups_raw: list[object], n_devices: int, names: list[str]) -> tuple[list[int], list[tuple[str, ...]], list[list[tuple[int, int, int]]]]:
    """Version 2's groups: per group its device index, its metric names and the (device, name, kind)
    series it draws from (version 2 sends no series keys: the groups' layouts are the keys)."""
    group_dev: list[int] = []
    group_names: list[tuple[str, ...]] = []
    group_keys: list[list[tuple[int, int, int]]] = []
    n_names = len(names)
    seen: dict[tuple[int, ...], tuple[list[int], list[int], tuple[str, ...]]] = {}  # devices of one profile share a layout
    for entry in groups_raw:
        dev, layout = _group_entry(entry, n_devices)
        shape = seen.get(tuple(layout))
        if shape is None:
            name_idx = layout[0::2]
            if len(layout) % 2 or (name_idx and (min(name_idx) < 0 or max(name_idx) >= n_names)) or len(set(name_idx)) != len(name_idx):
                raise _malformed("group layout")
            shape = seen[tuple(layout)] = (name_idx, layout[1::2], tuple(map(names.__getitem__, name_idx)))
        group_dev.append(dev)
        group_names.append(shape[2])
        group_keys.append(list(zip(repeat(dev), shape[0], shape[1])))
    return group_dev, group_names, group_keys
