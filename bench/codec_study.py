"""The size study behind batch format version 2 (issue 25): candidate encodings, column by column.

Run: ``.venv/bin/python -m pulse.bench.codec_study``. Prints bytes per point for each candidate on
the codec bench's three samples (fleet, repeated, noisy), in batches of 1,000 records. Sizes only
(they do not depend on the machine); speed is ``pulse bench codec``'s job.

"+zstd" candidates are measured by compressing the candidate's bytes with zstd level 9, as the
batch does. Gorilla, Chimp and ALP are counted in bits as their papers lay them out (no zstd after):

- Gorilla (Pelkonen et al., VLDB 2015): XOR with the previous double; 1 bit when equal, else a
  control bit pair and the meaningful bits, reusing the previous leading/trailing-zero window.
  Timestamps: delta-of-delta in buckets of 1, 9, 12, 16 and 36 bits.
- Chimp (Liakos et al., VLDB 2022): XOR with 2-bit flags and 3-bit rounded leading zeros.
- ALP (Afroozeh et al., SIGMOD 2023), decimals: per vector of 1,024, the decimal scale, a frame of
  reference and bit-packing at the width of the vector's range.
"""

from __future__ import annotations

import struct
from array import array
from collections import defaultdict
from collections.abc import Sequence
from itertools import chain
from operator import sub

import msgpack
import zstandard

from pulse.bench.codec import Sample, fleet_sample, noisy_sample, repeated_sample
from pulse.protocol import batch

_Z = zstandard.ZstdCompressor(level=9)
_CHIMP_LEAD = [0] * 8 + [8] * 4 + [12] * 4 + [16] * 2 + [18] * 2 + [20] * 2 + [22] * 2 + [24] * 41


def _z(data: bytes) -> int:
    return len(_Z.compress(data))


def _deltas(values: Sequence[int]) -> list[int]:
    return list(map(sub, values, chain((0,), values)))


def _bits64(f: float) -> int:
    return int(struct.unpack(">Q", struct.pack(">d", f))[0])


def _fixed(values: Sequence[int], shuffle: bool = True) -> bytes:
    """Narrowest signed little-endian width, optionally byte-shuffled (byte planes)."""
    lo, hi = (min(values), max(values)) if values else (0, 0)
    w, tc = next((w, tc) for w, tc in ((1, "b"), (2, "h"), (4, "i"), (8, "q")) if -(1 << (8 * w - 1)) <= lo and hi < 1 << (8 * w - 1))
    raw = array(tc, values).tobytes()
    return b"".join(raw[k::w] for k in range(w)) if shuffle and w > 1 else raw


def _doubles(values: Sequence[float]) -> bytes:
    raw = array("d", values).tobytes()
    return b"".join(raw[k::8] for k in range(8))


def _varint(values: Sequence[int]) -> bytes:
    """Zigzag LEB128 (protobuf's sint64)."""
    out = bytearray()
    for v in values:
        u = (v << 1) ^ (v >> 63)
        while u >= 0x80:
            out.append((u & 0x7F) | 0x80)
            u >>= 7
        out.append(u)
    return bytes(out)


def _xors(floats: Sequence[float]) -> list[int]:
    """Each double's bits XOR the previous one's (what Gorilla and Chimp encode)."""
    bits = [_bits64(f) for f in floats]
    return [a ^ b for a, b in zip(bits[1:], bits, strict=False)]


def _gorilla_bits(floats: Sequence[float]) -> int:
    bits, window = 64, None
    for x in _xors(floats):
        if x == 0:
            bits += 1
            continue
        lead, trail = min(64 - x.bit_length(), 31), (x & -x).bit_length() - 1
        if window is not None and lead >= window[0] and trail >= window[1]:
            bits += 2 + 64 - window[0] - window[1]
        else:
            bits += 2 + 5 + 6 + 64 - lead - trail
            window = (lead, trail)
    return bits


def _chimp_bits(floats: Sequence[float]) -> int:
    bits, last_lead = 64, None
    for x in _xors(floats):
        if x == 0:
            bits, last_lead = bits + 2, None
        elif (trail := (x & -x).bit_length() - 1) > 6:
            lead = _CHIMP_LEAD[64 - x.bit_length()]
            bits, last_lead = bits + 2 + 3 + 6 + 64 - lead - trail, None
        elif (lead := _CHIMP_LEAD[64 - x.bit_length()]) == last_lead:
            bits += 2 + 64 - lead
        else:
            bits, last_lead = bits + 2 + 3 + 64 - lead, lead
    return bits


def _alp_bits(floats: Sequence[float], vector: int = 1024) -> int:
    bits = 0
    for i in range(0, len(floats), vector):
        v = floats[i : i + vector]
        scale = batch._float_scale(v)
        if scale < 0:
            bits += 64 * len(v)
            continue
        ints = [round(x * 10**scale) for x in v]
        bits += 8 + 64 + (max(ints) - min(ints)).bit_length() * len(v)
    return bits


def _dod_bits(stamps: Sequence[int]) -> int:
    bits = 128
    for d in _deltas(_deltas(stamps))[2:]:
        bits += 1 if d == 0 else 9 if -63 <= d <= 64 else 12 if -255 <= d <= 256 else 16 if -2047 <= d <= 2048 else 36
    return bits


def _minus_cadence(stamps: list[int]) -> list[int]:
    intervals = _deltas(stamps)[1:]
    cadence = sorted(intervals)[len(intervals) // 2] if intervals else 0
    return [d - cadence for d in intervals]


def study(sample: Sample, per_batch: int = 1000) -> dict[str, float]:
    totals: dict[str, int] = defaultdict(int)
    for i in range(0, len(sample.records), per_batch):
        chunk = sample.records[i : i + per_batch]
        for version in batch.VERSIONS:
            totals[f"whole batch, format {version}"] += len(
                batch.encode(chunk, gateway_id="gw-bench", stream=batch.Stream.TELEMETRY, gateway_time_ms=0, version=version)
            )
        stamps: dict[str, list[int]] = defaultdict(list)
        series: dict[tuple[str, str, type], list[float | int | bool]] = defaultdict(list)
        for r in chunk:
            stamps[r.device_id].append(r.ts_ms)
            for name, value in r.metrics.items():
                series[(r.device_id, name, type(value))].append(value)
        ts = list(stamps.values())
        candidates: dict[str, int] = {
            "timestamps: delta-of-delta, msgpack+zstd (format 1)": _z(msgpack.packb([_deltas(_deltas(s)) for s in ts])),
            "timestamps: delta, msgpack+zstd": _z(msgpack.packb([_deltas(s) for s in ts])),
            "timestamps: delta-of-delta, zigzag varint+zstd": _z(b"".join(_varint(_deltas(_deltas(s))) for s in ts)),
            "timestamps: delta-of-delta, byte-shuffled fixed width+zstd": _z(b"".join(_fixed(_deltas(_deltas(s))[2:]) for s in ts)),
            "timestamps: interval minus median, byte-shuffled+zstd (format 2)": _z(b"".join(_fixed(_minus_cadence(s)) for s in ts)),
            "timestamps: Gorilla delta-of-delta bits": sum(_dod_bits(s) for s in ts) // 8,
        }
        ints: list[list[int]] = []  # every series that travels as integers in format 1 and 2
        others: list[list[int]] = []  # the int and bool series alone
        raw: list[list[float]] = []  # float series that are not short decimals
        floats: list[list[float]] = []  # every float series
        for (_, _, kind), values in series.items():
            if kind is float:
                floats.append(values)  # type: ignore[arg-type]
                scale = batch._float_scale(values)  # type: ignore[arg-type]
                if scale < 0:
                    raw.append(values)  # type: ignore[arg-type]
                    continue
                ints.append([round(v * 10**scale) for v in values])
            else:
                ints.append([int(v) for v in values])
                others.append(ints[-1])
        raw_bytes = b"".join(_doubles(f) for f in raw)
        candidates |= {
            "values: scaled decimals, delta from 0, msgpack+zstd (format 1)": _z(msgpack.packb([_deltas(c) for c in ints] + raw)),
            "values: scaled decimals, delta, first value apart, msgpack+zstd": _z(msgpack.packb([_deltas(c)[1:] for c in ints] + raw)),
            "values: scaled decimals, delta, first apart, zigzag varint+zstd": _z(b"".join(_varint(_deltas(c)[1:]) for c in ints) + raw_bytes),
            "values: scaled decimals, delta, first apart, fixed width+zstd": _z(b"".join(_fixed(_deltas(c)[1:], False) for c in ints) + raw_bytes),
            "values: scaled decimals, delta, first apart, byte-shuffled+zstd (format 2)": _z(b"".join(_fixed(_deltas(c)[1:]) for c in ints) + raw_bytes),
            "values: scaled decimals, delta-of-delta, byte-shuffled+zstd": _z(b"".join(_fixed(_deltas(_deltas(c))[1:]) for c in ints) + raw_bytes),
            "values: scaled decimals, run-length (value, run) msgpack+zstd": _z(msgpack.packb([_runs(c) for c in ints] + raw)),
            "values: no decimal scaling, raw doubles byte-shuffled+zstd": _z(
                b"".join(_doubles(f) for f in floats) + b"".join(_fixed(_deltas(c)[1:]) for c in others)),
            "floats only: Gorilla XOR bits": sum(_gorilla_bits(f) for f in floats) // 8,
            "floats only: Chimp bits": sum(_chimp_bits(f) for f in floats) // 8,
            "floats only: ALP bits": sum(_alp_bits(f) for f in floats) // 8,
            "floats only: format 2 (scaled delta, byte-shuffled+zstd)": _z(b"".join(
                _fixed(_deltas([round(v * 10 ** batch._float_scale(f)) for v in f])[1:]) if batch._float_scale(f) >= 0 else _doubles(f)
                for f in floats)),
        }
        for name, size in candidates.items():
            totals[name] += size
    return {name: round(size / sample.points, 3) for name, size in totals.items()}


def _runs(values: list[int]) -> list[int]:
    out: list[int] = []
    for v in values:
        if len(out) >= 2 and out[-2] == v:
            out[-1] += 1
        else:
            out += [v, 1]
    return out


def main() -> None:
    for name, sample in (("fleet", fleet_sample()), ("repeated", repeated_sample()), ("noisy", noisy_sample())):
        print(f"== {name}: {len(sample.records)} records, {sample.points} points (bytes per point)")
        for candidate, figure in study(sample).items():
            print(f"  {figure:7.3f}  {candidate}")


if __name__ == "__main__":
    main()
