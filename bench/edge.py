"""`pulse bench edge [--devices N] [--seconds S]`: gateway intake throughput and memory against plain amqtt.

Two runs with the same publishers (bench/mqtt_load.py in its own process: N devices, each keeping
``--inflight`` QoS 1 telemetry messages outstanding, valid envelope v1 payloads):

1. ``bare_broker_msgs_per_s``: a plain amqtt 0.12 broker in its own process (anonymous access, no
   other plugins): PUBACKs as soon as it has read the message. By default amqtt runs as it comes;
   ``--bare-gc tuned`` gives it the gateway's garbage-collector settings, so that the ratio shows
   only the gateway's own work per message (auth, ACL, parsing, SQLite), not the collector.
2. ``gateway_msgs_per_s``: ``pulse gateway run`` in its own process: per-device credentials, topic
   ACL, envelope parsing, and PUBACK only after the SQLite group commit (synchronous=full).

``ratio`` = gateway / bare. ``gateway_rss_mb`` is the gateway process's resident memory with all
devices connected at the end of the run (``bare_rss_mb`` the same for plain amqtt). Messages per
second count PUBACKs the publishers received during the measured window (after a warm-up).

``--subscribe``: every device also subscribes (QoS 1) to its ``twin/desired`` and ``cmd/+``, as a
device that takes commands does, on both brokers; each message is then matched against 2 x devices
filters (amqtt tries every filter for every message; the gateway remembers which filters match a
topic). A device counts as connected once its SUBACK is in; ``*_suback_refused`` counts the filters
a broker refused (0 on both, or the comparison is not like for like).

Before each measured window the bench waits until the broker process is idle (``*_settled_s`` in
``rounds``): the work that connecting and subscribing sets off (for the gateway: each device's
pending twin and commands looked up) is not a per-message cost and is not counted as one.

``sessions_persistent`` is how many persistent sessions (clean session 0) the gateway holds at the
end of a run (its status page; ``--persistent`` makes every device connect with one), and
``redelivered`` how many queued messages it sent again with DUP over all runs (the publishers
subscribe to nothing, so 0 unless something else was connected).

``*_cpu_us_per_msg`` is the broker process's CPU time (user + system) per acknowledged message in
the measured window: unlike messages per second it hardly moves when other work shares the
machine, so it shows the gateway's own cost per message most plainly.

The two are measured alternately ``--rounds`` times and the best round of each is reported (every
round is in ``rounds``): on a shared machine other work only ever slows a round down, so the best
round is the fairest figure for both.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from pulse.common.ports import free_port
from pulse.edge.auth import DeviceRegistry

BARE_BROKER = """
import asyncio, gc, sys
from amqtt.broker import Broker
async def main():
    broker = Broker({"listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{sys.argv[1]}", "max_connections": 0}},
                     "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}})
    await broker.start()
    if sys.argv[2] == "tuned":  # the same collector settings as the gateway (pulse.edge.app.run: pulse.common.heap.settle)
        gc.collect()
        gc.freeze()
        gc.set_threshold(10_000, 20, 20)
    await asyncio.Event().wait()
asyncio.run(main())
"""


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"broker process exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on port {port} after {timeout} s")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _settle(pid: int, *, quiet_share: float = 0.1, window_s: float = 0.5, limit_s: float = 60.0) -> float:
    """Wait until the broker process uses under ``quiet_share`` of a core over ``window_s`` (what the
    devices' connects and subscribes set off is done), at most ``limit_s``; the seconds waited.
    Otherwise that work lands in the measured window and is counted as per-message cost."""
    start = time.monotonic()
    while time.monotonic() - start < limit_s:
        before = _cpu_s(pid)
        time.sleep(window_s)
        if _cpu_s(pid) - before < quiet_share * window_s:
            break
    return time.monotonic() - start


def _sessions(status_port: int) -> dict[str, int]:
    """The gateway's "sessions" block from its status page (persistent sessions, redelivered)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{status_port}/status", timeout=10) as r:
        doc = json.loads(r.read())
    sessions = doc.get("sessions") or {}
    return {"sessions_persistent": int(sessions.get("persistent", 0)), "redelivered": int(sessions.get("redelivered", 0))}


def _measure(
    server: subprocess.Popen[bytes], port: int, args: argparse.Namespace, credentials: Path | None, status_port: int | None = None
) -> dict[str, float]:
    try:
        _wait_port(port, server)
        cmd = [sys.executable, "-m", "pulse.bench.mqtt_load", "--port", str(port), "--devices", str(args.devices),
               "--duration", str(args.seconds), "--inflight", str(args.inflight)]
        if credentials is not None:
            cmd += ["--credentials", str(credentials)]
        if args.persistent:
            cmd += ["--persistent"]
        if args.subscribe:
            cmd += ["--subscribe"]
        load = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            return _run_load(server, load, status_port)
        finally:
            if load.poll() is None:
                load.kill()
            load.wait()
            load.stdin.close()  # type: ignore[union-attr]
            load.stdout.close()  # type: ignore[union-attr]
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _run_load(server: subprocess.Popen[bytes], load: subprocess.Popen[str], status_port: int | None) -> dict[str, float]:
    """Start the measured run of ``load`` (connected, then "go") against ``server``: its figures."""
    assert load.stdin is not None and load.stdout is not None
    connected = load.stdout.readline().strip()
    if not connected.startswith("connected"):
        raise RuntimeError(f"publishers did not connect: {connected!r}")
    settled_s = _settle(server.pid)
    load.stdin.write("go\n")
    load.stdin.flush()
    if load.stdout.readline().strip() != "measuring":
        raise RuntimeError("publishers stopped before measuring")
    cpu0 = _cpu_s(server.pid)
    result = json.loads(load.stdout.readline())
    cpu1 = _cpu_s(server.pid)
    rss = _rss_mb(server.pid)
    load.wait(30)
    measured: dict[str, float] = {
        "msgs_per_s": result["acked"] / result["seconds"],
        "cpu_us_per_msg": (cpu1 - cpu0) / max(1, result["acked"]) * 1e6,
        "rss_mb": rss,
        "connected": int(connected.split()[1]),
        "suback_refused": int(connected.split()[2]),
        "settled_s": settled_s,
        **{k: result[k] for k in ("p50_ms", "p99_ms") if k in result},
    }
    if status_port is not None:
        time.sleep(1.5)  # the status page samples once a second
        measured.update(_sessions(status_port))
    return measured


def run(argv: list[str] | None = None) -> dict[str, object]:
    p = argparse.ArgumentParser(prog="pulse bench edge")
    p.add_argument("--devices", type=int, default=1000, help="connected devices (publishers), default 1000")
    p.add_argument("--seconds", type=float, default=5.0, help="measured seconds per run")
    p.add_argument("--rounds", type=int, default=2, help="alternating bare/gateway runs; the best of each is reported")
    p.add_argument(
        "--bare-gc", choices=["default", "tuned"], default="default",
        help="garbage collector of the plain broker: 'default' as amqtt runs out of the box (the default); 'tuned' "
        "with the gateway's settings, so the ratio shows only the gateway's own work per message",
    )
    p.add_argument("--inflight", type=int, default=2, help="QoS 1 messages outstanding per device")
    p.add_argument("--persistent", action="store_true",
                   help="devices connect with clean session 0 (persistent sessions, stored by the gateway) on both brokers")
    p.add_argument("--subscribe", action="store_true",
                   help="every device also subscribes to its twin/desired and cmd/+ (QoS 1), as devices that take commands do: "
                   "each message is then matched against 2 x devices filters")
    args = p.parse_args(argv or [])

    bare_runs: list[dict[str, float]] = []
    gw_runs: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="pulse-bench-edge-") as tmp:
        root = Path(tmp)
        registry = DeviceRegistry(root / "gateway.db")
        secrets = registry.add_many([f"bench-{i:05d}" for i in range(args.devices)])
        registry.close()
        creds = root / "credentials.csv"
        creds.write_text("".join(f"{d},{s}\n" for d, s in secrets.items()))
        env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_GW_")}
        for _ in range(args.rounds):
            bare_port = free_port()
            bare = subprocess.Popen(
                [sys.executable, "-c", BARE_BROKER, str(bare_port), args.bare_gc], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            bare_runs.append(_measure(bare, bare_port, args, None))

            gw_port, status_port = free_port(), free_port()
            (root / "gateway.toml").write_text(
                f'[gateway]\nid = "bench"\nlog_level = "warning"\n[broker]\nhost = "127.0.0.1"\nport = {gw_port}\n'
                f"[status]\nport = {status_port}\n"
            )
            gateway = subprocess.Popen(
                [sys.executable, "-m", "pulse.cli.main", "gateway", "run", "--config", str(root / "gateway.toml")],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            gw_runs.append(_measure(gateway, gw_port, args, creds, status_port))

    bare_best = max(bare_runs, key=lambda r: r["msgs_per_s"])
    gw_best = max(gw_runs, key=lambda r: r["msgs_per_s"])
    return {
        "bare_broker_msgs_per_s": round(bare_best["msgs_per_s"]),
        "gateway_msgs_per_s": round(gw_best["msgs_per_s"]),
        "ratio": round(gw_best["msgs_per_s"] / bare_best["msgs_per_s"], 3),
        "bare_cpu_us_per_msg": round(min(r["cpu_us_per_msg"] for r in bare_runs)),
        "gateway_cpu_us_per_msg": round(min(r["cpu_us_per_msg"] for r in gw_runs)),
        "gateway_rss_mb": max(r["rss_mb"] for r in gw_runs),
        "bare_rss_mb": max(r["rss_mb"] for r in bare_runs),
        "devices": int(min(r["connected"] for r in gw_runs)),
        "bare_suback_refused": int(max(r["suback_refused"] for r in bare_runs)),
        "gateway_suback_refused": int(max(r["suback_refused"] for r in gw_runs)),
        "persistent": args.persistent,
        "subscribed": args.subscribe,
        "sessions_persistent": int(max(r["sessions_persistent"] for r in gw_runs)),
        "redelivered": int(sum(r["redelivered"] for r in gw_runs)),
        "inflight_per_device": args.inflight,
        "qos": 1,
        "sqlite_synchronous": "full",
        "bare_gc": args.bare_gc,
        "seconds_per_round": args.seconds,
        "rounds": [
            {
                "bare_msgs_per_s": round(b["msgs_per_s"]),
                "gateway_msgs_per_s": round(g["msgs_per_s"]),
                "bare_cpu_us_per_msg": round(b["cpu_us_per_msg"]),
                "gateway_cpu_us_per_msg": round(g["cpu_us_per_msg"]),
                "bare_settled_s": round(b["settled_s"], 1),
                "gateway_settled_s": round(g["settled_s"], 1),
            }
            for b, g in zip(bare_runs, gw_runs, strict=True)
        ],
    }
