"""Sync batch codec: how a gateway ships a run of buffered records to the cloud.

A batch is a 48-byte fixed header, the gateway id, and a payload (big-endian integers)::

    offset size  field
    0      4     magic b"PSYN"
    4      1     format version (1)
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
"""

from __future__ import annotations

import math
import struct
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import IntEnum
from itertools import accumulate, chain, repeat
from operator import sub, truediv
from typing import NamedTuple, cast

import msgpack
import zstandard

from pulse.protocol.envelope import MAX_INT, MAX_SEQ, JsonObject, MetricValue
from pulse.protocol.errors import BatchError, Code
from pulse.protocol.topics import valid_device_id

MAGIC = b"PSYN"
FORMAT_VERSION = 1
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
    if version != FORMAT_VERSION:
        raise BatchError(Code.BATCH_VERSION_UNSUPPORTED, f"this receiver understands batch format {FORMAT_VERSION}", version=version)
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
    return Header(gateway_id, stream_kind, first, last, gw_time, count, body_len, payload_len, compression_kind)


# ---------------------------------------------------------------------------------------------
# encode


def _float_scale(values: Sequence[float]) -> int:
    """The smallest decimal scale that reproduces every value exactly, or -1 (keep raw floats)."""
    for scale in range(_MAX_SCALE + 1):
        p = 10**scale
        for v in values:
            scaled = v * p
            if not -_MAX_SCALED <= scaled <= _MAX_SCALED:  # also keeps round() away from infinity
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
) -> bytes:
    """Encode records (in increasing ``seq`` order) into one batch."""
    if not records:
        raise BatchError(Code.BATCH_UNENCODABLE, "a batch holds at least one record")
    if type(gateway_id) is not str or not valid_device_id(gateway_id):
        raise BatchError(Code.BATCH_UNENCODABLE, "the gateway id is not a valid id")
    devices: dict[str, int] = {}
    names: dict[str, int] = {}
    types: dict[str, int] = {}
    groups: dict[tuple[int, tuple[int, ...]], int] = {}
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

    series_out = []
    for (dev, n, k), values in series.items():
        if k == _KIND_FLOAT:
            if not all(map(math.isfinite, cast(list[float], values))):
                raise _unencodable("metric values are finite: NaN and infinities cannot be sent", metric=list(names)[n])
            scale = _float_scale(cast(list[float], values))
            if scale == _RAW_FLOAT:
                series_out.append([dev, n, k, scale, values])
                continue
            p = 10**scale
            series_out.append([dev, n, k, scale, _deltas([round(v * p) for v in values])])
        elif k == _KIND_INT:
            if min(cast(list[int], values)) < -MAX_INT or max(cast(list[int], values)) > MAX_INT:
                raise _unencodable("integer metric values are within ±2**53", metric=list(names)[n])
            series_out.append([dev, n, k, 0, _deltas(cast(list[int], values))])
        else:
            series_out.append([dev, n, k, 0, [int(v) for v in values]])

    ts_out = []
    dseq_out = []
    for dev, stamps in dev_ts.items():
        deltas = _deltas(stamps)
        ts_out.append(_deltas(deltas))  # delta-of-delta: a steady cadence becomes zeros
        prev: int | None = 0
        col: list[int | None] = []
        for s in dev_dseq[dev]:
            if s is None:
                col.append(None)
            else:
                col.append(s - (prev or 0))
                prev = s
        dseq_out.append(col)

    body = [
        list(devices),
        list(names),
        list(types),
        [[dev, list(layout)] for (dev, layout) in groups],
        [dict(t) for t in tag_table],
        seq_deltas,
        rec_group,
        rec_type,
        rec_tags,
        ts_out,
        dseq_out,
        series_out,
        bodies,
    ]
    try:
        raw = msgpack.packb(body, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise BatchError(Code.BATCH_UNENCODABLE, f"record content cannot be encoded: {exc}") from exc
    payload = zstandard.ZstdCompressor(level=level).compress(raw) if compression is Compression.ZSTD else raw
    gw = gateway_id.encode()
    try:
        head = HEADER.pack(
            MAGIC,
            FORMAT_VERSION,
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
    try:
        return Batch(header, _decode_body(data, header))
    except BatchError:
        raise
    except Exception as exc:  # the decoder promises: only the taxonomy's error escapes
        raise _malformed(f"{type(exc).__name__}") from exc


def _decode_body(data: bytes, header: Header) -> list[Record]:
    payload = data[HEADER_SIZE + len(header.gateway_id.encode()) :]
    raw = _decompress(payload, header)
    try:
        body = msgpack.unpackb(raw, raw=False, use_list=True, strict_map_key=True)
    except (ValueError, msgpack.UnpackException, TypeError) as exc:
        raise _malformed(f"msgpack: {str(exc)[:80]}") from exc
    if not isinstance(body, list) or len(body) != 13:
        raise _malformed("expected 13 columns")
    (devices, names, types, groups_raw, tag_table, seq_deltas, rec_group, rec_type, rec_tags, ts_cols, dseq_cols, series_raw, bodies) = body
    devices = _strs(devices, "devices")
    names = _strs(names, "names")
    types = _strs(types, "types")
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
    if seqs[-1] != header.last_seq:
        raise BatchError(Code.BATCH_BAD_SEQUENCE, "records' sequence numbers do not end at the header's last")
    if not all(valid_device_id(d) for d in devices) or len(set(devices)) != len(devices):
        raise _malformed("device ids")
    if len(set(names)) != len(names):
        raise _malformed("metric names repeat in the dictionary")
    if not isinstance(tag_table, list) or not all(
        type(t) is dict and set(map(type, t)) <= {str} and set(map(type, t.values())) <= {str} for t in tag_table
    ):
        raise _malformed("tags table")
    _in_range(rec_type, len(types), "type")
    _in_range(rec_tags, len(tag_table), "tags")
    if not isinstance(groups_raw, list):
        raise _malformed("groups")
    _in_range(rec_group, len(groups_raw), "group")

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

    # groups: which device, which metric names in which order, drawn from which series
    uses = Counter(rec_group)
    expected: Counter[tuple[int, int, int]] = Counter()
    group_dev: list[str] = []
    group_names: list[tuple[str, ...]] = []
    group_keys: list[list[tuple[int, int, int]]] = []
    for entry in groups_raw:
        if not isinstance(entry, list) or len(entry) != 2:
            raise _malformed("group entry")
        dev, layout = entry
        if type(dev) is not int or not 0 <= dev < len(devices):
            raise _malformed("group device")
        layout = _ints(layout, "group layout")
        if len(layout) % 2:
            raise _malformed("group layout")
        keys = [(dev, layout[j], layout[j + 1]) for j in range(0, len(layout), 2)]
        if any(k not in series for k in keys) or len({k[1] for k in keys}) != len(keys):
            raise _malformed("group refers to a missing series")
        group_dev.append(devices[dev])
        group_names.append(tuple(names[k[1]] for k in keys))
        group_keys.append(keys)
        count = uses.get(len(group_keys) - 1, 0)
        for k in keys:
            expected[k] += count
    if any(expected[k] != len(v) for k, v in series.items()):
        raise _malformed("series lengths do not match the records that use them")

    # per-device columns: timestamps (delta-of-delta) and device sequence numbers (deltas)
    group_dev_idx = [e[0] for e in groups_raw]
    rec_dev = [group_dev_idx[g] for g in rec_group]
    dev_counts = Counter(rec_dev)
    if not isinstance(ts_cols, list) or not isinstance(dseq_cols, list):
        raise _malformed("per-device columns")
    order = list(dict.fromkeys(rec_dev))  # devices in order of first appearance, as the encoder wrote them
    if len(ts_cols) != len(order) or len(dseq_cols) != len(order):
        raise _malformed("per-device columns")
    ts_iters: dict[int, Iterator[int]] = {}
    dseq_iters: dict[int, Iterator[int | None]] = {}
    for dev, ts_col, dseq_col in zip(order, ts_cols, dseq_cols, strict=True):
        ts_col = _ints(ts_col, "timestamps")
        if len(ts_col) != dev_counts[dev] or not isinstance(dseq_col, list) or len(dseq_col) != dev_counts[dev]:
            raise _malformed("per-device column length")
        stamps = list(accumulate(accumulate(ts_col)))
        if min(stamps) < 0 or max(stamps) > MAX_TS_MS:
            raise _malformed("timestamps out of range")
        ts_iters[dev] = iter(stamps)
        dseq = _device_seqs(dseq_col)
        dseq_iters[dev] = iter(dseq)

    if not isinstance(bodies, list):
        raise _malformed("bodies")
    body_of: dict[int, JsonObject] = {}
    for item in bodies:
        if not isinstance(item, list) or len(item) != 2 or type(item[0]) is not int or not 0 <= item[0] < n:
            raise _malformed("body entry")
        if item[0] in body_of:
            raise _malformed("two bodies for one record")
        if not isinstance(item[1], dict):
            raise _malformed("body is an object")
        _check_json(item[1])
        body_of[item[0]] = item[1]

    # One lazy stream of metric dicts per group, built in C: zip pulls the next value from each of
    # the group's series (series a device shares between groups stay in record order, as the
    # iterators are shared), and dict(zip(names, values)) makes the record's metrics.
    iters = {k: iter(v) for k, v in series.items()}
    group_metrics = [
        map(dict, map(zip, repeat(names_g), zip(*(iters[k] for k in keys), strict=False)) if keys else repeat(()))
        for names_g, keys in zip(group_names, group_keys, strict=True)
    ]
    metrics_next = [m.__next__ for m in group_metrics]
    tags_out = [t or None for t in tag_table]
    body_col: list[JsonObject | None] = [None] * n
    for i, b in body_of.items():
        body_col[i] = b
    ts_next = [ts_iters[d].__next__ if d in ts_iters else None for d in range(len(devices))]
    dseq_next = [dseq_iters[d].__next__ if d in dseq_iters else None for d in range(len(devices))]
    new = tuple.__new__
    # Lengths were all checked above, so the zips below cannot run short.
    return [
        new(
            Record,
            (
                seq,
                group_dev[g],
                ts_next[d](),
                types[t],
                metrics_next[g](),
                dseq_next[d](),
                tags_out[tg],
                b,
            ),
        )
        for seq, g, d, t, tg, b in zip(seqs, rec_group, rec_dev, rec_type, rec_tags, body_col)  # noqa: B905
    ]
