"""Sync batch codec: header checks, every refusal code, zip bombs, and what the encoder refuses."""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Callable, Sequence

import msgpack
import pytest
import zstandard

from pulse.protocol import batch
from pulse.protocol.batch import HEADER, HEADER_SIZE, BatchLimits, Compression, Record, Stream, decode, encode, read_header
from pulse.protocol.errors import BatchError, Code

pytestmark = pytest.mark.unit

T0 = 1_764_061_200_000
GW = "gw-site-3"

RECORDS = [
    Record(101, "boiler-7", T0, "telemetry", {"temp_c": 21.5, "on": True}, 17),
    Record(102, "pump-2", T0 + 4_000, "telemetry", {"rpm": 1450, "temp_c": 40.25}, None, {"zone": "north"}),
    Record(104, "boiler-7", T0 + 10_000, "event", {}, 18, None, {"door": "open"}),
]

_FIELDS = (
    "magic",
    "version",
    "compression",
    "stream",
    "gw_len",
    "first",
    "last",
    "gw_time",
    "count",
    "body_len",
    "payload_len",
    "crc",
)


def make(records: Sequence[Record] = RECORDS, compression: Compression = Compression.ZSTD) -> bytes:
    return encode(records, gateway_id=GW, stream=Stream.TELEMETRY, gateway_time_ms=T0 + 20_000, compression=compression)


def fix_crc(data: bytes) -> bytes:
    """The same batch with its CRC recomputed, as a careful forger would."""
    crc = zlib.crc32(data[HEADER_SIZE:], zlib.crc32(data[:44]))
    return data[:44] + struct.pack(">I", crc) + data[HEADER_SIZE:]


def with_header(data: bytes, *, fix: bool = True, **fields: object) -> bytes:
    """Rewrite header fields (by name) and, unless told otherwise, recompute the CRC."""
    values = dict(zip(_FIELDS, HEADER.unpack_from(data), strict=True))
    values.update(fields)
    out = HEADER.pack(*(values[f] for f in _FIELDS)) + data[HEADER_SIZE:]
    return fix_crc(out) if fix else out


def assemble(payload: bytes, *, gateway: bytes = GW.encode(), fix: bool = True, **fields: object) -> bytes:
    """A batch around any payload: lengths from the payload unless given."""
    values: dict[str, object] = {
        "magic": batch.MAGIC,
        "version": batch.VERSION_1,
        "compression": Compression.NONE,
        "stream": Stream.TELEMETRY,
        "gw_len": len(gateway),
        "first": 101,
        "last": 104,
        "gw_time": T0,
        "count": 3,
        "body_len": len(payload),
        "payload_len": len(payload),
        "crc": 0,
    }
    values.update(fields)
    data = HEADER.pack(*(values[f] for f in _FIELDS)) + gateway + payload
    return fix_crc(data) if fix else data


def body_of(data: bytes) -> list[object]:
    """The decoded msgpack body of an uncompressed batch."""
    header = read_header(data)
    body = msgpack.unpackb(data[HEADER_SIZE + len(header.gateway_id) :], raw=False, strict_map_key=False)
    assert isinstance(body, list)
    return body


def rebody(body: object, **fields: object) -> bytes:
    """An uncompressed batch around ``body`` (any msgpack value), header consistent and CRC right."""
    return assemble(msgpack.packb(body, use_bin_type=True), **fields)


def refused(data: bytes, code: Code, limits: BatchLimits = batch.DEFAULT_BATCH_LIMITS) -> BatchError:
    with pytest.raises(BatchError) as info:
        decode(data, limits)
    assert info.value.code is code, info.value
    return info.value


# ------------------------------------------------------------------------------------------------
# round trip basics


@pytest.mark.parametrize("compression", list(Compression))
def test_a_batch_decodes_to_the_records_it_was_made_from(
    compression: Compression, same_records: Callable[[Sequence[Record], Sequence[Record]], None]
) -> None:
    data = make(compression=compression)
    got = decode(data)
    same_records(got.records, RECORDS)
    assert got.header == batch.Header(
        GW, Stream.TELEMETRY, 101, 104, T0 + 20_000, 3, got.header.body_len, len(data) - 48 - len(GW), compression
    )


def test_replay_detection_needs_only_the_header() -> None:
    """A receiver can tell a replay (last sequence at or below its high-water mark) from the 48-byte
    header and gateway id, without decompressing: here the payload is not even valid zstd."""
    data = make()
    garbage_payload = fix_crc(data[: HEADER_SIZE + len(GW)] + b"\x00" * (len(data) - HEADER_SIZE - len(GW)))
    header = read_header(garbage_payload)
    assert (header.gateway_id, header.stream, header.first_seq, header.last_seq) == (GW, Stream.TELEMETRY, 101, 104)
    high_water = 104
    assert header.last_seq <= high_water  # the receiver acks 104 and writes nothing
    refused(garbage_payload, Code.BATCH_DECOMPRESS_FAILED)


# ------------------------------------------------------------------------------------------------
# header refusals

VALID = make()
PLAIN = make(compression=Compression.NONE)

HEADER_CASES: list[tuple[str, bytes, Code]] = [
    ("empty", b"", Code.BATCH_TOO_SHORT),
    ("one byte short of a header", VALID[:47], Code.BATCH_TOO_SHORT),
    ("bad magic", with_header(VALID, magic=b"PSYX"), Code.BATCH_BAD_MAGIC),
    ("JSON instead of a batch", b'{"records": []}' + b" " * 40, Code.BATCH_BAD_MAGIC),
    ("format version 3", with_header(VALID, version=3), Code.BATCH_VERSION_UNSUPPORTED),
    ("format version 0", with_header(VALID, version=0), Code.BATCH_VERSION_UNSUPPORTED),
    ("payload larger than allowed", with_header(VALID, payload_len=2 * 1024 * 1024 + 1), Code.BATCH_TOO_LARGE),
    ("body larger than allowed", with_header(VALID, body_len=8 * 1024 * 1024 + 1), Code.BATCH_TOO_LARGE),
    ("body length 4 GiB", with_header(VALID, body_len=2**32 - 1), Code.BATCH_TOO_LARGE),
    ("too many records", with_header(VALID, count=50_001, last=200_000), Code.BATCH_TOO_MANY_RECORDS),
    ("one byte appended", VALID + b"\x00", Code.BATCH_LENGTH_MISMATCH),
    ("one byte cut off", VALID[:-1], Code.BATCH_LENGTH_MISMATCH),
    ("gateway id length wrong", with_header(VALID, gw_len=len(GW) + 1), Code.BATCH_LENGTH_MISMATCH),
    ("payload bit flipped", VALID[:-1] + bytes([VALID[-1] ^ 1]), Code.BATCH_CHECKSUM_MISMATCH),
    ("gateway clock changed, CRC not", with_header(VALID, gw_time=T0, fix=False), Code.BATCH_CHECKSUM_MISMATCH),
    ("sequence changed, CRC not", with_header(VALID, last=105, fix=False), Code.BATCH_CHECKSUM_MISMATCH),
    (
        "CRC itself damaged",
        with_header(VALID, fix=False, crc=HEADER.unpack_from(VALID)[-1] ^ 0x100),
        Code.BATCH_CHECKSUM_MISMATCH,
    ),
    ("gateway id changed, CRC not", VALID[:48] + b"gw-site-4" + VALID[48 + len(GW) :], Code.BATCH_CHECKSUM_MISMATCH),
    ("no records", with_header(VALID, count=0), Code.BATCH_BAD_SEQUENCE),
    ("first after last", with_header(VALID, first=105), Code.BATCH_BAD_SEQUENCE),
    ("more records than sequence numbers", with_header(VALID, count=5), Code.BATCH_BAD_SEQUENCE),
    ("unknown compression", with_header(VALID, compression=7), Code.BATCH_MALFORMED),
    ("unknown stream", with_header(VALID, stream=0), Code.BATCH_MALFORMED),
    ("gateway id not UTF-8", assemble(b"x", gateway=b"gw\xff"), Code.BATCH_MALFORMED),
    ("gateway id empty", assemble(b"x", gateway=b""), Code.BATCH_MALFORMED),
    ("gateway id with a slash", assemble(b"x", gateway=b"gw/1"), Code.BATCH_MALFORMED),
    ("gateway id a wildcard", assemble(b"x", gateway=b"+"), Code.BATCH_MALFORMED),
    ("gateway id too long", assemble(b"x", gateway=b"g" * 129), Code.BATCH_MALFORMED),
]


@pytest.mark.parametrize(("data", "code"), [c[1:] for c in HEADER_CASES], ids=[c[0] for c in HEADER_CASES])
def test_bad_headers_are_refused_by_read_header(data: bytes, code: Code) -> None:
    with pytest.raises(BatchError) as info:
        read_header(data)
    assert info.value.code is code, info.value
    refused(data, code)  # and decode refuses them the same way


def test_limits_are_the_receivers_to_choose() -> None:
    small = BatchLimits(max_payload_bytes=64, max_body_bytes=1 << 20, max_records=2)
    refused(VALID, Code.BATCH_TOO_MANY_RECORDS, BatchLimits(max_records=2))
    refused(PLAIN, Code.BATCH_TOO_LARGE, small)
    refused(PLAIN, Code.BATCH_TOO_LARGE, BatchLimits(max_body_bytes=len(body_bytes(PLAIN)) - 1))


def body_bytes(data: bytes) -> bytes:
    return data[HEADER_SIZE + HEADER.unpack_from(data)[4] :]


# ------------------------------------------------------------------------------------------------
# payload and body refusals


def test_a_payload_that_is_not_zstd_is_refused() -> None:
    e = refused(assemble(b"not zstd at all", compression=Compression.ZSTD), Code.BATCH_DECOMPRESS_FAILED)
    assert "zstd" in e.message


def test_a_truncated_zstd_frame_is_refused() -> None:
    frame = zstandard.ZstdCompressor().compress(body_bytes(PLAIN))
    data = assemble(frame[:-3], compression=Compression.ZSTD, body_len=len(body_bytes(PLAIN)))
    with pytest.raises(BatchError) as info:
        decode(data)
    assert info.value.code in (Code.BATCH_DECOMPRESS_FAILED, Code.BATCH_LENGTH_MISMATCH)


def test_a_frame_declaring_another_size_than_the_header_is_refused() -> None:
    raw = body_bytes(PLAIN)
    frame = zstandard.ZstdCompressor().compress(raw)  # declares its content size
    refused(assemble(frame, compression=Compression.ZSTD, body_len=len(raw) - 1), Code.BATCH_LENGTH_MISMATCH)


def test_trailing_bytes_after_the_zstd_frame_are_refused() -> None:
    raw = body_bytes(PLAIN)
    frame = zstandard.ZstdCompressor().compress(raw)
    refused(assemble(frame + b"junk", compression=Compression.ZSTD, body_len=len(raw)), Code.BATCH_DECOMPRESS_FAILED)
    second = zstandard.ZstdCompressor().compress(b"more")
    refused(assemble(frame + second, compression=Compression.ZSTD, body_len=len(raw)), Code.BATCH_LENGTH_MISMATCH)


def test_an_uncompressed_body_of_the_wrong_length_is_refused() -> None:
    raw = body_bytes(PLAIN)
    refused(assemble(raw, body_len=len(raw) + 1), Code.BATCH_LENGTH_MISMATCH)


def test_records_that_do_not_end_at_the_headers_last_sequence_are_refused() -> None:
    refused(with_header(PLAIN, last=105), Code.BATCH_BAD_SEQUENCE)


# The body is a msgpack list of 13 columns; each case damages one thing the encoder never writes.
def _body(change: Callable[[list[object]], object]) -> bytes:
    body = body_of(PLAIN)
    result = change(body)
    return rebody(body if result is None else result)


def _set(index: int, value: object) -> Callable[[list[object]], None]:
    def change(body: list[object]) -> None:
        body[index] = value

    return change


def _series(position: int, entry: list[object]) -> Callable[[list[object]], None]:
    def change(body: list[object]) -> None:
        series = body[11]
        assert isinstance(series, list)
        series[position] = entry

    return change


def _first_series(body: list[object]) -> list[object]:
    series = body[11]
    assert isinstance(series, list) and isinstance(series[0], list)
    return series[0]


def _kinds(body: list[object]) -> dict[int, list[object]]:
    series = body[11]
    assert isinstance(series, list)
    return {int(s[2]): s for s in series}


BODY_CASES: list[tuple[str, bytes]] = [
    ("msgpack garbage", assemble(b"\xc1\xc1\xc1")),
    ("msgpack truncated", assemble(body_bytes(PLAIN)[:-2])),
    ("a map instead of columns", rebody({"devices": []})),
    ("12 columns", _body(lambda b: b[:12])),
    ("device ids not strings", _body(_set(0, [b"boiler-7", b"pump-2"]))),
    ("device id invalid", _body(_set(0, ["boiler-7", "pump/2"]))),
    ("device ids repeat", _body(_set(0, ["boiler-7", "boiler-7"]))),
    ("metric names repeat", _body(_set(1, ["temp_c", "temp_c", "rpm"]))),
    ("metric names not strings", _body(_set(1, [1, 2, 3]))),
    ("tags table with bytes keys", _body(_set(4, [{}, {b"zone": "north"}]))),
    ("tags table with int values", _body(_set(4, [{}, {"zone": 3}]))),
    ("sequence deltas not starting at 0", _body(_set(5, [1, 1, 2]))),
    ("sequence going backwards", _body(_set(5, [0, 2, -1]))),
    ("sequence not increasing", _body(_set(5, [0, 0, 3]))),
    ("a column shorter than the record count", _body(_set(6, [0, 1]))),
    ("group index out of range", _body(_set(6, [0, 1, 9]))),
    ("type index out of range", _body(_set(7, [0, 0, 5]))),
    ("tag index negative", _body(_set(8, [0, -1, 0]))),
    ("timestamps not integers", _body(_set(9, [[float(T0), 10_000.0], [T0 + 4000]]))),
    ("timestamp negative", _body(_set(9, [[-5, 0], [T0 + 4000]]))),
    ("timestamp beyond 2**53", _body(_set(9, [[2**60, 0], [T0 + 4000]]))),
    ("device seq column wrong length", _body(_set(10, [[17], [None]]))),
    ("device seq a float", _body(_set(10, [[17.0, 1], [None]]))),
    ("device seq negative", _body(_set(10, [[-17, 1], [None]]))),
    ("device seq beyond 2**63-1", _body(_set(10, [[2**63, 1], [None]]))),
    ("a raw float series holding NaN", _body(lambda b: _first_series(b).__setitem__(slice(3, 5), [-1, [math.nan]]))),
    ("a raw float series holding infinity", _body(lambda b: _first_series(b).__setitem__(slice(3, 5), [-1, [math.inf]]))),
    ("a float series with a scale of 9", _body(lambda b: _first_series(b).__setitem__(3, 9))),
    ("an int series beyond 2**53", _body(lambda b: _kinds(b)[1].__setitem__(4, [2**53 + 1]))),
    ("a bool series holding 2", _body(lambda b: _kinds(b)[0].__setitem__(4, [2]))),
    ("a bool series holding True", _body(lambda b: _kinds(b)[0].__setitem__(4, [True]))),
    ("an unknown metric kind", _body(lambda b: _kinds(b)[0].__setitem__(2, 3))),
    ("an empty series", _body(lambda b: b[11].append([0, 2, 1, 0, []]))),  # type: ignore[attr-defined]
    ("a series longer than its records", _body(lambda b: _kinds(b)[1].__setitem__(4, [1450, 0]))),
    ("a series listed twice", _body(lambda b: b[11].append(list(_first_series(b))))),  # type: ignore[attr-defined]
    ("a group naming a missing series", _body(lambda b: b[3][0].__setitem__(1, [0, 1, 9, 2]))),  # type: ignore[index]
    ("a group naming one metric twice", _body(lambda b: b[3][0].__setitem__(1, [0, 2, 0, 2]))),  # type: ignore[index]
    ("a body that is a list", _body(_set(12, [[2, ["door", "open"]]]))),
    ("a body with bytes", _body(_set(12, [[2, {"door": b"open"}]]))),
    ("a body with an int key", _body(_set(12, [[2, {"door": {1: "x"}}]]))),
    ("a body with NaN", _body(_set(12, [[2, {"x": math.nan}]]))),
    ("a body nested 20 deep", _body(_set(12, [[2, {"x": [[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]}]]))),
    ("two bodies for one record", _body(_set(12, [[2, {"a": 1}], [2, {"b": 2}]]))),
    ("a body for a record that does not exist", _body(_set(12, [[3, {"a": 1}]]))),
]


@pytest.mark.parametrize("data", [c[1] for c in BODY_CASES], ids=[c[0] for c in BODY_CASES])
def test_malformed_bodies_are_refused(data: bytes) -> None:
    header = read_header(data)  # the header is fine: the damage is inside
    assert header.record_count == 3
    refused(data, Code.BATCH_MALFORMED)


def test_the_body_cases_start_from_a_body_that_decodes(
    same_records: Callable[[Sequence[Record], Sequence[Record]], None],
) -> None:
    same_records(decode(_body(lambda b: None)).records, RECORDS)


# ------------------------------------------------------------------------------------------------
# zip bombs: a small payload that expands far beyond the header's body length, CRC correct

BOMB_EXPANDS_TO = 1 << 30  # 1 GiB of zeros; the test process never comes close to that on its own


def _bomb_stream(size: int) -> bytes:
    """A zstd frame that does not declare its size (streaming), expanding to ``size`` zero bytes."""
    compressor = zstandard.ZstdCompressor(level=1).compressobj()
    chunk = bytes(1 << 20)
    parts = [compressor.compress(chunk) for _ in range(size // len(chunk))]
    parts.append(compressor.flush())
    return b"".join(parts)


@pytest.fixture(scope="module")
def bomb() -> bytes:
    payload = _bomb_stream(BOMB_EXPANDS_TO)
    assert zstandard.frame_content_size(payload) == -1
    assert len(payload) < 100_000
    return payload


def test_a_zip_bomb_is_refused_without_expanding_it(bomb: bytes, peak_memory: object) -> None:
    data = assemble(bomb, compression=Compression.ZSTD, body_len=1000)
    assert read_header(data).body_len == 1000  # CRC and header are right
    refused(data, Code.BATCH_LENGTH_MISMATCH)
    growth = peak_memory.growth()  # type: ignore[attr-defined]
    assert growth < 64 * 1024 * 1024, f"peak memory grew by {growth / 2**20:.0f} MiB"


def test_a_zip_bomb_claiming_the_largest_allowed_body_stops_there(bomb: bytes, peak_memory: object) -> None:
    limit = batch.DEFAULT_BATCH_LIMITS.max_body_bytes
    data = assemble(bomb, compression=Compression.ZSTD, body_len=limit)
    e = refused(data, Code.BATCH_LENGTH_MISMATCH)
    assert e.context["got"] == limit + 1  # read one byte past the limit, then stopped
    growth = peak_memory.growth()  # type: ignore[attr-defined]
    assert growth < limit + 64 * 1024 * 1024, f"peak memory grew by {growth / 2**20:.0f} MiB"


def test_a_frame_that_declares_a_huge_size_is_refused_before_decompressing() -> None:
    raw = bytes(1 << 24)
    frame = zstandard.ZstdCompressor(level=1).compress(raw)
    assert zstandard.frame_content_size(frame) == len(raw)
    refused(assemble(frame, compression=Compression.ZSTD, body_len=1000), Code.BATCH_LENGTH_MISMATCH)


# ------------------------------------------------------------------------------------------------
# encoder refusals: what it refuses is exactly what a receiver would refuse


def _rec(**changes: object) -> list[Record]:
    return [RECORDS[0]._replace(**changes)]


UNENCODABLE: list[tuple[str, list[Record], dict[str, object]]] = [
    ("no records", [], {}),
    ("bad gateway id", RECORDS, {"gateway_id": "gw/1"}),
    ("gateway id not a string", RECORDS, {"gateway_id": 7}),
    ("sequence not increasing", [RECORDS[0], RECORDS[0]], {}),
    ("sequence negative", _rec(seq=-1), {}),
    ("sequence beyond 64 bits", _rec(seq=2**64), {}),
    ("bad device id", _rec(device_id="a/b"), {}),
    ("device id not a string", _rec(device_id=7), {}),
    ("timestamp a float", _rec(ts_ms=float(T0)), {}),
    ("timestamp negative", _rec(ts_ms=-1), {}),
    ("timestamp beyond 2**53", _rec(ts_ms=2**53 + 1), {}),
    ("type not a string", _rec(type=1), {}),
    ("metrics not a dict", _rec(metrics=[("a", 1)]), {}),
    ("metric name not a string", _rec(metrics={1: 1}), {}),
    ("metric value a string", _rec(metrics={"a": "1"}), {}),
    ("metric value None", _rec(metrics={"a": None}), {}),
    ("metric NaN", _rec(metrics={"a": math.nan}), {}),
    ("metric infinity", _rec(metrics={"a": -math.inf}), {}),
    ("metric int beyond 2**53", _rec(metrics={"a": 2**53 + 1}), {}),
    ("device seq a float", _rec(device_seq=1.0), {}),
    ("device seq negative", _rec(device_seq=-1), {}),
    ("device seq beyond 2**63-1", _rec(device_seq=2**63), {}),
    ("tags not a dict", _rec(tags=[("a", "b")]), {}),
    ("tag value not a string", _rec(tags={"a": 1}), {}),
    ("tag keys of mixed types", _rec(tags={"a": "x", 1: "y"}), {}),
    ("tag value a lone surrogate", _rec(tags={"a": "\ud800"}), {}),
    ("body a list", _rec(body=[1]), {}),
    ("body with bytes", _rec(body={"a": b"x"}), {}),
    ("body with a tuple", _rec(body={"a": (1, 2)}), {}),
    ("body with NaN", _rec(body={"a": math.nan}), {}),
    ("body with an int key", _rec(body={1: "a"}), {}),
    ("body int beyond 64 bits", _rec(body={"a": 2**64}), {}),
    ("body nested 20 deep", _rec(body={"a": [[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]}), {}),
    ("unknown stream", RECORDS, {"stream": 9}),
    ("unknown compression", RECORDS, {"compression": 5}),
    ("gateway clock negative", RECORDS, {"gateway_time_ms": -1}),
]


@pytest.mark.parametrize(("records", "kwargs"), [c[1:] for c in UNENCODABLE], ids=[c[0] for c in UNENCODABLE])
def test_the_encoder_refuses_what_no_receiver_could_decode(records: list[Record], kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"gateway_id": GW, "stream": Stream.TELEMETRY, "gateway_time_ms": T0}
    args.update(kwargs)
    with pytest.raises(BatchError) as info:
        encode(records, **args)  # type: ignore[arg-type]
    assert info.value.code is Code.BATCH_UNENCODABLE, info.value


def test_every_batch_code_is_exercised() -> None:
    """Each batch code appears in a case above (decode side) or is the encoder's own."""
    decode_codes = {c[2] for c in HEADER_CASES} | {
        Code.BATCH_DECOMPRESS_FAILED,
        Code.BATCH_LENGTH_MISMATCH,
        Code.BATCH_MALFORMED,
        Code.BATCH_BAD_SEQUENCE,
    }
    assert decode_codes | {Code.BATCH_UNENCODABLE} == {c for c in Code if c.value.startswith("batch.")}
