"""`pulse bench codec`: bytes per point and speed of the sync batch codec against JSON envelopes.

The main sample is a generated fleet (25 devices of mixed profiles, 3-6 metrics each, 10-second
cadence with a little jitter, sensor noise and quantisation, so repeated values occur as they do in
real telemetry). Baselines measured in the same run: the device JSON envelope (what a naive uplink
sends), the same JSON lines compressed with zstd at the same level (what a simple "gzip the JSON"
uplink would send), and ``json.loads`` of the envelopes (decode speed).

Every batch format version is measured on the same records (``versions``); the top-level
``bytes_per_point_batch`` and ``decode_points_per_s`` are the newest version's, the one a gateway
sends to a cloud that reads it. ``cases`` repeats the measure on two more samples: ``repeated``
(setpoints and flags that never change) and ``noisy`` (full-precision floats that are not short
decimals, and timestamps with wide jitter).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass

import zstandard

from pulse.firmware_sim.profiles import make_fleet
from pulse.protocol import batch
from pulse.protocol.envelope import Envelope, MessageType


@dataclass(frozen=True)
class Sample:
    records: list[batch.Record]
    envelopes: list[bytes]
    points: int


def fleet_sample(devices: int = 25, hours: float = 2.0, cadence_s: float = 10.0, seed: int = 7) -> Sample:
    fleet = make_fleet(devices, seed=seed)
    rng = random.Random(seed)
    start_ms = 1_764_000_000_000
    events: list[tuple[int, int]] = []
    steps = int(hours * 3600 / cadence_s)
    for d in range(len(fleet)):
        offset = rng.uniform(0, cadence_s * 1000)
        for step in range(steps):
            events.append((int(start_ms + offset + step * cadence_s * 1000 + rng.gauss(0, 40)), d))
    events.sort()
    records, envelopes, points = [], [], 0
    for seq, (ts, d) in enumerate(events, start=1):
        dev = fleet[d]
        metrics = dev.reading((ts - start_ms) / 1000)
        points += len(metrics)
        records.append(batch.Record(seq, dev.device_id, ts, "telemetry", metrics, dev.seq))
        envelopes.append(Envelope(dev.device_id, ts, MessageType.TELEMETRY, metrics, seq=dev.seq).to_json())
    return Sample(records, envelopes, points)


def repeated_sample(records: int = 18_000, devices: int = 25) -> Sample:
    """Devices reporting values that never change: setpoints, modes, enabled flags."""
    out, envelopes = [], []
    start_ms = 1_764_000_000_000
    for i in range(records):
        dev, step = f"dev-{i % devices:04d}", i // devices
        metrics: dict[str, float | int | bool] = {"setpoint_c": 21.5, "mode": 3, "enabled": True, "fw": 7}
        ts = start_ms + step * 10_000
        out.append(batch.Record(i + 1, dev, ts, "telemetry", metrics, step + 1))
        envelopes.append(Envelope(dev, ts, MessageType.TELEMETRY, metrics, seq=step + 1).to_json())
    return Sample(out, envelopes, 4 * records)


def noisy_sample(records: int = 18_000, devices: int = 25, seed: int = 3) -> Sample:
    """Vibration and temperature as full-precision floats (no decimal scaling applies), a noisy
    integer, and timestamps with ±300 ms of jitter at a 1-second cadence."""
    rng = random.Random(seed)
    out, envelopes = [], []
    start_ms = 1_764_000_000_000
    for i in range(records):
        dev, step = f"dev-{i % devices:04d}", i // devices
        metrics: dict[str, float | int | bool] = {
            "vibration_g": rng.gauss(0, 1.5), "temp_c": 40 + rng.random() * 10, "rpm": rng.randrange(1400, 1600),
        }
        ts = start_ms + step * 1000 + rng.randrange(-300, 300)
        out.append(batch.Record(i + 1, dev, ts, "telemetry", metrics, step + 1))
        envelopes.append(Envelope(dev, ts, MessageType.TELEMETRY, metrics, seq=step + 1).to_json())
    return Sample(out, envelopes, 3 * records)


def _measure(sample: Sample, version: int, batch_records: int, repeat: int) -> dict[str, float]:
    """One format on one sample: bytes per point, encode and decode speed (best of ``repeat``)."""
    chunks = [sample.records[i : i + batch_records] for i in range(0, len(sample.records), batch_records)]
    encoded: list[bytes] = []
    best_encode = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        encoded = [
            batch.encode(chunk, gateway_id="gw-bench", stream=batch.Stream.TELEMETRY, gateway_time_ms=chunk[-1].ts_ms, version=version)
            for chunk in chunks
        ]
        best_encode = min(best_encode, time.perf_counter() - t0)
    best_decode = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        decoded = [batch.decode(b) for b in encoded]
        best_decode = min(best_decode, time.perf_counter() - t0)
        if [r for d in decoded for r in d.records] != sample.records:
            raise RuntimeError(f"format {version} did not give back the records it was given")
    p = sample.points
    return {
        "bytes_per_point": round(sum(map(len, encoded)) / p, 3),
        "encode_points_per_s": round(p / best_encode),
        "decode_points_per_s": round(p / best_decode),
    }


def _json_zstd(sample: Sample, batch_records: int) -> int:
    zctx = zstandard.ZstdCompressor(level=9)
    return sum(
        len(zctx.compress(b"\n".join(sample.envelopes[i : i + batch_records]))) for i in range(0, len(sample.envelopes), batch_records)
    )


def _json_loads_s(sample: Sample, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for e in sample.envelopes:
            json.loads(e)
        best = min(best, time.perf_counter() - t0)
    return best


def run(batch_records: int = 1000, repeat: int = 3) -> dict[str, object]:
    sample = fleet_sample()
    p = sample.points
    versions = {str(v): _measure(sample, v, batch_records, repeat) for v in batch.VERSIONS}
    newest = versions[str(batch.VERSIONS[-1])]
    json_bytes = sum(len(e) for e in sample.envelopes)
    json_zstd = _json_zstd(sample, batch_records)
    json_decode_s = _json_loads_s(sample, repeat)
    batch_bytes = newest["bytes_per_point"] * p
    cases: dict[str, object] = {}
    for name, other in (("repeated", repeated_sample()), ("noisy", noisy_sample())):
        cases[name] = {
            "points": other.points,
            "bytes_per_point_json_zstd": round(_json_zstd(other, batch_records) / other.points, 3),
            "json_loads_points_per_s": round(other.points / _json_loads_s(other, repeat)),
            **{f"v{v}": _measure(other, v, batch_records, repeat) for v in batch.VERSIONS},
        }
    return {
        "bench": "codec",
        "devices": 25,
        "records": len(sample.records),
        "points": p,
        "records_per_batch": batch_records,
        "batches": -(-len(sample.records) // batch_records),
        "format_version": batch.VERSIONS[-1],
        "bytes_per_point_json": round(json_bytes / p, 2),
        "bytes_per_point_json_zstd": round(json_zstd / p, 3),
        "bytes_per_point_batch": newest["bytes_per_point"],
        "ratio_json_to_batch": round(json_bytes / batch_bytes, 1),
        "ratio_json_zstd_to_batch": round(json_zstd / batch_bytes, 2),
        "encode_points_per_s": newest["encode_points_per_s"],
        "decode_points_per_s": newest["decode_points_per_s"],
        "json_loads_points_per_s": round(p / json_decode_s),
        "ratio_decode_to_json_loads": round(newest["decode_points_per_s"] * json_decode_s / p, 2),
        "versions": {
            v: {**figures, "ratio_json_zstd_to_batch": round(json_zstd / (figures["bytes_per_point"] * p), 2),
                "ratio_decode_to_json_loads": round(figures["decode_points_per_s"] * json_decode_s / p, 2)}
            for v, figures in versions.items()
        },
        "ratio_v2_to_v1": {
            "bytes_per_point": round(versions["2"]["bytes_per_point"] / versions["1"]["bytes_per_point"], 3),
            "decode_points_per_s": round(versions["2"]["decode_points_per_s"] / versions["1"]["decode_points_per_s"], 3),
        },
        "cases": cases,
    }
