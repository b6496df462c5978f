"""Batch format version 2: round trips, the same records as version 1, and every hostile body refused
with the taxonomy's code (the header checks and limits are shared with version 1; the body's are new)."""

from __future__ import annotations

import math
import random
import struct
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import msgpack
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_batch_properties import NOW, record_lists
from test_protocol_fuzz import MEMORY_BOUND, SEED_RECORDS, check_batch, mutate_bytes, mutate_tree

from pulse.protocol import batch
from pulse.protocol.batch import HEADER, HEADER_SIZE, MAX_U64, Compression, Record, Stream, decode, encode, read_header
from pulse.protocol.errors import BatchError, Code

pytestmark = pytest.mark.unit

SameRecords = Callable[[Sequence[Record], Sequence[Record]], None]
GW = "gw-1"


def v2(records: Sequence[Record], compression: Compression = Compression.NONE) -> bytes:
    return encode(records, gateway_id=GW, stream=Stream.TELEMETRY, gateway_time_ms=NOW, compression=compression, version=2)


def frame(payload: bytes, compression: Compression, body_len: int, *, first: int, last: int, count: int, version: int = 2) -> bytes:
    """A batch around ``payload`` whose header agrees with it and whose CRC is right."""
    head = HEADER.pack(batch.MAGIC, version, compression, Stream.TELEMETRY, len(GW), first, last, NOW, count, body_len, len(payload), 0)
    crc = zlib.crc32(GW.encode() + payload, zlib.crc32(head[:44]))
    return head[:44] + struct.pack(">I", crc) + GW.encode() + payload


def split(data: bytes) -> tuple[batch.Header, list[Any], bytes]:
    """An uncompressed version 2 batch as its header, its decoded directory and its column bytes."""
    h = read_header(data)
    body = data[HEADER_SIZE + len(GW) :]
    (n,) = struct.unpack_from(">I", body)
    return h, msgpack.unpackb(body[4 : 4 + n], raw=False, strict_map_key=False), body[4 + n :]


def join(h: batch.Header, directory: object, columns: bytes, **fields: int) -> bytes:
    raw = msgpack.packb(directory, use_bin_type=True)
    body = struct.pack(">I", len(raw)) + raw + columns
    values = {"first": h.first_seq, "last": h.last_seq, "count": h.record_count} | fields
    return frame(body, Compression.NONE, len(body), **values)


def refused(data: bytes, code: Code = Code.BATCH_MALFORMED) -> BatchError:
    with pytest.raises(BatchError) as info:
        decode(data)
    assert info.value.code is code, info.value
    cause = info.value.__cause__
    assert cause is None or info.value.message != f"batch body is malformed: {type(cause).__name__}", "refused only by the safety net"
    return info.value


# ------------------------------------------------------------------------------------------------
# round trips


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(records=record_lists(), compression=st.sampled_from(Compression))
def test_any_records_round_trip_exactly_in_version_2(records: list[Record], compression: Compression, same_records: SameRecords) -> None:
    data = v2(records, compression)
    header = read_header(data)
    assert header.version == 2 and header.record_count == len(records)
    same_records(decode(data).records, records)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(records=record_lists())
def test_both_versions_carry_the_same_records(records: list[Record]) -> None:
    one = decode(encode(records, gateway_id=GW, stream=Stream.EVENTS, gateway_time_ms=NOW, version=1))
    two = decode(encode(records, gateway_id=GW, stream=Stream.EVENTS, gateway_time_ms=NOW, version=2))
    assert (one.header.version, two.header.version) == (1, 2)
    assert one.records == two.records
    assert [list(map(type, r.metrics.values())) for r in one.records] == [list(map(type, r.metrics.values())) for r in two.records]


def test_extreme_values_round_trip(same_records: SameRecords) -> None:
    records = [
        Record(0, "a", 0, "t", {"x": 2**53, "f": 1.5, "big": 1e300, "z": -0.0, "b": True}, 0),
        Record(2**63, "a", 2**53, "t", {"x": -(2**53), "f": -1.5, "big": -1e300, "z": 0.0, "b": False}, 2**63 - 1),
        Record(MAX_U64, "b", 2**53, "t", {"f": 9007199254740.993}, None, {"k": "v"}, {"deep": [[[1]]]}),
    ]
    same_records(decode(v2(records)).records, records)


def test_decimals_beyond_2_53_when_scaled_travel_as_raw_floats(same_records: SameRecords) -> None:
    records = [Record(1, "a", 5, "t", {"f": 1e17}), Record(2, "a", 6, "t", {"f": -1e17})]  # 1e17 is an integer-valued float
    _, directory, _ = split(v2(records))
    assert directory[9] == [batch._RAW_FLOAT]  # version 1 scales them (its columns are msgpack integers)
    same_records(decode(v2(records)).records, records)


def test_the_encoder_refuses_an_unknown_version() -> None:
    with pytest.raises(BatchError) as info:
        encode(SEED_RECORDS[0], gateway_id=GW, stream=Stream.TELEMETRY, gateway_time_ms=NOW, version=3)
    assert info.value.code is Code.BATCH_UNENCODABLE


def test_a_receiver_refuses_a_version_it_does_not_know() -> None:
    data = v2(SEED_RECORDS[0])
    _, directory, columns = split(data)
    h = read_header(data)
    raw = msgpack.packb(directory, use_bin_type=True)
    body = struct.pack(">I", len(raw)) + raw + columns
    refused(frame(body, Compression.NONE, len(body), first=h.first_seq, last=h.last_seq, count=h.record_count, version=3),
            Code.BATCH_VERSION_UNSUPPORTED)


def test_version_2_is_smaller_than_version_1_on_steady_telemetry() -> None:
    rng = random.Random(5)
    records = [
        Record(i + 1, f"dev-{i % 10}", NOW + (i // 10) * 10_000 + rng.randrange(-40, 40), "telemetry",
               {"t": round(21 + rng.gauss(0, 0.1), 1), "rh": float(rng.randrange(40, 45)), "on": rng.random() < 0.05}, i // 10)
        for i in range(1000)
    ]
    one = encode(records, gateway_id=GW, stream=Stream.TELEMETRY, gateway_time_ms=NOW, version=1)
    two = encode(records, gateway_id=GW, stream=Stream.TELEMETRY, gateway_time_ms=NOW, version=2)
    assert len(two) < len(one)


# ------------------------------------------------------------------------------------------------
# hostile bodies: each refused with a named reason before anything large is allocated

VALID = v2(SEED_RECORDS[1])


def test_the_cases_below_start_from_a_batch_that_decodes() -> None:
    h, directory, columns = split(VALID)
    assert decode(join(h, directory, columns)).records == decode(VALID).records


def _with(index: int, value: object) -> bytes:
    h, directory, columns = split(VALID)
    directory[index] = value
    return join(h, directory, columns)


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("no directory length", frame(b"\x00\x00", Compression.NONE, 2, first=1, last=29, count=29)),
        ("directory longer than the body", frame(b"\x00\x00\xff\xff\x90", Compression.NONE, 5, first=1, last=29, count=29)),
        ("directory not a list", join(read_header(VALID), {"a": 1}, b"")),
        ("directory of 11 entries", join(read_header(VALID), split(VALID)[1][:11], split(VALID)[2])),
        ("column codes not bytes", _with(11, [1, 2, 3, 4])),
        ("unknown column code", _with(11, b"\x03" * len(split(VALID)[1][11]))),
        ("too few column codes", _with(11, b"\x11\x11\x11")),
        ("a float code for an integer column", _with(11, b"\x28" + split(VALID)[1][11][1:])),
        ("more column codes than columns", _with(11, split(VALID)[1][11] + b"\x11")),
        ("cadences not integers", _with(7, ["x"] * len(split(VALID)[1][7]))),
        ("a device missing from the per-device entries", _with(6, split(VALID)[1][6][:-1])),
        ("device sequence numbers of the wrong length", _with(8, [[1]] + split(VALID)[1][8][1:])),
        ("a series scale out of range", _with(9, [7] * len(split(VALID)[1][9]))),
        ("a series first value of the wrong type", _with(10, ["x"] * len(split(VALID)[1][10]))),
        ("one scale too few", _with(9, split(VALID)[1][9][:-1])),
        ("groups not a list", _with(3, 5)),
        ("a group layout naming an unknown metric", _with(3, [[0, [99, 2]]] + split(VALID)[1][3][1:])),
        ("bodies not a list", _with(5, {})),
        ("a timestamp below zero", _with(6, [-(NOW + 10**6)] + split(VALID)[1][6][1:])),
    ],
)
def test_malformed_directories_are_refused(name: str, data: bytes) -> None:
    refused(data)


def test_columns_that_run_past_the_body_are_refused_without_allocating_them(peak_memory: Any) -> None:
    h, directory, columns = split(VALID)
    refused(join(h, directory, columns[: len(columns) // 2]))
    # a header claiming 50,000 records, with a body that holds 29: refused before decoding columns
    refused(join(h, directory, columns, count=50_000, last=h.first_seq + 60_000), Code.BATCH_MALFORMED)
    assert peak_memory.growth() < 64 * 1024 * 1024


def test_bytes_after_the_columns_are_refused() -> None:
    h, directory, columns = split(VALID)
    refused(join(h, directory, columns + b"\x00"))


def test_a_deeply_nested_directory_is_refused() -> None:
    h, directory, columns = split(VALID)
    deep: Any = 1
    for _ in range(200):
        deep = [deep]
    directory[5] = [[0, {"x": deep}]]
    refused(join(h, directory, columns))


def test_a_sequence_gap_of_zero_is_refused() -> None:
    records = [Record(1, "a", 5, "t", {"x": 1}), Record(2, "a", 6, "t", {"x": 2})]
    h, directory, columns = split(v2(records))
    # columns: the gap (one u8: 1) comes first; make it 0
    refused(join(h, directory, b"\x00" + columns[1:]), Code.BATCH_MALFORMED)


def test_sequence_numbers_that_do_not_end_at_the_headers_last_are_refused() -> None:
    h, directory, columns = split(VALID)
    refused(join(h, directory, columns, last=h.last_seq + 1), Code.BATCH_BAD_SEQUENCE)


def test_a_zip_bomb_in_version_2_is_refused_without_expanding_it(peak_memory: Any) -> None:
    packer = zstandard.ZstdCompressor(level=3, write_content_size=False).compressobj()
    zeros = b"\x00" * (1024 * 1024)
    payload = b"".join(packer.compress(zeros) for _ in range(256)) + packer.flush()  # 256 MiB of zeros
    refused(frame(payload, Compression.ZSTD, 1000, first=1, last=29, count=29), Code.BATCH_LENGTH_MISMATCH)
    assert peak_memory.growth() < 32 * 1024 * 1024


# ------------------------------------------------------------------------------------------------
# fuzzing: any bytes either decode to records that keep every promise, or are refused with a code


def v2_cases(rng: random.Random, count: int) -> Iterator[tuple[str, bytes]]:
    seeds = [v2(records) for records in SEED_RECORDS]
    parts = [split(s) for s in seeds]
    zc = zstandard.ZstdCompressor(level=1)
    for i in range(count):
        h, directory, columns = parts[rng.randrange(len(parts))]
        kind = i % 4
        if kind == 0:  # the column bytes mutated (values, widths, lengths)
            yield "columns", join(h, directory, mutate_bytes(columns, rng, [c for _, _, c in parts]))
        elif kind == 1:  # the whole body's bytes mutated, then framed consistently
            raw = msgpack.packb(directory, use_bin_type=True)
            body = mutate_bytes(struct.pack(">I", len(raw)) + raw + columns, rng, seeds)
            fields = {"first": h.first_seq, "last": h.last_seq, "count": h.record_count}
            if rng.random() < 0.3:
                yield "body+zstd", frame(zc.compress(body), Compression.ZSTD, len(body), **fields)
            else:
                yield "body", frame(body, Compression.NONE, len(body), **fields)
        else:  # the directory's tree mutated
            tree = msgpack.unpackb(msgpack.packb(directory, use_bin_type=True), raw=False, strict_map_key=False)
            for _ in range(rng.choice((1, 1, 2))):
                tree = mutate_tree(tree, rng)
            try:
                yield "directory", join(h, tree, columns)
            except (OverflowError, ValueError, TypeError):
                continue


def test_version_2_decode_only_ever_decodes_or_refuses_with_a_code(peak_memory: Any, same_records: SameRecords) -> None:
    rng = random.Random(2026)
    tally: dict[str, list[int]] = {}
    for i, (kind, data) in enumerate(v2_cases(rng, 20_000)):
        counts = tally.setdefault(kind, [0, 0])
        try:
            result = decode(data)
        except BatchError as exc:
            counts[1] += 1
            cause = exc.__cause__
            if cause is not None and exc.message == f"batch body is malformed: {type(cause).__name__}":
                pytest.fail(f"case {i} ({kind}): refused only by the safety net, {cause!r}: {data!r}")
            continue
        except Exception as exc:  # noqa: BLE001 - the failure this test exists to catch
            pytest.fail(f"case {i} ({kind}): {type(exc).__name__}: {exc} escaped batch.decode for {data[:120]!r}")
        counts[0] += 1
        assert math.isfinite(len(result.records))
        check_batch(result, data, same_records)
    assert all(refused > 100 for _, refused in tally.values()), tally
    assert tally["columns"][0] + tally["directory"][0] > 100, tally
    assert peak_memory.growth() < MEMORY_BOUND


def test_the_version_2_example_in_the_docs_holds() -> None:
    """docs/protocol.md, "Body, version 2", Example: the sizes and the column bytes it shows."""
    t0 = 1_764_061_200_000
    records = [
        Record(101, "boiler-7", t0, "telemetry", {"temp_c": 21.5, "on": True}, 17),
        Record(102, "pump-2", t0 + 4_000, "telemetry", {"rpm": 1450, "temp_c": 40.25}, None, {"zone": "north"}),
        Record(103, "boiler-7", t0 + 10_020, "telemetry", {"temp_c": 21.6, "on": True}, 18),
    ]
    data = encode(records, gateway_id="gw-site-3", stream=Stream.TELEMETRY, gateway_time_ms=t0 + 15_000, compression=Compression.NONE, version=2)
    body = data[HEADER_SIZE + len("gw-site-3") :]
    (n,) = struct.unpack_from(">I", body)
    assert (len(data), len(body), n) == (198, 141, 124)
    assert msgpack.unpackb(body[4 : 4 + n], raw=False) == [
        ["boiler-7", "pump-2"], ["temp_c", "on", "rpm"], ["telemetry"], [[0, [0, 2, 1, 0]], [1, [2, 1, 0, 2]]],
        [{}, {"zone": "north"}], [], [t0, 4000], [10020, 0], [17, [None]], [1, 0, 0, 2], [215, None, 1450, 4025], b"\x11" * 11,
    ]
    assert body[4 + n :].hex(" ") == "01 01 00 01 00 00 01 00 00 01 01 01 01"
    assert decode(data).records == records
