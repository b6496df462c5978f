"""`pulse bench codec`: bytes per point and speed of the sync batch codec against JSON envelopes.

The sample is a generated fleet (25 devices of mixed profiles, 3-6 metrics each, 10-second cadence
with a little jitter, sensor noise and quantisation, so repeated values occur as they do in real
telemetry). Baselines measured in the same run: the device JSON envelope (what a naive uplink
sends), and the same JSON lines compressed with zstd at the same level (what a simple "gzip the
JSON" uplink would send).
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


def run(batch_records: int = 1000, repeat: int = 3) -> dict[str, object]:
    sample = fleet_sample()
    chunks = [sample.records[i : i + batch_records] for i in range(0, len(sample.records), batch_records)]

    encoded: list[bytes] = []
    best_encode = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        encoded = [
            batch.encode(chunk, gateway_id="gw-bench", stream=batch.Stream.TELEMETRY, gateway_time_ms=chunk[-1].ts_ms)
            for chunk in chunks
        ]
        best_encode = min(best_encode, time.perf_counter() - t0)

    best_decode = float("inf")
    decoded_points = 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        decoded = [batch.decode(b) for b in encoded]
        best_decode = min(best_decode, time.perf_counter() - t0)
        decoded_points = sum(len(r.metrics) for d in decoded for r in d.records)
    if decoded_points != sample.points:
        raise RuntimeError(f"decoder returned {decoded_points} points of {sample.points}")

    json_bytes = sum(len(e) for e in sample.envelopes)
    zctx = zstandard.ZstdCompressor(level=9)
    json_zstd = 0
    for i in range(0, len(sample.envelopes), batch_records):
        json_zstd += len(zctx.compress(b"\n".join(sample.envelopes[i : i + batch_records])))
    batch_bytes = sum(len(b) for b in encoded)

    t0 = time.perf_counter()
    for e in sample.envelopes:
        json.loads(e)
    json_decode_s = time.perf_counter() - t0

    p = sample.points
    return {
        "bench": "codec",
        "devices": 25,
        "records": len(sample.records),
        "points": p,
        "records_per_batch": batch_records,
        "batches": len(encoded),
        "bytes_per_point_json": round(json_bytes / p, 2),
        "bytes_per_point_json_zstd": round(json_zstd / p, 3),
        "bytes_per_point_batch": round(batch_bytes / p, 3),
        "ratio_json_to_batch": round(json_bytes / batch_bytes, 1),
        "ratio_json_zstd_to_batch": round(json_zstd / batch_bytes, 2),
        "encode_points_per_s": round(p / best_encode),
        "decode_points_per_s": round(p / best_decode),
        "json_loads_points_per_s": round(p / json_decode_s),
        "ratio_decode_to_json_loads": round(json_decode_s / best_decode, 2),
    }
