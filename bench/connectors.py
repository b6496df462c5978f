"""`pulse bench connectors`: data points per second the gateway's poller sustains, its CPU and memory.

Simulated equipment (this process, pymodbus servers and pysnmp agents on loopback): ``--modbus-devices``
Modbus TCP devices of ``--registers`` uint16 holding registers each (default 10 x 100 = 1,000
registers) and ``--snmp-devices`` SNMP v2c agents of ``--oids`` scalar OIDs each (default 4 x 50 =
200 OIDs), every device polled every ``--interval`` seconds.

The poller runs in its own process (what a gateway runs: ``Poller`` -> ``BufferSink`` -> the SQLite
buffer, synchronous=full), twice:

1. ``pulse``: the gateway's poller: contiguous registers merged into requests of up to 125
   registers, SNMP GETs of up to 20 OIDs;
2. ``naive``: the same poller and devices with one request per register and per OID (what a simple
   poller does), the in-run baseline.

Figures per run, over the measured window after a warm-up: ``points_per_s`` (values that reached
the buffer), ``cpu_cores`` (the poller process's user + system CPU time / wall time; 1.0 is one whole
core), ``rss_mb`` (resident memory at the end), ``jitter_p99_ms`` (99th percentile of how late polls
started against their schedule), ``failed_polls``. ``ratio_vs_naive`` = pulse / naive points per
second; ``ratio_vs_thingsboard`` = pulse points per second / 200, the figure users report for
ThingsBoard IoT Gateway with 1,000 tags (issue 24; not measured here).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pulse.common import aio
from pulse.common.ports import free_port

THINGSBOARD_POINTS_PER_S = 200.0


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def _p99(values: list[float]) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def _quiet() -> None:
    """pymodbus and pysnmp log every refused connection and late answer; the figures are the output."""
    for name in ("pymodbus", "pysnmp", "asyncio"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


async def _child(spec: dict[str, Any]) -> dict[str, Any]:
    """The poller side: runs in its own process so its CPU time and memory are its own."""
    _quiet()
    from pulse.edge.buffer import Buffer
    from pulse.edge.config import BufferSettings
    from pulse.edge.connectors.poller import BufferSink, Poller
    from pulse.protocol.connectors import parse_devices, plan_one_per_point
    from pulse.protocol.envelope import Limits

    devices = parse_devices(spec["devices"])
    buffer = Buffer(Path(spec["dir"]) / "gateway.db", BufferSettings(quota_mb=2048))
    await buffer.open()
    sink = BufferSink(buffer, Limits())
    points = [0]

    async def counting(device_id: str, ts_ms: int, metrics: Any) -> None:
        await sink(device_id, ts_ms, metrics)
        points[0] += len(metrics)

    planner = (lambda pts, gap, count: plan_one_per_point(pts)) if spec["naive"] else None
    poller = Poller(devices, counting, planner=planner)
    try:
        poller.start()
        await asyncio.sleep(spec["warmup_s"])
        for st in poller.states.values():
            st.lateness_s.clear()
        p0, c0, t0 = points[0], time.process_time(), time.monotonic()
        failed0 = sum(s.failed_polls for s in poller.states.values())
        await asyncio.sleep(spec["seconds"])
        print(f"measured; stopping after {sum(s.polls for s in poller.states.values())} polls", file=sys.stderr, flush=True)
        p1, c1, t1 = points[0], time.process_time(), time.monotonic()
        failed = sum(s.failed_polls for s in poller.states.values()) - failed0
        lateness = [x for st in poller.states.values() for x in st.lateness_s]
        return {
            "points_per_s": round((p1 - p0) / (t1 - t0), 1),
            "cpu_cores": round((c1 - c0) / (t1 - t0), 3),
            "rss_mb": _rss_mb(),
            "jitter_p99_ms": round(_p99(lateness) * 1000, 1),
            "failed_polls": failed,
            "polls": sum(s.polls for s in poller.states.values()),
        }
    finally:
        await poller.stop()
        await buffer.close()


async def _bench(args: argparse.Namespace) -> dict[str, Any]:
    from pulse.firmware_sim.equipment import ModbusSim, SnmpSim, register_block
    from pulse.protocol.connectors import OidPoint

    _quiet()
    modbus_sims: list[ModbusSim] = []
    snmp_sims: list[SnmpSim] = []
    docs_pulse: list[dict[str, Any]] = []
    try:
        for i in range(args.modbus_devices):
            sim = ModbusSim(register_block(args.registers))
            for n in range(args.registers):
                sim.set(f"r{n}", (n * 7 + i) % 65536)
            await sim.start_tcp(free_port())
            modbus_sims.append(sim)
            docs_pulse.append({"id": f"plc-{i}", "kind": "modbus", "host": "127.0.0.1", "port": sim.port, "interval_s": args.interval,
                               "timeout_s": 2.0, "points": [{"metric": f"r{n}", "address": n} for n in range(args.registers)]})
        for i in range(args.snmp_devices):
            oids = [OidPoint(f"o{n}", f"1.3.6.1.4.1.55555.1.{n + 1}.0") for n in range(args.oids)]
            snmp = SnmpSim(oids, {p.metric: n for n, p in enumerate(oids)})
            snmp.start(free_port())
            snmp_sims.append(snmp)
            docs_pulse.append({"id": f"snmp-{i}", "kind": "snmp", "host": "127.0.0.1", "port": snmp.port, "interval_s": args.interval,
                               "timeout_s": 2.0, "points": [{"metric": p.metric, "oid": p.oid} for p in oids]})
        docs_naive = [{**d, "max_oids": 1} if d["kind"] == "snmp" else d for d in docs_pulse]
        runs: dict[str, Any] = {}
        with tempfile.TemporaryDirectory(prefix="pulse-bench-connectors-") as tmp:
            for name, docs in (("pulse", docs_pulse), ("naive", docs_naive)):
                folder = Path(tmp) / name
                folder.mkdir()
                spec = {"devices": docs, "naive": name == "naive", "dir": str(folder), "seconds": args.seconds, "warmup_s": args.warmup}
                (folder / "spec.json").write_text(json.dumps(spec))
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "pulse.bench.connectors", "--child", str(folder / "spec.json"),
                    stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                )
                try:
                    out, _ = await aio.wait_for(proc.communicate(), args.warmup + args.seconds + 120)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
                    raise RuntimeError(f"the {name} poller process did not finish") from None
                if proc.returncode != 0:
                    raise RuntimeError(f"the {name} poller process failed ({proc.returncode})")
                runs[name] = json.loads(out.decode().strip().splitlines()[-1])
    finally:
        for m in modbus_sims:
            await m.stop()
        for s in snmp_sims:
            await s.stop()
    ours, naive = runs["pulse"], runs["naive"]
    return {
        "benchmark": "connectors",
        "modbus_registers": args.modbus_devices * args.registers,
        "snmp_oids": args.snmp_devices * args.oids,
        "interval_s": args.interval,
        "offered_points_per_s": round((args.modbus_devices * args.registers + args.snmp_devices * args.oids) / args.interval, 1),
        "points_per_s": ours["points_per_s"],
        "cpu_cores": ours["cpu_cores"],
        "rss_mb": ours["rss_mb"],
        "jitter_p99_ms": ours["jitter_p99_ms"],
        "naive_points_per_s": naive["points_per_s"],
        "ratio_vs_naive": round(ours["points_per_s"] / naive["points_per_s"], 2) if naive["points_per_s"] else None,
        "thingsboard_points_per_s": THINGSBOARD_POINTS_PER_S,
        "ratio_vs_thingsboard": round(ours["points_per_s"] / THINGSBOARD_POINTS_PER_S, 2),
        "runs": runs,
    }


def run(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="pulse bench connectors")
    p.add_argument("--modbus-devices", type=int, default=10)
    p.add_argument("--registers", type=int, default=100, help="holding registers per Modbus device")
    p.add_argument("--snmp-devices", type=int, default=4)
    p.add_argument("--oids", type=int, default=50, help="scalar OIDs per SNMP agent")
    p.add_argument("--interval", type=float, default=0.1, help="poll interval of every device, seconds")
    p.add_argument("--seconds", type=float, default=10.0, help="measured window per run")
    p.add_argument("--warmup", type=float, default=2.0)
    args = p.parse_args(argv or [])
    return asyncio.run(_bench(args))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(asyncio.run(_child(json.loads(Path(sys.argv[2]).read_text())))), flush=True)
    else:
        print(json.dumps(run(sys.argv[1:])))
